//! Not hostile: the floor of a renewal decision on the current contract (rotor:policy@0.3.0),
//! for the policy bench. It takes the same request as the default renewal-window plugin and
//! answers at once with a constant `keep` (a coded reason the host words, no renewal instant),
//! built on the SDK like the shipped plugins (same allocator, same bindings). What it costs
//! warm is what the contract's call costs with no rule: the part no plugin can go below.

#![allow(
    unsafe_code,
    reason = "the SDK's export macro expands to wit-bindgen's unsafe glue; the rule contains none"
)]

use rotor_policy_sdk::renewal::exports::rotor::policy::renewal::{
    Guest, KeepDecision, Reason, RenewalDecision, RenewalRequest,
};

struct Plugin;

impl Guest for Plugin {
    fn configure(_: String) -> Result<(), String> {
        Ok(())
    }

    fn decide(_: RenewalRequest) -> RenewalDecision {
        RenewalDecision::Keep(KeepDecision {
            reason: Reason::OutsideWindow(90),
            renew_at: None,
        })
    }
}

rotor_policy_sdk::renewal::export!(Plugin);
