//! The SAN rules, in plain Rust so they can be unit-tested on the host target.
//!
//! Semantics (step-ca's name policy, stricter where step-ca has holes):
//! - every name is normalized first (IDNA to ASCII, lowercase) and must be valid LDH syntax;
//! - deny rules are checked before allow rules, and win;
//! - a type with no allow rule is denied when any other type has one (implicit deny), and with
//!   no allow rule at all everything is denied (`default_action: deny`) unless `allow_all`;
//! - `*.d` matches one label, `**.d` one or more, `.d` the domain and its subdomains, `**` any;
//! - literal wildcard SANs are denied unless allowed;
//! - node binding (profile `node_binding`) compares labels: `san == node` or
//!   `san == node + "." + suffix`, never a string prefix; IP SANs must be among the addresses the
//!   host holds as evidence for the node, also for CSRs that carry only IPs;
//! - every violation is reported, not only the first.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use name_rules::{DnsName, DnsPattern, DnsSyntax, IpNet};
use serde::Deserialize;

/// The request, in plain Rust.
#[derive(Clone, Debug, Default)]
pub(crate) struct Request {
    pub profile: String,
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    pub others: Vec<String>,
    pub node: Option<Node>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

fn violation(
    code: &'static str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> Violation {
    Violation {
        code,
        field: field.into(),
        message: message.into(),
    }
}

// ---- settings -------------------------------------------------------------------------------

/// Operator settings as written in the bundle.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    allow_all: bool,
    #[serde(default)]
    rules: RawRules,
    #[serde(default)]
    profiles: BTreeMap<String, RawRules>,
}

/// Rules; in a profile, every field present replaces the base rule.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    dns: Option<RawAllowDeny>,
    ip: Option<RawAllowDeny>,
    email: Option<RawAllowDeny>,
    uri: Option<RawUri>,
    allow_literal_wildcards: Option<bool>,
    allow_underscores: Option<bool>,
    max_sans: Option<usize>,
    max_dns_names: Option<usize>,
    require_san: Option<bool>,
    common_name: Option<String>,
    node_binding: Option<RawNodeBinding>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowDeny {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUri {
    #[serde(default)]
    schemes: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeBinding {
    #[serde(default)]
    allowed_suffixes: Vec<String>,
    /// IP SANs must be among the node's evidence addresses (default true).
    require_ip_evidence: Option<bool>,
    /// Skip the DNS binding but keep every other check (kubelet-csr-approver's
    /// `--bypass-hostname-check`, narrowly scoped).
    #[serde(default)]
    bypass_dns_binding: bool,
    /// The host must hold evidence (addresses) for the node at all, even for DNS-only names
    /// (default true): a node nobody vouched for gets no serving certificate.
    require_node_evidence: Option<bool>,
}

/// Reserved ranges denied by default when a rule set says nothing about `ip.deny`:
/// unspecified, loopback, link-local, multicast, broadcast.
const DEFAULT_IP_DENY: &[&str] = &[
    "0.0.0.0/8",
    "::/128",
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommonNameRule {
    Ignore,
    MustBeASan,
}

/// Validated rules for one profile.
#[derive(Clone, Debug)]
struct Rules {
    dns_allow: Vec<DnsPattern>,
    dns_deny: Vec<DnsPattern>,
    ip_allow: Vec<IpNet>,
    ip_deny: Vec<IpNet>,
    email_allow: Vec<EmailPattern>,
    email_deny: Vec<EmailPattern>,
    uri_schemes: Vec<String>,
    uri_allow: Vec<DnsPattern>,
    uri_deny: Vec<DnsPattern>,
    allow_literal_wildcards: bool,
    syntax: DnsSyntax,
    max_sans: usize,
    max_dns_names: usize,
    require_san: bool,
    common_name: CommonNameRule,
    node_binding: Option<NodeBinding>,
}

#[derive(Clone, Debug)]
struct NodeBinding {
    suffixes: Vec<DnsName>,
    require_ip_evidence: bool,
    bypass_dns_binding: bool,
    require_node_evidence: bool,
}

/// An email rule: `user@domain` (exact mailbox) or a domain pattern.
#[derive(Clone, Debug)]
enum EmailPattern {
    Mailbox { local: String, domain: DnsName },
    Domain(DnsPattern),
}

impl EmailPattern {
    fn parse(s: &str) -> Result<EmailPattern, String> {
        if s.contains('*') && s.contains('@') {
            return Err(format!("email rule '{s}': no '*' in a mailbox"));
        }
        match s.rsplit_once('@') {
            Some(("", domain)) => Ok(EmailPattern::Domain(DnsPattern::parse(domain)?)),
            Some(_) => {
                let e = name_rules::parse_email(s).map_err(|e| format!("email rule '{s}': {e}"))?;
                Ok(EmailPattern::Mailbox {
                    local: e.local,
                    domain: e.domain,
                })
            }
            None => Ok(EmailPattern::Domain(DnsPattern::parse(s)?)),
        }
    }

    fn matches(&self, e: &name_rules::Email) -> bool {
        match self {
            EmailPattern::Mailbox { local, domain } => *local == e.local && *domain == e.domain,
            EmailPattern::Domain(p) => p.matches(&e.domain),
        }
    }
}

/// Validated settings: base rules and per-profile rules.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    allow_all: bool,
    base: Rules,
    profiles: BTreeMap<String, Rules>,
}

impl Default for Settings {
    /// No rules: every name is denied (default deny), except that syntax is checked first.
    fn default() -> Self {
        Settings::from_json("{}").unwrap_or_else(|_| unreachable!("the empty settings are valid"))
    }
}

fn patterns(field: &str, list: &[String]) -> Result<Vec<DnsPattern>, String> {
    list.iter()
        .map(|p| DnsPattern::parse(p).map_err(|e| format!("'{field}': {e}")))
        .collect()
}

fn ranges(field: &str, list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|r| name_rules::parse_ip_range(r).map_err(|e| format!("'{field}': {e}")))
        .collect()
}

impl Rules {
    fn from_raw(prefix: &str, raw: &RawRules) -> Result<Rules, String> {
        let f = |name: &str| format!("{prefix}{name}");
        let dns = raw.dns.clone().unwrap_or_default();
        let ip = raw.ip.clone();
        let email = raw.email.clone().unwrap_or_default();
        let uri = raw.uri.clone().unwrap_or_default();
        let syntax = DnsSyntax {
            allow_underscore: raw.allow_underscores.unwrap_or(false),
        };
        let common_name = match raw.common_name.as_deref().unwrap_or("ignore") {
            "ignore" => CommonNameRule::Ignore,
            "must_be_a_san" => CommonNameRule::MustBeASan,
            other => {
                return Err(format!(
                    "'{}' must be 'ignore' or 'must_be_a_san', got '{other}'",
                    f("common_name")
                ));
            }
        };
        let node_binding = match &raw.node_binding {
            None => None,
            Some(nb) => Some(NodeBinding {
                suffixes: nb
                    .allowed_suffixes
                    .iter()
                    .map(|s| {
                        name_rules::parse_dns_name(s, syntax).map_err(|e| {
                            format!("'{}': '{s}': {e}", f("node_binding.allowed_suffixes"))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                require_ip_evidence: nb.require_ip_evidence.unwrap_or(true),
                bypass_dns_binding: nb.bypass_dns_binding,
                require_node_evidence: nb.require_node_evidence.unwrap_or(true),
            }),
        };
        let max = |name: &str, v: Option<usize>, default: usize| -> Result<usize, String> {
            match v {
                None => Ok(default),
                Some(n) if (1..=1000).contains(&n) => Ok(n),
                Some(n) => Err(format!("'{}' must be between 1 and 1000, got {n}", f(name))),
            }
        };
        for s in &uri.schemes {
            if s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            {
                return Err(format!("'{}': '{s}' is not a URI scheme", f("uri.schemes")));
            }
        }
        Ok(Rules {
            dns_allow: patterns(&f("dns.allow"), &dns.allow)?,
            dns_deny: patterns(&f("dns.deny"), &dns.deny)?,
            ip_allow: ranges(
                &f("ip.allow"),
                &ip.as_ref().map(|i| i.allow.clone()).unwrap_or_default(),
            )?,
            ip_deny: match &ip {
                Some(i) => ranges(&f("ip.deny"), &i.deny)?,
                None => ranges(
                    "ip.deny",
                    &DEFAULT_IP_DENY
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>(),
                )?,
            },
            email_allow: email
                .allow
                .iter()
                .map(|s| EmailPattern::parse(s).map_err(|e| format!("'{}': {e}", f("email.allow"))))
                .collect::<Result<_, _>>()?,
            email_deny: email
                .deny
                .iter()
                .map(|s| EmailPattern::parse(s).map_err(|e| format!("'{}': {e}", f("email.deny"))))
                .collect::<Result<_, _>>()?,
            uri_schemes: uri.schemes.iter().map(|s| s.to_ascii_lowercase()).collect(),
            uri_allow: patterns(&f("uri.allow"), &uri.allow)?,
            uri_deny: patterns(&f("uri.deny"), &uri.deny)?,
            allow_literal_wildcards: raw.allow_literal_wildcards.unwrap_or(false),
            syntax,
            max_sans: max("max_sans", raw.max_sans, 100)?,
            max_dns_names: max("max_dns_names", raw.max_dns_names, 100)?,
            require_san: raw.require_san.unwrap_or(false),
            common_name,
            node_binding,
        })
    }
}

/// A profile's fields replace the base fields they set.
fn overlay(base: &RawRules, profile: &RawRules) -> RawRules {
    RawRules {
        dns: profile.dns.clone().or_else(|| base.dns.clone()),
        ip: profile.ip.clone().or_else(|| base.ip.clone()),
        email: profile.email.clone().or_else(|| base.email.clone()),
        uri: profile.uri.clone().or_else(|| base.uri.clone()),
        allow_literal_wildcards: profile
            .allow_literal_wildcards
            .or(base.allow_literal_wildcards),
        allow_underscores: profile.allow_underscores.or(base.allow_underscores),
        max_sans: profile.max_sans.or(base.max_sans),
        max_dns_names: profile.max_dns_names.or(base.max_dns_names),
        require_san: profile.require_san.or(base.require_san),
        common_name: profile
            .common_name
            .clone()
            .or_else(|| base.common_name.clone()),
        node_binding: profile
            .node_binding
            .clone()
            .or_else(|| base.node_binding.clone()),
    }
}

impl Settings {
    pub(crate) fn from_json(json: &str) -> Result<Settings, String> {
        let raw: RawSettings = rotor_policy_sdk::settings::parse(json)?;
        let base = Rules::from_raw("rules.", &raw.rules)?;
        let mut profiles = BTreeMap::new();
        for (name, p) in &raw.profiles {
            let rules = Rules::from_raw(&format!("profiles.{name}."), &overlay(&raw.rules, p))?;
            profiles.insert(name.clone(), rules);
        }
        Ok(Settings {
            allow_all: raw.allow_all,
            base,
            profiles,
        })
    }
}

// ---- evaluation -----------------------------------------------------------------------------

/// Every violation of `request` under `settings`; empty means allow.
pub(crate) fn validate(settings: &Settings, request: &Request) -> Vec<Violation> {
    let rules = settings
        .profiles
        .get(&request.profile)
        .unwrap_or(&settings.base);
    let mut out = Vec::new();
    let enforce = !settings.allow_all;

    let mut dns_names = request.dns_names.clone();
    dns_names.sort();
    dns_names.dedup();
    let mut ips: Vec<IpAddr> = request.ips.iter().map(|ip| ip.to_canonical()).collect();
    ips.sort();
    ips.dedup();
    let total = dns_names.len()
        + ips.len()
        + request.uris.len()
        + request.emails.len()
        + request.others.len();

    if rules.require_san && dns_names.is_empty() && ips.is_empty() {
        out.push(violation(
            "NoSubjectAltNames",
            "subjectAltName",
            "at least one DNS or IP SAN is required",
        ));
    }
    if total > rules.max_sans {
        out.push(violation(
            "TooManySans",
            "subjectAltName",
            format!("{total} SANs, at most {} allowed", rules.max_sans),
        ));
    }
    if dns_names.len() > rules.max_dns_names {
        out.push(violation(
            "TooManyDnsNames",
            "subjectAltName",
            format!(
                "{} DNS names, at most {} allowed",
                dns_names.len(),
                rules.max_dns_names
            ),
        ));
    }
    for other in &request.others {
        out.push(violation(
            "SanTypeNotAllowed",
            other.as_str(),
            "only DNS, IP, URI and email SANs are supported",
        ));
    }

    let binding = rules.node_binding.as_ref();
    if binding.is_some() && request.node.is_none() && enforce {
        out.push(violation(
            "NodeIdentityMissing",
            "",
            format!(
                "profile '{}' binds names to a node, but the request names no node",
                request.profile
            ),
        ));
    }
    if let (Some(b), Some(node)) = (binding, &request.node)
        && b.require_node_evidence
        && node.addresses.is_empty()
        && enforce
    {
        // Not proof against the request, only the lack of proof for it: the host leaves such
        // a request pending until evidence is given.
        out.push(violation(
            "NoNodeEvidence",
            node.name.as_str(),
            format!(
                "the host holds no evidence (addresses) for node '{}': names are bound only to a node someone vouched for",
                node.name
            ),
        ));
    }
    // Which types have an allow rule (node binding counts for DNS, IP evidence for IP).
    let dns_configured =
        !rules.dns_allow.is_empty() || binding.is_some_and(|b| !b.bypass_dns_binding);
    let ip_configured =
        !rules.ip_allow.is_empty() || binding.is_some_and(|b| b.require_ip_evidence);
    let email_configured = !rules.email_allow.is_empty();
    let uri_configured = !rules.uri_allow.is_empty();
    let any_configured = dns_configured || ip_configured || email_configured || uri_configured;
    let unconfigured = |kind: &str| {
        if any_configured {
            format!("no {kind} rule permits any {kind} SAN (types without allow rules are denied)")
        } else {
            "no allow rules are configured: everything is denied (set rules, or allow_all)"
                .to_string()
        }
    };

    let mut normalized_dns = Vec::new();
    for raw in &dns_names {
        let name = match name_rules::parse_dns_name(raw, rules.syntax) {
            Ok(n) => n,
            Err(e) => {
                out.push(violation("InvalidDnsName", raw.as_str(), e));
                continue;
            }
        };
        normalized_dns.push(name.clone());
        if !enforce {
            continue;
        }
        if name.is_wildcard() && !rules.allow_literal_wildcards {
            out.push(violation(
                "LiteralWildcardNotAllowed",
                raw.as_str(),
                "wildcard names are not allowed",
            ));
            continue;
        }
        if let Some(p) = rules.dns_deny.iter().find(|p| p.matches(&name)) {
            out.push(violation(
                "DnsNameDenied",
                raw.as_str(),
                format!("matches the deny rule '{p}'"),
            ));
            continue;
        }
        if let (Some(b), Some(node)) = (binding, &request.node)
            && !b.bypass_dns_binding
            && !name_rules::dns_bound_to_node(&name, &node.name, &b.suffixes)
        {
            let allowed = if b.suffixes.is_empty() {
                format!("'{}'", node.name)
            } else {
                let s: Vec<_> = b
                    .suffixes
                    .iter()
                    .map(|s| format!("'{}.{s}'", node.name))
                    .collect();
                format!("'{}' or {}", node.name, s.join(", "))
            };
            out.push(violation(
                "SanNotBoundToNode",
                raw.as_str(),
                format!(
                    "does not belong to node '{}' (allowed: {allowed})",
                    node.name
                ),
            ));
            continue;
        }
        if !rules.dns_allow.is_empty() {
            if !rules.dns_allow.iter().any(|p| p.matches(&name)) {
                out.push(violation(
                    "DnsNameNotAllowed",
                    raw.as_str(),
                    "matches no allow rule",
                ));
            }
        } else if !dns_configured {
            out.push(violation(
                "DnsNameNotAllowed",
                raw.as_str(),
                unconfigured("DNS"),
            ));
        }
    }

    for ip in &ips {
        let field = ip.to_string();
        if !enforce {
            continue;
        }
        if let Some(net) = rules.ip_deny.iter().find(|n| name_rules::ip_in(n, *ip)) {
            out.push(violation(
                "IpDenied",
                field,
                format!("in the denied range {net}"),
            ));
            continue;
        }
        if let (Some(b), Some(node)) = (binding, &request.node)
            && b.require_ip_evidence
            && !node.addresses.iter().any(|a| a.to_canonical() == *ip)
        {
            out.push(violation(
                "IpNotInNodeEvidence",
                field,
                format!("not an address the host holds for node '{}'", node.name),
            ));
            continue;
        }
        if !rules.ip_allow.is_empty() {
            if !rules.ip_allow.iter().any(|n| name_rules::ip_in(n, *ip)) {
                out.push(violation("IpNotAllowed", field, "in no allowed range"));
            }
        } else if !ip_configured {
            out.push(violation("IpNotAllowed", field, unconfigured("IP")));
        }
    }

    for raw in &request.emails {
        let email = match name_rules::parse_email(raw) {
            Ok(e) => e,
            Err(e) => {
                out.push(violation("InvalidEmail", raw.as_str(), e));
                continue;
            }
        };
        if !enforce {
            continue;
        }
        if rules.email_deny.iter().any(|p| p.matches(&email)) {
            out.push(violation(
                "EmailDenied",
                raw.as_str(),
                "matches a deny rule",
            ));
        } else if !email_configured {
            out.push(violation(
                "EmailNotAllowed",
                raw.as_str(),
                unconfigured("email"),
            ));
        } else if !rules.email_allow.iter().any(|p| p.matches(&email)) {
            out.push(violation(
                "EmailNotAllowed",
                raw.as_str(),
                "matches no allow rule",
            ));
        }
    }

    for raw in &request.uris {
        let uri = match name_rules::parse_uri(raw) {
            Ok(u) => u,
            Err(e) => {
                out.push(violation("InvalidUri", raw.as_str(), e));
                continue;
            }
        };
        if !enforce {
            continue;
        }
        if !rules.uri_schemes.is_empty() && !rules.uri_schemes.contains(&uri.scheme) {
            out.push(violation(
                "UriSchemeNotAllowed",
                raw.as_str(),
                format!("scheme '{}' is not allowed", uri.scheme),
            ));
        } else if rules.uri_deny.iter().any(|p| p.matches(&uri.host)) {
            out.push(violation(
                "UriDenied",
                raw.as_str(),
                "its host matches a deny rule",
            ));
        } else if !uri_configured {
            out.push(violation(
                "UriNotAllowed",
                raw.as_str(),
                unconfigured("URI"),
            ));
        } else if !rules.uri_allow.iter().any(|p| p.matches(&uri.host)) {
            out.push(violation(
                "UriNotAllowed",
                raw.as_str(),
                "its host matches no allow rule",
            ));
        }
    }

    if enforce
        && rules.common_name == CommonNameRule::MustBeASan
        && let Some(cn) = &request.common_name
    {
        let as_dns = name_rules::parse_dns_name(cn, rules.syntax).ok();
        let as_ip = cn.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        let found = as_dns.is_some_and(|n| normalized_dns.contains(&n))
            || as_ip.is_some_and(|ip| ips.contains(&ip));
        if !found {
            out.push(violation(
                "CommonNameNotASan",
                "subject.commonName",
                format!("CN '{cn}' is not one of the SANs"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Settings {
        Settings::from_json(json).unwrap()
    }

    fn codes(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.code).collect()
    }

    const KUBELET: &str = r#"{
        "rules": {"dns": {"allow": ["**"]}, "ip": {"allow": ["10.0.0.0/8"], "deny": []}},
        "profiles": {"kubelet-serving": {
            "max_dns_names": 1, "require_san": true,
            "dns": {"allow": []},
            "ip": {"allow": [], "deny": ["127.0.0.0/8", "::1/128"]},
            "node_binding": {"allowed_suffixes": ["int.example.com"]}
        }}
    }"#;

    fn kubelet(dns: &[&str], ips: &[&str]) -> Request {
        Request {
            profile: "kubelet-serving".into(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            node: Some(Node {
                name: "a".into(),
                addresses: vec!["10.0.0.5".parse().unwrap()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn kubelet_serving_names_must_belong_to_the_node() {
        let s = settings(KUBELET);
        assert!(validate(&s, &kubelet(&["a"], &["10.0.0.5"])).is_empty());
        assert!(validate(&s, &kubelet(&["A.int.example.com"], &[])).is_empty());
        assert_eq!(
            codes(&validate(&s, &kubelet(&["b"], &[]))),
            ["SanNotBoundToNode"]
        );
        // Prefix hole of kubelet-csr-approver: 'auth' starts with 'a'.
        assert_eq!(
            codes(&validate(&s, &kubelet(&["auth.int.example.com"], &[]))),
            ["SanNotBoundToNode"]
        );
        // Another node's IP, even in an IP-only CSR.
        assert_eq!(
            codes(&validate(&s, &kubelet(&[], &["10.0.0.6"]))),
            ["IpNotInNodeEvidence"]
        );
        assert_eq!(
            codes(&validate(&s, &kubelet(&[], &["127.0.0.1"]))),
            ["IpDenied"]
        );
        assert_eq!(
            codes(&validate(&s, &kubelet(&["a", "a.int.example.com"], &[]))),
            ["TooManyDnsNames"]
        );
        assert_eq!(
            codes(&validate(&s, &kubelet(&[], &[]))),
            ["NoSubjectAltNames"]
        );
        let mut r = kubelet(&["a"], &[]);
        r.node = None;
        assert_eq!(codes(&validate(&s, &r)), ["NodeIdentityMissing"]);
    }

    #[test]
    fn every_violation_is_reported() {
        let s = settings(KUBELET);
        let mut r = kubelet(&["b", "c", "bad..name"], &["10.0.0.6"]);
        r.emails.push("x@example.com".into());
        let v = validate(&s, &r);
        assert_eq!(
            codes(&v),
            [
                "TooManyDnsNames",
                "SanNotBoundToNode",
                "InvalidDnsName",
                "SanNotBoundToNode",
                "IpNotInNodeEvidence",
                "EmailNotAllowed"
            ]
        );
    }

    #[test]
    fn deny_first_and_implicit_deny() {
        let s = settings(
            r#"{"rules": {"dns": {"allow": ["**.example.com"], "deny": ["*.bad.example.com"]}}}"#,
        );
        let r = |dns: &[&str], ips: &[&str]| Request {
            profile: "x".into(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        };
        assert!(validate(&s, &r(&["a.b.example.com"], &[])).is_empty());
        assert_eq!(
            codes(&validate(&s, &r(&["x.bad.example.com"], &[]))),
            ["DnsNameDenied"]
        );
        assert_eq!(
            codes(&validate(&s, &r(&["example.org"], &[]))),
            ["DnsNameNotAllowed"]
        );
        // IP has no allow rule while DNS has one: implicit deny.
        let v = validate(&s, &r(&[], &["10.1.1.1"]));
        assert_eq!(codes(&v), ["IpNotAllowed"]);
        assert!(
            v[0].message
                .contains("types without allow rules are denied"),
            "{}",
            v[0].message
        );
        // Default deny with no rules at all, unless allow_all.
        let none = Settings::default();
        assert_eq!(
            codes(&validate(&none, &r(&["a.example.com"], &[]))),
            ["DnsNameNotAllowed"]
        );
        let all = settings(r#"{"allow_all": true}"#);
        assert!(validate(&all, &r(&["a.example.com"], &["10.0.0.1"])).is_empty());
        // Syntax is checked even with allow_all.
        assert_eq!(
            codes(&validate(&all, &r(&["a..b"], &[]))),
            ["InvalidDnsName"]
        );
    }

    #[test]
    fn wildcards_and_reserved_ips() {
        let s = settings(
            r#"{"rules": {"dns": {"allow": ["**"]}, "ip": {"allow": ["0.0.0.0/0", "::/0"]}}}"#,
        );
        let r = |dns: &[&str], ips: &[&str]| Request {
            profile: "p".into(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        };
        assert_eq!(
            codes(&validate(&s, &r(&["*.example.com"], &[]))),
            ["LiteralWildcardNotAllowed"]
        );
        // ip.deny left unset in rules: the reserved ranges are denied.
        let s2 =
            settings(r#"{"rules": {"dns": {"allow": ["**"]}, "ip": {"allow": ["0.0.0.0/0"]}}}"#);
        assert_eq!(
            codes(&validate(&s2, &r(&[], &["8.8.8.8"]))),
            Vec::<&str>::new()
        );
        let s3 = settings(
            r#"{"rules": {"ip": {"allow": ["0.0.0.0/0"]}, "dns": {"allow": ["**"]}}, "profiles": {"p": {}}}"#,
        );
        assert!(validate(&s3, &r(&[], &["10.0.0.1"])).is_empty());
        let defaults = settings(r#"{"rules": {"dns": {"allow": ["**"]}}}"#);
        let v = validate(&defaults, &r(&[], &["127.0.0.1", "::ffff:169.254.1.1"]));
        assert_eq!(codes(&v), ["IpDenied", "IpDenied"]);
    }

    #[test]
    fn common_name_must_be_a_san_when_asked() {
        let s =
            settings(r#"{"rules": {"dns": {"allow": ["**"]}, "common_name": "must_be_a_san"}}"#);
        let mut r = Request {
            profile: "p".into(),
            dns_names: vec!["www.example.com".into()],
            ..Default::default()
        };
        r.common_name = Some("WWW.example.com".into());
        assert!(validate(&s, &r).is_empty());
        r.common_name = Some("other.example.com".into());
        assert_eq!(codes(&validate(&s, &r)), ["CommonNameNotASan"]);
    }

    #[test]
    fn settings_errors_name_the_setting() {
        let err = |j: &str| Settings::from_json(j).unwrap_err();
        assert!(err(r#"{"rules": {"dns": {"allow": ["a*.b"]}}}"#).contains("'rules.dns.allow'"));
        assert!(
            err(r#"{"profiles": {"x": {"ip": {"allow": ["10.0.0.0/33"]}}}}"#)
                .contains("'profiles.x.ip.allow'")
        );
        assert!(err(r#"{"rules": {"max_sans": 0}}"#).contains("'rules.max_sans'"));
        assert!(err(r#"{"rules": {"common_name": "maybe"}}"#).contains("'rules.common_name'"));
        assert!(err(r#"{"rulez": {}}"#).contains("unknown field"));
    }
}
