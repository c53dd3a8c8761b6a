//! The host's built-in rules, used when a bundle has no plugin for a hook or a renewal plugin
//! fails: the documents' rule, renew when expired or within the window.

use std::time::Duration;

use super::decision::RenewalDecision;
use super::request::RenewalRequest;

/// Renew when the certificate has expired or expires within `window`; never renew a CA.
pub fn renewal(request: &RenewalRequest, window: Duration) -> RenewalDecision {
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
                super::rfc3339(cert.not_after)
            ),
            lifetime_seconds: None,
        }
    } else if left <= window {
        RenewalDecision::Renew {
            reason: format!(
                "expires on {} (in {} days), within the {days}-day window (built-in rule)",
                super::rfc3339(cert.not_after),
                left.whole_days()
            ),
            lifetime_seconds: None,
        }
    } else {
        RenewalDecision::Keep {
            reason: format!(
                "expires on {} (in {} days), outside the {days}-day window (built-in rule)",
                super::rfc3339(cert.not_after),
                left.whole_days()
            ),
            renew_at: cert.not_after.checked_sub(window),
        }
    }
}
