//! Built for wasm32-wasip2 and reads the host's files: it imports WASI (filesystem among
//! others), so the host must refuse to load it.

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "renewal-policy", path: "../../../wit/v0.1" });

use exports::rotor::policy::renewal::{Guest, KeepDecision, RenewalDecision, RenewalRequest};

struct Plugin;

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Plugin {
    #[expect(
        clippy::disallowed_methods,
        reason = "the point of this plugin: it tries to read a file, and the host must refuse it"
    )]
    fn decide(_: RenewalRequest) -> RenewalDecision {
        let stolen = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        RenewalDecision::Keep(KeepDecision {
            reason: stolen,
            renew_at: None,
        })
    }
}

export!(Plugin);
