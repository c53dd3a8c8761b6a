//! `rotor policy diff`: the decisions that change between two bundles, over the same inputs.
//!
//! A decision changes when its verdict (keep/renew, allow/deny, approve/deny/abstain), its
//! lifetime or its set of reason codes changes; a different wording alone is not a change.
//! A plugin failure under failure mode `error` is the verdict `error`.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;

use super::bundle::Bundle;
use super::evaluate::{Outcome, Source};
use super::input::HookRequest;
use crate::contract::{
    CsrDecision, Hook, RenewalDecision, RenewalRequest, SanDecision, SanRequest,
};
use crate::facts::{CertificateFacts, Violation};
use crate::plugin::PluginError;

/// One bundle's decision, flattened for comparison (and for the fixtures' expectations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Verdict {
    /// `keep`, `renew`, `allow`, `deny`, `approve`, `abstain` or `error`.
    pub decision: String,
    /// The lifetime a renewal or an approval asks for, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<u64>,
    /// Reason codes of a denial.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub codes: BTreeSet<String>,
    /// Why, in words: the decision's own reason (every violation of a denial).
    pub reason: String,
    /// The host's notes on it, and the plugin failure a failure mode answered for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Who decided: `plugin`, `failure_mode`, `built_in`, or `review` (a whole CSR review).
    pub source: String,
}

/// The reason codes of a denial, and its violations in words.
fn denial(violations: &[Violation]) -> (BTreeSet<String>, String) {
    let codes = violations.iter().map(|v| v.code.clone()).collect();
    let words: Vec<String> = violations.iter().map(ToString::to_string).collect();
    (codes, words.join("; "))
}

impl Verdict {
    /// Whether `other` is the same decision (wording aside).
    pub(crate) fn same(&self, other: &Verdict) -> bool {
        self.decision == other.decision
            && self.lifetime_seconds == other.lifetime_seconds
            && self.codes == other.codes
    }

    /// A hook's answer through `of`, or `error` when the plugin failed under failure mode
    /// `error`.
    pub(crate) fn of<T>(r: Result<T, PluginError>, of: impl FnOnce(&T) -> Verdict) -> Verdict {
        match r {
            Ok(answer) => of(&answer),
            Err(e) => Verdict {
                decision: "error".into(),
                lifetime_seconds: None,
                codes: BTreeSet::new(),
                reason: e.to_string(),
                notes: Vec::new(),
                source: Verdict::source(Source::FailureMode),
            },
        }
    }

    /// The name a source has in JSON (`plugin`, `failure_mode`, `built_in`).
    pub(crate) fn source(s: Source) -> String {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// A hook's outcome with its decision flattened as (decision, lifetime, codes, reason).
    fn outcome<D>(
        o: &Outcome<D>,
        (decision, lifetime_seconds, codes, reason): (&str, Option<u64>, BTreeSet<String>, String),
    ) -> Verdict {
        let mut notes = o.notes.clone();
        notes.extend(o.error.iter().map(|e| format!("plugin failed: {e}")));
        Verdict {
            decision: decision.into(),
            lifetime_seconds,
            codes,
            reason,
            notes,
            source: Verdict::source(o.source),
        }
    }

    /// A renewal hook's answer.
    pub(crate) fn renewal(o: &Outcome<RenewalDecision>) -> Verdict {
        let (decision, lifetime) = match &o.decision {
            RenewalDecision::Keep { .. } => ("keep", None),
            RenewalDecision::Renew {
                lifetime_seconds, ..
            } => ("renew", *lifetime_seconds),
        };
        let reason = o.decision.reason().to_string();
        Verdict::outcome(o, (decision, lifetime, BTreeSet::new(), reason))
    }

    /// A SAN hook's answer.
    pub(crate) fn san(o: &Outcome<SanDecision>) -> Verdict {
        let flat = match &o.decision {
            SanDecision::Allow => ("allow", None, BTreeSet::new(), String::new()),
            SanDecision::Deny { violations } => {
                let (codes, reason) = denial(violations);
                ("deny", None, codes, reason)
            }
        };
        Verdict::outcome(o, flat)
    }

    /// A CSR hook's answer (alone, as `rotor policy eval` asks it).
    pub(crate) fn csr(o: &Outcome<CsrDecision>) -> Verdict {
        let flat = match &o.decision {
            CsrDecision::Approve {
                reason,
                lifetime_seconds,
                ..
            } => (
                "approve",
                *lifetime_seconds,
                BTreeSet::new(),
                reason.clone(),
            ),
            CsrDecision::Deny { violations } => {
                let (codes, reason) = denial(violations);
                ("deny", None, codes, reason)
            }
            CsrDecision::Abstain { reason } => ("abstain", None, BTreeSet::new(), reason.clone()),
        };
        Verdict::outcome(o, flat)
    }

    /// A whole CSR review (the host's checks, the SAN hook, the CSR hook, the template).
    pub(crate) fn review(review: &crate::csr::Review) -> Verdict {
        use crate::csr::Verdict as V;
        let (decision, codes, reason) = match &review.verdict {
            V::Approve { reason } => ("approve", BTreeSet::new(), reason.clone()),
            V::Deny { violations } => {
                let (codes, reason) = denial(violations);
                ("deny", codes, reason)
            }
            V::Abstain { reason } => ("abstain", BTreeSet::new(), reason.clone()),
        };
        // The lifetime the certificate would get: the approved template's.
        let lifetime_seconds = review
            .template
            .as_ref()
            .filter(|_| decision == "approve")
            .map(|t| (t.not_after - t.not_before).whole_seconds().unsigned_abs());
        Verdict {
            decision: decision.into(),
            lifetime_seconds,
            codes,
            reason,
            notes: review.notes.clone(),
            source: "review".into(),
        }
    }
}

/// Ask `bundle` the hook `request` is for.
pub(crate) fn ask(bundle: &Bundle, request: &HookRequest) -> Verdict {
    match request {
        HookRequest::Renewal(r) => Verdict::of(bundle.renewal(r), Verdict::renewal),
        HookRequest::San(r) => Verdict::of(bundle.validate_sans(r), Verdict::san),
        HookRequest::Csr(r) => Verdict::of(bundle.review_csr(r), Verdict::csr),
    }
}

/// A span of days over which a decision differs the same way.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Period {
    /// The first day.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// The last day.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// How many days.
    pub days: u32,
}

/// One decision that differs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Change {
    /// The hook.
    pub hook: Hook,
    /// What was asked about: `certificate`, `csr` or `fixture`.
    pub input: &'static str,
    /// The certificate's name, the CSR's name or the fixture case.
    pub subject: String,
    /// When swept: the days over which it differs this way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// The current bundle's decision.
    pub current: Verdict,
    /// The candidate's.
    pub candidate: Verdict,
}

/// Decisions compared and those that changed.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Decisions asked of each bundle.
    pub compared: usize,
    /// Those that differ (a swept certificate's days grouped into periods).
    pub changes: Vec<Change>,
}

impl Report {
    /// Compare one decision.
    pub(crate) fn compare(
        &mut self,
        hook: Hook,
        input: &'static str,
        subject: String,
        current: Verdict,
        candidate: Verdict,
    ) {
        self.compared += 1;
        if !current.same(&candidate) {
            self.changes.push(Change {
                hook,
                input,
                subject,
                period: None,
                current,
                candidate,
            });
        }
    }
}

/// A certificate of a data dir, as the hooks are asked about it.
#[derive(Clone, Debug)]
pub(crate) struct CertificateSubject {
    /// Its name in the layout.
    pub name: String,
    /// Its facts.
    pub facts: Arc<CertificateFacts>,
    /// Its CA's notAfter, when known.
    pub issuer_not_after: Option<OffsetDateTime>,
    /// The SAN question its configured names raise (none without names).
    pub san: Option<SanRequest>,
}

/// Compare the renewal decisions on `subjects` at `now`, or each day of `days` from `now`,
/// grouping consecutive days that differ the same way; then the SAN decisions at `now`.
pub(crate) fn certificates(
    report: &mut Report,
    current: &Bundle,
    candidate: &Bundle,
    subjects: &[CertificateSubject],
    now: OffsetDateTime,
    days: u32,
) {
    for s in subjects {
        let mut open: Option<Change> = None;
        // `days` days from `now` (one evaluation when not sweeping).
        for day in 0..days.max(1) {
            let Some(at) = now.checked_add(time::Duration::days(i64::from(day))) else {
                break;
            };
            let request = RenewalRequest {
                name: s.name.clone(),
                certificate: s.facts.clone(),
                issuer_not_after: s.issuer_not_after,
                now: at,
            };
            let a = Verdict::of(current.renewal(&request), Verdict::renewal);
            let b = Verdict::of(candidate.renewal(&request), Verdict::renewal);
            report.compared += 1;
            let differs = !a.same(&b);
            // Still the same difference: extend the period.
            if let Some(c) = open.as_mut()
                && differs
                && c.current.same(&a)
                && c.candidate.same(&b)
                && let Some(p) = c.period.as_mut()
            {
                p.to = at;
                p.days += 1;
                continue;
            }
            if let Some(c) = open.take() {
                report.changes.push(c);
            }
            if differs {
                open = Some(Change {
                    hook: Hook::Renewal,
                    input: "certificate",
                    subject: s.name.clone(),
                    period: (days > 0).then_some(Period {
                        from: at,
                        to: at,
                        days: 1,
                    }),
                    current: a,
                    candidate: b,
                });
            }
        }
        if let Some(c) = open.take() {
            report.changes.push(c);
        }
    }
    for s in subjects {
        if let Some(request) = &s.san {
            let mut request = request.clone();
            request.now = now;
            report.compare(
                Hook::San,
                "certificate",
                s.name.clone(),
                Verdict::of(current.validate_sans(&request), Verdict::san),
                Verdict::of(candidate.validate_sans(&request), Verdict::san),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(decision: &str, reason: &str) -> Verdict {
        Verdict {
            decision: decision.into(),
            lifetime_seconds: None,
            codes: BTreeSet::new(),
            reason: reason.into(),
            notes: Vec::new(),
            source: "plugin".into(),
        }
    }

    #[test]
    fn wording_alone_is_no_change() {
        assert!(v("keep", "a").same(&v("keep", "b")));
        assert!(!v("keep", "a").same(&v("renew", "a")));
        let mut l = v("renew", "a");
        l.lifetime_seconds = Some(10);
        assert!(!l.same(&v("renew", "a")));
        let mut c = v("deny", "a");
        c.codes.insert("X".into());
        assert!(!c.same(&v("deny", "a")));
    }
}
