//! `renewal-window`: rotor's default renewal policy plugin.
//!
//! Settings (JSON, every field optional):
//! - `mode`: `"window"` (default) or `"fraction"`.
//! - `lifetime_days`: lifetime to request for renewed certificates (default: the host's 365 days).
//! - `issuer_backdate_seconds` (default 3600, at most a day): how far issuers set notBefore
//!   before the real issuance (k3s, RKE2 and Let's Encrypt: one hour). The loop guard measures
//!   a certificate's age from notBefore plus this, so a fresh certificate is never renewed.
//! - window mode: `renew_before_days` (default 90): renew when expired or expiring within it.
//!   When the window would open before a tenth of the certificate's life has passed (a 30-day
//!   leaf and a 90-day window), the window alone would renew it at once, forever: such a
//!   certificate is renewed at 2/3 of its lifetime instead (cert-manager's answer when
//!   renew-before is not shorter than the lifetime).
//! - fraction mode: `renew_at_fraction` (default 2/3), `jitter_fraction` (default 0.1, moves the
//!   renewal earlier by up to this fraction of the lifetime, seeded by the serial),
//!   `renew_before_seconds` or `renew_before_percentage` (of the lifetime remaining),
//!   `min_renew_before_seconds` (default 300), `min_age_seconds` (default 300) and
//!   `min_age_fraction` (default 0.1): the loop guard.
//!
//! CA certificates are always kept: rotor never renews a CA automatically.

#![allow(
    unsafe_code,
    reason = "the SDK's export macro expands to wit-bindgen's unsafe glue; the rules contain none"
)]

mod rules;

use rotor_policy_sdk::settings;

use rotor_policy_sdk::renewal::exports::rotor::policy::renewal::{
    Guest as Renewal, KeepDecision, Reason, RenewDecision, RenewalDecision, RenewalRequest,
};
use rotor_policy_sdk::renewal::rotor::policy::facts;

impl settings::Settings for rules::Settings {
    fn from_json(json: &str) -> Result<Self, String> {
        rules::Settings::from_json(json)
    }
}

struct Plugin;

impl Renewal for Plugin {
    fn configure(json: String) -> Result<(), String> {
        settings::configure::<rules::Settings>(&json)
    }

    // Everything the rules need is in the lean request, but for fraction mode's jitter seed
    // (the serial), asked for only then.
    fn decide(request: RenewalRequest) -> RenewalDecision {
        let decision = settings::with(|s: &rules::Settings| {
            let cert = rules::Certificate {
                is_ca: request.is_ca,
                not_before: request.not_before,
                not_after: request.not_after,
                serial: if s.needs_serial() {
                    facts::details().serial()
                } else {
                    String::new()
                },
            };
            rules::decide(s, &cert, request.issuer_not_after, request.now)
        });
        match decision {
            rules::Decision::Keep { reason, renew_at } => RenewalDecision::Keep(KeepDecision {
                reason: wit_reason(reason),
                renew_at,
            }),
            rules::Decision::Renew {
                reason,
                lifetime_seconds,
            } => RenewalDecision::Renew(RenewDecision {
                reason: wit_reason(reason),
                lifetime_seconds,
            }),
        }
    }
}

/// The usual reasons go as codes the host words; the rest as text.
fn wit_reason(reason: rules::Reason) -> Reason {
    match reason {
        rules::Reason::Text(t) => Reason::Text(t),
        rules::Reason::CaCertificate => Reason::CaCertificate,
        rules::Reason::InvalidValidity => Reason::InvalidValidity,
        rules::Reason::Expired => Reason::Expired,
        rules::Reason::WithinWindow(days) => Reason::WithinWindow(days),
        rules::Reason::OutsideWindow(days) => Reason::OutsideWindow(days),
    }
}

rotor_policy_sdk::renewal::export!(Plugin);
