//! `rotor serve --supervisor-listen`: the supervisor API beside the cycles. It decides with the
//! active bundle of the moment, reads the cluster's CAs and token at start and after every
//! cycle (a rotated CA reaches it at the next cycle), and counts what it answers.

use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::Mutex;

use super::csr_log::CsrRecorder;
use super::log::Sink;
use super::metrics::SupervisorLabels;
use super::{ServeError, ServeOptions, Shared};
use crate::cluster::Cluster;
use crate::supervisor::{Authority, Decided, Limits, Nodes, Observer, Supervisor};

/// Counts every answer of the supervisor API, and records its reviews as every CSR decision is
/// ([`CsrRecorder`]).
struct Metered {
    shared: Arc<Shared>,
    recorder: CsrRecorder,
}

impl Observer for Metered {
    fn decided(&self, d: &Decided<'_>) {
        self.shared
            .metrics
            .supervisor_requests
            .get_or_create(&SupervisorLabels {
                endpoint: format!("{:?}", d.endpoint),
                status: d.status.to_string(),
            })
            .inc();
        let Some(review) = d.review else {
            return;
        };
        let shadow = |shadow: &crate::policy::Bundle| {
            let reviewed = d.reviewed?;
            crate::csr::review_fixed(
                shadow,
                &reviewed.input,
                &reviewed.fixed,
                Some(reviewed.ca_not_after),
                &crate::csr::SignerLimits::default(),
                crate::clock::system_now(),
            )
            .ok()
        };
        self.recorder.decided(
            &format!("{} {:?}", d.node, d.endpoint),
            review,
            d.latency,
            &shadow,
        );
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
            recorder: CsrRecorder {
                shared: Arc::clone(shared),
                sink,
            },
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
