//! Name rules shared by rotor's default plugins: DNS name normalization (IDNA, lowercase, LDH),
//! label-aware wildcard patterns, IP ranges, and Kubernetes node names.
//!
//! Matching is always label-aware: `*.example.com` matches exactly one extra label (as in
//! step-ca), `**.example.com` one or more, `.example.com` the domain itself and any subdomain
//! (RFC 5280 style), and `**` any name. Nothing here uses string prefixes: kubelet-csr-approver's
//! `HasPrefix(san, node)` let node `a` obtain `auth.example.com`.

use std::fmt;
use std::net::IpAddr;

pub use ipnet::IpNet;

/// Longest DNS name and label (RFC 1035).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// A normalized DNS name: ASCII (A-labels), lowercase, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName {
    ascii: String,
    wildcard: bool,
}

impl DnsName {
    /// The normalized text, `*.` included for a literal wildcard.
    pub fn as_str(&self) -> &str {
        &self.ascii
    }

    /// Whether the name is a literal wildcard (`*.example.com`).
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Labels from the right (`a.b.c` gives `c`, `b`, `a`), `*` included.
    fn labels_rev(&self) -> impl Iterator<Item = &str> {
        self.ascii.rsplit('.')
    }

    fn label_count(&self) -> usize {
        self.ascii.split('.').count()
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.ascii)
    }
}

/// Syntax options for DNS names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSyntax {
    /// Allow `_` in labels (forbidden in TLS certificates since 2019, CA/B SC-12).
    pub allow_underscore: bool,
}

/// Normalize a DNS name: IDNA (UTS #46) to ASCII, lowercase, then strict LDH label rules.
/// A leading `*.` is kept as a literal wildcard; a `*` anywhere else is an error.
pub fn parse_dns_name(name: &str, syntax: DnsSyntax) -> Result<DnsName, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.ends_with('.') {
        return Err("trailing dot (absolute names are not allowed)".into());
    }
    let (wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if rest.contains('*') {
        return Err("'*' is only allowed as the whole left-most label".into());
    }
    if rest.split('.').any(str::is_empty) {
        return Err("empty label".into());
    }
    let ascii = idna::domain_to_ascii_cow(rest.as_bytes(), idna::AsciiDenyList::EMPTY)
        .map_err(|_| "not a valid internationalized domain name".to_string())?;
    let ascii = ascii.to_ascii_lowercase();
    for label in ascii.split('.') {
        check_label(label, syntax)?;
    }
    if wildcard && ascii.split('.').count() < 2 {
        return Err("a wildcard needs at least two labels after '*.'".into());
    }
    let full = if wildcard {
        format!("*.{ascii}")
    } else {
        ascii
    };
    if full.len() > MAX_NAME {
        return Err(format!("longer than {MAX_NAME} characters"));
    }
    Ok(DnsName {
        ascii: full,
        wildcard,
    })
}

fn check_label(label: &str, syntax: DnsSyntax) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > MAX_LABEL {
        return Err(format!(
            "label '{label}' is longer than {MAX_LABEL} characters"
        ));
    }
    if let Some(c) = label.chars().find(|&c| {
        !(c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || (c == '_' && syntax.allow_underscore))
    }) {
        return Err(format!("label '{label}' contains '{}'", c.escape_default()));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label '{label}' starts or ends with '-'"));
    }
    if label.len() >= 4 && &label[2..4] == "--" && !label.starts_with("xn--") {
        return Err(format!(
            "label '{label}' has '--' in positions 3-4 but is not an IDNA A-label"
        ));
    }
    Ok(())
}

/// A DNS name pattern from the operator's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPattern {
    kind: PatternKind,
    /// The suffix labels, normalized (empty for `**`).
    suffix: String,
    text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PatternKind {
    /// `host.example.com`
    Exact,
    /// `*.example.com`: exactly one more label.
    OneLabel,
    /// `**.example.com`: one or more labels.
    OneOrMore,
    /// `.example.com`: the domain or any subdomain.
    ZeroOrMore,
    /// `**`: anything.
    Any,
}

impl DnsPattern {
    /// Parse a pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<DnsPattern, String> {
        let p = pattern.trim();
        let text = p.to_string();
        let (kind, rest) = if p == "**" {
            (PatternKind::Any, "")
        } else if let Some(rest) = p.strip_prefix("**.") {
            (PatternKind::OneOrMore, rest)
        } else if let Some(rest) = p.strip_prefix("*.") {
            (PatternKind::OneLabel, rest)
        } else if let Some(rest) = p.strip_prefix('.') {
            (PatternKind::ZeroOrMore, rest)
        } else {
            (PatternKind::Exact, p)
        };
        if kind == PatternKind::Any {
            return Ok(DnsPattern {
                kind,
                suffix: String::new(),
                text,
            });
        }
        if rest.is_empty() {
            return Err(format!("pattern '{p}' has no domain"));
        }
        if rest.contains('*') {
            return Err(format!(
                "pattern '{p}': '*' is only allowed as a left-most '*.' (one label) or '**.' (one or more)"
            ));
        }
        let name = parse_dns_name(
            rest,
            DnsSyntax {
                allow_underscore: true,
            },
        )
        .map_err(|e| format!("pattern '{p}': {e}"))?;
        Ok(DnsPattern {
            kind,
            suffix: name.ascii,
            text,
        })
    }

    /// Whether `name` matches, label by label.
    pub fn matches(&self, name: &DnsName) -> bool {
        if self.kind == PatternKind::Any {
            return true;
        }
        let suffix_labels = self.suffix.split('.').count();
        let name_labels = name.label_count();
        let suffix_matches = self
            .suffix
            .rsplit('.')
            .zip(name.labels_rev())
            .all(|(a, b)| a == b);
        if !suffix_matches || name_labels < suffix_labels {
            return false;
        }
        let extra = name_labels - suffix_labels;
        match self.kind {
            PatternKind::Exact => extra == 0 && !name.wildcard,
            PatternKind::OneLabel => extra == 1,
            PatternKind::OneOrMore => extra >= 1,
            PatternKind::ZeroOrMore => true,
            PatternKind::Any => true,
        }
    }
}

impl fmt::Display for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An IP range from the settings: a CIDR, or a single address (/32 or /128).
pub fn parse_ip_range(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(|ip| IpNet::from(ip.to_canonical()))
        .map_err(|_| format!("'{s}' is neither an IP address nor a CIDR range"))
}

/// Whether `ip` (canonicalized: IPv4-mapped IPv6 counts as IPv4) is in `net`.
pub fn ip_in(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip.to_canonical())
}

/// RFC 1123 subdomain, as Kubernetes requires for node names (lowercase, <= 253).
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The node name of a `system:node:<name>` username, if it is one (the whole string must
/// match: no prefix tricks).
pub fn node_of_username(username: &str) -> Option<&str> {
    username
        .strip_prefix("system:node:")
        .filter(|n| is_node_name(n))
}

/// Whether a (normalized) DNS SAN belongs to `node`: it is the node name itself, or the node
/// name followed by `.` and one of `suffixes`. Compared label for label, never by prefix.
pub fn dns_bound_to_node(name: &DnsName, node: &str, suffixes: &[DnsName]) -> bool {
    if name.wildcard {
        return false;
    }
    let node = node.to_ascii_lowercase();
    if name.ascii == node {
        return true;
    }
    suffixes.iter().any(|suffix| {
        name.ascii
            .strip_suffix(suffix.as_str())
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|head| head == node)
    })
}

/// An email address: `local@domain` with a normalized domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email {
    pub local: String,
    pub domain: DnsName,
}

pub fn parse_email(s: &str) -> Result<Email, String> {
    let (local, domain) = s.rsplit_once('@').ok_or("no '@'")?;
    if local.is_empty() || local.len() > 64 {
        return Err("invalid local part".into());
    }
    if local
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '@')
    {
        return Err("invalid character in the local part".into());
    }
    let domain =
        parse_dns_name(domain, DnsSyntax::default()).map_err(|e| format!("domain: {e}"))?;
    if domain.wildcard {
        return Err("wildcard domain".into());
    }
    Ok(Email {
        local: local.to_string(),
        domain,
    })
}

/// A URI SAN: its scheme and (DNS) host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriName {
    pub scheme: String,
    pub host: DnsName,
}

pub fn parse_uri(s: &str) -> Result<UriName, String> {
    let url = url::Url::parse(s).map_err(|e| e.to_string())?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(_) => return Err("IP hosts are not allowed in URI SANs".into()),
        None => return Err("no host".into()),
    };
    if host.contains('*') {
        return Err("wildcard host".into());
    }
    let host = parse_dns_name(&host, DnsSyntax::default()).map_err(|e| format!("host: {e}"))?;
    Ok(UriName {
        scheme: url.scheme().to_string(),
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DnsName {
        parse_dns_name(s, DnsSyntax::default()).unwrap()
    }

    fn pat(s: &str) -> DnsPattern {
        DnsPattern::parse(s).unwrap()
    }

    #[test]
    fn names_are_normalized_and_checked() {
        assert_eq!(name("Node-A.Example.COM").as_str(), "node-a.example.com");
        assert_eq!(name("bücher.example").as_str(), "xn--bcher-kva.example");
        assert!(parse_dns_name("a..b", DnsSyntax::default()).is_err());
        assert!(
            parse_dns_name("a.b.", DnsSyntax::default())
                .unwrap_err()
                .contains("trailing dot")
        );
        assert!(parse_dns_name("a_b.c", DnsSyntax::default()).is_err());
        assert!(
            parse_dns_name(
                "a_b.c",
                DnsSyntax {
                    allow_underscore: true
                }
            )
            .is_ok()
        );
        assert!(parse_dns_name("-a.b", DnsSyntax::default()).is_err());
        assert!(parse_dns_name("ab--c.d", DnsSyntax::default()).is_err());
        assert!(parse_dns_name("a.*.b", DnsSyntax::default()).is_err());
        assert!(parse_dns_name("*.com", DnsSyntax::default()).is_err());
        assert!(parse_dns_name(&"a".repeat(64), DnsSyntax::default()).is_err());
        assert!(parse_dns_name("a b", DnsSyntax::default()).is_err());
        let w = name("*.Example.com");
        assert!(w.is_wildcard());
        assert_eq!(w.as_str(), "*.example.com");
    }

    #[test]
    fn wildcard_patterns_are_label_aware() {
        assert!(pat("*.example.com").matches(&name("a.example.com")));
        assert!(!pat("*.example.com").matches(&name("a.b.example.com")));
        assert!(!pat("*.example.com").matches(&name("example.com")));
        assert!(!pat("*.example.com").matches(&name("aexample.com")));
        assert!(pat("**.example.com").matches(&name("a.b.example.com")));
        assert!(!pat("**.example.com").matches(&name("example.com")));
        assert!(pat(".example.com").matches(&name("example.com")));
        assert!(pat(".example.com").matches(&name("x.y.example.com")));
        assert!(!pat(".example.com").matches(&name("badexample.com")));
        assert!(pat("host.example.com").matches(&name("HOST.example.com")));
        assert!(!pat("host.example.com").matches(&name("host.example.com.evil")));
        assert!(pat("**").matches(&name("anything.at.all")));
        // A literal wildcard matches a wildcard pattern of its level, never an exact one.
        assert!(pat("*.example.com").matches(&name("*.example.com")));
        assert!(!pat("example.com").matches(&name("*.com.example")));
        assert!(DnsPattern::parse("a*.example.com").is_err());
        assert!(DnsPattern::parse("*").is_err());
        assert!(DnsPattern::parse(".").is_err());
    }

    #[test]
    fn node_binding_respects_label_boundaries() {
        let suffixes = vec![name("int.example.com")];
        assert!(dns_bound_to_node(&name("a"), "a", &suffixes));
        assert!(dns_bound_to_node(
            &name("a.int.example.com"),
            "a",
            &suffixes
        ));
        // kubelet-csr-approver's prefix hole: node 'a' must not get 'auth...' or 'a-b'.
        assert!(!dns_bound_to_node(
            &name("auth.int.example.com"),
            "a",
            &suffixes
        ));
        assert!(!dns_bound_to_node(&name("ab"), "a", &suffixes));
        assert!(!dns_bound_to_node(
            &name("a.b.int.example.com"),
            "a",
            &suffixes
        ));
        assert!(!dns_bound_to_node(&name("a.evil.com"), "a", &suffixes));
        assert!(!dns_bound_to_node(&name("a.int.example.com"), "a", &[]));
        assert!(!dns_bound_to_node(
            &name("*.int.example.com"),
            "*",
            &suffixes
        ));
    }

    #[test]
    fn usernames_must_match_whole() {
        assert_eq!(node_of_username("system:node:a"), Some("a"));
        assert_eq!(
            node_of_username("system:node:node-1.example.com"),
            Some("node-1.example.com")
        );
        assert_eq!(node_of_username("system:node:"), None);
        assert_eq!(node_of_username("system:node:A"), None);
        assert_eq!(node_of_username("system:node:a b"), None);
        assert_eq!(node_of_username("xsystem:node:a"), None);
        assert_eq!(node_of_username("system:nodes"), None);
    }

    #[test]
    fn ip_ranges_canonicalize() {
        let net = parse_ip_range("10.0.0.0/8").unwrap();
        assert!(ip_in(&net, "10.1.2.3".parse().unwrap()));
        assert!(ip_in(&net, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!ip_in(&net, "11.0.0.1".parse().unwrap()));
        let single = parse_ip_range("192.168.1.5").unwrap();
        assert_eq!(single.to_string(), "192.168.1.5/32");
        assert!(parse_ip_range("10.0.0.0/33").is_err());
        assert!(parse_ip_range("nope").is_err());
        assert_eq!(
            parse_ip_range("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn emails_and_uris() {
        let e = parse_email("Admin@Example.COM").unwrap();
        assert_eq!(
            (e.local.as_str(), e.domain.as_str()),
            ("Admin", "example.com")
        );
        assert!(parse_email("no-at").is_err());
        let u = parse_uri("spiffe://Cluster.Local/ns/a/sa/b").unwrap();
        assert_eq!(
            (u.scheme.as_str(), u.host.as_str()),
            ("spiffe", "cluster.local")
        );
        assert!(parse_uri("https://10.0.0.1/").is_err());
        assert!(parse_uri("urn:x").is_err());
    }
}
