//! Implements every hook and answers each one against the contract; its `configure` refuses
//! `{"refuse": true}`, and with `{"flood": true}` its SAN and CSR denials carry 100,000
//! violations (the host must refuse them before reading them).

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

/// Set by `configure` (0.1: run in every fresh instance, before the decision).
static FLOOD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// 100,000 violations, when flooding.
fn flood() -> Option<Vec<rotor::policy::types::Violation>> {
    FLOOD.load(std::sync::atomic::Ordering::Relaxed).then(|| {
        (0..100_000)
            .map(|i| rotor::policy::types::Violation {
                code: "Flood".into(),
                field: format!("field-{i}"),
                message: "one of very many".into(),
            })
            .collect()
    })
}

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(settings: String) -> Result<(), String> {
        rotor::policy::host::log(
            rotor::policy::host::LogLevel::Info,
            &format!("configured with {settings}\u{1b}[31m"),
        );
        if settings.contains("\"refuse\":true") {
            return Err("'refuse' is set, so I refuse".into());
        }
        FLOOD.store(
            settings.contains("\"flood\":true"),
            std::sync::atomic::Ordering::Relaxed,
        );
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
        // A denial without a single violation breaks the contract; so do 100,000.
        SanDecision::Deny(flood().unwrap_or_default())
    }
}

impl exports::rotor::policy::csr_approval::Guest for Plugin {
    fn review(_: CsrRequest) -> CsrDecision {
        if let Some(all) = flood() {
            return CsrDecision::Deny(all);
        }
        // Approving with a usage nobody asked for: the host must refuse it.
        CsrDecision::Approve(Approval {
            reason: "sure".into(),
            lifetime_seconds: None,
            usages: Some(vec![Usage::CertSign]),
        })
    }
}

export!(Plugin);
