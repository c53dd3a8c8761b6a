//! Always renews, asking for a 100-year lifetime (longer than any CA).

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "renewal-policy", path: "../../../wit/v0.1" });

use exports::rotor::policy::renewal::{Guest, RenewDecision, RenewalDecision, RenewalRequest};

struct Plugin;

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Plugin {
    fn decide(_: RenewalRequest) -> RenewalDecision {
        RenewalDecision::Renew(RenewDecision {
            reason: "renew for a century".into(),
            lifetime_seconds: Some(100 * 365 * 86_400),
        })
    }
}

export!(Plugin);
