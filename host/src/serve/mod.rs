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
pub mod clock;
mod http;
pub mod log;
mod metrics;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

pub use clock::Clock;
pub use log::{DecisionRecord, Role, Subject};

use self::log::Sink;
use self::metrics::{
    BundleInfoLabels, CertLabels, DecisionLabels, Metrics, OutcomeLabels, PluginErrorLabels,
    PluginLabels, RenewalLabels,
};
use crate::cluster::start::{self, Action, LeafDecision, Mode};
use crate::cluster::{Cluster, ClusterError};
use crate::contract::{Hook, RenewalDecision};
use crate::fs::Root;
use crate::plugin::PluginEngine;
use crate::policy::{Bundle, Source};

/// The shortest sleep between two cycles, whatever the hints say.
const MIN_INTERVAL: time::Duration = time::Duration::seconds(1);
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
    /// The HTTP endpoint.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Where the active bundle comes from, and how to tell that it changed.
#[derive(Clone, Debug)]
enum BundleSource {
    /// `--bundle`: a directory (or its manifest), watched.
    Path(PathBuf),
    /// The bundle the data dir records (`rotor policy use`), watched through the data dir.
    Recorded,
    /// The default bundle built into rotor: it never changes.
    Builtin,
}

/// What the HTTP endpoint and the threads share with the cycles.
pub(crate) struct Shared {
    metrics: Metrics,
    active: RwLock<Option<Arc<Bundle>>>,
    bundle_problem: Mutex<Option<String>>,
    datastore_problem: Mutex<Option<String>>,
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
        if let Some(p) = lock(&self.datastore_problem) {
            why.push(format!("the datastore cannot be loaded: {p}"));
        }
        if why.is_empty() && !self.cycled.load(Ordering::Acquire) {
            why.push("the first cycle has not finished".into());
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn bundle(&self) -> Option<Arc<Bundle>> {
        self.active
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

/// A running `rotor serve`.
pub struct Service {
    options: ServeOptions,
    engine: Arc<PluginEngine>,
    clock: Clock,
    source: BundleSource,
    shadow: Option<Arc<Bundle>>,
    shared: Arc<Shared>,
    sink: Sink,
    actions: Option<actions::Runner>,
    tls: Option<Arc<http::Resolver>>,
    tls_renew_after: Option<OffsetDateTime>,
    failures: u32,
    listening: Option<SocketAddr>,
}

impl Service {
    /// Check the options, load the bundles and the actions, open the decision log and start
    /// the HTTP endpoint. A bundle that fails to load leaves the server up but not ready (the
    /// watcher loads it once it is fixed); every other problem is an error.
    ///
    /// # Errors
    /// A setting, a file or the listening address is unusable.
    pub fn new(
        options: ServeOptions,
        engine: Arc<PluginEngine>,
        clock: Clock,
    ) -> Result<Service, ServeError> {
        // The data dir must be initialized: the first cycle would say so, but later.
        drop(Cluster::open_read(&options.data_dir, &options.datadir)?);
        let source = match &options.bundle {
            Some(p) => BundleSource::Path(p.clone()),
            None => {
                let cluster = Cluster::open_read(&options.data_dir, &options.datadir)?;
                if cluster.recorded_bundle()?.is_some() {
                    BundleSource::Recorded
                } else {
                    BundleSource::Builtin
                }
            }
        };
        let shadow = match &options.shadow_bundle {
            Some(p) => Some(Arc::new(
                load_bundle(&engine, &BundleSource::Path(p.clone()), &options)
                    .map_err(|e| ServeError::Config(format!("shadow bundle: {e}")))?,
            )),
            None => None,
        };
        let actions = match &options.actions {
            Some(p) => Some(actions::load(p).map_err(ServeError::Config)?),
            None => None,
        };
        let sink = Sink::open(
            options.decision_log.as_deref(),
            options.decision_log_max_bytes,
            options.decision_log_keep,
        )?;
        let shared = Arc::new(Shared {
            metrics: Metrics::new(),
            active: RwLock::new(None),
            bundle_problem: Mutex::new(None),
            datastore_problem: Mutex::new(None),
            cycled: AtomicBool::new(false),
            datadir: Mutex::new(()),
        });
        match load_bundle(&engine, &source, &options) {
            Ok(b) => {
                *shared.active.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(b));
            }
            Err(e) => {
                eprintln!(
                    "rotor serve: the policy bundle cannot be loaded (not ready until it can): {e}"
                );
                Shared::set_problem(&shared.bundle_problem, Some(e));
            }
        }
        let actions = actions
            .map(|a| actions::Runner::start(a, options.data_dir.clone(), Arc::clone(&shared)));
        let tls = options
            .tls_ca
            .as_ref()
            .map(|_| Arc::new(http::Resolver::default()));
        let mut service = Service {
            options,
            engine,
            clock,
            source,
            shadow,
            shared,
            sink,
            actions,
            tls,
            tls_renew_after: None,
            failures: 0,
            listening: None,
        };
        service.export_bundle_info();
        if let Some(addr) = service.options.listen {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|source| ServeError::Listen { addr, source })?;
            let bound = http::spawn(listener, service.tls.clone(), Arc::clone(&service.shared))
                .map_err(|source| ServeError::Listen { addr, source })?;
            service.listening = Some(bound);
        }
        Ok(service)
    }

    /// The address the HTTP endpoint listens on, once bound (port 0 picks one).
    pub fn listening(&self) -> Option<SocketAddr> {
        self.listening
    }

    /// The metrics page, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }

    /// Run cycles until SIGTERM or SIGINT; the change in progress is finished first, and the
    /// data dir's lock is not held between cycles.
    ///
    /// # Errors
    /// The signal handlers cannot be installed.
    pub fn run(mut self) -> Result<(), ServeError> {
        let (events_tx, events) = channel::<Event>();
        let (reload_tx, reload_rx) = channel::<()>();
        let stop = Arc::new(AtomicBool::new(false));
        spawn_signals(events_tx.clone(), reload_tx, Arc::clone(&stop))?;
        self.spawn_watcher(reload_rx, events_tx);
        eprintln!(
            "rotor serve: keeping {} fresh{}{}",
            self.options.data_dir.display(),
            self.listening
                .map(|a| format!(
                    "; {} on {}://{a}",
                    "/metrics, /healthz, /readyz",
                    if self.tls.is_some() { "https" } else { "http" }
                ))
                .unwrap_or_default(),
            match &self.options.decision_log {
                Some(p) => format!("; decisions to {}", p.display()),
                None => "; decisions to standard output".into(),
            }
        );
        loop {
            if stop.load(Ordering::Acquire) {
                break;
            }
            let now = self.clock.now();
            let next = match self.cycle() {
                Ok(report) => {
                    if !report.renewed.is_empty() {
                        eprintln!(
                            "rotor serve: {}: renewed {}",
                            crate::clock::rfc3339(now),
                            report.renewed.join(", ")
                        );
                    }
                    report.next.unwrap_or(now + MIN_INTERVAL)
                }
                Err(e) => {
                    let wait = self.backoff();
                    eprintln!(
                        "rotor serve: {}: cycle failed (retrying in {}): {e}",
                        crate::clock::rfc3339(now),
                        crate::cluster::check::short_duration(wait)
                    );
                    now + wait
                }
            };
            self.shared.metrics.next_cycle.set(next.unix_timestamp());
            if stop.load(Ordering::Acquire) {
                break;
            }
            match self.clock.sleep_until(next, &events) {
                clock::Woken::Deadline | clock::Woken::Event(Event::Swapped) => {}
                clock::Woken::Event(Event::Stop) | clock::Woken::Closed => break,
            }
        }
        if let Some(a) = &self.actions {
            a.stop();
        }
        eprintln!("rotor serve: stopped");
        Ok(())
    }

    fn backoff(&mut self) -> time::Duration {
        self.failures = self.failures.saturating_add(1);
        let max =
            time::Duration::try_from(self.options.max_interval).unwrap_or(time::Duration::DAY);
        let factor = 1_i32 << self.failures.saturating_sub(1).min(16);
        (FIRST_BACKOFF * factor).min(max).max(MIN_INTERVAL)
    }

    /// One cycle: decide about every leaf, renew what the policy says, export, schedule.
    ///
    /// # Errors
    /// No bundle is loaded, or the data dir, the datastore or the renewal failed (nothing
    /// was changed then, or the change was completed: commits are all or nothing).
    pub fn cycle(&mut self) -> Result<CycleReport, ServeError> {
        let result = self.cycle_inner();
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
        let mut cluster = opened?;
        let prepared = match start::prepare(
            &cluster,
            &bundle,
            self.options.token.as_deref(),
            &Mode::Start,
            now,
        ) {
            Ok(p) => p,
            Err(e) => {
                if is_datastore_error(&e) {
                    Shared::set_problem(&self.shared.datastore_problem, Some(e.to_string()));
                }
                return Err(e.into());
            }
        };
        Shared::set_problem(&self.shared.datastore_problem, None);
        let mut report = CycleReport {
            checked: prepared.plan.leaves.len(),
            ..CycleReport::default()
        };
        for leaf in &prepared.plan.leaves {
            if let Some(d) = &leaf.decided {
                report.disagreements += usize::from(self.record(&bundle, leaf, d, now));
            }
        }
        for w in &prepared.plan.warnings {
            tracing::info!("{w}");
        }
        let reissues: Vec<&start::LeafPlan> = prepared.plan.reissues().collect();
        if !prepared.plan.is_empty() {
            match start::apply(&mut cluster, &prepared, false, now) {
                Ok(applied) => {
                    for leaf in &reissues {
                        m.renewals
                            .get_or_create(&RenewalLabels {
                                outcome: "success".into(),
                                reason: reason_of(leaf).into(),
                            })
                            .inc();
                    }
                    report.renewed = applied.reissued;
                }
                Err(e) => {
                    for leaf in &reissues {
                        m.renewals
                            .get_or_create(&RenewalLabels {
                                outcome: "failure".into(),
                                reason: reason_of(leaf).into(),
                            })
                            .inc();
                    }
                    if is_datastore_error(&e) {
                        Shared::set_problem(&self.shared.datastore_problem, Some(e.to_string()));
                    }
                    return Err(e.into());
                }
            }
        }
        self.export_certificates(&cluster, &prepared);
        if let Err(e) = self.refresh_tls(&cluster, &prepared) {
            eprintln!("rotor serve: the TLS endpoint's certificate: {e}");
        }
        drop(cluster);
        if let Some(a) = &self.actions {
            let renewed: Vec<(String, Vec<String>)> = reissues
                .iter()
                .map(|l| {
                    (
                        l.name.clone(),
                        l.restart.iter().map(|s| s.to_string()).collect(),
                    )
                })
                .collect();
            if !renewed.is_empty() {
                a.renewed(&renewed);
            }
        }
        m.last_success.set(now.unix_timestamp());
        report.next = Some(if report.renewed.is_empty() {
            self.schedule(&prepared.plan, now)
        } else {
            // Ask again at once: the renewed certificates' hints are not known yet.
            now
        });
        Ok(report)
    }

    /// The earliest of the hints, the next expiry minus the margin, and the maximum interval.
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
        let Some(shadow) = self.shadow.clone() else {
            return false;
        };
        let started = Instant::now();
        let answer = shadow.renewal(&d.request);
        let latency = started.elapsed();
        let hp = shadow.renewal.as_ref();
        let plugin = hp.map(|hp| hp.plugin.name().to_string());
        let digest = hp.map(|hp| hp.plugin.digest().to_string());
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
                    Some(true),
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
                })
                .inc();
        }
        self.write(&record);
        disagrees
    }

    fn export_decision(&self, r: &DecisionRecord, error: Option<&'static str>) {
        let m = &self.shared.metrics;
        let plugin = r.plugin.clone().unwrap_or_else(|| "built-in".into());
        m.decisions
            .get_or_create(&DecisionLabels {
                hook: r.hook.clone(),
                outcome: r.decision.clone(),
                plugin: plugin.clone(),
                role: r.role.as_str().into(),
            })
            .inc();
        if r.source != "built_in" {
            m.latency
                .get_or_create(&PluginLabels {
                    hook: r.hook.clone(),
                    plugin: plugin.clone(),
                })
                .observe(r.latency_ms / 1000.0);
        }
        if let Some(kind) = error {
            m.plugin_errors
                .get_or_create(&PluginErrorLabels {
                    hook: r.hook.clone(),
                    plugin,
                    kind: kind.into(),
                })
                .inc();
        }
    }

    fn write(&mut self, record: &DecisionRecord) {
        if let Err(e) = self.sink.write(record) {
            eprintln!("rotor serve: decision log: {e}");
        }
    }

    /// Every certificate's validity, as the files say after this cycle.
    fn export_certificates(&self, cluster: &Cluster, prepared: &start::Prepared) {
        let m = &self.shared.metrics;
        m.expiration.clear();
        m.not_before.clear();
        m.renewal.clear();
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
        let set = |labels: CertLabels, not_before: OffsetDateTime, not_after: OffsetDateTime| {
            m.not_before
                .get_or_create(&labels)
                .set(not_before.unix_timestamp());
            m.expiration
                .get_or_create(&labels)
                .set(not_after.unix_timestamp());
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
                );
            }
        }
        for spec in &cluster.layout.leaves {
            if let Ok(crate::cluster::LeafOnDisk::Present { facts, .. }) = cluster.read_leaf(spec) {
                let labels = CertLabels {
                    name: spec.name.clone(),
                    file: spec.storage.cert_path().display().to_string(),
                    layout: layout.clone(),
                    issuer: spec.ca.to_string(),
                    kind: "leaf".into(),
                };
                // The hint is about the certificate the policy saw: a renewed one gets its
                // hint at the next cycle, which follows at once.
                let hint = hints
                    .get(spec.name.as_str())
                    .and_then(|(serial, at)| (*serial == facts.serial).then_some(*at));
                if let Some(at) = hint {
                    m.renewal.get_or_create(&labels).set(at.unix_timestamp());
                }
                set(labels, facts.not_before, facts.not_after);
            }
        }
    }

    fn export_bundle_info(&self) {
        let m = &self.shared.metrics;
        m.bundle_info.clear();
        let active = self.shared.bundle();
        for (role, bundle) in [
            ("active", active.as_deref()),
            ("shadow", self.shadow.as_deref()),
        ] {
            let Some(bundle) = bundle else { continue };
            for hook in [Hook::Renewal, Hook::San, Hook::Csr] {
                let (plugin, digest) = match bundle.hook(hook) {
                    Some(hp) => (hp.plugin.name().to_string(), hp.plugin.digest().to_string()),
                    None => ("built-in".to_string(), String::new()),
                };
                m.bundle_info
                    .get_or_create(&BundleInfoLabels {
                        role: role.into(),
                        bundle: bundle.name.clone(),
                        hook: hook.as_str().into(),
                        plugin,
                        digest,
                    })
                    .set(1);
            }
        }
    }

    /// Issue (or renew, after two thirds of its life) the TLS endpoint's certificate.
    fn refresh_tls(&mut self, cluster: &Cluster, prepared: &start::Prepared) -> Result<(), String> {
        let (Some(resolver), Some(ca_name)) = (&self.tls, &self.options.tls_ca) else {
            return Ok(());
        };
        // Real TLS clients check the real time, whatever clock the cycles run on.
        let real = crate::clock::system_now();
        if self.tls_renew_after.is_some_and(|t| real < t) {
            return Ok(());
        }
        let ca = prepared
            .ca(ca_name)
            .ok_or_else(|| format!("the layout has no CA named {ca_name:?}"))?;
        let signer = ca
            .signer()
            .ok_or_else(|| format!("CA {ca_name} has no key here"))?;
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut dns = vec!["localhost".to_string()];
        if let Some(addr) = self.listening {
            if addr.ip().is_unspecified() {
                ips.extend(
                    ["127.0.0.1".parse::<IpAddr>().ok(), "::1".parse().ok()]
                        .into_iter()
                        .flatten(),
                );
                ips.extend(cluster.config.node_ips.iter().copied());
            } else {
                ips.push(addr.ip());
            }
        }
        dns.push(cluster.config.node_name.clone());
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
        resolver.set(Arc::new(rustls::sign::CertifiedKey::new(chain, signing)));
        self.tls_renew_after = Some(real + (not_after - real) * 2 / 3);
        Ok(())
    }

    fn spawn_watcher(&self, reload: Receiver<()>, events: Sender<Event>) {
        let source = self.source.clone();
        let engine = Arc::clone(&self.engine);
        let options = self.options.clone();
        let shared = Arc::clone(&self.shared);
        let shadow = self.shadow.clone();
        let interval = self.options.watch_interval.max(Duration::from_millis(100));
        if matches!(source, BundleSource::Builtin) {
            // Nothing to watch; SIGHUP has nothing to reload either.
            std::thread::spawn(move || {
                while reload.recv().is_ok() {
                    eprintln!(
                        "rotor serve: SIGHUP: the built-in bundle cannot change (record one with 'rotor policy use')"
                    );
                }
            });
            return;
        }
        let _ = std::thread::Builder::new()
            .name("rotor-bundle-watch".into())
            .spawn(move || {
                let mut seen = {
                    let _guard = shared.datadir.lock().unwrap_or_else(|e| e.into_inner());
                    fingerprint(&source, &options).ok()
                };
                loop {
                    let forced = match reload.recv_timeout(interval) {
                        Ok(()) => true,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    let now = {
                        let _guard = shared.datadir.lock().unwrap_or_else(|e| e.into_inner());
                        fingerprint(&source, &options).ok()
                    };
                    if !forced && (now.is_none() || now == seen) {
                        continue;
                    }
                    seen = now;
                    let swapped = swap(&engine, &source, &options, &shared, shadow.as_deref());
                    if swapped && events.send(Event::Swapped).is_err() {
                        return;
                    }
                }
            });
    }
}

/// Load the new bundle, validate it and switch it in; `false` (and the refusal logged and
/// exported) when it fails: the old bundle keeps deciding.
fn swap(
    engine: &PluginEngine,
    source: &BundleSource,
    options: &ServeOptions,
    shared: &Shared,
    shadow: Option<&Bundle>,
) -> bool {
    let m = &shared.metrics;
    let loaded = if matches!(source, BundleSource::Recorded) {
        let _guard = shared.datadir.lock().unwrap_or_else(|e| e.into_inner());
        load_bundle(engine, source, options)
    } else {
        load_bundle(engine, source, options)
    };
    match loaded {
        Ok(bundle) => {
            let name = bundle.name.clone();
            *shared.active.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(bundle));
            Shared::set_problem(&shared.bundle_problem, None);
            m.bundle_reloads
                .get_or_create(&OutcomeLabels {
                    outcome: "accepted".into(),
                })
                .inc();
            m.bundle_refused.set(0);
            // The info metric follows the active bundle.
            m.bundle_info.clear();
            let active = shared.bundle();
            for (role, b) in [("active", active.as_deref()), ("shadow", shadow)] {
                let Some(b) = b else { continue };
                for hook in [Hook::Renewal, Hook::San, Hook::Csr] {
                    let (plugin, digest) = match b.hook(hook) {
                        Some(hp) => (hp.plugin.name().to_string(), hp.plugin.digest().to_string()),
                        None => ("built-in".to_string(), String::new()),
                    };
                    m.bundle_info
                        .get_or_create(&BundleInfoLabels {
                            role: role.into(),
                            bundle: b.name.clone(),
                            hook: hook.as_str().into(),
                            plugin,
                            digest,
                        })
                        .set(1);
                }
            }
            eprintln!("rotor serve: policy bundle '{name}' loaded, validated and switched in");
            true
        }
        Err(e) => {
            m.bundle_reloads
                .get_or_create(&OutcomeLabels {
                    outcome: "refused".into(),
                })
                .inc();
            m.bundle_refused.set(1);
            eprintln!(
                "rotor serve: new policy bundle REFUSED, the previous one keeps deciding: {e}"
            );
            false
        }
    }
}

/// Load and validate the bundle of `source`: its pins and settings (`Bundle::load`), and its
/// fixtures (a `fixtures` directory beside `bundle.toml`), every case of which must pass.
fn load_bundle(
    engine: &PluginEngine,
    source: &BundleSource,
    options: &ServeOptions,
) -> Result<Bundle, String> {
    match source {
        BundleSource::Builtin => Bundle::builtin(engine).map_err(|e| e.to_string()),
        BundleSource::Recorded => {
            let cluster = Cluster::open_read(&options.data_dir, &options.datadir)
                .map_err(|e| e.to_string())?;
            let root = cluster
                .recorded_bundle()
                .map_err(|e| e.to_string())?
                .ok_or("the data dir records no bundle any more")?;
            Bundle::load_root(engine, root).map_err(|e| e.to_string())
        }
        BundleSource::Path(path) => {
            let bundle = Bundle::load(engine, path).map_err(|e| e.to_string())?;
            let dir = bundle_dir(path);
            let fixtures = dir.join("fixtures");
            let has_fixtures = Root::open_ambient(&dir)
                .map(|r| r.is_dir(Path::new("fixtures")))
                .unwrap_or(false);
            if has_fixtures {
                let results = crate::policy::fixtures::run(&bundle, &fixtures)
                    .map_err(|e| format!("fixtures: {e}"))?;
                let failed: Vec<String> = results
                    .iter()
                    .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
                    .collect();
                if !failed.is_empty() {
                    return Err(format!(
                        "{} of {} fixture cases of {} fail: {}",
                        failed.len(),
                        results.len(),
                        fixtures.display(),
                        failed.join("; ")
                    ));
                }
            }
            Ok(bundle)
        }
    }
}

/// The directory of a bundle given as a directory or as its manifest.
fn bundle_dir(path: &Path) -> PathBuf {
    if Root::open_ambient(path).is_ok() {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    }
}

/// A digest of every file of the bundle's directory: a change of any is a new bundle.
fn fingerprint(source: &BundleSource, options: &ServeOptions) -> Result<String, String> {
    let (root, dir) = match source {
        BundleSource::Builtin => return Ok(String::new()),
        BundleSource::Recorded => {
            let cluster = Cluster::open_read(&options.data_dir, &options.datadir)
                .map_err(|e| e.to_string())?;
            let root = cluster
                .recorded_bundle()
                .map_err(|e| e.to_string())?
                .ok_or("no recorded bundle")?;
            (root, PathBuf::from("."))
        }
        BundleSource::Path(p) => (
            Root::open_ambient(&bundle_dir(p)).map_err(|e| e.to_string())?,
            PathBuf::from("."),
        ),
    };
    let mut hash = Sha256::new();
    let mut entries = root.walk(&dir).map_err(|e| e.to_string())?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in entries {
        if kind != crate::fs::Kind::File {
            continue;
        }
        hash.update(path.to_string_lossy().as_bytes());
        hash.update([0]);
        let bytes = root.read(&path).map_err(|e| e.to_string())?;
        hash.update(Sha256::digest(&bytes));
    }
    Ok(hex::encode(hash.finalize()))
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
                    eprintln!("rotor serve: SIGHUP: reloading the policy bundle");
                    let _ = reload.send(());
                } else {
                    eprintln!(
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
