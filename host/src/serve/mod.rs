//! `rotor serve`: a long-running process that keeps a data dir's PKI fresh by itself.
//!
//! Each cycle takes the data dir's exclusive lock (so CLI writers wait for it, and it for
//! them), recovers a change a dead writer left, asks the renewal hook about every leaf and
//! renews what the policy says on the same plan and commit path as `rotor start`, exports
//! every certificate's validity, then releases the lock and sleeps until the earliest of the
//! plugins' `renew-at` hints, the next expiry minus a margin, and a maximum interval. A failed
//! cycle is retried with backoff; a commit is all or nothing, so a failure never leaves half a
//! change.
//!
//! The policy bundle is hot-swapped on SIGHUP or when its files change: the new bundle is
//! loaded and validated (pins, settings, its fixtures when it has a `fixtures` directory) on a
//! thread of its own while the old one keeps deciding, then switched in between two decisions.
//! A refused bundle leaves the old one deciding. A shadow bundle evaluates every decision too,
//! and never acts: its disagreements are logged and counted.

mod actions;
mod bundles;
pub mod clock;
mod csr_log;
pub(crate) use csr_log::CsrRecorder;
mod http;
pub(crate) use http::{Probe, spawn as spawn_http};
pub mod log;
mod metrics;
mod supervise;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

pub use clock::Clock;
pub use log::{DecisionRecord, Role, Subject};

use self::bundles::{
    BundleSource, bundle_dir, export_bundle_info, fingerprint, live_link, load_bundle,
    report_load_failures, swap, swap_shadow, zero_disagreements,
};
use self::log::Sink;
use self::metrics::{
    CertLabels, DecisionLabels, Metrics, OutcomeLabels, PluginErrorLabels, PluginLabels,
    ReloadLabels, RenewalLabels,
};
use crate::cluster::start::{self, Action, LeafDecision, Mode};
use crate::cluster::{Cluster, ClusterError};
use crate::contract::{Hook, RenewalDecision};
use crate::fs::Root;
use crate::plugin::PluginEngine;
use crate::policy::{Bundle, Source};

/// The shortest sleep between two cycles, whatever the hints say: a plugin cannot make rotor
/// spin, and a renewal is followed by a cycle that learns the new certificates' hints.
const MIN_INTERVAL: time::Duration = time::Duration::seconds(60);
/// The first retry of a failed cycle; doubled at each failure, up to the maximum interval.
const FIRST_BACKOFF: time::Duration = time::Duration::seconds(10);
/// Lifetime of the TLS endpoint's certificate; renewed after two thirds of it.
const TLS_LIFETIME: time::Duration = time::Duration::days(30);

/// How `rotor serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The data dir.
    pub data_dir: PathBuf,
    /// How cycles hold the data dir (lock timeout, backups kept, datastore timeout).
    pub datadir: crate::datadir::Options,
    /// The bundle directory (or manifest) to decide with and watch; `None`: the bundle the data
    /// dir records, else the built-in default.
    pub bundle: Option<PathBuf>,
    /// A candidate bundle that decides in the shadow of the active one.
    pub shadow_bundle: Option<PathBuf>,
    /// The join token; `None`: the data dir's token file.
    pub token: Option<String>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; `None`: no HTTP.
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with a certificate issued by this CA of the layout (`None`: plain HTTP).
    pub tls_ca: Option<String>,
    /// The decision log; `None`: standard output.
    pub decision_log: Option<PathBuf>,
    /// Rotate the decision log when it would grow past this many bytes.
    pub decision_log_max_bytes: u64,
    /// Rotated decision logs to keep.
    pub decision_log_keep: u32,
    /// The post-renewal actions file.
    pub actions: Option<PathBuf>,
    /// The longest sleep between two cycles.
    pub max_interval: Duration,
    /// Wake this long before the next certificate expires.
    pub expiry_margin: Duration,
    /// How often the bundle's files are checked for changes.
    pub watch_interval: Duration,
    /// Serve the supervisor API here (k3s and RKE2 data dirs).
    pub supervisor_listen: Option<SocketAddr>,
    /// The supervisor API's limits, and whether it serves `server-bootstrap` (every CA key)
    /// to the server token.
    pub supervisor_limits: crate::supervisor::Limits,
}

/// Why `rotor serve` cannot start or a cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data dir, its datastore or a renewal.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A file.
    #[error(transparent)]
    Fs(#[from] crate::fs::FsError),
    /// A setting or a file of the operator's.
    #[error("{0}")]
    Config(String),
    /// No bundle could be loaded yet.
    #[error("no policy bundle loaded: {0}")]
    NoBundle(String),
    /// Stopped (SIGTERM, SIGINT) before the cycle wrote anything.
    #[error("stopped before renewing anything")]
    Stopped,
    /// The HTTP endpoint.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What the HTTP endpoint and the threads share with the cycles.
pub(crate) struct Shared {
    metrics: Metrics,
    active: RwLock<Option<Arc<Bundle>>>,
    shadow: RwLock<Option<Arc<Bundle>>>,
    bundle_problem: Mutex<Option<String>>,
    datastore_problem: Mutex<Option<String>>,
    supervisor_problem: Mutex<Option<String>>,
    /// Why a front without cycles (`rotor csr controller`) cannot work.
    front_problem: Mutex<Option<String>>,
    cycled: AtomicBool,
    /// Held by a cycle and by the watcher while either opens the data dir: the process never
    /// waits for its own lock.
    datadir: Mutex<()>,
}

impl Shared {
    /// Why the server is not ready, if it is not.
    pub(crate) fn not_ready(&self) -> Option<String> {
        let lock = |m: &Mutex<Option<String>>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut why = Vec::new();
        if self
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            why.push(format!(
                "the policy bundle cannot be loaded: {}",
                lock(&self.bundle_problem).unwrap_or_default()
            ));
        }
        if let Some(b) = self.bundle() {
            for f in b.load_failures() {
                why.push(format!(
                    "the {} plugin '{}' could not be loaded ({}): its failure mode '{}' decides",
                    f.hook.as_str(),
                    f.plugin,
                    f.error.kind,
                    f.failure_mode.as_str()
                ));
            }
        }
        if let Some(p) = lock(&self.datastore_problem) {
            why.push(format!("the datastore cannot be loaded: {p}"));
        }
        if let Some(p) = lock(&self.supervisor_problem) {
            why.push(format!("the supervisor API cannot serve: {p}"));
        }
        if let Some(p) = lock(&self.front_problem) {
            why.push(p);
        }
        if why.is_empty() && !self.cycled.load(Ordering::Acquire) {
            why.push("the first cycle has not finished".into());
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    /// Fresh metrics and no problem yet; not ready until the first cycle.
    fn new(active: Option<Arc<Bundle>>, shadow: Option<Arc<Bundle>>, metrics: Metrics) -> Shared {
        Shared {
            metrics,
            active: RwLock::new(active),
            shadow: RwLock::new(shadow),
            bundle_problem: Mutex::new(None),
            datastore_problem: Mutex::new(None),
            supervisor_problem: Mutex::new(None),
            front_problem: Mutex::new(None),
            cycled: AtomicBool::new(false),
            datadir: Mutex::new(()),
        }
    }

    fn bundle(&self) -> Option<Arc<Bundle>> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn shadow(&self) -> Option<Arc<Bundle>> {
        self.shadow
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_problem(m: &Mutex<Option<String>>, p: Option<String>) {
        *m.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }
}

/// What one cycle did.
#[derive(Debug, Default)]
pub struct CycleReport {
    /// Leaves asked about.
    pub checked: usize,
    /// Leaves re-issued.
    pub renewed: Vec<String>,
    /// Shadow decisions that differed from the active ones.
    pub disagreements: usize,
    /// When the next cycle is due.
    pub next: Option<OffsetDateTime>,
}

/// Events that end a sleep.
enum Event {
    /// SIGTERM or SIGINT.
    Stop,
    /// A new bundle was switched in: decide again now.
    Swapped,
}

/// The signal handlers' channels, until `run` takes them.
struct Channels {
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    reload: Receiver<()>,
}

/// The TLS endpoint's certificate: the resolver the server asks, and when to renew it.
struct Tls {
    ca: String,
    resolver: Arc<http::Resolver>,
    /// The CA certificate the current one was issued under, and when to renew it (real time).
    issued: Option<(Vec<u8>, OffsetDateTime)>,
}

/// A running `rotor serve`.
pub struct Service {
    options: ServeOptions,
    engine: Arc<PluginEngine>,
    clock: Clock,
    source: BundleSource,
    shared: Arc<Shared>,
    /// Held while the server runs: one `rotor serve` per data dir.
    _serve_lock: crate::datadir::DirLock,
    /// The decision log, shared with the supervisor API.
    sink: Arc<Mutex<Sink>>,
    actions: Option<actions::Runner>,
    tls: Option<Tls>,
    failures: u32,
    /// Leaves renewed by the last cycle, and how many cycles in a row renewed one of them.
    renewed_last: std::collections::BTreeSet<String>,
    renewal_loops: u32,
    /// Plan warnings already said.
    warned: std::collections::BTreeSet<String>,
    /// The certificate series exported by the last cycle (stale ones are removed).
    exported: std::collections::HashSet<CertLabels>,
    /// The bundle files' digest when the active bundle was loaded.
    seen: Option<String>,
    listening: Option<SocketAddr>,
    /// The supervisor API and the address it listens on.
    supervisor: Option<(Arc<crate::supervisor::Supervisor>, SocketAddr)>,
    stop: Arc<AtomicBool>,
    channels: Mutex<Option<Channels>>,
}

impl Service {
    /// Check the options, load the bundles and the actions, open the decision log, install
    /// the signal handlers and start the HTTP endpoint. A bundle that fails to load leaves the
    /// server up but not ready (the watcher loads it once it is fixed), as does a datastore
    /// that cannot be reached; every other problem is an error.
    ///
    /// # Errors
    /// A setting, a file or the listening address is unusable.
    pub fn new(
        options: ServeOptions,
        engine: Arc<PluginEngine>,
        clock: Clock,
    ) -> Result<Service, ServeError> {
        // The data dir must be initialized; its datastore may be down for now.
        let local = Cluster::open_read_local(&options.data_dir, &options.datadir)?;
        if let Some(ca) = &options.tls_ca
            && !local.layout.cas.iter().any(|c| c.name == ca)
        {
            let names: Vec<&str> = local.layout.cas.iter().map(|c| c.name).collect();
            return Err(ServeError::Config(format!(
                "the {} layout has no CA named '{ca}' for the TLS endpoint (its CAs: {})",
                local.config.profile.as_str(),
                names.join(", ")
            )));
        }
        // One server per data dir: two would run every action twice.
        let serve_lock = crate::datadir::DirLock::acquire(
            &Root::open_ambient(&options.data_dir)?,
            &Path::new(crate::datadir::META).join("serve.lock"),
            crate::datadir::LockMode::Exclusive,
            Duration::ZERO,
            "serve",
            true,
        )
        .map_err(|e| match e {
            crate::datadir::LockError::Timeout { holder, .. } => ServeError::Config(format!(
                "another rotor serve keeps {} fresh already ({holder})",
                options.data_dir.display()
            )),
            e => ServeError::Config(e.to_string()),
        })?;
        let actions = match &options.actions {
            Some(p) => Some(actions::load(p, &local.layout).map_err(ServeError::Config)?),
            None => None,
        };
        let supervisor_store = supervise::store(&local, &options)?;
        drop(local);
        let source = match &options.bundle {
            Some(p) => {
                // A path that is not a bundle is a mistake to say now; a bundle that does not
                // load leaves the server up and not ready until it is fixed.
                bundle_dir(p).map_err(ServeError::Config)?;
                BundleSource::Path(p.clone())
            }
            None => BundleSource::DataDir,
        };
        let shadow = match &options.shadow_bundle {
            Some(p) => Some(Arc::new(
                load_bundle(&engine, &BundleSource::Path(p.clone()), &options)
                    .map_err(|e| ServeError::Config(format!("shadow bundle: {e}")))?,
            )),
            None => None,
        };
        let sink = Sink::open(
            options.decision_log.as_deref(),
            options.decision_log_max_bytes,
            options.decision_log_keep,
        )
        .map_err(|e| ServeError::Config(format!("the decision log: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (events_tx, events) = channel::<Event>();
        let (reload_tx, reload) = channel::<()>();
        spawn_signals(events_tx.clone(), reload_tx, Arc::clone(&stop))?;
        let shared = Arc::new(Shared::new(None, shadow, Metrics::new()));
        if let Some(shadow) = shared.shadow() {
            report_load_failures(&shared, &shadow, "shadow");
        }
        // The files as they are before loading: a change from here on is a new bundle.
        let seen = fingerprint(&source, &options).ok();
        match load_bundle(&engine, &source, &options) {
            Ok(b) => {
                // A plugin that cannot be loaded does not stop renewals: its hook decides by
                // its failure mode (the built-in rule for a renewal hook in `fallback`), the
                // server says so and is not ready until the bundle is fixed.
                report_load_failures(&shared, &b, "active");
                *shared.active.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(b));
            }
            Err(e) => {
                crate::say!(
                    "rotor serve: the policy bundle cannot be loaded (not ready until it can): {e}"
                );
                shared.metrics.bundle_refused.set(1);
                Shared::set_problem(&shared.bundle_problem, Some(e));
            }
        }
        let actions = actions
            .map(|a| actions::Runner::start(a, options.data_dir.clone(), Arc::clone(&shared)));
        let tls = options.tls_ca.as_ref().map(|ca| Tls {
            ca: ca.clone(),
            resolver: Arc::new(http::Resolver::default()),
            issued: None,
        });
        let mut service = Service {
            options,
            engine,
            clock,
            source,
            shared,
            _serve_lock: serve_lock,
            sink: Arc::new(Mutex::new(sink)),
            actions,
            tls,
            failures: 0,
            renewed_last: Default::default(),
            renewal_loops: 0,
            warned: Default::default(),
            exported: Default::default(),
            seen,
            listening: None,
            supervisor: None,
            stop,
            channels: Mutex::new(Some(Channels {
                events_tx,
                events,
                reload,
            })),
        };
        service.export_bundle_info();
        // Counters that exist from the start (at 0), so an alert on them never sees them absent.
        let m = &service.shared.metrics;
        for outcome in ["accepted", "refused"] {
            for role in ["active", "shadow"] {
                if role == "active" || service.options.shadow_bundle.is_some() {
                    m.bundle_reloads
                        .get_or_create(&ReloadLabels {
                            role: role.into(),
                            outcome: outcome.into(),
                        })
                        .inc_by(0);
                }
            }
        }
        for outcome in ["success", "failure"] {
            m.cycles
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.into(),
                })
                .inc_by(0);
        }
        if let Some(shadow) = service.shared.shadow() {
            zero_disagreements(&service.shared, &shadow);
        }
        if let Some(addr) = service.options.listen {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|source| ServeError::Listen { addr, source })?;
            service.listening = Some(
                listener
                    .local_addr()
                    .map_err(|source| ServeError::Listen { addr, source })?,
            );
            // The first certificate before the first connection: /healthz answers over HTTPS
            // even while cycles fail.
            if service.tls.is_some()
                && let Err(e) = service.tls_from_datastore()
            {
                crate::say!(
                    "rotor serve: no certificate for the TLS endpoint yet (the next cycle tries again): {e}"
                );
            }
            let resolver = service.tls.as_ref().map(|t| Arc::clone(&t.resolver));
            http::spawn(
                listener,
                resolver,
                Arc::clone(&service.shared) as Arc<dyn Probe>,
            )
            .map_err(|source| ServeError::Listen { addr, source })?;
        }
        if let (Some(addr), Some(store)) = (service.options.supervisor_listen, supervisor_store) {
            let (supervisor, bound) = supervise::start(
                addr,
                store,
                service.options.supervisor_limits.clone(),
                &service.shared,
                Arc::clone(&service.sink),
            )?;
            supervise::refresh(&supervisor, bound, &service.options, &service.shared);
            service.supervisor = Some((supervisor, bound));
        }
        Ok(service)
    }

    /// The address the HTTP endpoint listens on, once bound (port 0 picks one).
    pub fn listening(&self) -> Option<SocketAddr> {
        self.listening
    }

    /// The address the supervisor API listens on, when it was asked for.
    pub fn supervisor_listening(&self) -> Option<SocketAddr> {
        self.supervisor.as_ref().map(|(_, addr)| *addr)
    }

    /// The bundle deciding now (`None` while none could be loaded).
    pub fn active_bundle(&self) -> Option<Arc<Bundle>> {
        self.shared.bundle()
    }

    /// Load, validate and switch in the active bundle now, as SIGHUP does (which also reloads
    /// the shadow bundle): the bundle deciding until then keeps deciding meanwhile (from any
    /// thread). `false` when the new one was refused.
    pub fn reload(&self) -> bool {
        swap(&self.engine, &self.source, &self.options, &self.shared)
    }

    /// The metrics page, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Run cycles until SIGTERM or SIGINT; the change in progress is finished first, and the
    /// data dir's lock is not held between cycles.
    ///
    /// # Errors
    /// Never today; kept for what a future stop may report.
    pub fn run(mut self) -> Result<(), ServeError> {
        let Some(Channels {
            events_tx,
            events,
            reload,
        }) = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return Ok(());
        };
        self.spawn_watcher(reload, events_tx);
        crate::say!(
            "rotor serve: keeping {} fresh{}{}",
            self.options.data_dir.display(),
            self.listening
                .map(|a| format!(
                    "; /metrics, /healthz, /readyz on {}://{a}",
                    if self.tls.is_some() { "https" } else { "http" }
                ))
                .unwrap_or_default(),
            match &self.options.decision_log {
                Some(p) => format!("; decisions to {}", p.display()),
                None => "; decisions to standard output".into(),
            }
        );
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let next = match self.cycle() {
                Err(ServeError::Stopped) => break,
                Ok(report) => {
                    if !report.renewed.is_empty() {
                        crate::say!(
                            "rotor serve: {}: renewed {}",
                            crate::clock::rfc3339(self.clock.now()),
                            report.renewed.join(", ")
                        );
                    }
                    report
                        .next
                        .unwrap_or_else(|| self.clock.now() + MIN_INTERVAL)
                }
                Err(e) => {
                    let wait = self.backoff();
                    let now = self.clock.now();
                    crate::say!(
                        "rotor serve: {}: cycle failed (retrying in {}): {e}",
                        crate::clock::rfc3339(now),
                        crate::cluster::check::short_duration(wait)
                    );
                    now + wait
                }
            };
            self.shared.metrics.next_cycle.set(next.unix_timestamp());
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            match self.clock.sleep_until(next, &events) {
                clock::Woken::Deadline | clock::Woken::Event(Event::Swapped) => {}
                clock::Woken::Event(Event::Stop) | clock::Woken::Closed => break,
            }
        }
        if let Some(a) = &self.actions {
            a.finish();
        }
        crate::say!("rotor serve: stopped");
        Ok(())
    }

    fn backoff(&mut self) -> time::Duration {
        self.failures = self.failures.saturating_add(1);
        // Never longer than an hour: a failure must not sleep past an expiry.
        let max = time::Duration::try_from(self.options.max_interval)
            .unwrap_or(time::Duration::HOUR)
            .min(time::Duration::HOUR);
        let factor = 1_i32 << self.failures.saturating_sub(1).min(16);
        (FIRST_BACKOFF * factor)
            .min(max)
            .max(time::Duration::SECOND)
    }

    /// One cycle: decide about every leaf, renew what the policy says, export, schedule.
    ///
    /// # Errors
    /// No bundle is loaded, or the data dir, the datastore or the renewal failed (nothing
    /// was changed then, or the change was completed: commits are all or nothing).
    pub fn cycle(&mut self) -> Result<CycleReport, ServeError> {
        let result = self.cycle_inner();
        if matches!(result, Err(ServeError::Stopped)) {
            return result;
        }
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.shared
            .metrics
            .cycles
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        if result.is_ok() {
            self.failures = 0;
            self.shared.cycled.store(true, Ordering::Release);
            // The cycle may have rotated the CAs or the token: the supervisor API follows.
            if let Some((supervisor, addr)) = &self.supervisor {
                supervise::refresh(supervisor, *addr, &self.options, &self.shared);
            }
        }
        result
    }

    fn cycle_inner(&mut self) -> Result<CycleReport, ServeError> {
        let now = self.clock.now();
        let Some(bundle) = self.shared.bundle() else {
            let why = self
                .shared
                .bundle_problem
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(ServeError::NoBundle(why));
        };
        let shared = Arc::clone(&self.shared);
        let _guard = shared.datadir.lock().unwrap_or_else(|e| e.into_inner());
        let (waits0, waited0) = crate::datadir::wait_totals();
        let opened = Cluster::open_write(&self.options.data_dir, &self.options.datadir);
        let (waits1, waited1) = crate::datadir::wait_totals();
        let m = &shared.metrics;
        m.lock_waits.inc_by(waits1 - waits0);
        m.lock_wait_seconds
            .inc_by((waited1 - waited0).as_secs_f64());
        let datastore = |e: &ClusterError| {
            if is_datastore_error(e) {
                Shared::set_problem(&shared.datastore_problem, Some(e.to_string()));
            }
        };
        let mut cluster = opened.inspect_err(datastore)?;
        let prepared = start::prepare(
            &cluster,
            &bundle,
            self.options.token.as_deref(),
            &Mode::Start,
            now,
        )
        .inspect_err(datastore)?;
        Shared::set_problem(&shared.datastore_problem, None);
        if !prepared.plan.is_empty() && self.stop.load(Ordering::Acquire) {
            // Stopping before anything was written (or logged as acted on): the next server,
            // or `rotor start`, does it.
            return Err(ServeError::Stopped);
        }
        let mut report = CycleReport {
            checked: prepared.plan.leaves.len(),
            ..CycleReport::default()
        };
        for leaf in &prepared.plan.leaves {
            if let Some(d) = &leaf.decided {
                report.disagreements += usize::from(self.record(&bundle, leaf, d, now));
            }
        }
        // Said once, not at every cycle (the CA that expires in 300 days, the clock that moved
        // back), and again when they change.
        let warnings: std::collections::BTreeSet<String> =
            prepared.plan.warnings.iter().cloned().collect();
        for w in warnings.difference(&self.warned) {
            crate::say!("rotor serve: warning: {w}");
        }
        self.warned = warnings;
        let reissues: Vec<&start::LeafPlan> = prepared.plan.reissues().collect();
        if !prepared.plan.is_empty() {
            let applied = start::apply(&mut cluster, &prepared, false, now);
            let outcome = if applied.is_ok() {
                "success"
            } else {
                "failure"
            };
            for leaf in &reissues {
                m.renewals
                    .get_or_create(&RenewalLabels {
                        outcome: outcome.into(),
                        reason: reason_of(leaf).into(),
                    })
                    .inc();
            }
            report.renewed = applied.inspect_err(datastore)?.reissued;
        }
        self.export_certificates(&cluster, &prepared);
        if let Err(e) = self.refresh_tls(&cluster, |name| prepared.ca(name)) {
            crate::say!("rotor serve: the TLS endpoint's certificate: {e}");
        }
        drop(cluster);
        if let Some(a) = &self.actions {
            let renewed: Vec<(String, Vec<String>)> = reissues
                .iter()
                .map(|l| {
                    (
                        l.name.clone(),
                        l.restart
                            .iter()
                            .chain(&l.reloads)
                            .map(|s| s.to_string())
                            .collect(),
                    )
                })
                .collect();
            if !renewed.is_empty() {
                a.renewed(&renewed);
            }
        }
        m.last_success.set(now.unix_timestamp());
        let renewed: std::collections::BTreeSet<String> = report.renewed.iter().cloned().collect();
        report.next = Some(if renewed.is_empty() {
            self.renewal_loops = 0;
            self.schedule(&prepared.plan, now)
        } else {
            // Ask again soon, for the renewed certificates' hints. A leaf renewed again at
            // once means something reverts it or a policy renews it forever: back off.
            let again: Vec<&String> = renewed.intersection(&self.renewed_last).collect();
            if again.is_empty() {
                self.renewal_loops = 0;
            } else {
                self.renewal_loops = self.renewal_loops.saturating_add(1);
                crate::say!(
                    "rotor serve: warning: renewed again in the next cycle: {}; something reverts them (backing off)",
                    again
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let factor = 1_i32 << self.renewal_loops.min(12);
            let max =
                time::Duration::try_from(self.options.max_interval).unwrap_or(time::Duration::HOUR);
            now + (MIN_INTERVAL * factor).min(max.max(MIN_INTERVAL))
        });
        self.renewed_last = renewed;
        Ok(report)
    }

    /// The earliest of the hints, the next expiry minus the margin, and the maximum interval;
    /// never sooner than [`MIN_INTERVAL`].
    fn schedule(&self, plan: &start::Plan, now: OffsetDateTime) -> OffsetDateTime {
        let max =
            time::Duration::try_from(self.options.max_interval).unwrap_or(time::Duration::DAY);
        let margin =
            time::Duration::try_from(self.options.expiry_margin).unwrap_or(time::Duration::ZERO);
        let mut next = now + max.max(MIN_INTERVAL);
        for leaf in &plan.leaves {
            let hint = leaf.decided.as_ref().and_then(|d| match d.decision {
                RenewalDecision::Keep { renew_at, .. } => renew_at,
                RenewalDecision::Renew { .. } => None,
            });
            let expiry = leaf.not_after.and_then(|t| t.checked_sub(margin));
            for t in [hint, expiry].into_iter().flatten() {
                if t > now && t < next {
                    next = t;
                }
            }
        }
        next.max(now + MIN_INTERVAL)
    }

    /// Log and export one decision of the active bundle, and shadow it. `true` when the shadow
    /// bundle disagreed.
    fn record(
        &mut self,
        bundle: &Bundle,
        leaf: &start::LeafPlan,
        d: &LeafDecision,
        now: OffsetDateTime,
    ) -> bool {
        let plugin = d.plugin.as_ref().map(|(n, _)| n.clone());
        let digest = d.plugin.as_ref().map(|(_, h)| h.clone());
        let mut reasons = vec![d.decision.reason().to_string()];
        reasons.extend(d.notes.iter().cloned());
        if leaf.action == Action::Keep && d.decision.is_renew() {
            reasons.extend(leaf.reasons.iter().cloned());
        }
        let record = decision_record(
            &bundle.name,
            &d.request,
            &d.decision,
            d.source,
            plugin,
            digest,
            d.error,
            reasons,
            d.latency,
            Role::Acted,
            None,
            now,
        );
        self.export_decision(&record, d.error);
        self.write(&record);
        let Some(shadow) = self.shared.shadow() else {
            return false;
        };
        let started = Instant::now();
        let answer = shadow.renewal(&d.request);
        let latency = started.elapsed();
        let (plugin, digest) = shadow.plugin_identity(Hook::Renewal).unzip();
        let record = match answer {
            Ok(o) => {
                let disagrees = disagree(&d.decision, &o.decision);
                let mut reasons = vec![o.decision.reason().to_string()];
                reasons.extend(o.notes.iter().cloned());
                let error = o.error.as_ref().map(|e| e.kind.code());
                let record = decision_record(
                    &shadow.name,
                    &d.request,
                    &o.decision,
                    o.source,
                    plugin,
                    digest,
                    error,
                    reasons,
                    latency,
                    Role::Shadow,
                    Some(disagrees),
                    now,
                );
                self.export_decision(&record, error);
                record
            }
            Err(e) => {
                // The candidate could not decide (its failure mode is `error`): an error of
                // the shadow, not a disagreement.
                let mut record = decision_record(
                    &shadow.name,
                    &d.request,
                    &d.decision,
                    Source::FailureMode,
                    plugin,
                    digest,
                    Some(e.kind.code()),
                    vec![e.to_string()],
                    latency,
                    Role::Shadow,
                    None,
                    now,
                );
                record.decision = "error".into();
                record.renew_at = None;
                record.lifetime_seconds = None;
                self.export_decision(&record, Some(e.kind.code()));
                record
            }
        };
        let disagrees = record.disagrees == Some(true);
        if disagrees {
            self.shared
                .metrics
                .shadow_disagreements
                .get_or_create(&PluginLabels {
                    hook: Hook::Renewal.as_str().into(),
                    plugin: record.plugin.clone().unwrap_or_else(|| "built-in".into()),
                    role: Role::Shadow.as_str().into(),
                })
                .inc();
        }
        self.write(&record);
        disagrees
    }

    fn export_decision(&self, r: &DecisionRecord, error: Option<&'static str>) {
        let m = &self.shared.metrics;
        let plugin = r.plugin.clone().unwrap_or_else(|| "built-in".into());
        let role = r.role.as_str().to_string();
        m.decisions
            .get_or_create(&DecisionLabels {
                hook: r.hook.clone(),
                outcome: r.decision.clone(),
                plugin: plugin.clone(),
                role: role.clone(),
            })
            .inc();
        if r.source != "built_in" {
            m.latency
                .get_or_create(&PluginLabels {
                    hook: r.hook.clone(),
                    plugin: plugin.clone(),
                    role: role.clone(),
                })
                .observe(r.latency_ms / 1000.0);
        }
        if let Some(kind) = error {
            m.plugin_errors
                .get_or_create(&PluginErrorLabels {
                    hook: r.hook.clone(),
                    plugin,
                    kind: kind.into(),
                    role,
                })
                .inc();
        }
    }

    fn write(&mut self, record: &DecisionRecord) {
        let written = self
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(record);
        if let Err(e) = written {
            crate::say!("rotor serve: decision log: {e}");
        }
    }

    /// Every certificate's validity, as the files say after this cycle. Series are replaced
    /// in place (a scrape in the middle of a cycle sees the old value or the new one, never
    /// none); those of certificates gone are removed.
    fn export_certificates(&mut self, cluster: &Cluster, prepared: &start::Prepared) {
        let m = &self.shared.metrics;
        let layout = cluster.config.profile.as_str().to_string();
        let hints: std::collections::BTreeMap<&str, (&str, OffsetDateTime)> = prepared
            .plan
            .leaves
            .iter()
            .filter_map(|l| {
                let d = l.decided.as_ref()?;
                match d.decision {
                    RenewalDecision::Keep {
                        renew_at: Some(at), ..
                    } => Some((l.name.as_str(), (d.request.certificate.serial.as_str(), at))),
                    _ => None,
                }
            })
            .collect();
        let mut exported = std::collections::HashSet::new();
        let mut set = |labels: CertLabels,
                       not_before: OffsetDateTime,
                       not_after: OffsetDateTime,
                       renewal: Option<OffsetDateTime>| {
            m.not_before
                .get_or_create(&labels)
                .set(not_before.unix_timestamp());
            m.expiration
                .get_or_create(&labels)
                .set(not_after.unix_timestamp());
            match renewal {
                Some(at) => {
                    m.renewal.get_or_create(&labels).set(at.unix_timestamp());
                }
                None => {
                    m.renewal.remove(&labels);
                }
            }
            exported.insert(labels);
        };
        for spec in &cluster.layout.cas {
            if let Some(ca) = prepared.ca(spec.name) {
                let f = ca.facts();
                set(
                    CertLabels {
                        name: spec.name.to_string(),
                        file: spec.cert.display().to_string(),
                        layout: layout.clone(),
                        issuer: spec.name.to_string(),
                        kind: "ca".into(),
                    },
                    f.not_before,
                    f.not_after,
                    None,
                );
            }
        }
        // What the plan read stands for a leaf it did not re-issue (the lock is still held: the
        // file is as read); a re-issued or unread one is read again.
        let read: std::collections::BTreeMap<&str, &crate::facts::CertificateFacts> = prepared
            .plan
            .leaves
            .iter()
            .filter(|l| l.action != Action::Reissue)
            .filter_map(|l| Some((l.name.as_str(), &*l.decided.as_ref()?.request.certificate)))
            .collect();
        for spec in &cluster.layout.leaves {
            let facts = match read.get(spec.name.as_str()) {
                Some(f) => Some((*f).clone()),
                None => match cluster.read_leaf(spec) {
                    Ok(crate::cluster::LeafOnDisk::Present { facts, .. }) => Some(*facts),
                    _ => None,
                },
            };
            if let Some(facts) = facts {
                let labels = CertLabels {
                    name: spec.name.clone(),
                    file: spec.storage.cert_path().display().to_string(),
                    layout: layout.clone(),
                    issuer: spec.ca.to_string(),
                    kind: "leaf".into(),
                };
                // The hint is about the certificate the policy saw: a renewed one gets its
                // hint at the next cycle, which follows soon.
                let hint = hints
                    .get(spec.name.as_str())
                    .and_then(|(serial, at)| (*serial == facts.serial).then_some(*at));
                set(labels, facts.not_before, facts.not_after, hint);
            }
        }
        for gone in self.exported.difference(&exported) {
            m.expiration.remove(gone);
            m.not_before.remove(gone);
            m.renewal.remove(gone);
        }
        self.exported = exported;
    }

    fn export_bundle_info(&self) {
        export_bundle_info(&self.shared);
    }

    /// Issue the TLS endpoint's first certificate, reading the CA from the datastore.
    fn tls_from_datastore(&mut self) -> Result<(), String> {
        let cluster = Cluster::open_read(&self.options.data_dir, &self.options.datadir)
            .map_err(|e| e.to_string())?;
        let now = crate::clock::system_now();
        let (_token, data) = cluster
            .open_bootstrap(self.options.token.as_deref(), now)
            .map_err(|e| e.to_string())?;
        let cas = cluster
            .cas_from_bootstrap(&data)
            .map_err(|e| e.to_string())?;
        self.refresh_tls(&cluster, |name| cas.get(name))
    }

    /// Issue (or renew, after two thirds of its life, or when its CA changed) the TLS
    /// endpoint's certificate.
    fn refresh_tls<'a>(
        &mut self,
        cluster: &Cluster,
        ca_of: impl Fn(&str) -> Option<&'a crate::cluster::LoadedCa>,
    ) -> Result<(), String> {
        let listening = self.listening;
        let Some(tls) = &mut self.tls else {
            return Ok(());
        };
        // Real TLS clients check the real time, whatever clock the cycles run on.
        let real = crate::clock::system_now();
        let ca =
            ca_of(&tls.ca).ok_or_else(|| format!("the layout has no CA named {:?}", tls.ca))?;
        if let Some((der, renew_after)) = &tls.issued
            && der == ca.cert_der()
            && real < *renew_after
        {
            return Ok(());
        }
        let signer = ca.signer().ok_or_else(|| {
            format!(
                "CA {} has no key here: it cannot issue the endpoint's certificate",
                tls.ca
            )
        })?;
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut dns = vec!["localhost".to_string(), cluster.config.node_name.clone()];
        dns.dedup();
        if let Some(addr) = listening {
            if addr.ip().is_unspecified() {
                ips.push(IpAddr::from([127, 0, 0, 1]));
                ips.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
                ips.extend(cluster.config.node_ips.iter().copied());
            } else {
                ips.push(addr.ip());
            }
        }
        let subject = crate::pki::Subject {
            common_name: "rotor-serve".into(),
            organizations: Vec::new(),
            dns_names: dns,
            ip_addresses: ips,
        };
        let key = cluster
            .config
            .key_type
            .generate()
            .map_err(|e| e.to_string())?;
        let not_after = (real + TLS_LIFETIME).min(ca.facts().not_after);
        let validity = crate::pki::Validity {
            not_before: real - time::Duration::minutes(5),
            not_after,
        };
        let issued = signer
            .issue_leaf(&subject, crate::pki::Purpose::Server, &key, validity)
            .map_err(|e| e.to_string())?;
        use rustls_pki_types::pem::PemObject;
        let key_der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.pem().as_bytes())
            .map_err(|e| e.to_string())?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
            .map_err(|e| e.to_string())?;
        let chain = vec![
            rustls_pki_types::CertificateDer::from(issued.der),
            rustls_pki_types::CertificateDer::from(ca.cert_der().to_vec()),
        ];
        tls.resolver
            .set(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)));
        tls.issued = Some((ca.cert_der().to_vec(), real + (not_after - real) * 2 / 3));
        Ok(())
    }

    fn spawn_watcher(&self, reload: Receiver<()>, events: Sender<Event>) {
        let source = self.source.clone();
        let engine = Arc::clone(&self.engine);
        let options = self.options.clone();
        let shared = Arc::clone(&self.shared);
        let interval = self.options.watch_interval.max(Duration::from_millis(100));
        let mut seen = self.seen.clone();
        let _ = std::thread::Builder::new()
            .name("rotor-bundle-watch".into())
            .spawn(move || {
                // A change is loaded once the files have stayed the same for one interval:
                // an operator copying a bundle file by file is not refused halfway.
                let mut settling: Option<String> = None;
                let mut last_link = live_link(&source, &options);
                let mut last_fingerprint = seen.clone();
                loop {
                    let forced = match reload.recv_timeout(interval) {
                        Ok(()) => true,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    // The data dir's bundle changes only with a new generation: look at the
                    // live link (no lock) and read the bundle only when it moved.
                    let link = live_link(&source, &options);
                    let now = if !forced && link.is_some() && link == last_link {
                        last_fingerprint.clone()
                    } else {
                        let _guard = shared.datadir.lock().unwrap_or_else(|e| e.into_inner());
                        fingerprint(&source, &options).ok()
                    };
                    // A failed look (a writer holding the lock too long) is tried again at
                    // the next tick, not taken for "unchanged".
                    last_link = if now.is_some() { link } else { None };
                    last_fingerprint = now.clone();
                    if !forced {
                        let Some(fp) = &now else { continue };
                        if Some(fp) == seen.as_ref() {
                            settling = None;
                            continue;
                        }
                        if settling.as_ref() != Some(fp) {
                            settling = Some(fp.clone());
                            continue;
                        }
                    }
                    settling = None;
                    seen = now;
                    let swapped = swap(&engine, &source, &options, &shared);
                    // SIGHUP reloads the shadow bundle too.
                    if forced && let Some(path) = &options.shadow_bundle {
                        swap_shadow(&engine, path, &options, &shared);
                    }
                    if swapped && events.send(Event::Swapped).is_err() {
                        return;
                    }
                }
            });
    }
}

fn spawn_signals(
    events: Sender<Event>,
    reload: Sender<()>,
    stop: Arc<AtomicBool>,
) -> Result<(), ServeError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| ServeError::Config(format!("cannot handle signals: {e}")))?;
    std::thread::Builder::new()
        .name("rotor-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    crate::say!("rotor serve: SIGHUP: reloading the policy bundle");
                    let _ = reload.send(());
                } else {
                    crate::say!(
                        "rotor serve: {}: stopping after the change in progress",
                        if signal == SIGTERM {
                            "SIGTERM"
                        } else {
                            "SIGINT"
                        }
                    );
                    stop.store(true, Ordering::Release);
                    let _ = events.send(Event::Stop);
                }
            }
        })
        .map_err(|e| ServeError::Config(format!("cannot handle signals: {e}")))?;
    Ok(())
}

fn is_datastore_error(e: &ClusterError) -> bool {
    matches!(
        e,
        ClusterError::Datastore(_)
            | ClusterError::NotWritten(_)
            | ClusterError::Unsettled(_)
            | ClusterError::NoDatastore { .. }
            | ClusterError::BadToken { .. }
            | ClusterError::TokenPinsAnotherCa { .. }
    )
}

/// Why a leaf was re-issued, as a metric label.
fn reason_of(leaf: &start::LeafPlan) -> &'static str {
    match &leaf.decided {
        None => "missing",
        Some(d) if d.decision.is_renew() => "policy",
        Some(_) => {
            let all = leaf.reasons.join(" ");
            if all.contains("private key does not match") {
                "key_mismatch"
            } else if all.contains("not signed by the current") {
                "issuer"
            } else {
                "drift"
            }
        }
    }
}

/// Whether two renewal answers differ: keep against renew, or renewals of other lifetimes.
fn disagree(a: &RenewalDecision, b: &RenewalDecision) -> bool {
    a.is_renew() != b.is_renew() || (a.is_renew() && a.lifetime() != b.lifetime())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one record's fields, named at the call"
)]
fn decision_record(
    bundle: &str,
    request: &crate::contract::RenewalRequest,
    decision: &RenewalDecision,
    source: Source,
    plugin: Option<String>,
    digest: Option<String>,
    error: Option<&'static str>,
    reasons: Vec<String>,
    latency: Duration,
    role: Role,
    disagrees: Option<bool>,
    now: OffsetDateTime,
) -> DecisionRecord {
    let (kind, renew_at, lifetime) = match decision {
        RenewalDecision::Keep { renew_at, .. } => ("keep", *renew_at, None),
        RenewalDecision::Renew {
            lifetime_seconds, ..
        } => ("renew", None, *lifetime_seconds),
    };
    DecisionRecord {
        time: now,
        hook: Hook::Renewal.as_str().into(),
        subject: Subject {
            certificate: Some(request.name.clone()),
            serial: Some(request.certificate.serial.clone()),
            csr: None,
        },
        bundle: bundle.to_string(),
        plugin,
        digest,
        source: match source {
            Source::Plugin => "plugin",
            Source::FailureMode => "failure_mode",
            Source::BuiltIn => "built_in",
        }
        .into(),
        decision: kind.into(),
        reasons,
        renew_at,
        lifetime_seconds: lifetime,
        not_after: Some(request.certificate.not_after),
        error: error.map(str::to_string),
        latency_ms: latency.as_secs_f64() * 1000.0,
        role,
        disagrees,
    }
}
