//! The controller's loop: stand by until this replica holds the Lease, then watch Nodes and
//! CertificateSigningRequests and hand each CSR with work left to a worker, until the Lease is
//! lost (back to standing by) or the process is told to stop (the Lease is given up).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest as Csr;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::act::{Actor, Done, Work};
use super::evidence::{NodeIndex, node_name};
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
    /// The Lease's namespace.
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
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
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
    crate::say!(
        "rotor csr controller: the API server is {}",
        config.cluster_url
    );
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
    for result in Done::LABELS {
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
        // Stand by: try every retry period until this replica holds the Lease. An attempt
        // that outlives the renew deadline is given up: a late "yes" could be for a Lease
        // that expired meanwhile.
        log.set_problem(None);
        let mut stop_wait = stop.clone();
        let acquired = loop {
            if *stop.borrow() {
                return Ok(());
            }
            let sent = Instant::now();
            let attempt = tokio::time::timeout(
                options.timings.renew_deadline,
                elector.try_acquire_or_renew(),
            )
            .await;
            match attempt {
                Ok(Ok(true)) => break sent,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => crate::say!("rotor csr controller: the Lease: {e}"),
                Err(_) => crate::say!(
                    "rotor csr controller: the Lease: no answer within {:?}",
                    options.timings.renew_deadline
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(options.timings.retry_period) => {}
                _ = stop_wait.changed() => {}
            }
        };
        log.set_leader(true);
        crate::say!(
            "rotor csr controller: {} leads (Lease {}/{})",
            elector.identity(),
            options.lease_namespace,
            options.lease_name
        );
        // Leading ends with the first of: the Lease lost, the watches ended, a stop. Dropping
        // `lead` aborts its workers (a JoinSet): nothing acts after leadership is lost.
        let mut stop_lead = stop.clone();
        let ended = tokio::select! {
            why = keep_lease(&mut elector, acquired) => Ended::Lost(why),
            () = lead(client.clone(), Arc::clone(&actor), options.workers, log.clone()) => {
                Ended::Lost("the watches ended".into())
            }
            _ = stop_lead.changed() => Ended::Stopped,
        };
        log.set_leader(false);
        match ended {
            Ended::Stopped => {
                let _ =
                    tokio::time::timeout(options.timings.renew_deadline, elector.release()).await;
                crate::say!("rotor csr controller: stopped; the Lease is given up");
                return Ok(());
            }
            Ended::Lost(why) => crate::say!(
                "rotor csr controller: {} no longer leads ({why}): standing by",
                elector.identity()
            ),
        }
    }
}

/// Why leading ended.
enum Ended {
    /// The Lease was lost (why).
    Lost(String),
    /// SIGTERM or SIGINT.
    Stopped,
}

/// Renew every retry period; return why leading must end: another holder, or no renewal
/// within the renew deadline of the last one that succeeded (counted from when that request
/// was sent, so the leader stops acting before any standby may take over).
async fn keep_lease(elector: &mut Elector, acquired: Instant) -> String {
    let timings = elector.timings();
    let mut last = acquired;
    loop {
        tokio::time::sleep(timings.retry_period).await;
        let deadline = last + timings.renew_deadline;
        let sent = Instant::now();
        if sent >= deadline {
            return format!("not renewed within {:?}", timings.renew_deadline);
        }
        let attempt =
            tokio::time::timeout_at(deadline.into(), elector.try_acquire_or_renew()).await;
        match attempt {
            Ok(Ok(true)) => last = sent,
            Ok(Ok(false)) => return "another replica holds the Lease".into(),
            Ok(Err(e)) => crate::say!("rotor csr controller: renewing the Lease: {e}"),
            Err(_) => return format!("not renewed within {:?}", timings.renew_deadline),
        }
    }
}

/// How long one CSR's handling (its API writes included) may take before it is given up
/// and retried.
const HANDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The first retry of a CSR whose handling failed; doubled at each failure up to the max.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// The leader's work: watch, and hand CSRs to workers. Returns only if the watches end; its
/// workers are aborted when it is dropped.
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
    let mut tasks: JoinSet<(String, Done)> = JoinSet::new();

    let mut csrs: BTreeMap<String, Csr> = BTreeMap::new();
    // The index workers read when they decide (not when they were queued).
    let nodes = Arc::new(RwLock::new(NodeIndex::default()));
    let mut relisted: Option<NodeIndex> = None;
    let (mut csrs_ready, mut nodes_ready) = (false, fixed);
    let mut queue = Queue::default();
    loop {
        tokio::select! {
            event = csrs_events.next() => match event {
                Some(Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c))) => {
                    let name = c.name_any();
                    queue.dirty.insert(name.clone());
                    csrs.insert(name, c);
                }
                Some(Ok(watcher::Event::Delete(c))) => {
                    actor.forget(&c);
                    queue.failures.remove(&c.name_any());
                    csrs.remove(&c.name_any());
                }
                Some(Ok(watcher::Event::Init)) => csrs.clear(),
                Some(Ok(watcher::Event::InitDone)) => {
                    csrs_ready = true;
                    queue.dirty.extend(csrs.keys().cloned());
                }
                Some(Err(e)) => {
                    log.set_problem(Some(format!("watching CertificateSigningRequests: {e}")));
                    continue;
                }
                None => return,
            },
            event = node_events.next() => match event {
                Some(Ok(watcher::Event::Apply(n))) => {
                    if write(&nodes).apply(&n) {
                        queue.dirty.extend(node_csrs(&csrs));
                    }
                }
                Some(Ok(watcher::Event::Delete(n))) => {
                    write(&nodes).delete(&n);
                    queue.dirty.extend(node_csrs(&csrs));
                }
                // A (re)list fills a new index, swapped in whole: a Node not listed yet must
                // not make another's address look undisputed. Nothing is decided meanwhile.
                Some(Ok(watcher::Event::Init)) => {
                    relisted = Some(NodeIndex::default());
                    nodes_ready = false;
                }
                Some(Ok(watcher::Event::InitApply(n))) => {
                    relisted.get_or_insert_with(NodeIndex::default).apply(&n);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    *write(&nodes) = relisted.take().unwrap_or_default();
                    nodes_ready = true;
                    queue.dirty.extend(csrs.keys().cloned());
                }
                Some(Err(e)) => {
                    log.set_problem(Some(format!("watching Nodes: {e}")));
                    continue;
                }
                None => return,
            },
            Some(joined) = tasks.join_next() => {
                let Ok((name, done)) = joined else { continue };
                queue.finished(name, done, &mut tasks, &log);
            }
        }
        if !(csrs_ready && nodes_ready) {
            continue;
        }
        log.set_problem(None);
        for name in std::mem::take(&mut queue.dirty) {
            if queue.in_flight.contains(&name) {
                // Decided on the object as it is after the worker's write, not before.
                queue.again.insert(name);
                continue;
            }
            let Some(csr) = csrs.get(&name) else { continue };
            let work = actor.work(csr);
            if work == Work::Nothing {
                continue;
            }
            queue.in_flight.insert(name.clone());
            let (actor, csr, slots, nodes) = (
                Arc::clone(&actor),
                csr.clone(),
                Arc::clone(&slots),
                Arc::clone(&nodes),
            );
            tasks.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return (name, Done::Error("stopping".into()));
                };
                // The evidence as it is now, not as it was when the CSR was queued.
                let evidence = {
                    let index = nodes.read().unwrap_or_else(|e| e.into_inner());
                    actor.evidence(&index, csr.spec.username.as_deref().unwrap_or(""))
                };
                let done = tokio::time::timeout(HANDLE_TIMEOUT, actor.handle(csr, work, evidence))
                    .await
                    .unwrap_or_else(|_| {
                        Done::Error(format!(
                            "{name}: no answer from the API within {HANDLE_TIMEOUT:?}"
                        ))
                    });
                (name, done)
            });
        }
    }
}

/// Which CSRs to look at, which are being handled, and the failed ones' backoff.
#[derive(Default)]
struct Queue {
    /// CSRs to look at (changed, or their evidence did).
    dirty: BTreeSet<String>,
    /// CSRs a worker handles now.
    in_flight: HashSet<String>,
    /// CSRs that changed while a worker handled them: looked at again when it is done.
    again: HashSet<String>,
    /// Failures in a row, by CSR.
    failures: HashMap<String, u32>,
}

impl Queue {
    /// A task finished: a worker with what came of its CSR, or a failed CSR's backoff.
    fn finished(
        &mut self,
        name: String,
        done: Done,
        tasks: &mut JoinSet<(String, Done)>,
        log: &CsrRecorder,
    ) {
        if done == Done::Retry {
            self.dirty.insert(name);
            return;
        }
        self.in_flight.remove(&name);
        log.controller_result(done.as_str());
        if let Done::Error(e) = &done {
            // Retried with a backoff of its own; any change of the CSR retries it sooner.
            let n = self.failures.entry(name.clone()).or_insert(0);
            *n = n.saturating_add(1);
            let wait = FIRST_RETRY
                .saturating_mul(1 << (*n - 1).min(16))
                .min(MAX_RETRY);
            crate::say!("rotor csr controller: {e} (retrying in {wait:?})");
            let name = name.clone();
            tasks.spawn(async move {
                tokio::time::sleep(wait).await;
                (name, Done::Retry)
            });
        } else {
            self.failures.remove(&name);
        }
        if self.again.remove(&name) {
            self.dirty.insert(name);
        }
    }
}

fn write(nodes: &RwLock<NodeIndex>) -> std::sync::RwLockWriteGuard<'_, NodeIndex> {
    nodes.write().unwrap_or_else(|e| e.into_inner())
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
