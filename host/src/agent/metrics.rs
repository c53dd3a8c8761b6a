//! What `rotor agent --listen` exports on `/metrics` and says on `/readyz`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    /// `client-kubelet`, `serving-kubelet`, ...
    certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// `cacerts`, `client-ca.crt`, `client-kubelet.crt`, ...
    endpoint: String,
    /// `ok`, `refused` (the servers said no) or `unreachable` (no server answered).
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The agent's metrics and readiness, shared with its HTTP endpoint.
#[derive(Debug)]
pub struct AgentStatus {
    registry: Registry,
    expiration: Family<CertLabels, Gauge>,
    issued: Family<CertLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    passes: Family<ResultLabels, Counter>,
    last_success: Gauge,
    ca_changes: Counter,
    /// Why the agent is not ready (`None`: ready).
    not_ready: Mutex<Option<String>>,
    /// Each certificate the agent keeps, and its notAfter once known.
    certificates: Mutex<std::collections::BTreeMap<String, Option<OffsetDateTime>>>,
}

impl Default for AgentStatus {
    fn default() -> AgentStatus {
        AgentStatus::new()
    }
}

impl AgentStatus {
    /// Metrics at zero, not ready (no pass yet).
    pub fn new() -> AgentStatus {
        let mut s = AgentStatus {
            registry: Registry::default(),
            expiration: Family::default(),
            issued: Family::default(),
            requests: Family::default(),
            passes: Family::default(),
            last_success: Gauge::default(),
            ca_changes: Counter::default(),
            not_ready: Mutex::new(Some("no pass has finished yet".into())),
            certificates: Mutex::new(std::collections::BTreeMap::new()),
        };
        let r = &mut s.registry;
        r.register(
            "rotor_agent_certificate_expiration_timestamp_seconds",
            "notAfter of each certificate the agent keeps (Unix time)",
            s.expiration.clone(),
        );
        r.register(
            "rotor_agent_certificates_issued",
            "Certificates the servers issued to this agent",
            s.issued.clone(),
        );
        r.register(
            "rotor_agent_requests",
            "Requests to the supervisor API, by endpoint and result",
            s.requests.clone(),
        );
        r.register(
            "rotor_agent_passes",
            "Passes over the agent's certificates, by result",
            s.passes.clone(),
        );
        r.register(
            "rotor_agent_last_success_timestamp_seconds",
            "When a pass last finished without an error (Unix time)",
            s.last_success.clone(),
        );
        r.register(
            "rotor_agent_server_ca_changes",
            "Times the servers' CA bundle changed under a running agent (a CA rotation)",
            s.ca_changes.clone(),
        );
        s
    }

    pub(crate) fn expires(&self, certificate: &str, not_after: OffsetDateTime) {
        self.expiration
            .get_or_create(&CertLabels {
                certificate: certificate.into(),
            })
            .set(not_after.unix_timestamp());
        self.certificates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(certificate.into(), Some(not_after));
    }

    /// Start `certificate`'s counters at zero.
    pub(crate) fn known(&self, certificate: &str) {
        let _ = self.issued.get_or_create(&CertLabels {
            certificate: certificate.into(),
        });
        self.certificates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(certificate.into())
            .or_insert(None);
    }

    pub(crate) fn issued(&self, certificate: &str) {
        self.issued
            .get_or_create(&CertLabels {
                certificate: certificate.into(),
            })
            .inc();
    }

    pub(crate) fn request(&self, endpoint: &str, result: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                result: result.into(),
            })
            .inc();
    }

    pub(crate) fn ca_changed(&self) {
        self.ca_changes.inc();
    }

    /// A pass ended: ready when it succeeded, or when it failed (no server answered, say) but
    /// every certificate the agent keeps is still valid; else not ready for `failure`.
    pub(crate) fn pass(&self, failure: Option<String>, now: OffsetDateTime) {
        let all_valid = {
            let certs = self.certificates.lock().unwrap_or_else(|e| e.into_inner());
            !certs.is_empty() && certs.values().all(|t| t.is_some_and(|t| t > now))
        };
        let result = if failure.is_none() { "ok" } else { "failed" };
        self.passes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        if failure.is_none() {
            self.last_success.set(now.unix_timestamp());
        }
        let failure = failure.filter(|_| !all_valid);
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = failure;
    }
}

impl crate::serve::Probe for AgentStatus {
    fn metrics(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn not_ready(&self) -> Option<String> {
        self.not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
