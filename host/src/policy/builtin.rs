//! The host's built-in rules, used when a bundle has no plugin for a hook or a renewal plugin
//! fails: the documents' rule, renew when expired or within the window.

use std::time::Duration;

use crate::contract::RenewalDecision;
use crate::contract::RenewalRequest;

/// Renew when the certificate has expired or expires within `window`; never renew a CA.
pub(crate) fn renewal(request: &RenewalRequest, window: Duration) -> RenewalDecision {
    let cert = &request.certificate;
    if cert.is_ca {
        return RenewalDecision::Keep {
            reason: "CA certificate: CAs are never renewed automatically".into(),
            renew_at: None,
        };
    }
    let days = window.as_secs() / 86_400;
    let window = time::Duration::seconds(i64::try_from(window.as_secs()).unwrap_or(i64::MAX / 2));
    let left = cert.not_after - request.now;
    if left <= time::Duration::ZERO {
        RenewalDecision::Renew {
            reason: format!(
                "expired on {} (built-in rule)",
                crate::clock::rfc3339(cert.not_after)
            ),
            lifetime_seconds: None,
        }
    } else if let Some(target) = two_thirds_instead(request, window) {
        if request.now >= target {
            RenewalDecision::Renew {
                reason: format!(
                    "renewal time {} reached: the {days}-day window is not shorter than the certificate's life, so 2/3 of its lifetime (built-in rule)",
                    crate::clock::rfc3339(target)
                ),
                lifetime_seconds: None,
            }
        } else {
            RenewalDecision::Keep {
                reason: format!(
                    "expires on {} (in {} days); renewal due on {}: the {days}-day window is not shorter than the certificate's life, so 2/3 of its lifetime (built-in rule)",
                    crate::clock::rfc3339(cert.not_after),
                    left.whole_days(),
                    crate::clock::rfc3339(target)
                ),
                renew_at: Some(target),
            }
        }
    } else if left <= window {
        RenewalDecision::Renew {
            reason: format!(
                "expires on {} (in {} days), within the {days}-day window (built-in rule)",
                crate::clock::rfc3339(cert.not_after),
                left.whole_days()
            ),
            lifetime_seconds: None,
        }
    } else {
        RenewalDecision::Keep {
            reason: format!(
                "expires on {} (in {} days), outside the {days}-day window (built-in rule)",
                crate::clock::rfc3339(cert.not_after),
                left.whole_days()
            ),
            renew_at: cert.not_after.checked_sub(window),
        }
    }
}

/// How far issuers may backdate notBefore (k3s, RKE2, Let's Encrypt: one hour), in seconds.
const BACKDATE: i128 = 3600;
/// The least age before a renewal, in seconds.
const MIN_AGE: i128 = 300;

/// When the window would open before a tenth of the certificate's life (counted from its real
/// issuance, at least five minutes) has passed, as for a 30-day leaf and a 90-day window, the
/// window alone would renew it at once and its replacement too: renew at 2/3 of its lifetime
/// instead (cert-manager's rule), never before that minimum age. The default plugin's window
/// mode applies the same rule. `None` when the window rule applies. Computed in
/// `i128` seconds: certificate times come from files and may be anywhere.
fn two_thirds_instead(
    request: &RenewalRequest,
    window: time::Duration,
) -> Option<time::OffsetDateTime> {
    let cert = &request.certificate;
    let nb = i128::from(cert.not_before.unix_timestamp());
    let na = i128::from(cert.not_after.unix_timestamp());
    let issued = (nb + BACKDATE).min(na);
    let guard = issued + ((na - issued) / 10).max(MIN_AGE);
    if na - i128::from(window.whole_seconds()) >= guard {
        return None;
    }
    let target = (nb + (na - nb) * 2 / 3).max(guard).min(na);
    // Between notBefore and notAfter, so representable.
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(target).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{KeyType, Subject, Validity, self_signed_ca};
    use time::macros::datetime;

    /// A real certificate valid from `not_before` for `days`, presented as a leaf. Test code:
    /// its `unwrap`s only fail if key generation or rcgen itself is broken.
    fn request(
        not_before: time::OffsetDateTime,
        days: i64,
        now: time::OffsetDateTime,
    ) -> RenewalRequest {
        let key = KeyType::EcdsaP256.generate().unwrap();
        let validity = Validity {
            not_before,
            not_after: not_before + time::Duration::days(days),
        };
        let cert = self_signed_ca(&Subject::default(), &key, validity).unwrap();
        let mut facts = crate::facts::parse_certificate_der("c", &cert.der).unwrap();
        facts.is_ca = false;
        RenewalRequest {
            name: "leaf".into(),
            certificate: facts.into(),
            issuer_not_after: None,
            now,
        }
    }

    #[test]
    fn the_window_never_renews_a_fresh_certificate_shorter_than_it() {
        let window = Duration::from_secs(90 * 86_400);
        let issued = datetime!(2027-01-01 00:00 UTC);
        for backdate in [time::Duration::ZERO, time::Duration::hours(1)] {
            let r = request(issued - backdate, 30, issued + time::Duration::minutes(1));
            let d = renewal(&r, window);
            assert!(!d.is_renew(), "{d:?}");
            // Due at 2/3 of its lifetime instead.
            let r = request(issued - backdate, 30, issued + time::Duration::days(21));
            assert!(renewal(&r, window).is_renew());
        }
        // A year-long certificate keeps the window.
        let r = request(issued, 365, issued + time::Duration::days(274));
        assert!(!renewal(&r, window).is_renew());
        let r = request(issued, 365, issued + time::Duration::days(276));
        assert!(renewal(&r, window).is_renew());
    }
}
