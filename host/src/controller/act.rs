//! One CSR: what is left to do on it, the decision (the path `rotor csr review` takes), and the
//! API writes that carry it out: the `/approval` subresource for the decision, `/status` for a
//! certificate rotor signs, an Event for an abstention or a missing Node.
//!
//! Every write carries the resourceVersion of the object the decision was made on: if anything
//! changed the CSR meanwhile (another replica, a person, a restart that decided it already), the
//! write fails with a conflict and nothing is decided twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest as Csr, CertificateSigningRequestCondition as Condition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};

use super::evidence::{NodeEvidence, NodeIndex};
use crate::csr::batch::{Decide, decide};
use crate::csr::{Evidence, SignerLimits, Verdict, k8s};
use crate::pki::CaSigner;
use crate::serve::CsrRecorder;

/// What is left to do on a CSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Work {
    /// Pending, for a signer this controller decides.
    Decide,
    /// Approved, not yet signed, for a signer this controller signs.
    Sign,
    /// Nothing: decided, signed, failed, or not ours.
    Nothing,
}

/// What handling a CSR came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Done {
    /// Approved (and signed, when rotor signs for its signer).
    Approved { signed: bool },
    /// Denied.
    Denied,
    /// Left pending: a policy abstained.
    Abstained,
    /// Left pending: the requesting node's Node does not exist.
    NoNode,
    /// Signed (it had been approved before).
    Signed,
    /// Marked Failed: approved by someone, but rotor's review does not approve it.
    Refused,
    /// The CSR changed meanwhile: the watch brings it back.
    Conflict,
    /// The API or the decision failed: retried later.
    Error(String),
    /// A retry's timer (no CSR was handled).
    Retry,
}

impl Done {
    /// Every label [`Done::as_str`] gives for a handled CSR.
    pub(super) const LABELS: [&'static str; 9] = [
        "approved",
        "approved_signed",
        "denied",
        "abstained",
        "no_node",
        "signed",
        "refused",
        "conflict",
        "error",
    ];

    /// A label for metrics and logs.
    pub(super) fn as_str(&self) -> &'static str {
        match self {
            Done::Approved { signed: false } => "approved",
            Done::Approved { signed: true } => "approved_signed",
            Done::Denied => "denied",
            Done::Abstained => "abstained",
            Done::NoNode => "no_node",
            Done::Signed => "signed",
            Done::Refused => "refused",
            Done::Conflict => "conflict",
            Done::Error(_) => "error",
            Done::Retry => "retry",
        }
    }
}

/// What the workers share.
pub(super) struct Actor {
    pub api: Api<Csr>,
    pub events: Recorder,
    pub log: CsrRecorder,
    /// Signers this controller decides.
    pub decides: BTreeSet<String>,
    /// Signers this controller signs for, with the CA that signs.
    pub signs: BTreeMap<String, std::sync::Arc<CaSigner>>,
    pub limits: SignerLimits,
    /// `--node-evidence`: a fixed list instead of the Node objects.
    pub fixed_evidence: Option<Evidence>,
    /// Events already published, by CSR uid: the same reason is said once.
    pub said: Mutex<HashMap<String, String>>,
}

fn conditions(csr: &Csr) -> impl Iterator<Item = &Condition> {
    csr.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
}

impl Actor {
    /// What is left to do on `csr`.
    pub(super) fn work(&self, csr: &Csr) -> Work {
        let signer = csr.spec.signer_name.as_str();
        let has = |t: &str| conditions(csr).any(|c| c.type_ == t);
        let issued = csr
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty());
        if has("Denied") || has("Failed") || issued {
            Work::Nothing
        } else if has("Approved") {
            if self.signs.contains_key(signer) {
                Work::Sign
            } else {
                Work::Nothing
            }
        } else if self.decides.contains(signer) || self.signs.contains_key(signer) {
            Work::Decide
        } else {
            Work::Nothing
        }
    }

    /// The evidence for a CSR's requester.
    pub(super) fn evidence(&self, nodes: &NodeIndex, username: &str) -> NodeEvidence {
        match &self.fixed_evidence {
            Some(fixed) => match super::evidence::node_name(username) {
                Some(_) => NodeEvidence::Found {
                    addresses: fixed.for_user(username),
                    disputed: Vec::new(),
                },
                None => NodeEvidence::NotANode,
            },
            None => nodes.evidence(username),
        }
    }

    /// Decide or sign `csr`, as `work` says, with `evidence` for its requester.
    pub(super) async fn handle(&self, csr: Csr, work: Work, evidence: NodeEvidence) -> Done {
        let name = csr.name_any();
        let (addresses, disputed) = match evidence {
            NodeEvidence::NotANode => (Vec::new(), Vec::new()),
            NodeEvidence::Missing(node) => {
                self.say(
                    &csr,
                    "NodeNotFound",
                    format!(
                        "Node {node} does not exist: rotor decides this request once it does \
                         (its addresses are the evidence)"
                    ),
                )
                .await;
                return Done::NoNode;
            }
            NodeEvidence::Found {
                addresses,
                disputed,
            } => (addresses, disputed),
        };
        let value = match serde_json::to_value(&csr) {
            Ok(v) => v,
            Err(e) => return Done::Error(format!("{name}: {e}")),
        };
        let mut object = match k8s::parse(&format!("CSR {name}"), value, &addresses) {
            Ok(o) => o,
            Err(e) => {
                // A request rotor cannot read never becomes readable: denied with the reason,
                // or, approved already by someone else, marked Failed by its signer.
                let why = format!("MalformedCsr: {e}");
                return match work {
                    Work::Sign => self.fail(&csr, &why).await,
                    _ => self.deny_unreadable(&csr, &why).await,
                };
            }
        };
        object.input.disputed = disputed;
        let signer = object.input.ctx.signer_name.clone();
        let ca = self.signs.get(&signer).map(|c| &**c);
        let Some(bundle) = self.log.active() else {
            return Done::Error("no policy bundle decides".into());
        };
        let how = Decide {
            limits: &self.limits,
            sign_approved: ca.is_some(),
            now: crate::clock::system_now(),
        };
        let started = Instant::now();
        // Plugins and signing are CPU work: off the runtime's event loop, as the supervisor
        // API's decisions are.
        let decided = tokio::task::block_in_place(|| {
            decide(&bundle, &object.input, Some(object.object), ca, &how)
        });
        let latency = started.elapsed();
        let d = match decided {
            Ok(d) => d,
            Err(e) => return Done::Error(format!("{name}: {e}")),
        };
        let input = &object.input;
        // The shadow bundle's review is CPU work too.
        tokio::task::block_in_place(|| {
            self.log.decided(
                &format!("{name} ({})", input.ctx.username),
                &d.review,
                latency,
                &|shadow| {
                    crate::csr::review(
                        shadow,
                        input,
                        ca.map(|c| c.facts.not_after),
                        &self.limits,
                        how.now,
                    )
                    .ok()
                },
            );
        });
        match (&d.review.verdict, work) {
            (Verdict::Abstain { reason }, _) => {
                self.say(&csr, "RotorPolicyAbstained", reason.clone()).await;
                Done::Abstained
            }
            (Verdict::Deny { .. }, Work::Sign) => {
                let why = d.review.verdict.summary();
                self.fail(&csr, &why).await
            }
            (_, Work::Sign) => match d.certificate {
                Some(pem) => self.write_certificate(csr, &pem).await,
                None => Done::Error(format!("{name}: approved, but nothing was signed")),
            },
            (Verdict::Deny { .. }, _) => self.approval(csr, d.object, None).await,
            (Verdict::Approve { .. }, _) => self.approval(csr, d.object, d.certificate).await,
        }
    }

    /// Write the decision through `/approval` (and the certificate through `/status`).
    async fn approval(
        &self,
        csr: Csr,
        object: Option<serde_json::Value>,
        certificate: Option<String>,
    ) -> Done {
        let name = csr.name_any();
        let Some(mut object) = object else {
            return Done::Error(format!("{name}: no object to write"));
        };
        // The certificate goes through /status, once the approval is in.
        if let Some(status) = object.get_mut("status").and_then(|s| s.as_object_mut()) {
            status.remove("certificate");
        }
        let approved = object
            .pointer("/status/conditions")
            .and_then(|c| c.as_array())
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Approved"));
        let written = match self
            .api
            .replace_subresource("approval", &name, &PostParams::default(), &object)
            .await
        {
            Ok(w) => w,
            Err(kube::Error::Api(e)) if e.code == 409 => return Done::Conflict,
            Err(e) => return Done::Error(format!("{name}: /approval: {e}")),
        };
        if !approved {
            return Done::Denied;
        }
        match certificate {
            None => Done::Approved { signed: false },
            Some(pem) => match self.write_certificate(written, &pem).await {
                Done::Signed => Done::Approved { signed: true },
                other => other,
            },
        }
    }

    async fn write_certificate(&self, mut csr: Csr, pem: &str) -> Done {
        let name = csr.name_any();
        csr.status.get_or_insert_with(Default::default).certificate =
            Some(k8s_openapi::ByteString(pem.as_bytes().to_vec()));
        match self
            .api
            .replace_status(&name, &PostParams::default(), &csr)
            .await
        {
            Ok(_) => Done::Signed,
            Err(kube::Error::Api(e)) if e.code == 409 => Done::Conflict,
            Err(e) => Done::Error(format!("{name}: /status: {e}")),
        }
    }

    /// An approved CSR of a signer rotor signs for, which rotor's review does not approve: the
    /// signer's answer is a Failed condition (as the Kubernetes signers give), through /status.
    async fn fail(&self, csr: &Csr, why: &str) -> Done {
        self.add_condition(csr, "status", "Failed", "RotorPolicyRefusedToSign", why)
            .await
            .unwrap_or(Done::Refused)
    }

    /// A request rotor cannot read, denied with why through /approval.
    async fn deny_unreadable(&self, csr: &Csr, why: &str) -> Done {
        self.add_condition(csr, "approval", "Denied", "RotorPolicyDenied", why)
            .await
            .unwrap_or(Done::Denied)
    }

    /// Add a condition to `csr` through `subresource`: `None` when written, else what came of
    /// the write (a conflict, an error).
    async fn add_condition(
        &self,
        csr: &Csr,
        subresource: &str,
        type_: &str,
        reason: &str,
        why: &str,
    ) -> Option<Done> {
        let name = csr.name_any();
        let mut csr = csr.clone();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        csr.status
            .get_or_insert_with(Default::default)
            .conditions
            .get_or_insert_with(Vec::new)
            .push(Condition {
                type_: type_.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(why.to_string()),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now),
            });
        match self
            .api
            .replace_subresource(subresource, &name, &PostParams::default(), &csr)
            .await
        {
            Ok(_) => None,
            Err(kube::Error::Api(e)) if e.code == 409 => Some(Done::Conflict),
            Err(e) => Some(Done::Error(format!("{name}: /{subresource}: {e}"))),
        }
    }

    /// Forget what was said about a deleted CSR.
    pub(super) fn forget(&self, csr: &Csr) {
        let uid = csr.uid().unwrap_or_else(|| csr.name_any());
        self.said
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid);
    }

    /// An Event on the CSR, once per reason.
    async fn say(&self, csr: &Csr, reason: &str, note: String) {
        let uid = csr.uid().unwrap_or_else(|| csr.name_any());
        let key = format!("{reason}: {note}");
        {
            let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
            if said.get(&uid) == Some(&key) {
                return;
            }
            said.insert(uid, key);
        }
        let mut note = note;
        if note.len() > 1000 {
            let mut end = 997;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        let event = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: "Review".into(),
            secondary: None,
        };
        if let Err(e) = self.events.publish(&event, &csr.object_ref(&())).await {
            crate::say!("rotor csr controller: event on {}: {e}", csr.name_any());
        }
    }
}
