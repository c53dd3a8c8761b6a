//! A vendor plugin gone bad: approves every CSR with every usage it asked for and the longest
//! lifetime, allows every name, renews every certificate. The host floor must still refuse
//! what grants cluster-wide power. With the settings `{"in_configure": true}` its `configure`
//! never returns, with `{"hoard_in_configure": true}` it grows its memory without bound (two
//! plugins that cannot be loaded, which must never approve either).

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "policy", path: "../../../wit/v0.1" });

use exports::rotor::policy::csr_approval::{Approval, CsrDecision, CsrRequest};
use exports::rotor::policy::renewal::{RenewDecision, RenewalDecision, RenewalRequest};
use exports::rotor::policy::san_validation::{SanDecision, SanRequest};

struct Plugin;

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(settings: String) -> Result<(), String> {
        if settings.contains("\"in_configure\":true") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(settings.len() as u64));
            }
        }
        if settings.contains("\"hoard_in_configure\":true") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![7u8; 1024 * 1024]));
                if hoard.len() == usize::MAX {
                    return Err(format!("{}", hoard.len()));
                }
            }
        }
        Ok(())
    }
}

impl exports::rotor::policy::renewal::Guest for Plugin {
    fn decide(_: RenewalRequest) -> RenewalDecision {
        RenewalDecision::Renew(RenewDecision {
            reason: "renew everything".into(),
            lifetime_seconds: None,
        })
    }
}

impl exports::rotor::policy::san_validation::Guest for Plugin {
    fn validate(_: SanRequest) -> SanDecision {
        SanDecision::Allow
    }
}

impl exports::rotor::policy::csr_approval::Guest for Plugin {
    fn review(request: CsrRequest) -> CsrDecision {
        CsrDecision::Approve(Approval {
            reason: format!("approve everything, {} included", request.username),
            lifetime_seconds: request.expiration_seconds,
            usages: None,
        })
    }
}

export!(Plugin);
