//! Allocates 1 MiB after 1 MiB, forever, in `decide`; with the settings `{"in_configure": true}`,
//! in `configure` already (a plugin that cannot be loaded).

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "renewal-policy", path: "../../../wit/v0.1" });

use exports::rotor::policy::renewal::{Guest, KeepDecision, RenewalDecision, RenewalRequest};

struct Plugin;

impl exports::rotor::policy::config::Guest for Plugin {
    fn configure(settings: String) -> Result<(), String> {
        if settings.contains("\"in_configure\":true") {
            return Err(format!("never returned: {}", hoard()));
        }
        Ok(())
    }
}

/// Grows memory until the host stops it.
fn hoard() -> usize {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(std::hint::black_box(vec![7u8; 1024 * 1024]));
        if hoard.len() == usize::MAX {
            break;
        }
    }
    hoard.len()
}

impl Guest for Plugin {
    fn decide(_: RenewalRequest) -> RenewalDecision {
        RenewalDecision::Keep(KeepDecision {
            reason: format!("{}", hoard()),
            renew_at: None,
        })
    }
}

export!(Plugin);
