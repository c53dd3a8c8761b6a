//! `csr-approval`: rotor's default CSR policy plugin.
//!
//! Settings (JSON, every field optional):
//! ```json
//! {
//!   "unknown_signer": "abstain",
//!   "keys": {"rsa_min_bits": 2048, "rsa_max_bits": 8192, "ecdsa_curves": ["P-256", "P-384"], "ed25519": true},
//!   "profiles": {
//!     "kubernetes.io/kubelet-serving": {"kind": "kubelet-serving", "max_expiration_seconds": 31708800},
//!     "kubernetes.io/kube-apiserver-client-kubelet": {"kind": "kubelet-client", "approve_bootstrap": false},
//!     "kubernetes.io/kube-apiserver-client": {"kind": "apiserver-client"},
//!     "kubernetes.io/legacy-unknown": {"kind": "legacy-unknown"}
//!   }
//! }
//! ```
//! `profiles` maps signer names to a `kind` (the built-in rule set) plus overrides:
//! `auto_approve`, `non_node_requester` (`deny`/`abstain`), `approve_bootstrap`,
//! `organizations_exact`, `deny_organizations`, `deny_common_name_prefixes`,
//! `allow_other_subject_attributes`, `usages_required`, `usages_allowed`,
//! `key_encipherment_requires_rsa`, `min_expiration_seconds`, `max_expiration_seconds`,
//! `default_lifetime_seconds`. Without `profiles`, the four standard signers get their built-in
//! kinds. Names are checked by the SAN plugin, not here.

#![allow(
    unsafe_code,
    reason = "the SDK's export macro expands to wit-bindgen's unsafe glue; the rules contain none"
)]

mod rules;

use rotor_policy_sdk::settings;

use rotor_policy_sdk::csr::exports::rotor::policy::csr_approval::{
    Abstention, Approval, CsrDecision, CsrRequest, Guest as CsrApproval,
};
use rotor_policy_sdk::csr::rotor::policy::types::{KeyAlgorithm, Usage, Violation};

impl settings::Settings for rules::Settings {
    fn from_json(json: &str) -> Result<Self, String> {
        rules::Settings::from_json(json)
    }
}

struct Plugin;

fn usage_name(u: Usage) -> &'static str {
    match u {
        Usage::Signing => "signing",
        Usage::DigitalSignature => "digital signature",
        Usage::ContentCommitment => "content commitment",
        Usage::KeyEncipherment => "key encipherment",
        Usage::KeyAgreement => "key agreement",
        Usage::DataEncipherment => "data encipherment",
        Usage::CertSign => "cert sign",
        Usage::CrlSign => "crl sign",
        Usage::EncipherOnly => "encipher only",
        Usage::DecipherOnly => "decipher only",
        Usage::Any => "any",
        Usage::ServerAuth => "server auth",
        Usage::ClientAuth => "client auth",
        Usage::CodeSigning => "code signing",
        Usage::EmailProtection => "email protection",
        Usage::SMime => "s/mime",
        Usage::IpsecEndSystem => "ipsec end system",
        Usage::IpsecTunnel => "ipsec tunnel",
        Usage::IpsecUser => "ipsec user",
        Usage::Timestamping => "timestamping",
        Usage::OcspSigning => "ocsp signing",
        Usage::MicrosoftSgc => "microsoft sgc",
        Usage::NetscapeSgc => "netscape sgc",
    }
}

impl CsrApproval for Plugin {
    fn configure(json: String) -> Result<(), String> {
        settings::configure::<rules::Settings>(&json)
    }

    fn review(request: CsrRequest) -> CsrDecision {
        let key = match request.public_key.algorithm {
            KeyAlgorithm::Rsa => rules::KeyKind::Rsa,
            KeyAlgorithm::EcdsaP256 => rules::KeyKind::EcdsaP256,
            KeyAlgorithm::EcdsaP384 => rules::KeyKind::EcdsaP384,
            KeyAlgorithm::EcdsaP521 => rules::KeyKind::EcdsaP521,
            KeyAlgorithm::Ed25519 => rules::KeyKind::Ed25519,
            KeyAlgorithm::Ed448 => rules::KeyKind::Ed448,
            KeyAlgorithm::Other => rules::KeyKind::Other,
        };
        let req = rules::Request {
            signer_name: request.signer_name,
            username: request.username,
            groups: request.groups,
            common_name: request.subject.common_name,
            organizations: request.subject.organizations,
            organizational_units: request.subject.organizational_units,
            other_subject_attributes: request.subject.other_attributes,
            dns_names: request.sans.dns_names.len(),
            ips: request.sans.ip_addresses.len(),
            emails: request.sans.emails.len(),
            uris: request.sans.uris.len(),
            other_sans: request.sans.others.len(),
            key,
            key_bits: request.public_key.bits,
            usages: request.usages.into_iter().map(usage_name).collect(),
            expiration_seconds: request.expiration_seconds,
            requests_ca: request.requests_ca,
        };
        match settings::with(|s: &rules::Settings| rules::review(s, &req)) {
            rules::Decision::Approve {
                reason,
                lifetime_seconds,
            } => CsrDecision::Approve(Approval {
                reason,
                lifetime_seconds,
                usages: None,
            }),
            rules::Decision::Deny(list) => CsrDecision::Deny(
                list.into_iter()
                    .map(|v| Violation {
                        code: v.code.to_string(),
                        field: v.field,
                        message: v.message,
                    })
                    .collect(),
            ),
            rules::Decision::Abstain(reason) => CsrDecision::Abstain(Abstention { reason }),
        }
    }
}

rotor_policy_sdk::csr::export!(Plugin);
