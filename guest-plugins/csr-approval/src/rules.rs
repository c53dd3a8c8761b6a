//! The CSR approval rules, in plain Rust so they can be unit-tested on the host target.
//!
//! A profile per Kubernetes signer (reference study §4.1). Every check that kubelet-csr-approver
//! leaves to the signer (group, O, usages, email/URI SANs, CA bit) is made here, at approval
//! time, so a bad request gets a clear denial with every reason. Names themselves (node
//! binding, allowed domains and ranges) are the SAN plugin's job: the host runs it on the same
//! CSR and on the final template.
//!
//! Outcome: any violation denies (all of them reported); a clean request is approved when the
//! profile auto-approves, otherwise left pending (abstain) for a human, as Kubernetes does for
//! `kube-apiserver-client` and `legacy-unknown`. Unknown signers are abstained on.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::Deserialize;

/// Requested or granted usage, Kubernetes spelling (`digital signature`, `server auth`, ...).
pub(crate) type UsageName = &'static str;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Ed25519,
    Ed448,
    Other,
}

/// The request, in plain Rust.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub signer_name: String,
    pub username: String,
    pub groups: Vec<String>,
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
    pub other_subject_attributes: Vec<String>,
    pub dns_names: usize,
    pub ips: usize,
    pub emails: usize,
    pub uris: usize,
    pub other_sans: usize,
    pub key: KeyKind,
    pub key_bits: u32,
    pub usages: Vec<UsageName>,
    pub expiration_seconds: Option<u64>,
    pub requests_ca: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

fn v(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Violation {
    Violation {
        code,
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Approve {
        reason: String,
        lifetime_seconds: Option<u64>,
    },
    Deny(Vec<Violation>),
    Abstain(String),
}

// ---- settings -------------------------------------------------------------------------------

/// Who may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Requester {
    /// `system:node:<name>` in group `system:nodes`, CN equal to the username.
    Node,
    /// A node renewing (as for `Node`), or a bootstrapping kubelet in `system:bootstrappers`.
    NodeOrBootstrap,
    /// Anyone.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sans {
    Required,
    Forbidden,
    Optional,
}

#[derive(Clone, Debug)]
struct Profile {
    /// Approve when every check passes (`true`), or leave it pending for a human.
    auto_approve: bool,
    requester: Requester,
    /// When the requester is not a node: deny (default) or abstain.
    non_node_requester_abstains: bool,
    /// Approve bootstrap CSRs (only for `NodeOrBootstrap`); otherwise abstain on them.
    approve_bootstrap: bool,
    organizations_exact: Option<Vec<String>>,
    deny_organizations: Vec<String>,
    deny_common_name_prefixes: Vec<String>,
    allow_other_subject_attributes: bool,
    sans: Sans,
    usages_required: Vec<UsageName>,
    usages_allowed: Vec<UsageName>,
    key_encipherment_requires_rsa: bool,
    min_expiration_seconds: u64,
    max_expiration_seconds: u64,
    default_lifetime_seconds: Option<u64>,
}

#[derive(Clone, Debug)]
struct Keys {
    rsa_min_bits: u32,
    rsa_max_bits: u32,
    ecdsa_curves: Vec<KeyKind>,
    ed25519: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    unknown_signer_denies: bool,
    keys: Keys,
    profiles: BTreeMap<String, Profile>,
}

const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const LEGACY_UNKNOWN: &str = "kubernetes.io/legacy-unknown";

/// Every usage name Kubernetes knows.
const KNOWN_USAGES: &[UsageName] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// 367 days: kubelet-csr-approver's hard cap.
const MAX_NODE_EXPIRATION: u64 = 367 * 86_400;

fn builtin_profile(kind: &str) -> Option<Profile> {
    let base = Profile {
        auto_approve: false,
        requester: Requester::Any,
        non_node_requester_abstains: false,
        approve_bootstrap: false,
        organizations_exact: None,
        deny_organizations: Vec::new(),
        deny_common_name_prefixes: Vec::new(),
        allow_other_subject_attributes: false,
        sans: Sans::Optional,
        usages_required: Vec::new(),
        usages_allowed: KNOWN_USAGES.to_vec(),
        key_encipherment_requires_rsa: false,
        min_expiration_seconds: 600,
        max_expiration_seconds: 367 * 86_400,
        default_lifetime_seconds: None,
    };
    Some(match kind {
        "kubelet-serving" => Profile {
            auto_approve: true,
            requester: Requester::Node,
            organizations_exact: Some(vec!["system:nodes".into()]),
            sans: Sans::Required,
            usages_required: vec!["server auth"],
            usages_allowed: vec!["server auth", "digital signature", "key encipherment"],
            max_expiration_seconds: MAX_NODE_EXPIRATION,
            ..base
        },
        "kubelet-client" => Profile {
            auto_approve: true,
            requester: Requester::NodeOrBootstrap,
            approve_bootstrap: false,
            organizations_exact: Some(vec!["system:nodes".into()]),
            sans: Sans::Forbidden,
            usages_required: vec!["client auth", "digital signature"],
            usages_allowed: vec!["client auth", "digital signature", "key encipherment"],
            max_expiration_seconds: MAX_NODE_EXPIRATION,
            ..base
        },
        "apiserver-client" => Profile {
            auto_approve: false,
            deny_organizations: vec!["system:masters".into()],
            deny_common_name_prefixes: vec!["system:".into()],
            sans: Sans::Optional,
            usages_required: vec!["client auth"],
            usages_allowed: vec!["client auth", "digital signature", "key encipherment"],
            max_expiration_seconds: 86_400,
            ..base
        },
        "legacy-unknown" => Profile {
            auto_approve: false,
            ..base
        },
        _ => return None,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    unknown_signer: Option<String>,
    keys: Option<RawKeys>,
    /// Signer name -> profile. Replaces the built-in set when given.
    profiles: Option<BTreeMap<String, RawProfile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    rsa_min_bits: Option<u32>,
    rsa_max_bits: Option<u32>,
    ecdsa_curves: Option<Vec<String>>,
    ed25519: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    kind: String,
    auto_approve: Option<bool>,
    non_node_requester: Option<String>,
    approve_bootstrap: Option<bool>,
    organizations_exact: Option<Vec<String>>,
    deny_organizations: Option<Vec<String>>,
    deny_common_name_prefixes: Option<Vec<String>>,
    allow_other_subject_attributes: Option<bool>,
    usages_required: Option<Vec<String>>,
    usages_allowed: Option<Vec<String>>,
    key_encipherment_requires_rsa: Option<bool>,
    min_expiration_seconds: Option<u64>,
    max_expiration_seconds: Option<u64>,
    default_lifetime_seconds: Option<u64>,
}

fn usages(field: &str, list: &[String]) -> Result<Vec<UsageName>, String> {
    list.iter()
        .map(|u| {
            KNOWN_USAGES
                .iter()
                .find(|k| **k == u.as_str())
                .copied()
                .ok_or_else(|| {
                    format!(
                        "'{field}': unknown usage '{u}' (Kubernetes spelling, e.g. 'server auth')"
                    )
                })
        })
        .collect()
}

impl Profile {
    fn from_raw(signer: &str, raw: &RawProfile) -> Result<Profile, String> {
        let f = |name: &str| format!("profiles.{signer}.{name}");
        let mut p = builtin_profile(&raw.kind).ok_or_else(|| {
            format!(
                "'{}' must be 'kubelet-serving', 'kubelet-client', 'apiserver-client' or 'legacy-unknown', got '{}'",
                f("kind"),
                raw.kind
            )
        })?;
        if let Some(b) = raw.auto_approve {
            p.auto_approve = b;
        }
        if let Some(s) = &raw.non_node_requester {
            p.non_node_requester_abstains = match s.as_str() {
                "deny" => false,
                "abstain" => true,
                other => {
                    return Err(format!(
                        "'{}' must be 'deny' or 'abstain', got '{other}'",
                        f("non_node_requester")
                    ));
                }
            };
        }
        if let Some(b) = raw.approve_bootstrap {
            if p.requester != Requester::NodeOrBootstrap {
                return Err(format!(
                    "'{}' only applies to kind 'kubelet-client'",
                    f("approve_bootstrap")
                ));
            }
            p.approve_bootstrap = b;
        }
        if let Some(o) = &raw.organizations_exact {
            p.organizations_exact = Some(o.clone());
        }
        if let Some(o) = &raw.deny_organizations {
            p.deny_organizations = o.clone();
        }
        if let Some(o) = &raw.deny_common_name_prefixes {
            p.deny_common_name_prefixes = o.clone();
        }
        if let Some(b) = raw.allow_other_subject_attributes {
            p.allow_other_subject_attributes = b;
        }
        if let Some(u) = &raw.usages_allowed {
            p.usages_allowed = usages(&f("usages_allowed"), u)?;
        }
        if let Some(u) = &raw.usages_required {
            p.usages_required = usages(&f("usages_required"), u)?;
        }
        if let Some(missing) = p
            .usages_required
            .iter()
            .find(|u| !p.usages_allowed.contains(u))
        {
            return Err(format!(
                "'{}': '{missing}' is required but not allowed",
                f("usages_required")
            ));
        }
        if let Some(b) = raw.key_encipherment_requires_rsa {
            p.key_encipherment_requires_rsa = b;
        }
        if let Some(s) = raw.min_expiration_seconds {
            p.min_expiration_seconds = s;
        }
        if let Some(s) = raw.max_expiration_seconds {
            p.max_expiration_seconds = s;
        }
        if p.min_expiration_seconds < 600 {
            return Err(format!(
                "'{}' must be at least 600 (the Kubernetes floor)",
                f("min_expiration_seconds")
            ));
        }
        if p.max_expiration_seconds < p.min_expiration_seconds
            || p.max_expiration_seconds > 10 * 365 * 86_400
        {
            return Err(format!(
                "'{}' must be between 'min_expiration_seconds' and ten years",
                f("max_expiration_seconds")
            ));
        }
        if let Some(d) = raw.default_lifetime_seconds {
            if d < p.min_expiration_seconds || d > p.max_expiration_seconds {
                return Err(format!(
                    "'{}' must lie between the minimum and maximum",
                    f("default_lifetime_seconds")
                ));
            }
            p.default_lifetime_seconds = Some(d);
        }
        Ok(p)
    }
}

impl Settings {
    pub(crate) fn from_json(json: &str) -> Result<Settings, String> {
        let raw: RawSettings = rotor_policy_sdk::settings::parse(json)?;
        let unknown_signer_denies = match raw.unknown_signer.as_deref().unwrap_or("abstain") {
            "abstain" => false,
            "deny" => true,
            other => {
                return Err(format!(
                    "'unknown_signer' must be 'abstain' or 'deny', got '{other}'"
                ));
            }
        };
        let rk = raw.keys.unwrap_or_default();
        let ecdsa_curves = match rk.ecdsa_curves {
            None => vec![KeyKind::EcdsaP256, KeyKind::EcdsaP384],
            Some(list) => list
                .iter()
                .map(|c| match c.as_str() {
                    "P-256" => Ok(KeyKind::EcdsaP256),
                    "P-384" => Ok(KeyKind::EcdsaP384),
                    "P-521" => Ok(KeyKind::EcdsaP521),
                    other => Err(format!(
                        "'keys.ecdsa_curves': unknown curve '{other}' (P-256, P-384, P-521)"
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let keys = Keys {
            rsa_min_bits: rk.rsa_min_bits.unwrap_or(2048),
            rsa_max_bits: rk.rsa_max_bits.unwrap_or(8192),
            ecdsa_curves,
            ed25519: rk.ed25519.unwrap_or(true),
        };
        if keys.rsa_min_bits < 2048 || keys.rsa_max_bits < keys.rsa_min_bits {
            return Err(
                "'keys.rsa_min_bits' must be at least 2048 and at most 'keys.rsa_max_bits'".into(),
            );
        }
        let profiles = match raw.profiles {
            None => [
                (KUBELET_SERVING, "kubelet-serving"),
                (KUBELET_CLIENT, "kubelet-client"),
                (APISERVER_CLIENT, "apiserver-client"),
                (LEGACY_UNKNOWN, "legacy-unknown"),
            ]
            .into_iter()
            .filter_map(|(signer, kind)| builtin_profile(kind).map(|p| (signer.to_string(), p)))
            .collect(),
            Some(map) => map
                .iter()
                .map(|(signer, raw)| Profile::from_raw(signer, raw).map(|p| (signer.clone(), p)))
                .collect::<Result<_, _>>()?,
        };
        Ok(Settings {
            unknown_signer_denies,
            keys,
            profiles,
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_json("{}").unwrap_or_else(|_| unreachable!("the empty settings are valid"))
    }
}

// ---- evaluation -----------------------------------------------------------------------------

fn node_of(username: &str) -> Option<&str> {
    name_rules::node_of_username(username)
}

pub(crate) fn review(settings: &Settings, r: &Request) -> Decision {
    let Some(profile) = settings.profiles.get(&r.signer_name) else {
        if settings.unknown_signer_denies {
            return Decision::Deny(vec![v(
                "UnknownSigner",
                "spec.signerName",
                format!("no profile for signer '{}'", r.signer_name),
            )]);
        }
        return Decision::Abstain(format!(
            "no profile for signer '{}': not this policy's call",
            r.signer_name
        ));
    };
    let mut out = Vec::new();
    let mut abstain: Option<String> = None;

    // Requester identity.
    let is_node = node_of(&r.username).is_some();
    match profile.requester {
        Requester::Any => {}
        Requester::Node | Requester::NodeOrBootstrap => {
            let bootstrapping = profile.requester == Requester::NodeOrBootstrap
                && r.username.starts_with("system:bootstrap:")
                && r.groups.iter().any(|g| g == "system:bootstrappers");
            if bootstrapping {
                check_node_subject(r, &mut out, false);
                if !profile.approve_bootstrap {
                    abstain = Some(
                        "bootstrap CSR: left for the operator (approve_bootstrap is off)".into(),
                    );
                }
            } else if !is_node {
                let msg = format!(
                    "requester '{}' is not a node (system:node:<name>)",
                    r.username
                );
                if profile.non_node_requester_abstains {
                    abstain = Some(msg);
                } else {
                    out.push(v("RequesterNotANode", "spec.username", msg));
                }
            } else {
                if !r.groups.iter().any(|g| g == "system:nodes") {
                    out.push(v(
                        "RequesterNotInNodesGroup",
                        "spec.groups",
                        "the requester is not in group system:nodes",
                    ));
                }
                check_node_subject(r, &mut out, true);
            }
        }
    }

    // Subject.
    if let Some(orgs) = &profile.organizations_exact
        && &r.organizations != orgs
    {
        out.push(v(
            "OrganizationMismatch",
            "subject.organizations",
            format!("O must be exactly {orgs:?}, got {:?}", r.organizations),
        ));
    }
    for o in &r.organizations {
        if profile.deny_organizations.contains(o) {
            out.push(v(
                "OrganizationDenied",
                "subject.organizations",
                format!("O={o} is not allowed for this signer"),
            ));
        }
    }
    if let Some(cn) = &r.common_name
        && let Some(p) = profile
            .deny_common_name_prefixes
            .iter()
            .find(|p| cn.starts_with(p.as_str()))
    {
        out.push(v(
            "CommonNameDenied",
            "subject.commonName",
            format!("CN '{cn}' starts with the reserved '{p}'"),
        ));
    }
    if !profile.allow_other_subject_attributes
        && (!r.organizational_units.is_empty() || !r.other_subject_attributes.is_empty())
    {
        let mut attrs: Vec<String> = r
            .organizational_units
            .iter()
            .map(|_| "OU".to_string())
            .collect();
        attrs.extend(r.other_subject_attributes.iter().cloned());
        attrs.dedup();
        out.push(v(
            "SubjectAttributeNotAllowed",
            "subject",
            format!("only CN and O are allowed, found {}", attrs.join(", ")),
        ));
    }

    // SANs: presence and types only; the names themselves are the SAN plugin's job.
    if r.emails > 0 {
        out.push(v(
            "SanTypeNotAllowed",
            "subjectAltName",
            "email SANs are not allowed",
        ));
    }
    if r.uris > 0 {
        out.push(v(
            "SanTypeNotAllowed",
            "subjectAltName",
            "URI SANs are not allowed",
        ));
    }
    if r.other_sans > 0 {
        out.push(v(
            "SanTypeNotAllowed",
            "subjectAltName",
            "only DNS and IP SANs are allowed",
        ));
    }
    match profile.sans {
        Sans::Required if r.dns_names + r.ips == 0 => out.push(v(
            "NoSubjectAltNames",
            "subjectAltName",
            "a serving certificate needs at least one DNS or IP SAN",
        )),
        Sans::Forbidden if r.dns_names + r.ips > 0 => out.push(v(
            "SansNotAllowed",
            "subjectAltName",
            "client certificates carry no SANs",
        )),
        _ => {}
    }

    // CA, key, usages, lifetime.
    if r.requests_ca {
        out.push(v(
            "CaNotAllowed",
            "basicConstraints",
            "CA certificates are never issued through CSRs",
        ));
    }
    check_key(&settings.keys, r, &mut out);
    for u in &profile.usages_required {
        if !r.usages.contains(u) {
            out.push(v(
                "UsageMissing",
                "spec.usages",
                format!("'{u}' is required"),
            ));
        }
    }
    for u in &r.usages {
        if !profile.usages_allowed.contains(u) {
            out.push(v(
                "UsageNotAllowed",
                "spec.usages",
                format!("'{u}' is not allowed for this signer"),
            ));
        }
    }
    if profile.key_encipherment_requires_rsa
        && r.key != KeyKind::Rsa
        && r.usages.contains(&"key encipherment")
    {
        out.push(v(
            "UsageNotAllowed",
            "spec.usages",
            "'key encipherment' is only meaningful for RSA keys",
        ));
    }
    if let Some(e) = r.expiration_seconds {
        if e < profile.min_expiration_seconds {
            out.push(v(
                "ExpirationTooShort",
                "spec.expirationSeconds",
                format!(
                    "{e} s is below the {} s minimum",
                    profile.min_expiration_seconds
                ),
            ));
        }
        if e > profile.max_expiration_seconds {
            out.push(v(
                "ExpirationTooLong",
                "spec.expirationSeconds",
                format!(
                    "{e} s exceeds the {} s maximum",
                    profile.max_expiration_seconds
                ),
            ));
        }
    }

    if !out.is_empty() {
        return Decision::Deny(out);
    }
    if let Some(reason) = abstain {
        return Decision::Abstain(reason);
    }
    if !profile.auto_approve {
        return Decision::Abstain(format!(
            "every check passed, but signer '{}' is not auto-approved: manual approval required",
            r.signer_name
        ));
    }
    Decision::Approve {
        reason: format!(
            "{} request from '{}' satisfies the profile",
            r.signer_name, r.username
        ),
        lifetime_seconds: r.expiration_seconds.or(profile.default_lifetime_seconds),
    }
}

/// CN rules for node certificates. With `renewal`, the CN must equal the username; a bootstrap
/// request (any node name) needs only a well-formed `system:node:<name>` CN.
fn check_node_subject(r: &Request, out: &mut Vec<Violation>, renewal: bool) {
    match &r.common_name {
        None => out.push(v(
            "CommonNameMismatch",
            "subject.commonName",
            "a node certificate needs CN system:node:<name>",
        )),
        Some(cn) if renewal && *cn != r.username => out.push(v(
            "CommonNameMismatch",
            "subject.commonName",
            format!("CN '{cn}' must equal the requester '{}'", r.username),
        )),
        Some(cn) if node_of(cn).is_none() => out.push(v(
            "CommonNameMismatch",
            "subject.commonName",
            format!("CN '{cn}' is not system:node:<node name>"),
        )),
        Some(_) => {}
    }
}

fn check_key(keys: &Keys, r: &Request, out: &mut Vec<Violation>) {
    let ok = match r.key {
        KeyKind::Rsa => {
            r.key_bits >= keys.rsa_min_bits
                && r.key_bits <= keys.rsa_max_bits
                && r.key_bits.is_multiple_of(8)
        }
        KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521 => {
            keys.ecdsa_curves.contains(&r.key)
        }
        KeyKind::Ed25519 => keys.ed25519,
        KeyKind::Ed448 | KeyKind::Other => false,
    };
    if !ok {
        out.push(v(
            "KeyNotAllowed",
            "publicKey",
            format!(
                "{:?} {}-bit keys are not allowed (RSA {}..{} bits, ECDSA {:?}{})",
                r.key,
                r.key_bits,
                keys.rsa_min_bits,
                keys.rsa_max_bits,
                keys.ecdsa_curves,
                if keys.ed25519 { ", Ed25519" } else { "" }
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serving(node: &str) -> Request {
        Request {
            signer_name: KUBELET_SERVING.into(),
            username: format!("system:node:{node}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            common_name: Some(format!("system:node:{node}")),
            organizations: vec!["system:nodes".into()],
            organizational_units: vec![],
            other_subject_attributes: vec![],
            dns_names: 1,
            ips: 1,
            emails: 0,
            uris: 0,
            other_sans: 0,
            key: KeyKind::EcdsaP256,
            key_bits: 256,
            usages: vec!["digital signature", "key encipherment", "server auth"],
            expiration_seconds: None,
            requests_ca: false,
        }
    }

    fn codes(d: &Decision) -> Vec<&'static str> {
        match d {
            Decision::Deny(v) => v.iter().map(|v| v.code).collect(),
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn a_clean_kubelet_serving_request_is_approved() {
        let d = review(&Settings::default(), &serving("a"));
        assert!(
            matches!(
                d,
                Decision::Approve {
                    lifetime_seconds: None,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn kubelet_serving_checks_left_to_the_signer_elsewhere_are_made_here() {
        let s = Settings::default();
        let mut r = serving("a");
        r.groups = vec!["system:authenticated".into()];
        r.organizations = vec!["system:masters".into()];
        r.emails = 1;
        r.requests_ca = true;
        r.usages.push("client auth");
        r.expiration_seconds = Some(400 * 86_400);
        assert_eq!(
            codes(&review(&s, &r)),
            [
                "RequesterNotInNodesGroup",
                "OrganizationMismatch",
                "SanTypeNotAllowed",
                "CaNotAllowed",
                "UsageNotAllowed",
                "ExpirationTooLong"
            ]
        );
    }

    #[test]
    fn requester_must_be_the_node_named_in_the_cn() {
        let s = Settings::default();
        let mut r = serving("a");
        r.common_name = Some("system:node:b".into());
        assert_eq!(codes(&review(&s, &r)), ["CommonNameMismatch"]);
        let mut r = serving("a");
        r.username = "alice".into();
        assert_eq!(codes(&review(&s, &r)), ["RequesterNotANode"]);
        // Prefix tricks on the username are not a node.
        let mut r = serving("a");
        r.username = "system:node:".into();
        assert_eq!(codes(&review(&s, &r)), ["RequesterNotANode"]);
    }

    #[test]
    fn apiserver_client_denies_masters_and_otherwise_waits_for_a_human() {
        let s = Settings::default();
        let mut r = serving("a");
        r.signer_name = APISERVER_CLIENT.into();
        r.username = "alice".into();
        r.common_name = Some("alice".into());
        r.organizations = vec!["system:masters".into()];
        r.dns_names = 0;
        r.ips = 0;
        r.usages = vec!["digital signature", "client auth"];
        assert_eq!(codes(&review(&s, &r)), ["OrganizationDenied"]);
        r.organizations = vec!["dev".into()];
        assert!(matches!(review(&s, &r), Decision::Abstain(_)));
        r.expiration_seconds = Some(7 * 86_400);
        assert_eq!(codes(&review(&s, &r)), ["ExpirationTooLong"]);
    }

    #[test]
    fn kubelet_client_renewal_is_approved_and_bootstrap_waits_by_default() {
        let s = Settings::default();
        let mut r = serving("a");
        r.signer_name = KUBELET_CLIENT.into();
        r.dns_names = 0;
        r.ips = 0;
        r.usages = vec!["digital signature", "client auth"];
        assert!(matches!(review(&s, &r), Decision::Approve { .. }));
        r.dns_names = 1;
        assert_eq!(codes(&review(&s, &r)), ["SansNotAllowed"]);
        r.dns_names = 0;
        r.username = "system:bootstrap:abcdef".into();
        r.groups = vec!["system:bootstrappers".into()];
        assert!(matches!(review(&s, &r), Decision::Abstain(_)));
        let allow = Settings::from_json(
            r#"{"profiles": {"kubernetes.io/kube-apiserver-client-kubelet": {"kind": "kubelet-client", "approve_bootstrap": true}}}"#,
        )
        .unwrap();
        assert!(matches!(review(&allow, &r), Decision::Approve { .. }));
    }

    #[test]
    fn keys_and_unknown_signers() {
        let s = Settings::default();
        let mut r = serving("a");
        r.key = KeyKind::Rsa;
        r.key_bits = 1024;
        assert_eq!(codes(&review(&s, &r)), ["KeyNotAllowed"]);
        r.signer_name = "example.com/custom".into();
        assert!(matches!(review(&s, &r), Decision::Abstain(_)));
        let deny = Settings::from_json(r#"{"unknown_signer": "deny"}"#).unwrap();
        assert_eq!(codes(&review(&deny, &r)), ["UnknownSigner"]);
    }

    #[test]
    fn settings_are_validated() {
        let err = |j: &str| Settings::from_json(j).unwrap_err();
        assert!(err(r#"{"profiles": {"x": {"kind": "nope"}}}"#).contains("'profiles.x.kind'"));
        assert!(
            err(r#"{"profiles": {"x": {"kind": "legacy-unknown", "usages_allowed": ["fly"]}}}"#)
                .contains("unknown usage")
        );
        assert!(
            err(r#"{"profiles": {"x": {"kind": "kubelet-serving", "min_expiration_seconds": 5}}}"#)
                .contains("600")
        );
        assert!(err(r#"{"keys": {"rsa_min_bits": 1024}}"#).contains("rsa_min_bits"));
        assert!(err(r#"{"unknown_signer": "approve"}"#).contains("'unknown_signer'"));
    }
}
