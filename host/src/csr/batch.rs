//! Reviewing and signing many CSRs in parallel.
//!
//! One worker per core; every plugin decision of every CSR runs in a fresh sandbox, so nothing
//! one CSR's evaluation leaves in a plugin can reach another's. Results come back in input
//! order, one per CSR.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::k8s::{self, CsrObject};
use super::{CsrInput, SignerLimits, Verdict, review, sign};
use crate::pki::CaSigner;
use crate::policy::Bundle;

/// One CSR of a batch.
#[derive(Debug)]
pub struct Item {
    /// A name for the result (`metadata.name`, or the file name).
    pub name: String,
    /// The CSR, or why it could not be read.
    pub input: ItemInput,
}

/// One input of a batch, as read.
#[derive(Debug)]
pub enum ItemInput {
    /// A `CertificateSigningRequest` object.
    Object(Box<CsrObject>),
    /// A PEM CSR with its context from the command line.
    Pem(CsrInput),
    /// Could not be read; reported as an error result.
    Invalid(String),
}

/// The result for one CSR.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The input: a file name, or `stream:line`.
    pub name: String,
    /// The object's `metadata.name`, for a Kubernetes object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// `approve`, `deny`, `abstain`, `skipped` or `error`.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Reason codes of a denial.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
    #[serde(skip)]
    pub certificate: Option<String>,
    #[serde(skip)]
    pub object: Option<Value>,
}

/// Totals of a batch.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// CSRs in the batch.
    pub total: usize,
    /// Approved (signed or not).
    pub approved: usize,
    /// Approved and signed.
    pub signed: usize,
    /// Denied.
    pub denied: usize,
    /// Left pending (a policy abstained).
    pub pending: usize,
    /// Skipped (already decided objects).
    pub skipped: usize,
    /// Inputs that could not be read or decided.
    pub errors: usize,
}

impl Summary {
    /// Count the outcomes.
    pub fn of(outcomes: &[Outcome]) -> Summary {
        let mut s = Summary {
            total: outcomes.len(),
            ..Summary::default()
        };
        for o in outcomes {
            match o.decision {
                "approve" => {
                    s.approved += 1;
                    if o.certificate.is_some() {
                        s.signed += 1;
                    }
                }
                "deny" => s.denied += 1,
                "abstain" => s.pending += 1,
                "skipped" => s.skipped += 1,
                _ => s.errors += 1,
            }
        }
        s
    }

    /// Add another part's counts (a batch streamed in parts).
    pub fn add(&mut self, other: &Summary) {
        self.total += other.total;
        self.approved += other.approved;
        self.signed += other.signed;
        self.denied += other.denied;
        self.pending += other.pending;
        self.skipped += other.skipped;
        self.errors += other.errors;
    }
}

fn error(name: &str, message: String) -> Outcome {
    Outcome {
        name: name.to_string(),
        csr: None,
        decision: "error",
        reason: message,
        codes: Vec::new(),
        certificate: None,
        object: None,
    }
}

/// How a batch decides: the host's per-signer limits, whether approved CSRs are signed, and
/// the instant.
#[derive(Clone, Copy, Debug)]
pub struct Decide<'a> {
    /// The host's per-signer limits.
    pub limits: &'a SignerLimits,
    /// Whether approved CSRs are signed.
    pub sign_approved: bool,
    /// The time to decide and sign at.
    pub now: OffsetDateTime,
}

/// Review (and, with `how.sign_approved`, sign) one CSR with `bundle`. `signer` finds the CA that
/// signs for a signer name, if this data dir has one.
pub(crate) fn handle<'ca>(
    bundle: &Bundle,
    item: &Item,
    signer: &(impl Fn(&str) -> Option<&'ca CaSigner> + Sync),
    how: &Decide<'_>,
) -> Outcome {
    let mut outcome = review_and_sign(bundle, item, signer, how);
    if let ItemInput::Object(o) = &item.input {
        outcome.csr = Some(o.name.clone()).filter(|n| !n.is_empty());
    }
    outcome
}

fn review_and_sign<'ca>(
    bundle: &Bundle,
    item: &Item,
    signer: &(impl Fn(&str) -> Option<&'ca CaSigner> + Sync),
    how: &Decide<'_>,
) -> Outcome {
    let (input, object) = match &item.input {
        ItemInput::Invalid(e) => return error(&item.name, e.clone()),
        ItemInput::Object(o) => {
            if let Some(why) = &o.decided {
                return Outcome {
                    name: item.name.clone(),
                    csr: None,
                    decision: "skipped",
                    reason: why.clone(),
                    codes: Vec::new(),
                    certificate: None,
                    object: Some(o.object.clone()),
                };
            }
            (&o.input, Some(o.object.clone()))
        }
        ItemInput::Pem(input) => (input, None),
    };
    let d = match decide(bundle, input, object, signer(&input.ctx.signer_name), how) {
        Ok(d) => d,
        Err(e) => return error(&item.name, e),
    };
    let (r, certificate, object) = (d.review, d.certificate, d.object);
    let codes = match &r.verdict {
        Verdict::Deny { violations } => violations.iter().map(|v| v.code.clone()).collect(),
        _ => Vec::new(),
    };
    Outcome {
        name: item.name.clone(),
        csr: None,
        decision: r.verdict.kind(),
        reason: r.verdict.summary(),
        codes,
        certificate,
        object,
    }
}

/// One CSR's decision: the review, the certificate when it was signed, and the object (if one
/// was given) with the decision's condition and certificate written into its status.
#[derive(Debug)]
pub(crate) struct Decided {
    /// The review.
    pub review: super::Review,
    /// The certificate (PEM), when approved and signed.
    pub certificate: Option<String>,
    /// The object, updated.
    pub object: Option<Value>,
}

/// Review one CSR and, with `how.sign_approved`, sign it with `ca` on approval; write the
/// outcome into `object`. The one decision path of `csr review`, `csr sign` and
/// `csr controller`.
///
/// # Errors
/// A plugin failure under a bundle whose failure mode is `error`, an approval without a CA to
/// sign it, or a signing failure: a message.
pub(crate) fn decide(
    bundle: &Bundle,
    input: &CsrInput,
    mut object: Option<Value>,
    ca: Option<&CaSigner>,
    how: &Decide<'_>,
) -> Result<Decided, String> {
    let r = review(
        bundle,
        input,
        ca.map(|c| c.facts.not_after),
        how.limits,
        how.now,
    )
    .map_err(|e| e.to_string())?;
    let mut certificate = None;
    if how.sign_approved && matches!(r.verdict, Verdict::Approve { .. }) {
        let ca = ca.ok_or_else(|| {
            format!(
                "approved, but no CA here signs for '{}'",
                input.ctx.signer_name
            )
        })?;
        certificate = Some(sign(&r, ca).map_err(|e| format!("signing: {e}"))?);
    }
    if let Some(obj) = &mut object {
        k8s::write_back(obj, &r.verdict, certificate.as_deref(), how.now);
    }
    Ok(Decided {
        review: r,
        certificate,
        object,
    })
}

/// Process `items` on `threads` workers. `progress` counts finished items (for a progress bar).
pub fn process<'ca>(
    bundle: &Bundle,
    items: &[Item],
    signer: &(impl Fn(&str) -> Option<&'ca CaSigner> + Sync),
    how: &Decide<'_>,
    threads: usize,
    progress: &AtomicUsize,
) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, items.len().max(1));
    let mut results: Vec<(usize, Outcome)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        // A bug in one CSR's handling must not lose the other results: report it
                        // as that CSR's error and go on (every decision has its own sandbox).
                        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            handle(bundle, item, signer, how)
                        }));
                        let outcome = run.unwrap_or_else(|_| {
                            error(
                                &item.name,
                                "internal error while handling this CSR (see log)".into(),
                            )
                        });
                        out.push((i, outcome));
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}
