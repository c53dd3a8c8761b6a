//! Reviewing and signing certificate signing requests through the policy plugins.
//!
//! The order (reference study §4.4), stopping at the first stage that denies:
//!
//! 1. the host's own rules, before any plugin runs: the CSR parses; its signature verifies with
//!    its own key (proof of possession, which k3s skips); one subjectAltName extension of known,
//!    well-formed types; one CN; the signer's usages; and the host floor ([`FLOOR_RULES`]: no
//!    CA, no `system:masters`, a node identity only for that node), which no plugin answer can
//!    lower and only the bundle's `[host.floor]` opens, one signer at a time;
//! 2. the CSR approval plugin (identity, authorization, profile) and the SAN plugin on the CSR's
//!    names; any deny denies (with every reason from both), otherwise any abstain leaves the
//!    request pending, otherwise (a request whose only objection is that the host holds no
//!    evidence for the node at all is left pending rather than denied: missing evidence is not
//!    proof of a bad request, and the request can be approved once evidence is given):
//! 3. the final template is built from policy, never copied from the CSR: subject CN and O, the
//!    DNS/IP/URI/email names, the approved usages (as key usage and extended key usage), the
//!    approved lifetime (or `expirationSeconds`, or 365 days), clamped to the issuing CA;
//! 4. the floor again and the SAN plugin again, on the template.
//!
//! A plugin that fails never approves: the bundle's failure mode leaves the CSR pending or
//! denies it.

pub(crate) mod batch;
mod fixed;
mod floor;
mod input;
pub(crate) mod k8s;

pub use batch::{Decide, Item, ItemInput, Summary, process as process_batch};
pub use fixed::{FixedSubject, review_fixed};
pub use floor::{Door, FLOOR_CODE, FLOOR_RULES, FloorDoors, NODE_COMPONENT_SIGNER};
pub use input::{Evidence, MissingContext, PemContext, classify, classify_all};
pub use k8s::{object_for as k8s_object_for, parse as parse_k8s_object};

use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;

use crate::contract::{CsrContext, CsrRequest, SanStage};
use crate::contract::{CsrDecision, SanDecision};
use crate::facts::{CsrFacts, Usage, Violation, parse_csr_der_with_key};
use crate::pki::{
    ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku, LeafTemplate, Subject, Validity,
};
use crate::plugin::PluginError;
use crate::policy::Bundle;

/// Default lifetime when neither the policy nor the request says (Kubernetes'
/// `--cluster-signing-duration` default): [`crate::pki::LEAF_LIFETIME`].
pub const DEFAULT_LIFETIME_SECONDS: u64 = crate::pki::LEAF_LIFETIME.whole_seconds().unsigned_abs();
/// The Kubernetes signer's floor.
pub const MIN_LIFETIME_SECONDS: u64 = 600;
/// Backdating of notBefore, for clock skew (as the Kubernetes signer).
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// The final word on a CSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Verdict {
    /// Approved: the host may sign it.
    Approve {
        /// Why, in words, for logs, reports and the CSR's condition.
        reason: String,
    },
    /// Denied, with every reason.
    Deny {
        /// Every violation found, not only the first.
        violations: Vec<Violation>,
    },
    /// Left pending for a human (or another approver).
    Abstain {
        /// Why, in words, for logs, reports and the CSR's condition.
        reason: String,
    },
}

impl Verdict {
    /// `approve`, `deny` or `abstain`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Approve { .. } => "approve",
            Verdict::Deny { .. } => "deny",
            Verdict::Abstain { .. } => "abstain",
        }
    }

    /// One-line summary of the reason(s).
    pub fn summary(&self) -> String {
        match self {
            Verdict::Approve { reason } | Verdict::Abstain { reason } => reason.clone(),
            Verdict::Deny { violations } => violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// What one stage said.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    /// `host`, `csr-approval`, `san (csr)`, `san (template)`.
    pub stage: &'static str,
    /// What it said (`approve`, `deny`, `abstain`, `allow`, `error`, ...).
    pub decision: &'static str,
    /// The plugin that said it, if a plugin did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Its reasons.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The certificate that would be issued.
#[derive(Clone, Debug, Serialize)]
pub struct Template {
    /// The subject's common name.
    pub common_name: String,
    /// The subject's organizations.
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// Email subject alternative names.
    pub emails: Vec<String>,
    /// The usages the certificate would carry.
    pub usages: Vec<Usage>,
    /// Start of its validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of its validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// A reviewed CSR.
#[derive(Debug, Serialize)]
pub struct Review {
    /// The final word.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The signer asked.
    pub signer_name: String,
    /// The requesting user.
    pub username: String,
    /// What each stage said, in order.
    pub stages: Vec<Stage>,
    /// The certificate that would be issued, when approved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
    /// Host adjustments (lifetime clamps) and plugin failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The CSR's SubjectPublicKeyInfo, for signing.
    #[serde(skip)]
    pub spki: Vec<u8>,
    /// Who asked, for which signer, and the doors the bundle opened: [`sign`] checks the floor
    /// again on the template with them. Only [`review`] sets it, so a `Review` made any other
    /// way is never signed.
    #[serde(skip)]
    floor: Option<(FloorDoors, CsrContext)>,
}

/// The SAN rule profile for a signer (`kubernetes.io/kubelet-serving` -> `kubelet-serving`).
pub fn san_profile(signer: &str) -> String {
    match signer {
        "kubernetes.io/kubelet-serving" => "kubelet-serving".into(),
        "kubernetes.io/kube-apiserver-client-kubelet" => "kubelet-client".into(),
        "kubernetes.io/kube-apiserver-client" => "apiserver-client".into(),
        "kubernetes.io/legacy-unknown" => "legacy-unknown".into(),
        other => other.to_string(),
    }
}

/// Key usage and extended key usage for a Kubernetes usage; `None` when it cannot be issued on
/// a leaf certificate (`cert sign`, `crl sign`).
fn usage_bits(u: Usage) -> Option<(Option<Ku>, Option<Eku>)> {
    let oid = |s: &[u64]| Some((None, Some(Eku::Other(s.to_vec()))));
    match u {
        Usage::Signing | Usage::DigitalSignature => Some((Some(Ku::DigitalSignature), None)),
        Usage::ContentCommitment => Some((Some(Ku::ContentCommitment), None)),
        Usage::KeyEncipherment => Some((Some(Ku::KeyEncipherment), None)),
        Usage::KeyAgreement => Some((Some(Ku::KeyAgreement), None)),
        Usage::DataEncipherment => Some((Some(Ku::DataEncipherment), None)),
        Usage::EncipherOnly => Some((Some(Ku::EncipherOnly), None)),
        Usage::DecipherOnly => Some((Some(Ku::DecipherOnly), None)),
        Usage::CertSign | Usage::CrlSign => None,
        Usage::Any => Some((None, Some(Eku::Any))),
        Usage::ServerAuth => Some((None, Some(Eku::ServerAuth))),
        Usage::ClientAuth => Some((None, Some(Eku::ClientAuth))),
        Usage::CodeSigning => Some((None, Some(Eku::CodeSigning))),
        Usage::EmailProtection | Usage::SMime => Some((None, Some(Eku::EmailProtection))),
        Usage::Timestamping => Some((None, Some(Eku::TimeStamping))),
        Usage::OcspSigning => Some((None, Some(Eku::OcspSigning))),
        Usage::IpsecEndSystem => oid(&[1, 3, 6, 1, 5, 5, 7, 3, 5]),
        Usage::IpsecTunnel => oid(&[1, 3, 6, 1, 5, 5, 7, 3, 6]),
        Usage::IpsecUser => oid(&[1, 3, 6, 1, 5, 5, 7, 3, 7]),
        Usage::MicrosoftSgc => oid(&[1, 3, 6, 1, 4, 1, 311, 10, 3, 3]),
        Usage::NetscapeSgc => oid(&[2, 16, 840, 1, 113_730, 4, 1]),
    }
}

/// The extended key usage every certificate of a Kubernetes signer carries (`server auth` for
/// kubelet-serving, `client auth` for the client signers). A certificate without any extended
/// key usage is good for every purpose, so the host issues none without it.
pub fn required_usage(signer: &str) -> Option<Usage> {
    match signer {
        "kubernetes.io/kubelet-serving" => Some(Usage::ServerAuth),
        "kubernetes.io/kube-apiserver-client-kubelet"
        | "kubernetes.io/kube-apiserver-client"
        | NODE_COMPONENT_SIGNER => Some(Usage::ClientAuth),
        _ => None,
    }
}

/// The usages a Kubernetes signer may issue (its documented rules, as the kube-controller-manager
/// signer enforces them); `None` for a signer without such a rule (`legacy-unknown`, signers
/// outside `kubernetes.io/`, none of which rotor signs).
pub fn permitted_usages(signer: &str) -> Option<&'static [Usage]> {
    const SERVING: &[Usage] = &[
        Usage::DigitalSignature,
        Usage::KeyEncipherment,
        Usage::ServerAuth,
    ];
    const CLIENT: &[Usage] = &[
        Usage::DigitalSignature,
        Usage::KeyEncipherment,
        Usage::ClientAuth,
    ];
    match signer {
        "kubernetes.io/kubelet-serving" => Some(SERVING),
        "kubernetes.io/kube-apiserver-client-kubelet"
        | "kubernetes.io/kube-apiserver-client"
        | NODE_COMPONENT_SIGNER => Some(CLIENT),
        _ => None,
    }
}

/// The usages to review a PEM CSR with when none were given: those the CSR itself requests
/// (its keyUsage and extendedKeyUsage extensions), else the signer's standard usages. Returns
/// them with where they came from, or `None` when neither says (an unknown signer and a CSR
/// without usage extensions).
pub fn default_usages(signer: &str, der: &[u8]) -> Option<(Vec<Usage>, &'static str)> {
    use crate::facts::{ExtendedKeyUsage as E, KeyUsageBit as K};
    if let Ok(facts) = crate::facts::parse_csr_der("request", der) {
        let mut usages = Vec::new();
        for bit in facts.key_usage.iter().flatten() {
            usages.push(match bit {
                K::DigitalSignature => Usage::DigitalSignature,
                K::ContentCommitment => Usage::ContentCommitment,
                K::KeyEncipherment => Usage::KeyEncipherment,
                K::DataEncipherment => Usage::DataEncipherment,
                K::KeyAgreement => Usage::KeyAgreement,
                K::KeyCertSign => Usage::CertSign,
                K::CrlSign => Usage::CrlSign,
                K::EncipherOnly => Usage::EncipherOnly,
                K::DecipherOnly => Usage::DecipherOnly,
            });
        }
        for eku in &facts.extended_key_usages {
            usages.push(match eku {
                E::ServerAuth => Usage::ServerAuth,
                E::ClientAuth => Usage::ClientAuth,
                E::CodeSigning => Usage::CodeSigning,
                E::EmailProtection => Usage::EmailProtection,
                E::TimeStamping => Usage::Timestamping,
                E::OcspSigning => Usage::OcspSigning,
                E::Any => Usage::Any,
                // No Kubernetes spelling: the request cannot ask for it through the API.
                E::Other(_) => continue,
            });
        }
        if !usages.is_empty() {
            return Some((usages, "requested by the CSR's own extensions"));
        }
    }
    permitted_usages(signer).map(|p| (p.to_vec(), "the signer's standard usages"))
}

/// Limits the host owns for each signer, whatever a plugin answers: the longest lifetime it
/// issues (365 days for every signer unless configured, Kubernetes'
/// `--cluster-signing-duration` default).
#[derive(Clone, Debug)]
pub struct SignerLimits {
    default_max_lifetime: u64,
    max_lifetime: std::collections::BTreeMap<String, u64>,
}

impl Default for SignerLimits {
    fn default() -> Self {
        SignerLimits {
            default_max_lifetime: DEFAULT_LIFETIME_SECONDS,
            max_lifetime: std::collections::BTreeMap::new(),
        }
    }
}

impl SignerLimits {
    /// Set the longest lifetime, in seconds, for `signer` (every signer when `None`).
    pub fn set_max_lifetime(&mut self, signer: Option<&str>, seconds: u64) {
        match signer {
            Some(s) => {
                self.max_lifetime.insert(s.to_string(), seconds);
            }
            None => self.default_max_lifetime = seconds,
        }
    }

    /// The longest lifetime, in seconds, the host issues for `signer`.
    pub fn max_lifetime(&self, signer: &str) -> u64 {
        self.max_lifetime
            .get(signer)
            .copied()
            .unwrap_or(self.default_max_lifetime)
    }
}

/// The host's rules, before any plugin: every structural defect of the CSR and usages outside
/// the signer's permitted set (the floor, [`floor::check`], refuses CAs and identities).
fn host_violations(csr: &CsrFacts, signer: &str, usages: &[Usage]) -> Vec<Violation> {
    let mut v = csr.defects.clone();
    let permitted = permitted_usages(signer);
    for u in usages {
        // CA usages are the floor's to refuse (`floor::check`).
        if usage_bits(*u).is_none() {
            continue;
        }
        if let Some(p) = permitted
            && !p.contains(u)
        {
            v.push(Violation::new(
                "UsageNotPermittedForSigner",
                "spec.usages",
                format!(
                    "'{u}' is not a usage {signer} issues (only {})",
                    p.iter()
                        .map(|u| format!("'{u}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    if let Some(required) = required_usage(signer)
        && !usages.contains(&required)
    {
        v.push(missing_required(signer, required));
    }
    v
}

fn missing_required(signer: &str, required: Usage) -> Violation {
    Violation::new(
        "UsageRequiredForSigner",
        "spec.usages",
        format!("every {signer} certificate carries '{required}'"),
    )
}

/// A CSR with its Kubernetes context.
#[derive(Clone, Debug)]
pub struct CsrInput {
    /// The CSR (DER).
    pub der: Vec<u8>,
    /// Who asks, for which signer and usages.
    pub ctx: CsrContext,
    /// Addresses the requesting node claims that another node claims too, each with that other
    /// node's name (`rotor csr controller`'s evidence from Node objects). A kubelet writes its
    /// own Node's addresses, so an address two Nodes list proves neither: the host denies a
    /// request for it, whatever a plugin says.
    pub disputed: Vec<(IpAddr, String)>,
}

/// The host's refusal of the disputed addresses a request asks for.
fn disputed_violations(facts: &CsrFacts, disputed: &[(IpAddr, String)]) -> Vec<Violation> {
    facts
        .sans
        .ip_addresses
        .iter()
        .filter_map(|ip| {
            let ip = crate::facts::canonical_ip(*ip);
            let others: Vec<&str> = disputed
                .iter()
                .filter(|(d, _)| crate::facts::canonical_ip(*d) == ip)
                .map(|(_, node)| node.as_str())
                .collect();
            (!others.is_empty()).then(|| {
                Violation::new(
                    "AddressDisputed",
                    "spec.request",
                    format!(
                        "IP {ip} is also listed by Node {}: a kubelet writes its own Node's \
                         addresses, so an address two Nodes claim proves neither",
                        others.join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// Review a CSR. `ca_not_after` is the issuing CA's notAfter and `limits` the host's per-signer
/// limits (both cap the template's lifetime).
///
/// # Errors
/// Only a plugin failure under a bundle whose failure mode is `error`.
pub fn review(
    bundle: &Bundle,
    input: &CsrInput,
    ca_not_after: Option<OffsetDateTime>,
    limits: &SignerLimits,
    now: OffsetDateTime,
) -> Result<Review, PluginError> {
    review_with(bundle, input, None, ca_not_after, limits, now)
}

pub(super) fn review_with(
    bundle: &Bundle,
    input: &CsrInput,
    fixed: Option<&FixedSubject>,
    ca_not_after: Option<OffsetDateTime>,
    limits: &SignerLimits,
    now: OffsetDateTime,
) -> Result<Review, PluginError> {
    let mut review = Review {
        verdict: Verdict::Abstain {
            reason: String::new(),
        },
        signer_name: input.ctx.signer_name.clone(),
        username: input.ctx.username.clone(),
        stages: Vec::new(),
        template: None,
        notes: Vec::new(),
        spki: Vec::new(),
        floor: Some((bundle.floor().clone(), input.ctx.clone())),
    };
    let stage = |stage, decision, plugin: Option<String>, detail: String| Stage {
        stage,
        decision,
        plugin,
        detail,
    };

    // 1. Host rules.
    let (facts, spki) = match parse_csr_der_with_key("request", &input.der) {
        Ok(parsed) => parsed,
        Err(e) => {
            let v = Violation::new("MalformedCsr", "spec.request", e.to_string());
            review
                .stages
                .push(stage("host", "deny", None, v.to_string()));
            review.verdict = Verdict::Deny {
                violations: vec![v],
            };
            return Ok(review);
        }
    };
    let mut facts = facts;
    let mut host = Vec::new();
    if let Some(fixed) = fixed {
        host.extend(fixed::not_for_endpoint(&facts, fixed));
        facts.subject = crate::facts::DistinguishedName {
            text: format!(
                "CN={}{}",
                fixed.common_name,
                fixed
                    .organizations
                    .iter()
                    .map(|o| format!(",O={o}"))
                    .collect::<String>()
            ),
            common_name: Some(fixed.common_name.clone()),
            organizations: fixed.organizations.clone(),
            organizational_units: Vec::new(),
            other_attributes: Vec::new(),
        };
        facts.sans = crate::facts::SubjectAltNames {
            dns_names: fixed.dns_names.clone(),
            ip_addresses: fixed.ip_addresses.clone(),
            ..Default::default()
        };
    }
    host.extend(host_violations(
        &facts,
        &input.ctx.signer_name,
        &input.ctx.usages,
    ));
    host.extend(disputed_violations(&facts, &input.disputed));
    host.extend(floor::check(
        bundle.floor(),
        &input.ctx,
        floor::Asked {
            common_name: facts.subject.common_name.as_deref(),
            organizations: &facts.subject.organizations,
            requests_ca: facts.requests_ca,
            usages: &input.ctx.usages,
        },
        &mut review.notes,
    ));
    if !host.is_empty() {
        review.stages.push(stage(
            "host",
            "deny",
            None,
            host.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
        review.verdict = Verdict::Deny { violations: host };
        return Ok(review);
    }
    review.stages.push(stage(
        "host",
        "pass",
        None,
        "signature verifies; well-formed SANs; the host floor holds".into(),
    ));
    review.spki = spki;

    // 2. The CSR plugin and the SAN plugin on the CSR.
    let request = CsrRequest::new(&facts, input.ctx.clone(), now);
    let profile = san_profile(&request.signer_name);
    let csr_outcome = bundle.review_csr(&request)?;
    collect_notes(
        &mut review.notes,
        &csr_outcome.notes,
        csr_outcome.error.as_ref(),
    );
    let san_outcome = bundle.validate_sans(&request.san_request(&profile, SanStage::Csr))?;
    collect_notes(
        &mut review.notes,
        &san_outcome.notes,
        san_outcome.error.as_ref(),
    );
    review.stages.push(stage(
        "csr-approval",
        csr_outcome.decision.kind(),
        csr_outcome.plugin.clone(),
        csr_detail(&csr_outcome.decision),
    ));
    review.stages.push(stage(
        "san (csr)",
        san_kind(&san_outcome.decision),
        san_outcome.plugin.clone(),
        san_detail(&san_outcome.decision),
    ));

    let plugin = csr_outcome.plugin.clone();
    let (reason, lifetime, usages) =
        match combine(csr_outcome.decision, &san_outcome.decision, &input.ctx) {
            Combined::Decided(verdict) => {
                review.verdict = verdict;
                return Ok(review);
            }
            Combined::Approved {
                reason,
                lifetime,
                usages,
            } => (reason, lifetime, usages),
        };

    // 3. The template, from policy. An approval may narrow the usages, never drop the signer's
    // own extended key usage (a certificate without one is good for any purpose).
    let usages = usages.unwrap_or_else(|| request.usages.clone());
    if let Some(required) = required_usage(&request.signer_name)
        && !usages.contains(&required)
    {
        let v = missing_required(&request.signer_name, required);
        review.notes.push(format!(
            "the approval leaves out '{required}': denied ({})",
            plugin.as_deref().unwrap_or("policy")
        ));
        review.verdict = Verdict::Deny {
            violations: vec![v],
        };
        return Ok(review);
    }
    let (seconds, notes) = template_lifetime(
        lifetime.or(request.expiration_seconds),
        limits.max_lifetime(&request.signer_name),
        &request.signer_name,
        ca_not_after,
        now,
    );
    review.notes.extend(notes);
    let not_after = now + time::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX / 4));
    let template = Template {
        common_name: facts.subject.common_name.clone().unwrap_or_default(),
        organizations: facts.subject.organizations.clone(),
        dns_names: facts.sans.dns_names.clone(),
        ip_addresses: facts.sans.ip_addresses.clone(),
        uris: facts.sans.uris.clone(),
        emails: facts.sans.emails.clone(),
        usages,
        not_before: now - BACKDATE,
        not_after,
    };

    // The floor again, on what would be signed (defence in depth: the template copies the
    // subject checked above, but whatever builds it, what the floor refuses is never signed;
    // `sign` checks once more).
    let refused = floor::check(
        bundle.floor(),
        &input.ctx,
        floor::Asked {
            common_name: Some(&template.common_name),
            organizations: &template.organizations,
            requests_ca: facts.requests_ca,
            usages: &template.usages,
        },
        &mut Vec::new(),
    );
    if !refused.is_empty() {
        review.stages.push(stage(
            "host (template)",
            "deny",
            None,
            refused
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
        review.verdict = Verdict::Deny {
            violations: refused,
        };
        return Ok(review);
    }

    // 4. The SAN plugin on the final template.
    let mut final_request = request.clone();
    final_request.subject.common_name = Some(template.common_name.clone());
    final_request.subject.organizational_units.clear();
    final_request.subject.other_attributes.clear();
    let template_outcome =
        bundle.validate_sans(&final_request.san_request(&profile, SanStage::Template))?;
    collect_notes(
        &mut review.notes,
        &template_outcome.notes,
        template_outcome.error.as_ref(),
    );
    review.stages.push(stage(
        "san (template)",
        san_kind(&template_outcome.decision),
        template_outcome.plugin.clone(),
        san_detail(&template_outcome.decision),
    ));
    review.template = Some(template);
    review.verdict = match template_outcome.decision {
        SanDecision::Allow => Verdict::Approve { reason },
        SanDecision::Deny { violations } => Verdict::Deny { violations },
    };
    Ok(review)
}

/// What the CSR plugin's and the SAN plugin's answers on a request add up to.
#[derive(Debug, PartialEq)]
enum Combined {
    /// Denied or left pending: the review ends here.
    Decided(Verdict),
    /// Approved by the CSR plugin and no objection from the SAN plugin: on to the template.
    Approved {
        reason: String,
        lifetime: Option<u64>,
        usages: Option<Vec<Usage>>,
    },
}

/// The stage order: any denial denies, with every violation of both plugins; a denial made only
/// of missing node evidence leaves the CSR pending; then the CSR plugin's abstention; only then
/// its approval.
fn combine(csr: CsrDecision, san: &SanDecision, ctx: &CsrContext) -> Combined {
    let mut violations = Vec::new();
    if let CsrDecision::Deny { violations: v } = &csr {
        violations.extend(v.iter().cloned());
    }
    if let SanDecision::Deny { violations: v } = san {
        violations.extend(v.iter().cloned());
    }
    if !violations.is_empty() {
        return Combined::Decided(if missing_evidence_only(&violations, ctx) {
            // Evidence the host does not hold is not proof of a bad request: leave the CSR
            // pending so it can be approved once evidence is given, instead of a permanent
            // denial (kubelet-csr-approver's DNS-hiccup hole).
            Verdict::Abstain {
                reason: format!(
                    "the host holds no addresses for '{}', so its names cannot be bound to the node; left pending (give {} or {})",
                    ctx.username,
                    crate::input::Input::NodeIp,
                    crate::input::Input::NodeEvidence
                ),
            }
        } else {
            Verdict::Deny { violations }
        });
    }
    match csr {
        CsrDecision::Approve {
            reason,
            lifetime_seconds,
            usages,
        } => Combined::Approved {
            reason,
            lifetime: lifetime_seconds,
            usages,
        },
        CsrDecision::Abstain { reason } => Combined::Decided(Verdict::Abstain { reason }),
        // A denial carries at least one violation (validated), so it was handled above.
        CsrDecision::Deny { violations } => Combined::Decided(Verdict::Deny { violations }),
    }
}

/// The lifetime of a certificate for an approved CSR: what the plugin granted or the request
/// asked, else the default; at least the signer's floor, at most the signer's limit `max`, and
/// never past the CA. With a note for each cut.
fn template_lifetime(
    asked: Option<u64>,
    max: u64,
    signer: &str,
    ca_not_after: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> (u64, Vec<String>) {
    let mut notes = Vec::new();
    let mut seconds = asked
        .unwrap_or(DEFAULT_LIFETIME_SECONDS)
        .max(MIN_LIFETIME_SECONDS);
    if seconds > max {
        notes.push(format!(
            "lifetime capped from {seconds} to {max} seconds, the most rotor issues for {signer}"
        ));
        seconds = max;
    }
    if let Some(ca) = ca_not_after
        && let Some(note) = crate::policy::rules::clamp_to_ca(&mut seconds, now, ca)
    {
        notes.push(note);
    }
    (seconds, notes)
}

/// Whether the only objections are missing evidence (IP SANs without it, or none held for the
/// node: `NoNodeEvidence`), and the host holds no evidence for the node at all.
fn missing_evidence_only(violations: &[Violation], ctx: &CsrContext) -> bool {
    ctx.node_addresses.is_empty()
        && violations
            .iter()
            .all(|v| v.code == "IpNotInNodeEvidence" || v.code == "NoNodeEvidence")
}

fn collect_notes(notes: &mut Vec<String>, from: &[String], error: Option<&PluginError>) {
    notes.extend(from.iter().cloned());
    if let Some(e) = error {
        notes.push(e.to_string());
    }
}

fn san_kind(d: &SanDecision) -> &'static str {
    if d.is_allow() { "allow" } else { "deny" }
}

fn san_detail(d: &SanDecision) -> String {
    match d {
        SanDecision::Allow => String::new(),
        SanDecision::Deny { violations } => violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn csr_detail(d: &CsrDecision) -> String {
    match d {
        CsrDecision::Approve { reason, .. } | CsrDecision::Abstain { reason } => reason.clone(),
        CsrDecision::Deny { violations } => violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    }
}

impl Template {
    /// The issuing template for [`crate::pki::CaSigner::sign_for_public_key`].
    pub fn leaf_template(&self) -> LeafTemplate {
        let mut key_usages = Vec::new();
        let mut extended_key_usages = Vec::new();
        for u in &self.usages {
            if let Some((ku, eku)) = usage_bits(*u) {
                if let Some(k) = ku.filter(|k| !key_usages.contains(k)) {
                    key_usages.push(k);
                }
                if let Some(e) = eku.filter(|e| !extended_key_usages.contains(e)) {
                    extended_key_usages.push(e);
                }
            }
        }
        LeafTemplate {
            subject: Subject {
                common_name: self.common_name.clone(),
                organizations: self.organizations.clone(),
                dns_names: self.dns_names.clone(),
                ip_addresses: self.ip_addresses.clone(),
            },
            uris: self.uris.clone(),
            emails: self.emails.clone(),
            key_usages,
            extended_key_usages,
            validity: Validity {
                not_before: self.not_before,
                not_after: self.not_after,
            },
        }
    }
}

/// Sign an approved review with `ca`. Returns the certificate PEM. The host floor is checked
/// once more on the template, with the requester and the doors the review was made with.
pub fn sign(review: &Review, ca: &crate::pki::CaSigner) -> Result<String, crate::pki::PkiError> {
    let refuse = |reason: String| crate::pki::PkiError::Invalid {
        what: "csr".into(),
        reason,
    };
    let (Some(template), Some((doors, ctx))) = (
        review
            .template
            .as_ref()
            .filter(|_| matches!(review.verdict, Verdict::Approve { .. })),
        review.floor.as_ref(),
    ) else {
        return Err(refuse("not approved".into()));
    };
    let refused = floor::check(
        doors,
        ctx,
        floor::Asked {
            common_name: Some(&template.common_name),
            organizations: &template.organizations,
            requests_ca: false,
            usages: &template.usages,
        },
        &mut Vec::new(),
    );
    if !refused.is_empty() {
        let why: Vec<String> = refused.iter().map(ToString::to_string).collect();
        return Err(refuse(format!(
            "refused by the host floor: {}",
            why.join("; ")
        )));
    }
    Ok(ca
        .sign_for_public_key(&template.leaf_template(), &review.spki)?
        .pem)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2027-01-01 00:00 UTC);

    fn ctx(node_addresses: Vec<IpAddr>) -> CsrContext {
        CsrContext {
            signer_name: "kubernetes.io/kubelet-serving".into(),
            username: "system:node:a".into(),
            uid: String::new(),
            groups: vec!["system:nodes".into()],
            usages: vec![Usage::DigitalSignature, Usage::ServerAuth],
            expiration_seconds: None,
            node_addresses,
        }
    }

    fn violation(code: &str) -> Violation {
        Violation::new(code, "spec", "m")
    }

    fn approve() -> CsrDecision {
        CsrDecision::Approve {
            reason: "ok".into(),
            lifetime_seconds: Some(3600),
            usages: None,
        }
    }

    #[test]
    fn any_denial_denies_with_every_violation_then_abstain_then_approve() {
        let with_evidence = ctx(vec!["10.0.0.5".parse().unwrap()]);
        let san_deny = SanDecision::Deny {
            violations: vec![violation("DnsNotAllowed")],
        };
        // The SAN plugin's denial wins over the CSR plugin's approval.
        assert_eq!(
            combine(approve(), &san_deny, &with_evidence),
            Combined::Decided(Verdict::Deny {
                violations: vec![violation("DnsNotAllowed")]
            })
        );
        // Both deny: both plugins' violations, the CSR plugin's first.
        let csr_deny = CsrDecision::Deny {
            violations: vec![violation("UsageNotAllowed")],
        };
        assert_eq!(
            combine(csr_deny, &san_deny, &with_evidence),
            Combined::Decided(Verdict::Deny {
                violations: vec![violation("UsageNotAllowed"), violation("DnsNotAllowed")]
            })
        );
        // An abstention with no denial stays an abstention.
        let abstain = CsrDecision::Abstain {
            reason: "manual".into(),
        };
        assert_eq!(
            combine(abstain, &SanDecision::Allow, &with_evidence),
            Combined::Decided(Verdict::Abstain {
                reason: "manual".into()
            })
        );
        assert!(matches!(
            combine(approve(), &SanDecision::Allow, &with_evidence),
            Combined::Approved {
                lifetime: Some(3600),
                ..
            }
        ));
    }

    #[test]
    fn a_denial_made_only_of_missing_evidence_leaves_the_csr_pending() {
        let missing = SanDecision::Deny {
            violations: vec![
                violation("NoNodeEvidence"),
                violation("IpNotInNodeEvidence"),
            ],
        };
        let Combined::Decided(Verdict::Abstain { reason }) =
            combine(approve(), &missing, &ctx(vec![]))
        else {
            panic!("not pending");
        };
        assert!(
            reason.contains("no addresses for 'system:node:a'"),
            "{reason}"
        );
        // With evidence held, the same objections are a denial.
        assert!(matches!(
            combine(approve(), &missing, &ctx(vec!["10.0.0.5".parse().unwrap()])),
            Combined::Decided(Verdict::Deny { .. })
        ));
        // Mixed with another objection, it is a denial too.
        let mixed = SanDecision::Deny {
            violations: vec![violation("NoNodeEvidence"), violation("DnsNotAllowed")],
        };
        assert!(matches!(
            combine(approve(), &mixed, &ctx(vec![])),
            Combined::Decided(Verdict::Deny { .. })
        ));
    }

    #[test]
    fn sign_checks_the_floor_again_whatever_the_review_says() {
        use crate::pki::{CaSigner, KeyType, Subject, Validity, self_signed_ca};
        let key = KeyType::EcdsaP256.generate().unwrap();
        let validity = Validity {
            not_before: NOW,
            not_after: NOW + time::Duration::days(30),
        };
        let ca = self_signed_ca(&Subject::default(), &key, validity).unwrap();
        let ca = CaSigner::load("ca", ca.pem.as_bytes(), key.pem().as_bytes()).unwrap();
        let leaf = KeyType::EcdsaP256.generate().unwrap();
        let spki = crate::pki::spki_of(
            &self_signed_ca(&Subject::default(), &leaf, validity)
                .unwrap()
                .der,
        )
        .unwrap();
        let mut client = ctx(vec![]);
        client.signer_name = "kubernetes.io/kube-apiserver-client".into();
        client.username = "alice".into();
        let review = |organizations: Vec<String>, floor| Review {
            verdict: Verdict::Approve {
                reason: "a plugin said so".into(),
            },
            signer_name: client.signer_name.clone(),
            username: client.username.clone(),
            stages: Vec::new(),
            template: Some(Template {
                common_name: "alice".into(),
                organizations,
                dns_names: Vec::new(),
                ip_addresses: Vec::new(),
                uris: Vec::new(),
                emails: Vec::new(),
                usages: vec![Usage::ClientAuth],
                not_before: NOW,
                not_after: NOW + time::Duration::days(1),
            }),
            notes: Vec::new(),
            spki: spki.clone(),
            floor,
        };
        let checked = Some((FloorDoors::default(), client.clone()));
        assert!(sign(&review(vec!["dev".into()], checked.clone()), &ca).is_ok());
        let err = sign(&review(vec!["system:masters".into()], checked), &ca).unwrap_err();
        assert!(
            err.to_string().contains("refused by the host floor"),
            "{err}"
        );
        // A review that `review` did not make is never signed.
        let err = sign(&review(vec!["dev".into()], None), &ca).unwrap_err();
        assert!(err.to_string().contains("not approved"), "{err}");
    }

    #[test]
    fn a_template_lifetime_is_floored_capped_and_clamped_to_the_ca() {
        let signer = "kubernetes.io/kubelet-serving";
        let year = DEFAULT_LIFETIME_SECONDS;
        assert_eq!(
            template_lifetime(None, year, signer, None, NOW),
            (year, vec![])
        );
        assert_eq!(
            template_lifetime(Some(60), year, signer, None, NOW).0,
            MIN_LIFETIME_SECONDS
        );
        let (s, notes) = template_lifetime(Some(10 * year), year, signer, None, NOW);
        assert_eq!(s, year);
        assert!(notes[0].contains("capped"), "{notes:?}");
        let ca = NOW + time::Duration::days(10);
        let (s, notes) = template_lifetime(Some(year), year, signer, Some(ca), NOW);
        assert_eq!(s, 10 * 86_400);
        assert!(notes[0].contains("clamped"), "{notes:?}");
    }
}
