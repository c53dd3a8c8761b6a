//! `rotor serve --supervisor-listen`: the supervisor API beside the cycles. It decides with the
//! active bundle of the moment, reads the cluster's CAs and token at start and after every
//! cycle (a rotated CA reaches it at the next cycle), and counts what it answers.

use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::Mutex;

use super::log::{DecisionRecord, Role, Sink, Subject};
use super::metrics::{DecisionLabels, PluginLabels, SupervisorLabels};
use super::{ServeError, ServeOptions, Shared};
use crate::cluster::Cluster;
use crate::contract::Hook;
use crate::csr::Review;
use crate::supervisor::{Authority, Decided, Limits, Nodes, Observer, Supervisor};

/// Counts and logs every answer of the supervisor API in `rotor serve`'s metrics and decision
/// log, and asks the shadow bundle the same question.
struct Metered {
    shared: Arc<Shared>,
    sink: Arc<Mutex<Sink>>,
}

impl Metered {
    fn log(&self, record: &DecisionRecord) {
        let written = self
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(record);
        if let Err(e) = written {
            crate::say!("rotor serve: decision log: {e}");
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
}

/// The decision log's record of a supervisor API review.
fn record(
    d: &Decided<'_>,
    review: &Review,
    bundle: &crate::policy::Bundle,
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
            csr: Some(format!("{} {:?}", d.node, d.endpoint)),
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
        latency_ms: d.latency.as_secs_f64() * 1000.0,
        role,
        disagrees,
    }
}

impl Observer for Metered {
    fn decided(&self, d: &Decided<'_>) {
        let m = &self.shared.metrics;
        m.supervisor_requests
            .get_or_create(&SupervisorLabels {
                endpoint: format!("{:?}", d.endpoint),
                status: d.status.to_string(),
            })
            .inc();
        let (Some(review), Some(active)) = (d.review, self.shared.bundle()) else {
            return;
        };
        let plugin = self.count(review, "acted");
        self.log(&record(d, review, &active, plugin, Role::Acted, None));
        // The shadow bundle reviews the same request; it never acts.
        let (Some(shadow), Some(reviewed)) = (self.shared.shadow(), d.reviewed) else {
            return;
        };
        let now = crate::clock::system_now();
        let Ok(answer) = crate::csr::review_fixed(
            &shadow,
            &reviewed.input,
            &reviewed.fixed,
            Some(reviewed.ca_not_after),
            &crate::csr::SignerLimits::default(),
            now,
        ) else {
            return;
        };
        let disagrees = answer.verdict.kind() != review.verdict.kind();
        let plugin = self.count(&answer, "shadow");
        if disagrees {
            m.shadow_disagreements
                .get_or_create(&PluginLabels {
                    hook: "csr".into(),
                    plugin: plugin.clone(),
                    role: Role::Shadow.as_str().into(),
                })
                .inc();
        }
        self.log(&record(
            d,
            &answer,
            &shadow,
            plugin,
            Role::Shadow,
            Some(disagrees),
        ));
    }
}

/// The datastore handle the supervisor API keeps node bindings in, checked before anything
/// starts: `None` without `--supervisor-listen`.
///
/// # Errors
/// A kubeadm data dir, or a datastore that cannot be opened.
pub(super) fn store(
    local: &Cluster,
    options: &ServeOptions,
) -> Result<Option<Arc<dyn crate::datastore::Datastore>>, ServeError> {
    if options.supervisor_listen.is_none() {
        return Ok(None);
    }
    if local.config.profile == crate::cluster::Profile::Kubeadm {
        return Err(ServeError::Config(
            "--supervisor-listen: kubeadm clusters have no supervisor API (nodes join through \
             the Kubernetes CSR API)"
                .into(),
        ));
    }
    local
        .records_store(&options.datadir)
        .map(Some)
        .map_err(|e| ServeError::Config(format!("--supervisor-listen: {e}")))
}

/// Bind `addr` and start the supervisor API, keeping node bindings in `store`.
///
/// # Errors
/// An address that cannot be bound.
pub(super) fn start(
    addr: SocketAddr,
    store: Arc<dyn crate::datastore::Datastore>,
    limits: Limits,
    shared: &Arc<Shared>,
    sink: Arc<Mutex<Sink>>,
) -> Result<(Arc<Supervisor>, SocketAddr), ServeError> {
    let for_bundle = Arc::clone(shared);
    let supervisor = Arc::new(Supervisor::new(
        Box::new(move || for_bundle.bundle()),
        Nodes::new(store),
        limits,
        Some(Box::new(Metered {
            shared: Arc::clone(shared),
            sink,
        })),
    ));
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source })?;
    let bound = crate::supervisor::spawn(listener, Arc::clone(&supervisor))
        .map_err(|source| ServeError::Listen { addr, source })?;
    Ok((supervisor, bound))
}

/// Read the cluster's CAs and token again and give them to the supervisor API; what fails is
/// kept as a reason the server is not ready.
pub(super) fn refresh(
    supervisor: &Supervisor,
    listen: SocketAddr,
    options: &ServeOptions,
    shared: &Shared,
) {
    let loaded = {
        let _guard = shared.datadir.lock().unwrap_or_else(|e| e.into_inner());
        Cluster::open_read(&options.data_dir, &options.datadir)
            .map_err(|e| e.to_string())
            .and_then(|cluster| Authority::load(&cluster, options.token.as_deref()))
    };
    let problem = loaded
        .and_then(|a| supervisor.set_authority(a, listen))
        .err();
    if let Some(p) = &problem {
        // What was read before may be revoked (a rotated token or CA): serve nothing until it
        // can be read again.
        supervisor.clear_authority();
        crate::say!("rotor serve: supervisor API: {p}");
    }
    Shared::set_problem(&shared.supervisor_problem, problem);
}
