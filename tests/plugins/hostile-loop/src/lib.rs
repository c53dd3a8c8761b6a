//! Never returns from `decide`; with the settings `{"in_configure": true}`, never returns from
//! `configure` either (a plugin that cannot be loaded).

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "renewal-policy", path: "../../../wit/v0.1" });

use exports::rotor::policy::renewal::{Guest, RenewalDecision, RenewalRequest};

struct Plugin;

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(settings: String) -> Result<(), String> {
        if settings.contains("\"in_configure\":true") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(settings.len() as u64));
            }
        }
        Ok(())
    }
}

impl Guest for Plugin {
    fn decide(request: RenewalRequest) -> RenewalDecision {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(request.now as u64));
        }
    }
}

export!(Plugin);
