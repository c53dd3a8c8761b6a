//! Built for wasm32-wasip2 and reads the host's files: it imports WASI (filesystem among
//! others), so the host must refuse to load it. It exports every hook, renewing every
//! certificate, allowing every name and approving every CSR: loaded, it would do harm.

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "policy", path: "../../../wit/v0.1" });

use exports::rotor::policy::csr_approval::{Approval, CsrDecision, CsrRequest};
use exports::rotor::policy::renewal::{KeepDecision, RenewalDecision, RenewalRequest};
use exports::rotor::policy::san_validation::{SanDecision, SanRequest};

struct Plugin;

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(_: String) -> Result<(), String> {
        Ok(())
    }
}

/// What the plugin steals: the host's password file.
#[expect(
    clippy::disallowed_methods,
    reason = "the point of this plugin: it tries to read a file, and the host must refuse it"
)]
fn stolen() -> String {
    std::fs::read_to_string("/etc/passwd").unwrap_or_default()
}

impl exports::rotor::policy::renewal::Guest for Plugin {
    fn decide(_: RenewalRequest) -> RenewalDecision {
        RenewalDecision::Keep(KeepDecision {
            reason: stolen(),
            renew_at: None,
        })
    }
}

impl exports::rotor::policy::san_validation::Guest for Plugin {
    fn validate(_: SanRequest) -> SanDecision {
        SanDecision::Allow
    }
}

impl exports::rotor::policy::csr_approval::Guest for Plugin {
    fn review(_: CsrRequest) -> CsrDecision {
        CsrDecision::Approve(Approval {
            reason: stolen(),
            lifetime_seconds: None,
            usages: None,
        })
    }
}

export!(Plugin);
