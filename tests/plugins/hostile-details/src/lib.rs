//! Misuses rotor:policy 0.3's `facts.details()`: with the settings `{"in_configure": true}` it
//! asks for a certificate in `configure` (there is none: the call must trap, and the plugin not
//! load); with `{"flood": true}` each decision asks for handles without end, keeping them (host
//! memory the guest's cap does not count: the host must stop it); otherwise each decision asks for the certificate, keeps the handle in a static
//! instead of dropping it, and reads the handle an earlier decision kept, answering with that
//! certificate's name and serial. Under a fresh instance per decision there is never an earlier
//! one; in one instance reused (what rotor never does for decisions) the kept handle must not
//! read: the host removed it when its call ended, so the read traps.

#![allow(
    unsafe_code,
    reason = "the SDK's export macro expands to wit-bindgen's unsafe glue; the rule contains none"
)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rotor_policy_sdk::renewal::exports::rotor::policy::renewal::{
    Guest, KeepDecision, Reason, RenewalDecision, RenewalRequest,
};
use rotor_policy_sdk::renewal::rotor::policy::facts::{self, CertificateDetails};

static KEPT: Mutex<Option<CertificateDetails>> = Mutex::new(None);
static FLOOD: AtomicBool = AtomicBool::new(false);

struct Plugin;

impl Guest for Plugin {
    fn configure(settings: String) -> Result<(), String> {
        if settings.contains("\"in_configure\":true") {
            let details = facts::details();
            return Err(format!("configure got a certificate: {}", details.name()));
        }
        FLOOD.store(settings.contains("\"flood\":true"), Ordering::SeqCst);
        Ok(())
    }

    fn decide(_: RenewalRequest) -> RenewalDecision {
        if FLOOD.load(Ordering::SeqCst) {
            let mut hoard = Vec::new();
            loop {
                hoard.push(facts::details());
                if hoard.len() == usize::MAX {
                    break;
                }
            }
        }
        let mine = facts::details();
        let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
        let reason = match kept.as_ref() {
            Some(earlier) => format!(
                "an earlier decision's certificate: {} {}",
                earlier.name(),
                earlier.serial()
            ),
            None => format!(
                "this decision's certificate: {} {}",
                mine.name(),
                mine.serial()
            ),
        };
        *kept = Some(mine);
        RenewalDecision::Keep(KeepDecision {
            reason: Reason::Text(reason),
            renew_at: None,
        })
    }
}

rotor_policy_sdk::renewal::export!(Plugin);
