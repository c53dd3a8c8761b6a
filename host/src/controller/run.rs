//! The controller's loop: stand by until this replica holds the Lease, then watch Nodes and
//! CertificateSigningRequests and hand each CSR with work left to a worker, until the Lease is
//! lost (back to standing by) or the process is told to stop (the Lease is given up).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest as Csr;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Semaphore, mpsc, watch};

use super::act::{Actor, Done, Work};
use super::evidence::{NodeEvidence, NodeIndex, node_name};
use super::lease::{Elector, LeaseTimings};
use crate::csr::{Evidence, SignerLimits};
use crate::pki::CaSigner;
use crate::policy::Bundle;
use crate::serve::CsrRecorder;

/// How `rotor csr controller` runs.
pub struct ControllerOptions {
    /// The bundle that decides.
    pub bundle: Arc<Bundle>,
    /// A candidate bundle that decides in the shadow of the active one, never acting.
    pub shadow_bundle: Option<Arc<Bundle>>,
    /// The decision log (`None`: standard output).
    pub decision_log: Option<PathBuf>,
    /// Rotate the decision log past this many bytes.
    pub decision_log_max_bytes: u64,
    /// Rotated decision logs kept.
    pub decision_log_keep: u32,
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, else the in-cluster service
    /// account.
    pub kubeconfig: Option<PathBuf>,
    /// Signers whose pending CSRs it decides.
    pub decides: BTreeSet<String>,
    /// Signers it also signs approved CSRs for, with the CA that signs.
    pub signs: BTreeMap<String, Arc<CaSigner>>,
    /// The host's per-signer limits.
    pub limits: SignerLimits,
    /// A fixed evidence list instead of the Node objects.
    pub fixed_evidence: Option<Evidence>,
    /// The Lease's namespace and name.
    pub lease_namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's name in the Lease.
    pub identity: String,
    /// The election's timings.
    pub timings: LeaseTimings,
    /// Serve `/metrics`, `/healthz`, `/readyz` here.
    pub listen: Option<SocketAddr>,
    /// CSRs handled at once.
    pub workers: usize,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The kubeconfig or the in-cluster configuration.
    #[error("the Kubernetes API configuration: {0}")]
    Config(String),
    /// The HTTP endpoint.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime.
    #[error("{0}")]
    Runtime(#[from] std::io::Error),
    /// The decision log.
    #[error(transparent)]
    Log(#[from] crate::serve::ServeError),
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, ControllerError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| ControllerError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| ControllerError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ControllerError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| ControllerError::Config(e.to_string()))
}

/// Run until SIGTERM or SIGINT.
///
/// # Errors
/// The configuration, or the listening address.
pub fn run(options: ControllerOptions) -> Result<(), ControllerError> {
    let log = CsrRecorder::standalone(
        Arc::clone(&options.bundle),
        options.shadow_bundle.clone(),
        options.decision_log.as_deref(),
        options.decision_log_max_bytes,
        options.decision_log_keep,
    )?;
    for result in [
        "approved",
        "approved_signed",
        "denied",
        "abstained",
        "no_node",
        "signed",
        "refused",
        "conflict",
        "error",
    ] {
        log.controller_result_zero(result);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(options, log))
}

async fn run_async(options: ControllerOptions, log: CsrRecorder) -> Result<(), ControllerError> {
    let client = client(options.kubeconfig.as_ref()).await?;
    if let Some(addr) = options.listen {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| ControllerError::Listen { addr, source })?;
        let bound = crate::serve::spawn_http(listener, None, log.probe())
            .map_err(|source| ControllerError::Listen { addr, source })?;
        crate::say!("rotor csr controller: listening on {bound}");
    }
    let (stop_tx, stop) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop_tx.send(true);
    });

    let mut elector = Elector::new(
        Api::<Lease>::namespaced(client.clone(), &options.lease_namespace),
        options.lease_name.clone(),
        options.identity.clone(),
        options.timings,
    );
    let actor = Arc::new(Actor {
        api: Api::all(client.clone()),
        events: Recorder::new(
            client.clone(),
            Reporter {
                controller: "rotor-csr-controller".into(),
                instance: Some(options.identity.clone()),
            },
        ),
        log: log.clone(),
        decides: options.decides.clone(),
        signs: options.signs,
        limits: options.limits.clone(),
        fixed_evidence: options.fixed_evidence.clone(),
        said: Mutex::new(HashMap::new()),
    });
    crate::say!(
        "rotor csr controller: {} standing by for Lease {}/{}",
        options.identity,
        options.lease_namespace,
        options.lease_name
    );
    loop {
        // Stand by: try every retry period until this replica holds the Lease.
        log.set_problem(None);
        let mut stop_wait = stop.clone();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => crate::say!("rotor csr controller: the Lease: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(options.timings.retry_period) => {}
                _ = stop_wait.changed() => {}
            }
        }
        log.set_leader(true);
        crate::say!(
            "rotor csr controller: {} leads (Lease {}/{})",
            elector.identity(),
            options.lease_namespace,
            options.lease_name
        );
        let mut stop_lead = stop.clone();
        let outcome = tokio::select! {
            () = keep_lease(&mut elector) => "lost",
            () = lead(client.clone(), Arc::clone(&actor), options.workers, log.clone()) => "lost",
            _ = stop_lead.changed() => "stopped",
        };
        log.set_leader(false);
        if outcome == "stopped" {
            elector.release().await;
            crate::say!("rotor csr controller: stopped; the Lease is given up");
            return Ok(());
        }
        crate::say!(
            "rotor csr controller: {} could not renew the Lease within {:?}: standing by",
            elector.identity(),
            elector.timings().renew_deadline
        );
    }
}

/// Renew every retry period; return once a renewal has not succeeded within the deadline.
async fn keep_lease(elector: &mut Elector) {
    let timings = elector.timings();
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(timings.retry_period).await;
        let attempt =
            tokio::time::timeout(timings.renew_deadline, elector.try_acquire_or_renew()).await;
        match attempt {
            Ok(Ok(true)) => last = Instant::now(),
            Ok(Ok(false)) => return,
            Ok(Err(e)) => crate::say!("rotor csr controller: renewing the Lease: {e}"),
            Err(_) => {}
        }
        if last.elapsed() >= timings.renew_deadline {
            return;
        }
    }
}

/// The leader's work: watch, and hand CSRs to workers. Returns only if the watches end.
async fn lead(client: Client, actor: Arc<Actor>, workers: usize, log: CsrRecorder) {
    log.set_problem(Some("listing CertificateSigningRequests and Nodes".into()));
    let mut csrs_events = watcher(Api::<Csr>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .boxed();
    let fixed = actor.fixed_evidence.is_some();
    let mut node_events = if fixed {
        futures::stream::pending().boxed()
    } else {
        watcher(Api::<Node>::all(client), watcher::Config::default())
            .default_backoff()
            .boxed()
    };
    let slots = Arc::new(Semaphore::new(workers.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, Done)>();

    let mut csrs: BTreeMap<String, Csr> = BTreeMap::new();
    let mut nodes = NodeIndex::default();
    let mut relisted: Option<NodeIndex> = None;
    let (mut csrs_ready, mut nodes_ready) = (false, fixed);
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut again: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            event = csrs_events.next() => match event {
                Some(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c))) => {
                    let name = c.name_any();
                    dirty.insert(name.clone());
                    csrs.insert(name, c);
                }
                Some(Ok(watcher::Event::Delete(c))) => {
                    csrs.remove(&c.name_any());
                }
                Some(Ok(watcher::Event::Init)) => csrs.clear(),
                Some(Ok(watcher::Event::InitDone)) => {
                    csrs_ready = true;
                    dirty.extend(csrs.keys().cloned());
                }
                Some(Err(e)) => {
                    log.set_problem(Some(format!("watching CertificateSigningRequests: {e}")));
                    continue;
                }
                None => return,
            },
            event = node_events.next() => match event {
                Some(Ok(watcher::Event::Apply(n))) => {
                    if nodes.apply(&n) {
                        dirty.extend(node_csrs(&csrs));
                    }
                }
                // A (re)list fills a new index, swapped in whole: a Node not listed yet must
                // not make another's address look undisputed.
                Some(Ok(watcher::Event::InitApply(n))) => {
                    relisted.get_or_insert_with(NodeIndex::default).apply(&n);
                }
                Some(Ok(watcher::Event::Delete(n))) => {
                    nodes.delete(&n);
                    dirty.extend(node_csrs(&csrs));
                }
                Some(Ok(watcher::Event::Init)) => relisted = Some(NodeIndex::default()),
                Some(Ok(watcher::Event::InitDone)) => {
                    nodes = relisted.take().unwrap_or_default();
                    nodes_ready = true;
                    dirty.extend(csrs.keys().cloned());
                }
                Some(Err(e)) => {
                    log.set_problem(Some(format!("watching Nodes: {e}")));
                    continue;
                }
                None => return,
            },
            Some((name, done)) = done_rx.recv() => {
                in_flight.remove(&name);
                log.controller_result(done.as_str());
                if let Done::Error(e) = &done {
                    crate::say!("rotor csr controller: {e}");
                }
                if again.remove(&name) {
                    dirty.insert(name);
                }
            }
        }
        if !(csrs_ready && nodes_ready) {
            continue;
        }
        log.set_problem(None);
        for name in std::mem::take(&mut dirty) {
            if in_flight.contains(&name) {
                // Decided on the object as it is after the worker's write, not before.
                again.insert(name);
                continue;
            }
            let Some(csr) = csrs.get(&name) else { continue };
            let work = actor.work(csr);
            if work == Work::Nothing {
                continue;
            }
            let evidence: NodeEvidence =
                actor.evidence(&nodes, &csr.spec.username.clone().unwrap_or_default());
            in_flight.insert(name.clone());
            let (actor, csr, done_tx, slots) = (
                Arc::clone(&actor),
                csr.clone(),
                done_tx.clone(),
                Arc::clone(&slots),
            );
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                let done = actor.handle(csr, work, evidence).await;
                let _ = done_tx.send((name, done));
            });
        }
    }
}

/// The names of the CSRs a node made (their evidence changes with the Nodes).
fn node_csrs(csrs: &BTreeMap<String, Csr>) -> impl Iterator<Item = String> + '_ {
    csrs.iter()
        .filter(|(_, c)| node_name(c.spec.username.as_deref().unwrap_or("")).is_some())
        .map(|(n, _)| n.clone())
}

/// This replica's default identity: the host name (a pod's name) and the process id.
pub fn default_identity() -> String {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{host}_{}", std::process::id())
}
