//! Between rotor's types and the WIT records: requests go in, answers come back validated.
//!
//! Everything a plugin returns is untrusted: strings are sanitized and capped, and answers that
//! break the contract (a denial without any violation, a malformed reason code, a lifetime
//! shorter than ten minutes) become `InvalidAnswer` errors instead of decisions.
//!
//! The contract versions have the same records except the renewal hook (0.2's request is lean,
//! 0.3's has no strings and its reasons may be codes the host words), but wasmtime generates
//! distinct Rust types per package: [`conversions!`] writes the shared conversions once and
//! expands them in [`v01`], [`v02`] and [`v03`].

use time::OffsetDateTime;

use super::answer::MAX_VIOLATIONS;
use crate::contract::RenewalRequest;

/// Longest reason or message kept from a plugin, in characters.
const MAX_TEXT: usize = 4096;
/// Shortest lifetime a plugin may ask for (the Kubernetes signer's floor).
pub const MIN_LIFETIME_SECONDS: u64 = 600;

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// Kubernetes usages have the same variant names in rotor and in WIT; the matches are
/// exhaustive both ways, so adding a usage on one side fails to compile until mapped.
macro_rules! usage_mapping {
    ($($name:ident),* $(,)?) => {
        pub(in crate::plugin) fn usage_to_wit(u: Usage) -> wit::Usage {
            match u { $(Usage::$name => wit::Usage::$name,)* }
        }
        pub(in crate::plugin) fn usage_from_wit(w: wit::Usage) -> Usage {
            match w { $(wit::Usage::$name => Usage::$name,)* }
        }
    };
}

/// The conversions both versions share, expanded where `wit` (the `types` interface),
/// `renewal`, `san` and `csr` (the hook interfaces) name one version's generated modules.
macro_rules! conversions {
    () => {
        use std::net::IpAddr;

        use time::OffsetDateTime;

        use super::{MAX_TEXT, MAX_VIOLATIONS, MIN_LIFETIME_SECONDS, unix};
        use crate::contract::{CsrDecision, RenewalDecision, SanDecision};
        use crate::contract::{CsrRequest, SanRequest, SanStage};
        use crate::facts::{
            CertificateFacts, DistinguishedName, ExtendedKeyUsage, KeyAlgorithm, KeyUsageBit,
            PublicKeyInfo, SubjectAltNames, Usage, Violation,
        };
        use crate::plugin::sandbox::sanitize;

        // ---- requests -------------------------------------------------------------------------------

        fn ip(ip: &IpAddr) -> wit::IpAddress {
            match ip.to_canonical() {
                IpAddr::V4(v4) => {
                    let [a, b, c, d] = v4.octets();
                    wit::IpAddress::Ipv4((a, b, c, d))
                }
                IpAddr::V6(v6) => {
                    let [a, b, c, d, e, f, g, h] = v6.segments();
                    wit::IpAddress::Ipv6((a, b, c, d, e, f, g, h))
                }
            }
        }

        pub(in crate::plugin) fn dn(d: &DistinguishedName) -> wit::DistinguishedName {
            wit::DistinguishedName {
                text: d.text.clone(),
                common_name: d.common_name.clone(),
                organizations: d.organizations.clone(),
                organizational_units: d.organizational_units.clone(),
                other_attributes: d.other_attributes.clone(),
            }
        }

        pub(in crate::plugin) fn sans(s: &SubjectAltNames) -> wit::SubjectAltNames {
            wit::SubjectAltNames {
                dns_names: s.dns_names.clone(),
                ip_addresses: s.ip_addresses.iter().map(ip).collect(),
                uris: s.uris.clone(),
                emails: s.emails.clone(),
                others: s.others.clone(),
            }
        }

        fn public_key(k: &PublicKeyInfo) -> wit::PublicKey {
            let algorithm = match k.algorithm {
                KeyAlgorithm::Rsa => wit::KeyAlgorithm::Rsa,
                KeyAlgorithm::EcdsaP256 => wit::KeyAlgorithm::EcdsaP256,
                KeyAlgorithm::EcdsaP384 => wit::KeyAlgorithm::EcdsaP384,
                KeyAlgorithm::EcdsaP521 => wit::KeyAlgorithm::EcdsaP521,
                KeyAlgorithm::Ed25519 => wit::KeyAlgorithm::Ed25519,
                KeyAlgorithm::Ed448 => wit::KeyAlgorithm::Ed448,
                KeyAlgorithm::Other => wit::KeyAlgorithm::Other,
            };
            wit::PublicKey {
                algorithm,
                bits: k.bits,
            }
        }

        pub(in crate::plugin) fn key_usage(bits: &[KeyUsageBit]) -> wit::KeyUsage {
            let mut ku = wit::KeyUsage::empty();
            for bit in bits {
                ku |= match bit {
                    KeyUsageBit::DigitalSignature => wit::KeyUsage::DIGITAL_SIGNATURE,
                    KeyUsageBit::ContentCommitment => wit::KeyUsage::CONTENT_COMMITMENT,
                    KeyUsageBit::KeyEncipherment => wit::KeyUsage::KEY_ENCIPHERMENT,
                    KeyUsageBit::DataEncipherment => wit::KeyUsage::DATA_ENCIPHERMENT,
                    KeyUsageBit::KeyAgreement => wit::KeyUsage::KEY_AGREEMENT,
                    KeyUsageBit::KeyCertSign => wit::KeyUsage::KEY_CERT_SIGN,
                    KeyUsageBit::CrlSign => wit::KeyUsage::CRL_SIGN,
                    KeyUsageBit::EncipherOnly => wit::KeyUsage::ENCIPHER_ONLY,
                    KeyUsageBit::DecipherOnly => wit::KeyUsage::DECIPHER_ONLY,
                };
            }
            ku
        }

        pub(in crate::plugin) fn eku(e: &ExtendedKeyUsage) -> wit::ExtendedKeyUsage {
            match e {
                ExtendedKeyUsage::ServerAuth => wit::ExtendedKeyUsage::ServerAuth,
                ExtendedKeyUsage::ClientAuth => wit::ExtendedKeyUsage::ClientAuth,
                ExtendedKeyUsage::CodeSigning => wit::ExtendedKeyUsage::CodeSigning,
                ExtendedKeyUsage::EmailProtection => wit::ExtendedKeyUsage::EmailProtection,
                ExtendedKeyUsage::TimeStamping => wit::ExtendedKeyUsage::TimeStamping,
                ExtendedKeyUsage::OcspSigning => wit::ExtendedKeyUsage::OcspSigning,
                ExtendedKeyUsage::Any => wit::ExtendedKeyUsage::Any,
                ExtendedKeyUsage::Other(oid) => wit::ExtendedKeyUsage::Other(oid.clone()),
            }
        }

        pub(in crate::plugin) fn certificate(c: &CertificateFacts) -> wit::Certificate {
            wit::Certificate {
                subject: dn(&c.subject),
                issuer: dn(&c.issuer),
                sans: sans(&c.sans),
                serial: c.serial.clone(),
                not_before: unix(c.not_before),
                not_after: unix(c.not_after),
                is_ca: c.is_ca,
                public_key: public_key(&c.public_key),
                key_usage: c.key_usage.as_deref().map(key_usage),
                extended_key_usages: c.extended_key_usages.iter().map(eku).collect(),
                subject_key_id: c.subject_key_id.clone(),
                authority_key_id: c.authority_key_id.clone(),
            }
        }

        usage_mapping!(
            Signing,
            DigitalSignature,
            ContentCommitment,
            KeyEncipherment,
            KeyAgreement,
            DataEncipherment,
            CertSign,
            CrlSign,
            EncipherOnly,
            DecipherOnly,
            Any,
            ServerAuth,
            ClientAuth,
            CodeSigning,
            EmailProtection,
            SMime,
            IpsecEndSystem,
            IpsecTunnel,
            IpsecUser,
            Timestamping,
            OcspSigning,
            MicrosoftSgc,
            NetscapeSgc,
        );

        pub(in crate::plugin) fn san_request(r: &SanRequest) -> san::SanRequest {
            san::SanRequest {
                profile: r.profile.clone(),
                stage: match r.stage {
                    SanStage::Configuration => san::Stage::Configuration,
                    SanStage::Csr => san::Stage::Csr,
                    SanStage::Template => san::Stage::Template,
                },
                subject: dn(&r.subject),
                sans: sans(&r.sans),
                node: r.node.as_ref().map(|n| san::NodeIdentity {
                    name: n.name.clone(),
                    addresses: n.addresses.iter().map(ip).collect(),
                }),
                now: unix(r.now),
            }
        }

        pub(in crate::plugin) fn csr_request(r: &CsrRequest) -> csr::CsrRequest {
            csr::CsrRequest {
                signer_name: r.signer_name.clone(),
                username: r.username.clone(),
                uid: r.uid.clone(),
                groups: r.groups.clone(),
                subject: dn(&r.subject),
                sans: sans(&r.sans),
                public_key: public_key(&r.public_key),
                usages: r.usages.iter().copied().map(usage_to_wit).collect(),
                expiration_seconds: r.expiration_seconds,
                requests_ca: r.requests_ca,
                other_extensions: r.other_extensions.clone(),
                node_addresses: r.node_addresses.iter().map(ip).collect(),
                now: unix(r.now),
            }
        }

        // ---- answers --------------------------------------------------------------------------------

        fn text(field: &str, s: &str) -> Result<String, String> {
            if s.trim().is_empty() {
                return Err(format!("empty {field}"));
            }
            Ok(sanitize(s, MAX_TEXT))
        }

        fn lifetime(l: Option<u64>) -> Result<Option<u64>, String> {
            match l {
                Some(s) if s < MIN_LIFETIME_SECONDS => Err(format!(
                    "lifetime of {s} s is shorter than the {MIN_LIFETIME_SECONDS}-s minimum"
                )),
                // Anything beyond 1000 years is nonsense, whatever the CA says.
                Some(s) if s > 1000 * 365 * 86_400 => {
                    Err(format!("lifetime of {s} s is absurdly long"))
                }
                other => Ok(other),
            }
        }

        fn violations(list: Vec<wit::Violation>) -> Result<Vec<Violation>, String> {
            if list.is_empty() {
                return Err("a denial must carry at least one violation".into());
            }
            if list.len() > MAX_VIOLATIONS {
                return Err(format!(
                    "{} violations (at most {MAX_VIOLATIONS})",
                    list.len()
                ));
            }
            list.into_iter()
                .map(|v| {
                    let code_ok = !v.code.is_empty()
                        && v.code.len() <= 64
                        && v.code.starts_with(|c: char| c.is_ascii_uppercase())
                        && v.code.chars().all(|c| c.is_ascii_alphanumeric());
                    if !code_ok {
                        return Err(format!(
                            "violation code {:?} is not a TitleCase identifier",
                            sanitize(&v.code, 80)
                        ));
                    }
                    Ok(Violation {
                        code: v.code,
                        field: sanitize(&v.field, 512),
                        message: text("violation message", &v.message)?,
                    })
                })
                .collect()
        }

        fn renew_at(t: Option<i64>) -> Result<Option<OffsetDateTime>, String> {
            match t {
                Some(t) => OffsetDateTime::from_unix_timestamp(t)
                    .map(Some)
                    .map_err(|_| format!("renew-at {t} is out of range")),
                None => Ok(None),
            }
        }

        pub(in crate::plugin) fn san_decision(d: san::SanDecision) -> Result<SanDecision, String> {
            Ok(match d {
                san::SanDecision::Allow => SanDecision::Allow,
                san::SanDecision::Deny(list) => SanDecision::Deny {
                    violations: violations(list)?,
                },
            })
        }

        pub(in crate::plugin) fn csr_decision(d: csr::CsrDecision) -> Result<CsrDecision, String> {
            Ok(match d {
                csr::CsrDecision::Approve(a) => CsrDecision::Approve {
                    reason: text("reason", &a.reason)?,
                    lifetime_seconds: lifetime(a.lifetime_seconds)?,
                    usages: a
                        .usages
                        .map(|u| u.into_iter().map(usage_from_wit).collect()),
                },
                csr::CsrDecision::Deny(list) => CsrDecision::Deny {
                    violations: violations(list)?,
                },
                csr::CsrDecision::Abstain(a) => CsrDecision::Abstain {
                    reason: text("reason", &a.reason)?,
                },
            })
        }
    };
}

/// A renewal decision whose reasons are the plugin's own text (0.1 and 0.2).
macro_rules! text_reasons {
    () => {
        pub(in crate::plugin) fn renewal_decision(
            d: renewal::RenewalDecision,
        ) -> Result<RenewalDecision, String> {
            Ok(match d {
                renewal::RenewalDecision::Keep(k) => RenewalDecision::Keep {
                    reason: text("reason", &k.reason)?,
                    renew_at: renew_at(k.renew_at)?,
                },
                renewal::RenewalDecision::Renew(r) => RenewalDecision::Renew {
                    reason: text("reason", &r.reason)?,
                    lifetime_seconds: lifetime(r.lifetime_seconds)?,
                },
            })
        }
    };
}

/// `rotor:policy@0.1.0`.
pub(super) mod v01 {
    use super::super::bindings::v01::exports::rotor::policy::{
        csr_approval as csr, renewal, san_validation as san,
    };
    use super::super::bindings::v01::rotor::policy::types as wit;

    conversions!();
    text_reasons!();

    /// The whole certificate, copied into the request.
    pub(in crate::plugin) fn renewal_request(
        r: &crate::contract::RenewalRequest,
    ) -> renewal::RenewalRequest {
        renewal::RenewalRequest {
            name: r.name.clone(),
            certificate: certificate(&r.certificate),
            issuer_not_after: r.issuer_not_after.map(unix),
            now: unix(r.now),
        }
    }
}

/// `rotor:policy@0.2.0`.
pub(super) mod v02 {
    use super::super::bindings::v02::exports::rotor::policy::{
        csr_approval as csr, renewal, san_validation as san,
    };
    use super::super::bindings::v02::rotor::policy::types as wit;

    conversions!();
    text_reasons!();

    /// What renewal decisions usually need; the rest stays behind the details handle.
    pub(in crate::plugin) fn renewal_request(r: &super::RenewalRequest) -> renewal::RenewalRequest {
        let c = &*r.certificate;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        renewal::RenewalRequest {
            name: r.name.clone(),
            serial: c.serial.clone(),
            not_before: unix(c.not_before),
            not_after: unix(c.not_after),
            is_ca: c.is_ca,
            key_algorithm: public_key(&c.public_key).algorithm,
            key_bits: c.public_key.bits,
            dns_name_count: count(c.sans.dns_names.len()),
            ip_address_count: count(c.sans.ip_addresses.len()),
            other_name_count: count(c.sans.uris.len() + c.sans.emails.len() + c.sans.others.len()),
            issuer_not_after: r.issuer_not_after.map(unix),
            now: unix(r.now),
        }
    }
}

/// `rotor:policy@0.3.0`.
pub(super) mod v03 {
    use super::super::bindings::v03::exports::rotor::policy::{
        csr_approval as csr, renewal, san_validation as san,
    };
    use super::super::bindings::v03::rotor::policy::types as wit;
    use crate::contract::RenewalReason;

    conversions!();

    /// Scalars only; the name, the serial and the rest stay behind the details handle.
    pub(in crate::plugin) fn renewal_request(r: &super::RenewalRequest) -> renewal::RenewalRequest {
        let c = &*r.certificate;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        renewal::RenewalRequest {
            not_before: unix(c.not_before),
            not_after: unix(c.not_after),
            is_ca: c.is_ca,
            key_algorithm: public_key(&c.public_key).algorithm,
            key_bits: c.public_key.bits,
            dns_name_count: count(c.sans.dns_names.len()),
            ip_address_count: count(c.sans.ip_addresses.len()),
            other_name_count: count(c.sans.uris.len() + c.sans.emails.len() + c.sans.others.len()),
            issuer_not_after: r.issuer_not_after.map(unix),
            now: unix(r.now),
        }
    }

    /// A coded reason in the host's words (from the request it answers), or the plugin's text.
    fn reason(r: renewal::Reason, request: &super::RenewalRequest) -> Result<String, String> {
        use renewal::Reason as R;
        let code = match r {
            R::Text(t) => return text("reason", &t),
            R::CaCertificate => RenewalReason::CaCertificate,
            R::InvalidValidity => RenewalReason::InvalidValidity,
            R::Expired => RenewalReason::Expired,
            R::WithinWindow(days) => RenewalReason::WithinWindow { days },
            R::OutsideWindow(days) => RenewalReason::OutsideWindow { days },
        };
        let c = &*request.certificate;
        Ok(code.words(c.not_before, c.not_after, request.now))
    }

    pub(in crate::plugin) fn renewal_decision(
        d: renewal::RenewalDecision,
        request: &super::RenewalRequest,
    ) -> Result<RenewalDecision, String> {
        Ok(match d {
            renewal::RenewalDecision::Keep(k) => RenewalDecision::Keep {
                reason: reason(k.reason, request)?,
                renew_at: renew_at(k.renew_at)?,
            },
            renewal::RenewalDecision::Renew(r) => RenewalDecision::Renew {
                reason: reason(r.reason, request)?,
                lifetime_seconds: lifetime(r.lifetime_seconds)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::v01::*;
    use crate::contract::SanDecision;
    use crate::facts::Usage;
    use crate::plugin::bindings::v01::exports::rotor::policy::{
        csr_approval as csr, renewal, san_validation as san,
    };
    use crate::plugin::bindings::v01::rotor::policy::types as wit;

    #[test]
    fn every_usage_maps_to_the_wit_case_spelled_like_its_kubernetes_name() {
        // The WIT file is the contract vendors build against: its `usage` cases, in order.
        let wit = include_str!("../../../wit/v0.1/types.wit");
        let start = wit
            .find("enum usage {")
            .expect("types.wit declares enum usage")
            + 12;
        let body = &wit[start..start + wit[start..].find('}').expect("the enum ends")];
        let cases: Vec<&str> = body
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cases.len(), Usage::ALL.len(), "{cases:?}");
        for &u in Usage::ALL {
            let w = usage_to_wit(u);
            // `s/mime` is `s-mime` in WIT, `server auth` is `server-auth`.
            let expected = u.as_str().replace([' ', '/'], "-");
            assert_eq!(cases[w as usize], expected, "{u:?}");
            assert_eq!(usage_from_wit(w), u);
            assert_eq!(u.as_str().parse::<Usage>(), Ok(u));
            assert_eq!(
                serde_json::to_value(u).unwrap(),
                serde_json::Value::String(u.as_str().into())
            );
        }
    }

    #[test]
    fn malformed_answers_are_refused() {
        assert!(
            san_decision(san::SanDecision::Deny(vec![]))
                .unwrap_err()
                .contains("at least one")
        );
        let bad_code = wit::Violation {
            code: "not title".into(),
            field: String::new(),
            message: "m".into(),
        };
        assert!(san_decision(san::SanDecision::Deny(vec![bad_code])).is_err());
        let short = renewal::RenewalDecision::Renew(renewal::RenewDecision {
            reason: "r".into(),
            lifetime_seconds: Some(5),
        });
        assert!(renewal_decision(short).unwrap_err().contains("shorter"));
        let empty = csr::CsrDecision::Abstain(csr::Abstention {
            reason: "  ".into(),
        });
        assert!(csr_decision(empty).is_err());
    }

    #[test]
    fn plugin_text_is_sanitized() {
        let v = wit::Violation {
            code: "Bad".into(),
            field: "x\u{1b}[31m".into(),
            message: "a\nb".into(),
        };
        let SanDecision::Deny { violations } =
            san_decision(san::SanDecision::Deny(vec![v])).unwrap()
        else {
            panic!()
        };
        assert_eq!(violations[0].field, "x [31m");
        assert_eq!(violations[0].message, "a b");
    }

    #[test]
    fn contract_0_3_reasons_are_worded_by_the_host_from_the_request() {
        use crate::contract::RenewalDecision;
        use crate::facts::parse_certificates_pem;
        use crate::plugin::bindings::v03::exports::rotor::policy::renewal as r3;
        use time::format_description::well_known::Rfc3339;

        let pem =
            include_bytes!("../../../policies/default/fixtures/inputs/serving-kube-apiserver.crt");
        let certs = parse_certificates_pem("fixture", pem).unwrap();
        let request = crate::contract::RenewalRequest {
            name: "serving-kube-apiserver".into(),
            certificate: certs[0].clone().into(),
            issuer_not_after: None,
            now: certs[0].not_after - time::Duration::days(10),
        };
        let not_after = certs[0].not_after.format(&Rfc3339).unwrap();
        let renew = |reason| {
            super::v03::renewal_decision(
                r3::RenewalDecision::Renew(r3::RenewDecision {
                    reason,
                    lifetime_seconds: None,
                }),
                &request,
            )
        };
        let RenewalDecision::Renew { reason, .. } = renew(r3::Reason::WithinWindow(90)).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            reason,
            format!("expires on {not_after} (in 10 days), within the 90-day renewal window")
        );
        // Free text is the plugin's, untrusted: sanitized, and never empty.
        let RenewalDecision::Renew { reason, .. } =
            renew(r3::Reason::Text("a\u{1b}b".into())).unwrap()
        else {
            panic!()
        };
        assert_eq!(reason, "a b");
        assert!(renew(r3::Reason::Text(" ".into())).is_err());
        // The renewal request carries no strings in 0.3.
        let wire = super::v03::renewal_request(&request);
        assert_eq!(
            wire.not_after,
            request.certificate.not_after.unix_timestamp()
        );
    }
}
