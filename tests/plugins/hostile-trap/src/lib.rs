//! Panics in `decide` (panic = abort: an `unreachable` trap).

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "renewal-policy", path: "../../../wit/v0.1" });

use exports::rotor::policy::renewal::{Guest, RenewalDecision, RenewalRequest};

struct Plugin;

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(_: String) -> Result<(), String> {
        Ok(())
    }
}

impl Guest for Plugin {
    fn decide(request: RenewalRequest) -> RenewalDecision {
        panic!("hostile plugin gives up on {}", request.name)
    }
}

export!(Plugin);
