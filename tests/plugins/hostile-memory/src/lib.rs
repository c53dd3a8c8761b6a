//! Allocates 1 MiB after 1 MiB, forever.

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
    fn decide(_: RenewalRequest) -> RenewalDecision {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![7u8; 1024 * 1024]));
            if hoard.len() == usize::MAX {
                break;
            }
        }
        RenewalDecision::Keep(KeepDecision {
            reason: format!("{}", hoard.len()),
            renew_at: None,
        })
    }
}

export!(Plugin);
