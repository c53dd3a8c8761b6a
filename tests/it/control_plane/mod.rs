//! rotor's PKI in a real Kubernetes control plane (tests/support/control_plane.rs): kube-apiserver
//! and kube-controller-manager v1.37.2 with kubeadm's flags on etcd, and with k3s's on the real
//! kine over SQLite, on loopback. Each scenario runs for both layouts:
//!
//! - identities: every credential rotor writes authenticates as the identity Kubernetes expects
//!   (SelfSubjectReview), the front-proxy client through request-header auth, service-account
//!   tokens before and after `rotate-service-key`; the controller manager signs an approved
//!   kubelet CSR with rotor's CA; a renewal of the serving certificate is served without a
//!   restart (scenarios.rs);
//! - the expiry experiment of the seed article (expiry.rs);
//! - a CA rotation on a live cluster, and its end: the old CA retired (ca.rs).

mod ca;
mod controller;
mod expiry;
mod scenarios;

use crate::kine::components;
#[path = "../../support/control_plane.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;
use components::{Database, Kine};
pub(crate) use harness::{Apiserver, Binaries, Flavor, TlsEtcd, file_serial};

/// The node name every scenario uses.
pub(crate) const NODE: &str = "cp1";

/// A control plane on a data dir rotor initialized, and what it runs on.
pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) bins: Binaries,
    pub(crate) apiserver: Apiserver,
    pub(crate) etcd: Option<TlsEtcd>,
    _kine: Option<Kine>,
    _db: Option<Database>,
}

/// The binaries, or a failure under CI when they are missing.
pub(crate) fn binaries() -> Option<Binaries> {
    match Binaries::find() {
        Ok(b) => Some(b),
        Err(what) => {
            require(&what, false);
            None
        }
    }
}

impl Cluster {
    /// `rotor init` for `flavor` in `tmp/data` (with `init_args` added), then the datastore and
    /// the apiserver on it. `None` when something is missing (a failure under CI).
    pub(crate) fn start(flavor: Flavor, tmp: &Path, init_args: &[&str]) -> Option<Cluster> {
        let bins = binaries()?;
        if !require_command("openssl") || !require_command("etcdctl") || !require_command("curl") {
            return None;
        }
        let dir = tmp.join("data");
        let work = tmp.join("work");
        let mut args = vec!["init", "--node-name", NODE, "--node-ip", "127.0.0.1"];
        match flavor {
            Flavor::Kubeadm => {
                args.extend(["--profile", "kubeadm"]);
                args.extend_from_slice(init_args);
                rotor_ok(&dir, &args);
                let etcd = match TlsEtcd::start(&dir, &work) {
                    Ok(e) => e,
                    Err(what) => {
                        require(&what, false);
                        return None;
                    }
                };
                let apiserver = Apiserver::kubeadm(&bins, &dir, &etcd.url(), &work);
                let cluster = Cluster {
                    dir,
                    work,
                    bins,
                    apiserver,
                    etcd: Some(etcd),
                    _kine: None,
                    _db: None,
                };
                cluster.bind_kubeadm_admins();
                Some(cluster)
            }
            Flavor::K3s => {
                let kine_bin = match components::kine_binary() {
                    Ok(b) => b,
                    Err(what) => {
                        require(&what, false);
                        return None;
                    }
                };
                let db = Database::sqlite(&tmp.join("sqlite"));
                let kine = Kine::start(&kine_bin, &db, &work);
                let url = kine.url();
                args.extend(["--datastore-endpoint", &url]);
                args.extend_from_slice(init_args);
                rotor_ok(&dir, &args);
                let apiserver = Apiserver::k3s(&bins, &dir, &kine.url(), &work);
                Some(Cluster {
                    dir,
                    work,
                    bins,
                    apiserver,
                    etcd: None,
                    _kine: Some(kine),
                    _db: Some(db),
                })
            }
        }
    }

    /// What kubeadm does during init with super-admin.conf: bind `kubeadm:cluster-admins`
    /// (admin.conf's group) to cluster-admin.
    fn bind_kubeadm_admins(&self) {
        let out = self.kubectl(
            "super-admin.conf",
            &[
                "create",
                "clusterrolebinding",
                "kubeadm:cluster-admins",
                "--clusterrole=cluster-admin",
                "--group=kubeadm:cluster-admins",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }

    /// `kubectl` with the kubeconfig `rel` of the data dir.
    pub(crate) fn kubectl(&self, rel: &str, args: &[&str]) -> Output {
        self.apiserver.kubectl(&self.dir.join(rel), args)
    }

    /// `kubectl` as the cluster admin.
    pub(crate) fn admin(&self, args: &[&str]) -> Output {
        self.apiserver.kubectl(&self.apiserver.admin(), args)
    }

    /// `kubectl` as the cluster admin, failing the test on an error; its standard output.
    pub(crate) fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            text(&out),
            tail(&self.apiserver.log())
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file of the data dir by its role.
    pub(crate) fn file(&self, role: &str) -> PathBuf {
        self.apiserver.file(role)
    }

    /// Wait until the apiserver serves the certificate in its serving-cert file (at most
    /// `limit`); how long that took after `since`.
    pub(crate) fn wait_serving_file(&self, since: Instant, limit: Duration) -> Duration {
        let want = file_serial(&self.file("serving-cert"));
        loop {
            if self.apiserver.serving_serial().as_deref() == Some(want.as_str()) {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < limit,
                "the apiserver still serves {:?} {limit:?} after the renewal, not {want}",
                self.apiserver.serving_serial()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restart what rotor's output asks to restart (by the component names it prints), as an
    /// operator would: the apiserver (and etcd) here; returns what was restarted.
    pub(crate) fn restart_as_told(&mut self, out: &str) -> Vec<&'static str> {
        let asked: String = out
            .lines()
            .filter(|l| {
                l.starts_with("restart needed for:")
                    || l.starts_with("Done renewing certificates. You must restart")
            })
            .collect::<Vec<_>>()
            .join(" ");
        let every = asked.contains("every control-plane component");
        let mut done = Vec::new();
        if (every || asked.contains("etcd"))
            && let Some(etcd) = &mut self.etcd
        {
            etcd.restart();
            done.push("etcd");
        }
        if every || asked.contains("kube-apiserver") {
            self.apiserver.restart();
            done.push("kube-apiserver");
        }
        done
    }
}

/// Standard output and error of a command, for messages.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The end of a long log.
pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Who the apiserver says `out` (of `kubectl auth whoami -o json`) is: (user, groups).
pub(crate) fn whoami(out: &Output) -> Result<(String, Vec<String>), String> {
    if !out.status.success() {
        return Err(text(out));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let info = &v["status"]["userInfo"];
    let user = info["username"].as_str().unwrap_or_default().to_string();
    let groups = info["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok((user, groups))
}
