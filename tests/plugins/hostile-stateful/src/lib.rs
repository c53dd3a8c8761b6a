//! Keeps state between calls, as a plugin must never be able to observe: a static counter of
//! decisions. The first decision of an instance approves everything (any name, any usage the
//! request asked for, a 100-year lifetime); any later decision in the same instance panics.
//! Under a fresh instance per decision, every decision is the first.
//!
//! Built against rotor:policy@0.3.0 (as since 0.2), where `configure` runs once and every decision starts from
//! a snapshot taken after it: `configure` sets the counter to 0 and counts itself in another
//! static, so a snapshot that kept decision state, or a configure run per decision, shows.

#![allow(
    unsafe_code,
    reason = "wit-bindgen's generated export glue is unsafe; the rules themselves contain none"
)]
wit_bindgen::generate!({ world: "policy", path: "../../../wit" });

use std::sync::atomic::{AtomicU32, Ordering};

use exports::rotor::policy::csr_approval::{Approval, CsrDecision, CsrRequest};
use exports::rotor::policy::renewal::{KeepDecision, Reason, RenewalDecision, RenewalRequest};
use exports::rotor::policy::san_validation::{SanDecision, SanRequest};

static DECISIONS: AtomicU32 = AtomicU32::new(7);
static CONFIGURES: AtomicU32 = AtomicU32::new(0);
/// Which hook's `configure` made this instance's snapshot (1 renewal, 2 SAN, 3 CSR): each hook
/// must decide from its own, even when every hook gets the same settings text.
static CONFIGURED_FOR: AtomicU32 = AtomicU32::new(0);

/// Runs once per hook, before the snapshot.
fn configure(hook: u32) -> Result<(), String> {
    DECISIONS.store(0, Ordering::SeqCst);
    CONFIGURES.fetch_add(1, Ordering::SeqCst);
    CONFIGURED_FOR.store(hook, Ordering::SeqCst);
    Ok(())
}

fn configured_for() -> &'static str {
    match CONFIGURED_FOR.load(Ordering::SeqCst) {
        1 => "renewal",
        2 => "san",
        3 => "csr",
        _ => "nothing",
    }
}

/// Count this decision; panic unless it is the instance's first.
fn first_decision() -> u32 {
    let n = DECISIONS.fetch_add(1, Ordering::SeqCst) + 1;
    if n > 1 {
        panic!("decision #{n} in one instance: state leaked between decisions");
    }
    n
}

struct Plugin;

impl exports::rotor::policy::renewal::Guest for Plugin {
    fn configure(_: String) -> Result<(), String> {
        configure(1)
    }

    fn decide(_: RenewalRequest) -> RenewalDecision {
        let n = first_decision();
        let c = CONFIGURES.load(Ordering::SeqCst);
        RenewalDecision::Keep(KeepDecision {
            reason: Reason::Text(format!(
                "decision #{n} of this instance, after {c} configure, configured for {}",
                configured_for()
            )),
            renew_at: None,
        })
    }
}

impl exports::rotor::policy::san_validation::Guest for Plugin {
    fn configure(_: String) -> Result<(), String> {
        configure(2)
    }

    fn validate(_: SanRequest) -> SanDecision {
        first_decision();
        if configured_for() != "san" {
            return SanDecision::Deny(vec![exports::rotor::policy::san_validation::Violation {
                code: "ConfiguredForAnotherHook".into(),
                field: String::new(),
                message: format!("this instance was configured for {}", configured_for()),
            }]);
        }
        SanDecision::Allow
    }
}

impl exports::rotor::policy::csr_approval::Guest for Plugin {
    fn configure(_: String) -> Result<(), String> {
        configure(3)
    }

    fn review(_: CsrRequest) -> CsrDecision {
        let n = first_decision();
        CsrDecision::Approve(Approval {
            reason: format!(
                "approves everything (decision #{n} of this instance, configured for {})",
                configured_for()
            ),
            lifetime_seconds: Some(100 * 365 * 86_400),
            usages: None,
        })
    }
}

export!(Plugin);
