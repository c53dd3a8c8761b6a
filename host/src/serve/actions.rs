//! Post-renewal actions: what to do once certificates were renewed, per component (a command
//! to run, or a signal to the process of a pid file), configured by the operator in a TOML file:
//!
//! ```toml
//! [[action]]
//! name = "reload-apiserver"                # names the action in logs and metrics
//! components = ["kube-apiserver"]          # restart components of renewed leaves; "*": any
//! certificates = []                        # or leaf names (serving-kube-apiserver, ...)
//! command = ["systemctl", "restart", "k3s"]
//! timeout_seconds = 60                     # default 60
//! retries = 5                              # further attempts after a failure (default 5)
//!
//! [[action]]
//! name = "etcd-hup"
//! components = ["etcd"]
//! signal = "HUP"                           # HUP, INT, TERM, USR1, USR2
//! pid_file = "/run/etcd.pid"
//! ```
//!
//! A command gets the renewal in its environment: `ROTOR_RENEWED_CERTIFICATES` and
//! `ROTOR_COMPONENTS` (space-separated), `ROTOR_DATA_DIR`. Each action runs on its own thread:
//! a failing one is reported, counted and retried with backoff (1 s, 2 s, 4 s, ... at most a
//! minute), and never delays a renewal or another action. Renewals that arrive while an action
//! is pending or retrying are merged into its next run.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Shared;
use super::metrics::{ActionLabels, Metrics};
use crate::fs::Root;

/// The actions file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    action: Vec<Action>,
}

/// One post-renewal action.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Action {
    pub name: String,
    #[serde(default)]
    pub components: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<String>,
    #[serde(default)]
    pub command: Vec<String>,
    pub signal: Option<String>,
    pub pid_file: Option<PathBuf>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_timeout() -> u64 {
    60
}
fn default_retries() -> u32 {
    5
}

fn signal_of(name: &str) -> Option<rustix::process::Signal> {
    use rustix::process::Signal;
    Some(match name.trim_start_matches("SIG") {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "TERM" => Signal::TERM,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        _ => return None,
    })
}

/// Read and check the actions file `path` against `layout`: a component or certificate it
/// does not have is a typo that would never fire.
pub(crate) fn load(path: &Path, layout: &crate::cluster::Layout) -> Result<Vec<Action>, String> {
    let components: BTreeSet<&str> = layout
        .leaves
        .iter()
        .flat_map(|l| l.restart.iter().chain(&l.reloads).copied())
        .collect();
    let certificates: BTreeSet<&str> = layout.leaves.iter().map(|l| l.name.as_str()).collect();
    let bytes = Root::read_ambient_file(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut names = BTreeSet::new();
    for (i, a) in file.action.iter().enumerate() {
        let at = format!("{}: action[{i}] ({})", path.display(), a.name);
        if a.name.is_empty() || !names.insert(a.name.clone()) {
            return Err(format!("{at}: 'name' must be set and unique"));
        }
        if a.components.is_empty() && a.certificates.is_empty() {
            return Err(format!(
                "{at}: give 'components' (\"*\" for any) or 'certificates'"
            ));
        }
        if let Some(c) = a
            .components
            .iter()
            .find(|c| *c != "*" && !components.contains(c.as_str()))
        {
            return Err(format!(
                "{at}: no certificate of this data dir names the component {c:?} (its components: \"*\", {})",
                components
                    .iter()
                    .map(|c| format!("{c:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(c) = a
            .certificates
            .iter()
            .find(|c| !certificates.contains(c.as_str()))
        {
            return Err(format!(
                "{at}: this data dir has no certificate {c:?} (its certificates: {})",
                certificates.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        match (&a.command[..], &a.signal, &a.pid_file) {
            ([_, ..], None, None) => {}
            ([], Some(s), Some(_)) => {
                if signal_of(s).is_none() {
                    return Err(format!(
                        "{at}: 'signal' {s:?} is not one of HUP, INT, TERM, USR1, USR2"
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "{at}: give either 'command' (a non-empty list) or both 'signal' and 'pid_file'"
                ));
            }
        }
        if a.timeout_seconds == 0 || a.timeout_seconds > 3600 {
            return Err(format!("{at}: 'timeout_seconds' must be 1 to 3600"));
        }
    }
    Ok(file.action)
}

/// What was renewed, for an action's next run.
#[derive(Debug, Default)]
struct Pending {
    certificates: BTreeSet<String>,
    components: BTreeSet<String>,
    stop: bool,
}

struct Worker {
    action: Action,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The process group of the command running now, if any.
    running: Mutex<Option<rustix::process::Pid>>,
}

/// The actions, each on its thread.
pub(crate) struct Runner {
    workers: Vec<Arc<Worker>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Runner {
    pub(crate) fn start(actions: Vec<Action>, data_dir: PathBuf, shared: Arc<Shared>) -> Runner {
        let workers: Vec<Arc<Worker>> = actions
            .into_iter()
            .map(|action| {
                Arc::new(Worker {
                    action,
                    pending: Mutex::new(Pending::default()),
                    wake: Condvar::new(),
                    running: Mutex::new(None),
                })
            })
            .collect();
        let mut threads = Vec::new();
        for w in &workers {
            let w = Arc::clone(w);
            let shared = Arc::clone(&shared);
            let data_dir = data_dir.clone();
            threads.push(std::thread::spawn(move || {
                w.run(&data_dir, &shared.metrics)
            }));
        }
        Runner {
            workers,
            threads: Mutex::new(threads),
        }
    }

    /// Queue the actions that `renewed` (certificate name, its restart components) concern.
    pub(crate) fn renewed(&self, renewed: &[(String, Vec<String>)]) {
        for w in &self.workers {
            let a = &w.action;
            let hit: Vec<&(String, Vec<String>)> = renewed
                .iter()
                .filter(|(name, components)| {
                    a.certificates.contains(name)
                        || a.components
                            .iter()
                            .any(|c| c == "*" || components.contains(c))
                })
                .collect();
            if hit.is_empty() {
                continue;
            }
            let mut p = w.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (name, components) in hit {
                p.certificates.insert(name.clone());
                p.components.extend(components.iter().cloned());
            }
            w.wake.notify_one();
        }
    }

    /// Stopping: every action with a run pending (a renewal that just happened, or a retry)
    /// runs once more, without further retries; wait for them, at most each action's timeout.
    pub(crate) fn finish(&self) {
        for w in &self.workers {
            let mut p = w.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.stop = true;
            w.wake.notify_one();
        }
        let longest = self
            .workers
            .iter()
            .map(|w| w.action.timeout_seconds)
            .max()
            .unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(longest + 2);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        // Nothing outlives the server.
        for w in &self.workers {
            if let Some(group) = *w.running.lock().unwrap_or_else(|e| e.into_inner()) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
        }
    }
}

impl Worker {
    fn run(&self, data_dir: &Path, metrics: &Metrics) {
        let mut failures: u32 = 0;
        loop {
            let (certificates, components, stopping) = {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                while p.certificates.is_empty() && !p.stop {
                    p = self.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                if p.certificates.is_empty() {
                    return;
                }
                (
                    std::mem::take(&mut p.certificates),
                    std::mem::take(&mut p.components),
                    p.stop,
                )
            };
            let a = &self.action;
            let result = self.once(data_dir, &certificates, &components);
            let outcome = if result.is_ok() { "success" } else { "failure" };
            metrics
                .actions
                .get_or_create(&ActionLabels {
                    action: a.name.clone(),
                    outcome: outcome.into(),
                })
                .inc();
            let names = certificates.iter().cloned().collect::<Vec<_>>().join(" ");
            match result {
                Ok(()) => {
                    failures = 0;
                    crate::say!("rotor serve: action {}: done for {names}", a.name);
                }
                Err(e) if stopping => {
                    crate::say!(
                        "rotor serve: action {}: FAILED for {names}: {e}; not retried (stopping)",
                        a.name
                    );
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if self.pending.lock().unwrap_or_else(|e| e.into_inner()).stop {
                        crate::say!(
                            "rotor serve: action {}: FAILED for {names}: {e}; not retried (stopping)",
                            a.name
                        );
                        return;
                    }
                    if failures > a.retries {
                        crate::say!(
                            "rotor serve: action {}: FAILED for {names}: {e}; gave up after {failures} attempts (the next renewal runs it again)",
                            a.name
                        );
                        failures = 0;
                        continue;
                    }
                    let backoff = Duration::from_secs(1 << (failures - 1).min(6))
                        .min(Duration::from_secs(60));
                    crate::say!(
                        "rotor serve: action {}: failed for {names}: {e}; retrying in {} s ({failures} of {} retries)",
                        a.name,
                        backoff.as_secs(),
                        a.retries
                    );
                    // Put the run back, merged with whatever arrived meanwhile, and wait.
                    let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    p.certificates.extend(certificates);
                    p.components.extend(components);
                    let deadline = Instant::now() + backoff;
                    while !p.stop && Instant::now() < deadline {
                        let left = deadline.saturating_duration_since(Instant::now());
                        p = self
                            .wake
                            .wait_timeout(p, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
            }
        }
    }

    fn once(
        &self,
        data_dir: &Path,
        certificates: &BTreeSet<String>,
        components: &BTreeSet<String>,
    ) -> Result<(), String> {
        let a = &self.action;
        if let (Some(signal), Some(pid_file)) = (&a.signal, &a.pid_file) {
            let pid = read_pid(pid_file)?;
            let sig = signal_of(signal).ok_or_else(|| format!("unknown signal {signal}"))?;
            return rustix::process::kill_process(pid, sig).map_err(|e| {
                format!(
                    "signal {signal} to pid {} ({}): {e}",
                    pid.as_raw_nonzero(),
                    pid_file.display()
                )
            });
        }
        // `load` refused an action with neither a signal nor a command.
        let Some((program, args)) = a.command.split_first() else {
            return Err("no command to run".into());
        };
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(" ");
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .env("ROTOR_RENEWED_CERTIFICATES", join(certificates))
            .env("ROTOR_COMPONENTS", join(components))
            .env(
                "ROTOR_DATA_DIR",
                std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            )
            .stdin(std::process::Stdio::null())
            // Its own process group, so a timeout kills what it started too.
            .process_group(0);
        // Its output goes to rotor's standard error: standard output may be the decision log.
        if let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() {
            cmd.stdout(std::process::Stdio::from(err));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let group = rustix::process::Pid::from_child(&child);
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(group);
        let result = self.wait(program, &mut child, group);
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        result
    }

    fn wait(
        &self,
        program: &str,
        child: &mut std::process::Child,
        group: rustix::process::Pid,
    ) -> Result<(), String> {
        let a = &self.action;
        let deadline = Instant::now() + Duration::from_secs(a.timeout_seconds);
        let kill = |child: &mut std::process::Child| {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("{program} exited with {status}")),
                Ok(None) if Instant::now() >= deadline => {
                    kill(child);
                    return Err(format!(
                        "{program} still running after {} s: killed",
                        a.timeout_seconds
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    kill(child);
                    return Err(format!("waiting for {program}: {e}"));
                }
            }
        }
    }
}

/// The process a pid file names: a positive pid other than init's (a `-1` or `0` there would
/// signal a whole process group, or every process).
fn read_pid(pid_file: &Path) -> Result<rustix::process::Pid, String> {
    let bytes = Root::read_ambient_file(pid_file).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let bad = || {
        format!(
            "{}: not a process id: {:?}",
            pid_file.display(),
            text.trim()
        )
    };
    let pid: u32 = text.trim().parse().map_err(|_| bad())?;
    if pid <= 1 {
        return Err(bad());
    }
    let pid = i32::try_from(pid).map_err(|_| bad())?;
    rustix::process::Pid::from_raw(pid).ok_or_else(bad)
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests write their fixtures directly"
)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_that_would_signal_more_than_one_process_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["-1", "0", "1", "-42", "x", "", "99999999999", "12 13"] {
            let f = dir.path().join("pid");
            std::fs::write(&f, bad).unwrap();
            let e = read_pid(&f).unwrap_err();
            assert!(e.contains("not a process id"), "{bad}: {e}");
        }
        let f = dir.path().join("pid");
        std::fs::write(&f, "4242\n").unwrap();
        assert_eq!(read_pid(&f).unwrap().as_raw_nonzero().get(), 4242);
    }

    #[test]
    fn an_action_file_names_what_is_wrong() {
        let profile = crate::cluster::Profile::K3s;
        let layout = crate::cluster::Layout::for_config(&crate::cluster::ClusterConfig {
            format: 1,
            profile,
            node_name: "n1".into(),
            node_ips: Vec::new(),
            tls_sans: Vec::new(),
            cluster_domain: "cluster.local".into(),
            service_cidr: profile.default_service_cidr(),
            key_type: profile.default_key_type(),
            datastore_format: crate::datastore::RecordFormat::RotorV1,
            external_cas: Vec::new(),
            custom_ca: false,
            datastore: None,
        });
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("actions.toml");
        for (text, want) in [
            (
                "[[action]]\nname = \"a\"\ncommand = [\"true\"]\n",
                "give 'components'",
            ),
            (
                "[[action]]\nname = \"a\"\ncomponents = [\"*\"]\n",
                "either 'command'",
            ),
            (
                "[[action]]\nname = \"a\"\ncomponents = [\"*\"]\nsignal = \"KILL\"\npid_file = \"/p\"\n",
                "is not one of",
            ),
            (
                "[[action]]\nname = \"a\"\ncomponents = [\"*\"]\ncommand = [\"true\"]\ntimeout_seconds = 0\n",
                "timeout_seconds",
            ),
            (
                "[[action]]\nname = \"a\"\ncomponents = [\"*\"]\ncommand = [\"true\"]\n[[action]]\nname = \"a\"\ncomponents = [\"*\"]\ncommand = [\"true\"]\n",
                "unique",
            ),
            ("[[action]]\nnme = \"a\"\n", "unknown field"),
            (
                "[[action]]\nname = \"a\"\ncomponents = [\"kube-apiservr\"]\ncommand = [\"true\"]\n",
                "names the component \"kube-apiservr\"",
            ),
            (
                "[[action]]\nname = \"a\"\ncertificates = [\"serving-apiserver\"]\ncommand = [\"true\"]\n",
                "no certificate \"serving-apiserver\"",
            ),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = load(&f, &layout).unwrap_err();
            assert!(
                e.contains(want) && e.contains("actions.toml"),
                "{text}: {e}"
            );
        }
    }
}
