//! Reviewing a CSR whose subject and names the host fixes (the supervisor API's endpoints):
//! the CSR only proves its key, and must ask for nothing else.

use std::net::IpAddr;

use time::OffsetDateTime;

use super::{CsrInput, Review, SignerLimits};
use crate::facts::{CsrFacts, Violation};
use crate::plugin::PluginError;
use crate::policy::Bundle;

/// A subject and names the host fixes for a request, whatever the CSR says (the supervisor
/// API's endpoints: the CSR only proves the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedSubject {
    /// The common name.
    pub common_name: String,
    /// The organizations.
    pub organizations: Vec<String>,
    /// DNS names.
    pub dns_names: Vec<String>,
    /// IP addresses.
    pub ip_addresses: Vec<IpAddr>,
}

/// Review a CSR whose subject and names the host fixes: the CSR must prove its key and ask for
/// nothing else (an empty subject, as k3s agents send, or exactly `fixed`); everything after
/// (host rules, floor, plugins, template) sees `fixed`. A CSR asking for another subject or
/// other names is denied (`SubjectNotForEndpoint`).
///
/// # Errors
/// Only a plugin failure under a bundle whose failure mode is `error`.
pub fn review_fixed(
    bundle: &Bundle,
    input: &CsrInput,
    fixed: &FixedSubject,
    ca_not_after: Option<OffsetDateTime>,
    limits: &SignerLimits,
    now: OffsetDateTime,
) -> Result<Review, PluginError> {
    super::review_with(bundle, input, Some(fixed), ca_not_after, limits, now)
}

/// Why a CSR asks for something other than `fixed` (nothing when it asks for nothing or for
/// exactly that).
pub(super) fn not_for_endpoint(facts: &CsrFacts, fixed: &FixedSubject) -> Vec<Violation> {
    let subject = &facts.subject;
    let sans = &facts.sans;
    let asks_nothing = subject.common_name.is_none()
        && subject.organizations.is_empty()
        && subject.organizational_units.is_empty()
        && subject.other_attributes.is_empty()
        && sans.is_empty();
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let mut ips = sans.ip_addresses.clone();
    ips.sort();
    let mut fixed_ips = fixed.ip_addresses.clone();
    fixed_ips.sort();
    let asks_exactly = subject.common_name.as_deref() == Some(fixed.common_name.as_str())
        && sorted(&subject.organizations) == sorted(&fixed.organizations)
        && subject.organizational_units.is_empty()
        && subject.other_attributes.is_empty()
        && sorted(&sans.dns_names) == sorted(&fixed.dns_names)
        && ips == fixed_ips
        && sans.uris.is_empty()
        && sans.emails.is_empty()
        && sans.others.is_empty();
    if asks_nothing || asks_exactly {
        return Vec::new();
    }
    let names: Vec<String> = fixed
        .dns_names
        .iter()
        .cloned()
        .chain(fixed.ip_addresses.iter().map(ToString::to_string))
        .collect();
    vec![Violation::new(
        "SubjectNotForEndpoint",
        "subject",
        format!(
            "the CSR asks for {} {}; this endpoint issues CN={}, O={:?}{} (send an empty subject, \
             or exactly that)",
            if subject.text.is_empty() {
                "no subject"
            } else {
                subject.text.as_str()
            },
            if sans.is_empty() {
                "and no names".to_string()
            } else {
                format!("with names {}", sans_text(sans))
            },
            fixed.common_name,
            fixed.organizations,
            if names.is_empty() {
                String::new()
            } else {
                format!(", names {}", names.join(", "))
            }
        ),
    )]
}

fn sans_text(sans: &crate::facts::SubjectAltNames) -> String {
    sans.dns_names
        .iter()
        .cloned()
        .chain(sans.ip_addresses.iter().map(ToString::to_string))
        .chain(sans.uris.iter().cloned())
        .chain(sans.emails.iter().cloned())
        .chain(sans.others.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::pki::{Subject, Validity};

    const NOW: OffsetDateTime = datetime!(2027-01-01 00:00 UTC);

    /// CSR facts with `cn`, `orgs`, `ous`, `dns`, `uris` (the rest empty).
    fn facts(
        cn: Option<&str>,
        orgs: &[&str],
        ous: &[&str],
        dns: &[&str],
        uris: &[&str],
    ) -> CsrFacts {
        let key = crate::pki::KeyType::EcdsaP256.generate().unwrap();
        let cert = crate::pki::self_signed_ca(
            &Subject::default(),
            &key,
            Validity {
                not_before: NOW,
                not_after: NOW + time::Duration::days(1),
            },
        )
        .unwrap();
        let public_key = crate::facts::parse_certificate_der("c", &cert.der)
            .unwrap()
            .public_key;
        CsrFacts {
            subject: crate::facts::DistinguishedName {
                text: cn.map(|c| format!("CN={c}")).unwrap_or_default(),
                common_name: cn.map(String::from),
                organizations: orgs.iter().map(|o| o.to_string()).collect(),
                organizational_units: ous.iter().map(|o| o.to_string()).collect(),
                other_attributes: Vec::new(),
            },
            sans: crate::facts::SubjectAltNames {
                dns_names: dns.iter().map(|d| d.to_string()).collect(),
                uris: uris.iter().map(|u| u.to_string()).collect(),
                ..Default::default()
            },
            public_key,
            requests_ca: false,
            key_usage: None,
            extended_key_usages: Vec::new(),
            other_extensions: Vec::new(),
            defects: Vec::new(),
        }
    }

    #[test]
    fn a_fixed_subject_takes_a_csr_that_asks_for_nothing_or_exactly_it() {
        let fixed = FixedSubject {
            common_name: "system:node:a".into(),
            organizations: vec!["system:nodes".into()],
            dns_names: vec!["a".into()],
            ip_addresses: vec!["10.0.0.5".parse().unwrap()],
        };
        // Nothing asked (k3s agents): fine.
        assert!(not_for_endpoint(&facts(None, &[], &[], &[], &[]), &fixed).is_empty());
        // Exactly the fixed subject and names: fine.
        let mut exact = facts(Some("system:node:a"), &["system:nodes"], &[], &["a"], &[]);
        exact.sans.ip_addresses = fixed.ip_addresses.clone();
        assert!(not_for_endpoint(&exact, &fixed).is_empty());
        // Anything else, even one part: refused, saying what the endpoint issues.
        let mut no_ip = exact.clone();
        no_ip.sans.ip_addresses.clear();
        for (what, f) in [
            (
                "another CN",
                facts(Some("system:node:b"), &["system:nodes"], &[], &["a"], &[]),
            ),
            (
                "system:masters",
                facts(None, &["system:masters"], &[], &[], &[]),
            ),
            ("an OU only", facts(None, &[], &["ops"], &[], &[])),
            ("a URI only", facts(None, &[], &[], &[], &["spiffe://x"])),
            (
                "a duplicate O",
                facts(
                    Some("system:node:a"),
                    &["system:nodes", "system:nodes"],
                    &[],
                    &["a"],
                    &[],
                ),
            ),
            ("one name short", no_ip),
        ] {
            let v = not_for_endpoint(&f, &fixed);
            assert_eq!(v.len(), 1, "{what}");
            assert_eq!(v[0].code, "SubjectNotForEndpoint", "{what}");
            assert!(
                v[0].message
                    .contains("this endpoint issues CN=system:node:a"),
                "{what}: {}",
                v[0]
            );
        }
    }
}
