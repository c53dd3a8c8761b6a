//! What every CSR decision of a long-running rotor leaves behind, whichever front took the
//! request (the supervisor API of `rotor serve`, or `rotor csr controller`): a count in
//! `rotor_policy_decisions`, a line in the decision log, and the shadow bundle's answer to the
//! same question (counted, logged and compared; it never acts).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::log::{DecisionRecord, Role, Sink, Subject};
use super::metrics::{DecisionLabels, PluginLabels};
use super::{ServeError, Shared};
use crate::contract::Hook;
use crate::csr::Review;
use crate::policy::Bundle;

/// Counts and logs CSR decisions, and asks the shadow bundle.
#[derive(Clone)]
pub(crate) struct CsrRecorder {
    pub(super) shared: Arc<Shared>,
    pub(super) sink: Arc<Mutex<Sink>>,
}

impl CsrRecorder {
    /// A recorder for a front that runs without `rotor serve`'s cycles (`rotor csr
    /// controller`): the active bundle, the shadow bundle if any, the decision log
    /// (`None`: standard output).
    ///
    /// # Errors
    /// The decision log cannot be opened.
    pub(crate) fn standalone(
        active: Arc<Bundle>,
        shadow: Option<Arc<Bundle>>,
        log: Option<&std::path::Path>,
        log_max_bytes: u64,
        log_keep: u32,
    ) -> Result<CsrRecorder, ServeError> {
        let sink = Sink::open(log, log_max_bytes, log_keep)
            .map_err(|e| ServeError::Config(format!("the decision log: {e}")))?;
        let shared = Arc::new(Shared::new(
            Some(active),
            shadow,
            super::metrics::Metrics::for_controller(),
        ));
        // No renewal cycles here: ready as soon as the front says it is.
        shared
            .cycled
            .store(true, std::sync::atomic::Ordering::Release);
        for (bundle, role) in [(shared.bundle(), "active"), (shared.shadow(), "shadow")] {
            if let Some(b) = bundle {
                super::bundles::report_load_failures(&shared, &b, role);
            }
        }
        if let Some(shadow) = shared.shadow() {
            zero_csr_disagreements(&shared, &shadow);
        }
        Ok(CsrRecorder {
            shared,
            sink: Arc::new(Mutex::new(sink)),
        })
    }

    /// The shared state, for the HTTP endpoint (`/metrics`, `/readyz`).
    pub(crate) fn probe(&self) -> Arc<dyn super::Probe> {
        Arc::clone(&self.shared) as Arc<dyn super::Probe>
    }

    /// The bundle that decides.
    pub(crate) fn active(&self) -> Option<Arc<Bundle>> {
        self.shared.bundle()
    }

    /// Say why the front cannot work (`None`: it can); `/readyz` reports it.
    pub(crate) fn set_problem(&self, problem: Option<String>) {
        Shared::set_problem(&self.shared.front_problem, problem);
    }

    /// Count what came of a CSR in `rotor csr controller`.
    pub(crate) fn controller_result(&self, result: &str) {
        self.shared
            .metrics
            .controller_results
            .get_or_create(&super::metrics::ControllerLabels {
                result: result.into(),
            })
            .inc();
    }

    /// A controller result's counter, at 0.
    pub(crate) fn controller_result_zero(&self, result: &str) {
        self.shared
            .metrics
            .controller_results
            .get_or_create(&super::metrics::ControllerLabels {
                result: result.into(),
            })
            .inc_by(0);
    }

    /// Whether this controller replica leads.
    pub(crate) fn set_leader(&self, leads: bool) {
        self.shared.metrics.controller_leader.set(i64::from(leads));
    }

    fn log(&self, record: &DecisionRecord) {
        let written = self
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(record);
        if let Err(e) = written {
            crate::say!("rotor: decision log: {e}");
        }
    }

    fn count(&self, review: &Review, role: &str) -> String {
        let plugin = review
            .stages
            .iter()
            .find(|s| s.stage == "csr-approval")
            .and_then(|s| s.plugin.clone())
            .unwrap_or_else(|| "host".into());
        self.shared
            .metrics
            .decisions
            .get_or_create(&DecisionLabels {
                hook: "csr".into(),
                outcome: review.verdict.kind().into(),
                plugin: plugin.clone(),
                role: role.into(),
            })
            .inc();
        plugin
    }

    /// Record a decision the active bundle made on `subject` in `latency`; `shadow_review`
    /// asks a bundle the same question (it is called with the shadow bundle, if there is one).
    pub(crate) fn decided(
        &self,
        subject: &str,
        review: &Review,
        latency: Duration,
        shadow_review: &dyn Fn(&Bundle) -> Option<Review>,
    ) {
        let Some(active) = self.shared.bundle() else {
            return;
        };
        let plugin = self.count(review, "acted");
        self.log(&record(
            subject,
            latency,
            review,
            &active,
            plugin,
            Role::Acted,
            None,
        ));
        let Some(shadow) = self.shared.shadow() else {
            return;
        };
        let Some(answer) = shadow_review(&shadow) else {
            return;
        };
        let disagrees = answer.verdict.kind() != review.verdict.kind();
        let plugin = self.count(&answer, "shadow");
        if disagrees {
            self.shared
                .metrics
                .shadow_disagreements
                .get_or_create(&PluginLabels {
                    hook: "csr".into(),
                    plugin: plugin.clone(),
                    role: Role::Shadow.as_str().into(),
                })
                .inc();
        }
        self.log(&record(
            subject,
            latency,
            &answer,
            &shadow,
            plugin,
            Role::Shadow,
            Some(disagrees),
        ));
    }
}

/// The shadow bundle's CSR disagreement counter, at 0 until it disagrees.
fn zero_csr_disagreements(shared: &Shared, shadow: &Bundle) {
    let plugin = shadow
        .plugin_identity(Hook::Csr)
        .map_or_else(|| "host".to_string(), |(name, _)| name);
    shared
        .metrics
        .shadow_disagreements
        .get_or_create(&PluginLabels {
            hook: "csr".into(),
            plugin,
            role: Role::Shadow.as_str().into(),
        })
        .inc_by(0);
}

/// The decision log's record of a CSR review.
fn record(
    subject: &str,
    latency: Duration,
    review: &Review,
    bundle: &Bundle,
    plugin: String,
    role: Role,
    disagrees: Option<bool>,
) -> DecisionRecord {
    let mut reasons = vec![review.verdict.summary()];
    reasons.extend(review.notes.iter().cloned());
    DecisionRecord {
        time: crate::clock::system_now(),
        hook: "csr".into(),
        subject: Subject {
            certificate: None,
            serial: None,
            csr: Some(subject.to_string()),
        },
        bundle: bundle.name.clone(),
        digest: bundle.plugin_identity(Hook::Csr).map(|(_, digest)| digest),
        source: if plugin == "host" {
            "built_in"
        } else {
            "plugin"
        }
        .into(),
        plugin: Some(plugin).filter(|p| p != "host"),
        decision: review.verdict.kind().into(),
        reasons,
        renew_at: None,
        lifetime_seconds: None,
        not_after: review.template.as_ref().map(|t| t.not_after),
        error: None,
        latency_ms: latency.as_secs_f64() * 1000.0,
        role,
        disagrees,
    }
}
