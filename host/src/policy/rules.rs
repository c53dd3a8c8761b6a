//! The host's rules on every plugin answer, whatever the plugin: pure functions of the request
//! and the answer, so they are tested here without any compiled plugin.
//!
//! - Renewal: a CA certificate is never renewed automatically; a requested lifetime is capped
//!   at [`MAX_LEAF_LIFETIME_SECONDS`] and clamped to the issuing CA's notAfter.
//! - CSR: an approval may not grant a usage the request did not ask for (a malformed answer);
//!   an approved lifetime is clamped to the requested `expirationSeconds`.

use time::OffsetDateTime;

use crate::contract::{CsrDecision, CsrRequest, RenewalDecision, RenewalRequest};

/// The longest lifetime rotor gives a renewed leaf, whatever a plugin asks: 100 years (the
/// issuing CA's notAfter usually clamps it far earlier).
pub(crate) const MAX_LEAF_LIFETIME_SECONDS: u64 = 36_500 * 86_400;

/// The host's rules on a renewal answer: the decision to act on, and a note for each change.
pub(crate) fn renewal(
    request: &RenewalRequest,
    mut decision: RenewalDecision,
) -> (RenewalDecision, Vec<String>) {
    let mut notes = Vec::new();
    if request.certificate.is_ca && decision.is_renew() {
        notes.push(format!(
            "the policy said renew ({}), but CA certificates are never renewed automatically: kept",
            decision.reason()
        ));
        let keep = RenewalDecision::Keep {
            reason: "CA certificate: rotate CAs with 'rotor certificate rotate-ca'".into(),
            renew_at: None,
        };
        return (keep, notes);
    }
    if let RenewalDecision::Renew {
        lifetime_seconds: Some(lifetime),
        ..
    } = &mut decision
    {
        if *lifetime > MAX_LEAF_LIFETIME_SECONDS {
            notes.push(format!(
                "lifetime capped from {lifetime} to {MAX_LEAF_LIFETIME_SECONDS} seconds (100 years), the most rotor issues"
            ));
            *lifetime = MAX_LEAF_LIFETIME_SECONDS;
        }
        if let Some(ca_not_after) = request.issuer_not_after
            && let Some(note) = clamp_to_ca(lifetime, request.now, ca_not_after)
        {
            notes.push(note);
        }
    }
    (decision, notes)
}

/// Clamp `lifetime` (seconds from `now`) so it ends no later than `ca_not_after`. Returns a note
/// when it changed anything.
pub(crate) fn clamp_to_ca(
    lifetime: &mut u64,
    now: OffsetDateTime,
    ca_not_after: OffsetDateTime,
) -> Option<String> {
    let available = (ca_not_after - now).whole_seconds();
    if available <= 0 {
        return Some(format!(
            "the issuing CA expired on {}; the certificate cannot be renewed until the CA is rotated",
            crate::clock::rfc3339(ca_not_after)
        ));
    }
    let available = available.unsigned_abs();
    if *lifetime > available {
        let note = format!(
            "lifetime clamped from {} to {} seconds: the issuing CA expires on {}",
            lifetime,
            available,
            crate::clock::rfc3339(ca_not_after)
        );
        *lifetime = available;
        return Some(note);
    }
    None
}

/// The host's rules on a CSR answer: the decision and its notes, or why the answer is malformed
/// (the caller reports it as the plugin's failure, which never approves).
pub(crate) fn csr_answer(
    request: &CsrRequest,
    decision: CsrDecision,
) -> Result<(CsrDecision, Vec<String>), String> {
    let mut notes = Vec::new();
    let CsrDecision::Approve {
        reason,
        mut lifetime_seconds,
        usages,
    } = decision
    else {
        return Ok((decision, notes));
    };
    if let Some(granted) = &usages
        && let Some(extra) = granted.iter().find(|u| !request.usages.contains(u))
    {
        return Err(format!(
            "the approval grants usage '{extra}', which the request did not ask for"
        ));
    }
    if let (Some(l), Some(asked)) = (lifetime_seconds, request.expiration_seconds)
        && l > asked
    {
        notes.push(format!(
            "lifetime clamped from {l} to the requested {asked} seconds"
        ));
        lifetime_seconds = Some(asked);
    }
    Ok((
        CsrDecision::Approve {
            reason,
            lifetime_seconds,
            usages,
        },
        notes,
    ))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::facts::{CertificateFacts, DistinguishedName, PublicKeyInfo, SubjectAltNames};
    use crate::facts::{KeyAlgorithm, Usage};

    const NOW: OffsetDateTime = datetime!(2027-01-01 00:00 UTC);

    fn certificate(is_ca: bool) -> CertificateFacts {
        CertificateFacts {
            subject: DistinguishedName::default(),
            issuer: DistinguishedName::default(),
            sans: SubjectAltNames::default(),
            serial: "01".into(),
            not_before: datetime!(2026-01-01 00:00 UTC),
            not_after: datetime!(2027-01-01 00:00 UTC),
            is_ca,
            public_key: PublicKeyInfo {
                algorithm: KeyAlgorithm::EcdsaP256,
                bits: 256,
            },
            key_usage: None,
            extended_key_usages: Vec::new(),
            subject_key_id: None,
            authority_key_id: None,
        }
    }

    fn request(is_ca: bool, issuer_not_after: Option<OffsetDateTime>) -> RenewalRequest {
        RenewalRequest {
            name: "n".into(),
            certificate: certificate(is_ca).into(),
            issuer_not_after,
            now: NOW,
        }
    }

    fn renew(lifetime_seconds: Option<u64>) -> RenewalDecision {
        RenewalDecision::Renew {
            reason: "r".into(),
            lifetime_seconds,
        }
    }

    #[test]
    fn a_ca_is_kept_whatever_the_plugin_says() {
        let (d, notes) = renewal(&request(true, None), renew(Some(86_400)));
        assert!(!d.is_renew(), "{d:?}");
        assert!(
            notes[0].contains("never renewed automatically"),
            "{notes:?}"
        );
        // A leaf with the same answer is renewed.
        let (d, notes) = renewal(&request(false, None), renew(Some(86_400)));
        assert!(d.is_renew() && notes.is_empty(), "{d:?} {notes:?}");
    }

    #[test]
    fn lifetimes_are_capped_at_a_century_and_clamped_to_the_ca() {
        let (d, notes) = renewal(&request(false, None), renew(Some(u64::MAX)));
        assert_eq!(
            d.lifetime().map(|l| l.as_secs()),
            Some(MAX_LEAF_LIFETIME_SECONDS)
        );
        assert!(notes[0].contains("100 years"), "{notes:?}");

        let ca_end = NOW + time::Duration::days(30);
        let (d, notes) = renewal(&request(false, Some(ca_end)), renew(Some(365 * 86_400)));
        assert_eq!(d.lifetime().map(|l| l.as_secs()), Some(30 * 86_400));
        assert!(notes[0].contains("clamped"), "{notes:?}");

        let (d, notes) = renewal(
            &request(false, Some(NOW - time::Duration::days(1))),
            renew(Some(86_400)),
        );
        assert!(d.is_renew());
        assert!(notes[0].contains("expired"), "{notes:?}");

        // No lifetime asked: nothing to clamp.
        let (d, notes) = renewal(&request(false, Some(ca_end)), renew(None));
        assert_eq!(d.lifetime(), None);
        assert!(notes.is_empty());
    }

    fn csr(usages: Vec<Usage>, expiration_seconds: Option<u64>) -> CsrRequest {
        CsrRequest {
            signer_name: "kubernetes.io/kubelet-serving".into(),
            username: "system:node:a".into(),
            uid: String::new(),
            groups: vec!["system:nodes".into()],
            subject: DistinguishedName::default(),
            sans: SubjectAltNames::default(),
            public_key: PublicKeyInfo {
                algorithm: KeyAlgorithm::EcdsaP256,
                bits: 256,
            },
            usages,
            expiration_seconds,
            requests_ca: false,
            other_extensions: Vec::new(),
            node_addresses: Vec::new(),
            now: NOW,
        }
    }

    fn approve(lifetime_seconds: Option<u64>, usages: Option<Vec<Usage>>) -> CsrDecision {
        CsrDecision::Approve {
            reason: "ok".into(),
            lifetime_seconds,
            usages,
        }
    }

    #[test]
    fn an_approval_never_grants_a_usage_nobody_asked_for() {
        let asked = vec![Usage::DigitalSignature, Usage::ServerAuth];
        let err = csr_answer(
            &csr(asked.clone(), None),
            approve(None, Some(vec![Usage::ClientAuth])),
        )
        .unwrap_err();
        assert!(err.contains("client auth"), "{err}");
        // Fewer usages than asked: fine, as granted.
        let (d, _) = csr_answer(
            &csr(asked, None),
            approve(None, Some(vec![Usage::ServerAuth])),
        )
        .unwrap();
        assert!(
            matches!(d, CsrDecision::Approve { usages: Some(u), .. } if u == [Usage::ServerAuth])
        );
    }

    #[test]
    fn an_approved_lifetime_is_clamped_to_the_requested_one() {
        let (d, notes) = csr_answer(
            &csr(vec![Usage::ClientAuth], Some(3600)),
            approve(Some(86_400), None),
        )
        .unwrap();
        assert!(
            matches!(
                d,
                CsrDecision::Approve {
                    lifetime_seconds: Some(3600),
                    ..
                }
            ),
            "{d:?}"
        );
        assert!(notes[0].contains("clamped"), "{notes:?}");
        // Denials and abstentions pass through.
        let deny = CsrDecision::Abstain { reason: "x".into() };
        let (d, notes) = csr_answer(&csr(vec![], None), deny.clone()).unwrap();
        assert_eq!(d, deny);
        assert!(notes.is_empty());
    }
}
