//! `rotor serve --supervisor-listen`: the supervisor API beside the cycles. It decides with the
//! active bundle of the moment, reads the cluster's CAs and token at start and after every
//! cycle (a rotated CA reaches it at the next cycle), and counts what it answers.

use std::net::SocketAddr;
use std::sync::Arc;

use super::metrics::{DecisionLabels, SupervisorLabels};
use super::{ServeError, ServeOptions, Shared};
use crate::cluster::Cluster;
use crate::supervisor::{Authority, Decided, Limits, Nodes, Observer, Supervisor};

/// Counts every answer of the supervisor API into `rotor serve`'s metrics.
struct Metered(Arc<Shared>);

impl Observer for Metered {
    fn decided(&self, d: &Decided<'_>) {
        let m = &self.0.metrics;
        m.supervisor_requests
            .get_or_create(&SupervisorLabels {
                endpoint: format!("{:?}", d.endpoint),
                status: d.status.to_string(),
            })
            .inc();
        if let Some(review) = d.review {
            let plugin = review
                .stages
                .iter()
                .find(|s| s.stage == "csr-approval")
                .and_then(|s| s.plugin.clone())
                .unwrap_or_else(|| "host".into());
            m.decisions
                .get_or_create(&DecisionLabels {
                    hook: "csr".into(),
                    outcome: review.verdict.kind().into(),
                    plugin,
                    role: "acted".into(),
                })
                .inc();
        }
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
    server_bootstrap: bool,
    shared: &Arc<Shared>,
) -> Result<(Arc<Supervisor>, SocketAddr), ServeError> {
    let for_bundle = Arc::clone(shared);
    let supervisor = Arc::new(Supervisor::new(
        Box::new(move || for_bundle.bundle()),
        Nodes::new(store),
        Limits {
            server_bootstrap,
            ..Limits::default()
        },
        Some(Box::new(Metered(Arc::clone(shared)))),
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
