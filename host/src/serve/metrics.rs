//! What `rotor serve` exports on `/metrics` (the OpenMetrics text format, which Prometheus
//! scrapes), built with the `prometheus-client` crate.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A certificate's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertLabels {
    /// Its name in the layout (a leaf's name, or a CA's).
    pub name: String,
    /// Its file, relative to the data dir.
    pub file: String,
    /// `k3s`, `rke2` or `kubeadm`.
    pub layout: String,
    /// The CA that issued it (a CA's own name for a CA).
    pub issuer: String,
    /// `leaf` or `ca`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RenewalLabels {
    pub outcome: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DecisionLabels {
    pub hook: String,
    pub outcome: String,
    pub plugin: String,
    /// `acted` (the active bundle) or `shadow`.
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginLabels {
    pub hook: String,
    pub plugin: String,
    /// `acted` or `shadow`.
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PluginErrorLabels {
    pub hook: String,
    pub plugin: String,
    pub kind: String,
    /// `acted` or `shadow`.
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BundleInfoLabels {
    pub role: String,
    pub bundle: String,
    pub hook: String,
    pub plugin: String,
    pub digest: String,
    /// `pin`, `signature` (rotor's), `cosign` or `built-in` (no plugin): why the bundle
    /// accepted the plugin.
    pub accepted_by: String,
    /// The trusted key's name (in `[trust.keys]`, or `[trust.cosign_keys]` for `cosign`) when
    /// accepted by a signature, else empty.
    pub key: String,
    /// The version the vendor signed when accepted by a signature, else empty.
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    /// `active` or `shadow`.
    pub role: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SupervisorLabels {
    /// `ServingKubelet`, `ClientKubelet`, `ClientKubeProxy`, `ClientController`.
    pub endpoint: String,
    /// The HTTP status answered.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ActionLabels {
    pub action: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ControllerLabels {
    /// `approved`, `approved_signed`, `denied`, `abstained`, `no_node`, `signed`, `refused`,
    /// `conflict`, `error`.
    pub result: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric, registered once; the handles share their values with the registry.
pub(crate) struct Metrics {
    pub registry: Registry,
    pub expiration: Family<CertLabels, Gauge>,
    pub not_before: Family<CertLabels, Gauge>,
    pub renewal: Family<CertLabels, Gauge>,
    pub renewals: Family<RenewalLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub latency: Family<PluginLabels, Histogram, fn() -> Histogram>,
    pub plugin_errors: Family<PluginErrorLabels, Counter>,
    pub plugin_load_failures: Family<PluginErrorLabels, Counter>,
    pub shadow_disagreements: Family<PluginLabels, Counter>,
    pub bundle_info: Family<BundleInfoLabels, Gauge>,
    pub bundle_reloads: Family<ReloadLabels, Counter>,
    pub bundle_refused: Gauge,
    pub cycles: Family<OutcomeLabels, Counter>,
    pub last_success: Gauge,
    pub next_cycle: Gauge,
    pub lock_waits: Counter,
    pub lock_wait_seconds: Counter<f64, AtomicU64>,
    pub actions: Family<ActionLabels, Counter>,
    pub supervisor_requests: Family<SupervisorLabels, Counter>,
    pub controller_results: Family<ControllerLabels, Counter>,
    pub controller_leader: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics::build(false)
    }

    /// The metrics `rotor csr controller` exports: its decisions, the shadow's, plugin load
    /// failures and its own; none of the cycles', certificates' or supervisor API's.
    pub(crate) fn for_controller() -> Metrics {
        Metrics::build(true)
    }

    fn build(for_controller: bool) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            expiration: Family::default(),
            not_before: Family::default(),
            renewal: Family::default(),
            renewals: Family::default(),
            decisions: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            plugin_errors: Family::default(),
            plugin_load_failures: Family::default(),
            shadow_disagreements: Family::default(),
            bundle_info: Family::default(),
            bundle_reloads: Family::default(),
            bundle_refused: Gauge::default(),
            cycles: Family::default(),
            last_success: Gauge::default(),
            next_cycle: Gauge::default(),
            lock_waits: Counter::default(),
            lock_wait_seconds: Counter::default(),
            actions: Family::default(),
            supervisor_requests: Family::default(),
            controller_results: Family::default(),
            controller_leader: Gauge::default(),
            registry: Registry::default(),
        };
        if !for_controller {
            registry.register(
                "rotor_certificate_expiration_timestamp_seconds",
                "notAfter of each certificate of the data dir, as a Unix time",
                m.expiration.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_certificate_not_before_timestamp_seconds",
                "notBefore of each certificate of the data dir, as a Unix time",
                m.not_before.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_certificate_renewal_timestamp_seconds",
                "When the renewal policy will renew each leaf (its renew-at hint), as a Unix time",
                m.renewal.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_renewals",
                "Certificates re-issued (outcome success) or whose renewal failed, by reason",
                m.renewals.clone(),
            );
        }
        registry.register(
            "rotor_policy_decisions",
            "Policy decisions by hook, outcome, plugin and role (acted: the active bundle; shadow: the candidate)",
            m.decisions.clone(),
        );
        if !for_controller {
            registry.register(
                "rotor_plugin_evaluation_seconds",
                "Time to evaluate one decision in a fresh plugin instance",
                m.latency.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_plugin_errors",
                "Plugin failures (trap, timeout, memory, invalid answer, ...) by kind",
                m.plugin_errors.clone(),
            );
        }
        registry.register(
            "rotor_plugin_load_failures",
            "Plugins that could not be loaded or configured, at each load of a bundle (role active or shadow): their hook decides by its failure mode",
            m.plugin_load_failures.clone(),
        );
        if !for_controller {
            registry.register(
                "rotor_supervisor_requests",
                "Certificate requests the supervisor API answered, by endpoint and HTTP status",
                m.supervisor_requests.clone(),
            );
        }
        if for_controller {
            registry.register(
                "rotor_csr_controller_results",
                "CSRs rotor csr controller handled, by what came of them",
                m.controller_results.clone(),
            );
        }
        if for_controller {
            registry.register(
                "rotor_csr_controller_leader",
                "1 while this rotor csr controller replica holds the Lease",
                m.controller_leader.clone(),
            );
        }
        registry.register(
            "rotor_shadow_disagreements",
            "Decisions where the shadow bundle disagreed with the active one",
            m.shadow_disagreements.clone(),
        );
        if !for_controller {
            registry.register(
                "rotor_policy_plugin_info",
                "The plugins of the active and shadow bundles, with their sha256 digests and why each is accepted (its pin, or a trusted key's signature) (value 1)",
                m.bundle_info.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_policy_bundle_reloads",
                "Bundle reloads of the active and shadow bundles: accepted, or refused (the old bundle kept deciding)",
                m.bundle_reloads.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_policy_bundle_refused",
                "1 while the bundle's current files were refused and the previous bundle decides",
                m.bundle_refused.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_cycles",
                "Rotation cycles by outcome",
                m.cycles.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_last_successful_cycle_timestamp_seconds",
                "When the last successful cycle ran (the server's clock), as a Unix time",
                m.last_success.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_next_cycle_timestamp_seconds",
                "When the next cycle is due (the server's clock), as a Unix time",
                m.next_cycle.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_lock_waits",
                "Times a cycle waited for the data dir lock held by another writer",
                m.lock_waits.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_lock_wait_seconds",
                "Time cycles spent waiting for the data dir lock",
                m.lock_wait_seconds.clone(),
            );
        }
        if !for_controller {
            registry.register(
                "rotor_post_renewal_actions",
                "Post-renewal action runs by action and outcome",
                m.actions.clone(),
            );
        }
        Metrics { registry, ..m }
    }

    /// The metrics page.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
