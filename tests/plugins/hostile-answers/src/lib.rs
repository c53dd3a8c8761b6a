//! Implements every hook and answers each one against the contract; its `configure` refuses
//! `{"refuse": true}`.

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "policy", path: "../../../wit/v0.1" });

use exports::rotor::policy::csr_approval::{Approval, CsrDecision, CsrRequest};
use exports::rotor::policy::renewal::{KeepDecision, RenewalDecision, RenewalRequest};
use exports::rotor::policy::san_validation::{SanDecision, SanRequest};
use rotor::policy::types::Usage;

struct Plugin;

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(settings: String) -> Result<(), String> {
        rotor::policy::host::log(
            rotor::policy::host::LogLevel::Info,
            &format!("configured with {settings}\u{1b}[31m"),
        );
        if settings.contains("\"refuse\":true") {
            return Err("'refuse' is set, so I refuse".into());
        }
        Ok(())
    }
}

impl exports::rotor::policy::renewal::Guest for Plugin {
    fn decide(_: RenewalRequest) -> RenewalDecision {
        // An empty reason breaks the contract.
        RenewalDecision::Keep(KeepDecision {
            reason: String::new(),
            renew_at: None,
        })
    }
}

impl exports::rotor::policy::san_validation::Guest for Plugin {
    fn validate(_: SanRequest) -> SanDecision {
        // A denial without a single violation breaks the contract.
        SanDecision::Deny(Vec::new())
    }
}

impl exports::rotor::policy::csr_approval::Guest for Plugin {
    fn review(_: CsrRequest) -> CsrDecision {
        // Approving with a usage nobody asked for: the host must refuse it.
        CsrDecision::Approve(Approval {
            reason: "sure".into(),
            lifetime_seconds: None,
            usages: Some(vec![Usage::CertSign]),
        })
    }
}

export!(Plugin);
