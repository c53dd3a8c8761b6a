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
use crate::facts::CertificateFacts;
use crate::plugin::PluginError;

/// One bundle's decision, flattened for comparison.
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
    /// Why, in words.
    pub reason: String,
    /// Who decided: `plugin`, `failure_mode` or `built_in` (`host` for the host's CSR checks).
    pub source: String,
}

impl Verdict {
    /// Whether `other` is the same decision (wording aside).
    pub(crate) fn same(&self, other: &Verdict) -> bool {
        self.decision == other.decision
            && self.lifetime_seconds == other.lifetime_seconds
            && self.codes == other.codes
    }

    fn error(e: &PluginError) -> Verdict {
        Verdict {
            decision: "error".into(),
            lifetime_seconds: None,
            codes: BTreeSet::new(),
            reason: e.to_string(),
            source: "failure_mode".into(),
        }
    }

    fn source(s: Source) -> String {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }

    fn with_notes(mut reason: String, notes: &[String], error: Option<&PluginError>) -> String {
        for n in notes.iter().map(String::as_str).chain(error.map(|_| "")) {
            if !n.is_empty() {
                reason.push_str("; ");
                reason.push_str(n);
            }
        }
        if let Some(e) = error {
            reason.push_str(&format!(" (plugin failed: {e})"));
        }
        reason
    }

    /// A renewal hook's answer.
    pub(crate) fn renewal(r: Result<Outcome<RenewalDecision>, PluginError>) -> Verdict {
        match r {
            Err(e) => Verdict::error(&e),
            Ok(o) => {
                let (decision, lifetime_seconds) = match &o.decision {
                    RenewalDecision::Keep { .. } => ("keep", None),
                    RenewalDecision::Renew {
                        lifetime_seconds, ..
                    } => ("renew", *lifetime_seconds),
                };
                Verdict {
                    decision: decision.into(),
                    lifetime_seconds,
                    codes: BTreeSet::new(),
                    reason: Verdict::with_notes(
                        o.decision.reason().to_string(),
                        &o.notes,
                        o.error.as_ref(),
                    ),
                    source: Verdict::source(o.source),
                }
            }
        }
    }

    /// A SAN hook's answer.
    pub(crate) fn san(r: Result<Outcome<SanDecision>, PluginError>) -> Verdict {
        match r {
            Err(e) => Verdict::error(&e),
            Ok(o) => {
                let (decision, codes, reason) = match &o.decision {
                    SanDecision::Allow => ("allow", BTreeSet::new(), "names allowed".to_string()),
                    SanDecision::Deny { violations } => (
                        "deny",
                        violations.iter().map(|v| v.code.clone()).collect(),
                        violations
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                };
                Verdict {
                    decision: decision.into(),
                    lifetime_seconds: None,
                    codes,
                    reason: Verdict::with_notes(reason, &o.notes, o.error.as_ref()),
                    source: Verdict::source(o.source),
                }
            }
        }
    }

    /// A CSR hook's answer (alone, as `rotor policy eval` asks it).
    pub(crate) fn csr(r: Result<Outcome<CsrDecision>, PluginError>) -> Verdict {
        match r {
            Err(e) => Verdict::error(&e),
            Ok(o) => {
                let (decision, codes, reason, lifetime) = match &o.decision {
                    CsrDecision::Approve {
                        reason,
                        lifetime_seconds,
                        ..
                    } => (
                        "approve",
                        BTreeSet::new(),
                        reason.clone(),
                        *lifetime_seconds,
                    ),
                    CsrDecision::Deny { violations } => (
                        "deny",
                        violations.iter().map(|v| v.code.clone()).collect(),
                        violations
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                        None,
                    ),
                    CsrDecision::Abstain { reason } => {
                        ("abstain", BTreeSet::new(), reason.clone(), None)
                    }
                };
                Verdict {
                    decision: decision.into(),
                    lifetime_seconds: lifetime,
                    codes,
                    reason: Verdict::with_notes(reason, &o.notes, o.error.as_ref()),
                    source: Verdict::source(o.source),
                }
            }
        }
    }

    /// A whole CSR review (the host's checks, the SAN hook, the CSR hook, the template).
    pub(crate) fn review(r: Result<crate::csr::Review, PluginError>) -> Verdict {
        use crate::csr::Verdict as V;
        match r {
            Err(e) => Verdict::error(&e),
            Ok(review) => {
                let lifetime = review
                    .template
                    .as_ref()
                    .map(|t| (t.not_after - t.not_before).whole_seconds().unsigned_abs());
                let (decision, codes, reason) = match &review.verdict {
                    V::Approve { reason } => ("approve", BTreeSet::new(), reason.clone()),
                    V::Deny { violations } => (
                        "deny",
                        violations.iter().map(|v| v.code.clone()).collect(),
                        violations
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                    V::Abstain { reason } => ("abstain", BTreeSet::new(), reason.clone()),
                };
                Verdict {
                    decision: decision.into(),
                    lifetime_seconds: lifetime.filter(|_| decision == "approve"),
                    codes,
                    reason: Verdict::with_notes(reason, &review.notes, None),
                    source: "review".into(),
                }
            }
        }
    }
}

/// Ask `bundle` the hook `request` is for.
pub(crate) fn ask(bundle: &Bundle, request: &HookRequest) -> Verdict {
    match request {
        HookRequest::Renewal(r) => Verdict::renewal(bundle.renewal(r)),
        HookRequest::San(r) => Verdict::san(bundle.validate_sans(r)),
        HookRequest::Csr(r) => Verdict::csr(bundle.review_csr(r)),
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
            let a = Verdict::renewal(current.renewal(&request));
            let b = Verdict::renewal(candidate.renewal(&request));
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
                Verdict::san(current.validate_sans(&request)),
                Verdict::san(candidate.validate_sans(&request)),
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
