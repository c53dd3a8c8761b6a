//! # rotor-policy-sdk
//!
//! Everything a rotor policy plugin written in Rust builds on, for the `rotor:policy@0.3.0`
//! contract (the WIT files at the repository's top, `wit/`):
//!
//! - `renewal`, `san`, `csr` (one Cargo feature each: enable the hooks the plugin serves): the
//!   bindings of each hook world, with its export macro (`rotor_policy_sdk::renewal::export!`,
//!   `...::san::export!`, `...::csr::export!`);
//! - [`settings`]: the bundle's settings parsed into your type once, errors naming the field;
//! - `usage` (feature `csr`): Kubernetes usage names (`"server auth"`) to and from the WIT enum;
//! - the arena allocator (feature `arena-allocator`, default): cheap fresh instances;
//! - [`testing`]: request builders to unit-test rules on the host target with `cargo test`;
//! - [`fixtures`]: the fixture format of `rotor policy test`, as types.
//!
//! A renewal plugin, whole (`rotor-policy-sdk = { ..., features = ["renewal"] }`):
//!
//! ```ignore
//! use rotor_policy_sdk::renewal::exports::rotor::policy::renewal;
//! use rotor_policy_sdk::settings::{self, Settings};
//!
//! #[derive(Default, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Window { renew_before_days: Option<i64> }
//! impl Settings for Window {
//!     fn from_json(json: &str) -> Result<Self, String> { settings::parse(json) }
//! }
//!
//! struct Plugin;
//! impl renewal::Guest for Plugin {
//!     fn configure(json: String) -> Result<(), String> { settings::configure::<Window>(&json) }
//!     // (`rotor_policy_sdk::renewal::rotor::policy::facts::details()` has the rest of the
//!     // certificate, when a rule needs more than the request.)
//!     fn decide(r: renewal::RenewalRequest) -> renewal::RenewalDecision {
//!         let days = settings::with(|s: &Window| s.renew_before_days.unwrap_or(90));
//!         // A reason the host words ("expires on ... (in 12 days), within the 30-day renewal
//!         // window"), or `renewal::Reason::Text(...)` in your own words.
//!         if r.not_after - r.now <= days * 86_400 {
//!             renewal::RenewalDecision::Renew(renewal::RenewDecision {
//!                 reason: renewal::Reason::WithinWindow(days as u32), lifetime_seconds: None })
//!         } else {
//!             renewal::RenewalDecision::Keep(renewal::KeepDecision {
//!                 reason: renewal::Reason::OutsideWindow(days as u32),
//!                 renew_at: Some(r.not_after - days * 86_400) })
//!         }
//!     }
//! }
//! rotor_policy_sdk::renewal::export!(Plugin);
//! ```
//!
//! Build it into a component with `rotor policy build DIR` (a `wasm32-unknown-unknown` cdylib
//! with a 64 KiB stack, turned into a component that imports nothing but `rotor:policy`).

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated glue and the allocator are unsafe; see alloc.rs"
)]

mod alloc;
pub mod fixtures;
pub mod settings;
pub mod testing;
#[cfg(feature = "csr")]
pub mod usage;

/// The contract version these bindings implement.
pub const CONTRACT: &str = "rotor:policy@0.3.0";

/// Bindings of the `renewal-policy` world: export `renewal`.
#[cfg(feature = "renewal")]
pub mod renewal {
    wit_bindgen::generate!({
        world: "renewal-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "rotor_policy_sdk::renewal",
    });
}

/// Bindings of the `san-policy` world: export `san-validation`.
#[cfg(feature = "san")]
pub mod san {
    wit_bindgen::generate!({
        world: "san-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "rotor_policy_sdk::san",
    });
}

/// Bindings of the `csr-policy` world: export `csr-approval`.
#[cfg(feature = "csr")]
pub mod csr {
    wit_bindgen::generate!({
        world: "csr-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "rotor_policy_sdk::csr",
    });
}
