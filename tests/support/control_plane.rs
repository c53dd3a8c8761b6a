//! The real Kubernetes control plane as a component that tests and benches start:
//! kube-apiserver, kube-controller-manager and kubectl v1.37.2, built from the Go module proxy
//! by scripts/build-control-plane.sh into `$ROTOR_TOOLS_DIR/kubernetes-v1.37.2/bin` (default
//! `~/.cache/rotor-tools`), run on loopback on a data dir that rotor wrote:
//!
//! - the kubeadm layout: etcd (Debian's) on rotor's `pki/etcd` certificates, and kube-apiserver
//!   with the flags of kubeadm's static pod manifest (`pki/...`);
//! - the k3s layout: the real kine on SQLite (the datastore rotor keeps the CAs in, too), and
//!   kube-apiserver with the flags k3s's `pkg/daemons/control/server.go` passes
//!   (`server/tls/...`).
//!
//! Every process is killed when its handle is dropped. What is missing is returned as an error:
//! the tests fail on it under CI, the benches skip.

#![allow(dead_code, reason = "tests and benches each use part of it")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::components::{Proc, free_port, tools_dir, wait_until};

/// The Kubernetes release scripts/build-control-plane.sh builds.
pub(crate) const K8S_VERSION: &str = "v1.37.2";

/// kube-apiserver, kube-controller-manager and kubectl of [`K8S_VERSION`], or what is missing.
#[derive(Clone, Debug)]
pub(crate) struct Binaries {
    pub(crate) apiserver: PathBuf,
    pub(crate) controller_manager: PathBuf,
    pub(crate) kubectl: PathBuf,
}

impl Binaries {
    pub(crate) fn find() -> Result<Binaries, String> {
        let dir = std::env::var_os("ROTOR_KUBERNETES_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| tools_dir().join(format!("kubernetes-{K8S_VERSION}/bin")));
        let check = |name: &str, args: &[&str]| {
            let path = dir.join(name);
            let out = Command::new(&path).args(args).output();
            match out {
                Ok(o) if String::from_utf8_lossy(&o.stdout).contains(K8S_VERSION) => Ok(path),
                _ => Err(format!(
                    "{name} {K8S_VERSION} at {} (make deps builds it: scripts/build-control-plane.sh)",
                    path.display()
                )),
            }
        };
        Ok(Binaries {
            apiserver: check("kube-apiserver", &["--version"])?,
            controller_manager: check("kube-controller-manager", &["--version"])?,
            kubectl: check("kubectl", &["version", "--client"])?,
        })
    }
}

/// Which distribution's flags and files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `pki/`, kubeconfigs beside it, etcd with TLS.
    Kubeadm,
    /// `server/tls`, `server/cred`, kine over plain HTTP on loopback (as k3s's own kine).
    K3s,
}

impl Flavor {
    /// A file of the data dir by its role.
    pub(crate) fn file(self, dir: &Path, role: &str) -> PathBuf {
        let rel = match (self, role) {
            (Flavor::Kubeadm, "serving-cert") => "pki/apiserver.crt",
            (Flavor::Kubeadm, "serving-key") => "pki/apiserver.key",
            (Flavor::Kubeadm, "client-ca") => "pki/ca.crt",
            (Flavor::Kubeadm, "server-ca") => "pki/ca.crt",
            (Flavor::Kubeadm, "client-ca-key") => "pki/ca.key",
            (Flavor::Kubeadm, "request-header-ca") => "pki/front-proxy-ca.crt",
            (Flavor::Kubeadm, "proxy-client-cert") => "pki/front-proxy-client.crt",
            (Flavor::Kubeadm, "proxy-client-key") => "pki/front-proxy-client.key",
            (Flavor::Kubeadm, "admin") => "super-admin.conf",
            (Flavor::Kubeadm, "controller-manager") => "controller-manager.conf",
            (Flavor::Kubeadm, "service-key") => "pki/sa.key",
            (Flavor::K3s, "serving-cert") => "server/tls/serving-kube-apiserver.crt",
            (Flavor::K3s, "serving-key") => "server/tls/serving-kube-apiserver.key",
            (Flavor::K3s, "client-ca") => "server/tls/client-ca.crt",
            (Flavor::K3s, "server-ca") => "server/tls/server-ca.crt",
            (Flavor::K3s, "client-ca-key") => "server/tls/client-ca.key",
            (Flavor::K3s, "request-header-ca") => "server/tls/request-header-ca.crt",
            (Flavor::K3s, "proxy-client-cert") => "server/tls/client-auth-proxy.crt",
            (Flavor::K3s, "proxy-client-key") => "server/tls/client-auth-proxy.key",
            (Flavor::K3s, "admin") => "server/cred/admin.kubeconfig",
            (Flavor::K3s, "controller-manager") => "server/cred/controller.kubeconfig",
            (Flavor::K3s, "service-key") => "server/tls/service.key",
            _ => panic!("no {role} in the {self:?} layout"),
        };
        dir.join(rel)
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// etcd (Debian's) on the kubeadm layout's own etcd certificates, one member on loopback.
pub(crate) struct TlsEtcd {
    proc: Option<Proc>,
    args: Vec<String>,
    log: PathBuf,
    pub(crate) port: u16,
    pki: PathBuf,
}

impl TlsEtcd {
    /// etcd on `data_dir/pki/etcd` (server, peer and CA files as kubeadm's manifest names
    /// them), its data in `work`.
    pub(crate) fn start(data_dir: &Path, work: &Path) -> Result<TlsEtcd, String> {
        if Command::new("etcd").arg("--version").output().is_err() {
            return Err("etcd (Debian's etcd-server)".into());
        }
        std::fs::create_dir_all(work).unwrap();
        let pki = data_dir.join("pki");
        let (port, peer, metrics) = (free_port(), free_port(), free_port());
        let client = format!("https://127.0.0.1:{port}");
        let peer_url = format!("https://127.0.0.1:{peer}");
        let f = |rel: &str| s(&pki.join(rel));
        let args: Vec<String> = [
            "--name",
            "cp1",
            "--data-dir",
            &s(&work.join("etcd-data")),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("cp1={peer_url}"),
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{metrics}"),
            "--cert-file",
            &f("etcd/server.crt"),
            "--key-file",
            &f("etcd/server.key"),
            "--trusted-ca-file",
            &f("etcd/ca.crt"),
            "--client-cert-auth=true",
            "--peer-cert-file",
            &f("etcd/peer.crt"),
            "--peer-key-file",
            &f("etcd/peer.key"),
            "--peer-trusted-ca-file",
            &f("etcd/ca.crt"),
            "--peer-client-cert-auth=true",
            "--snapshot-count",
            "10000",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let mut etcd = TlsEtcd {
            proc: None,
            args,
            log: work.join("etcd.log"),
            port,
            pki,
        };
        etcd.launch();
        Ok(etcd)
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("etcd")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc::from(child));
        let url = self.url();
        let pki = self.pki.clone();
        wait_until("etcd", &self.log, Duration::from_secs(60), || {
            Command::new("etcdctl")
                .args(["--endpoints", &url])
                .args(["--cacert", &s(&pki.join("etcd/ca.crt"))])
                .args(["--cert", &s(&pki.join("apiserver-etcd-client.crt"))])
                .args(["--key", &s(&pki.join("apiserver-etcd-client.key"))])
                .args(["--command-timeout", "2s", "endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    /// Kill etcd and start it again on the same data and port (a restart of the static pod).
    pub(crate) fn restart(&mut self) {
        self.proc = None;
        self.launch();
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

/// A running kube-apiserver on a data dir that rotor wrote.
pub(crate) struct Apiserver {
    bin: PathBuf,
    kubectl: PathBuf,
    pub(crate) flavor: Flavor,
    pub(crate) data_dir: PathBuf,
    args: Vec<String>,
    pub(crate) port: u16,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Apiserver {
    /// kube-apiserver with the flags of kubeadm's static pod manifest on `data_dir/pki`, etcd
    /// at `etcd` (TLS, kubeadm's apiserver-etcd-client), on a loopback port of its own.
    pub(crate) fn kubeadm(bins: &Binaries, data_dir: &Path, etcd: &str, work: &Path) -> Apiserver {
        let f = |rel: &str| s(&data_dir.join("pki").join(rel));
        let port = free_port();
        let args: Vec<String> = vec![
            "--advertise-address=127.0.0.1".into(),
            // A loopback advertise address cannot be put in the kubernetes Endpoints.
            "--endpoint-reconciler-type=none".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            "--allow-privileged=true".into(),
            "--authorization-mode=Node,RBAC".into(),
            format!("--client-ca-file={}", f("ca.crt")),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--enable-bootstrap-token-auth=true".into(),
            format!("--etcd-cafile={}", f("etcd/ca.crt")),
            format!("--etcd-certfile={}", f("apiserver-etcd-client.crt")),
            format!("--etcd-keyfile={}", f("apiserver-etcd-client.key")),
            format!("--etcd-servers={etcd}"),
            format!(
                "--kubelet-client-certificate={}",
                f("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", f("apiserver-kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
            format!("--proxy-client-cert-file={}", f("front-proxy-client.crt")),
            format!("--proxy-client-key-file={}", f("front-proxy-client.key")),
            "--requestheader-allowed-names=front-proxy-client".into(),
            format!("--requestheader-client-ca-file={}", f("front-proxy-ca.crt")),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", f("sa.pub")),
            format!("--service-account-signing-key-file={}", f("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            format!("--tls-cert-file={}", f("apiserver.crt")),
            format!("--tls-private-key-file={}", f("apiserver.key")),
        ];
        Apiserver::launch_new(bins, Flavor::Kubeadm, data_dir, args, port, work)
    }

    /// kube-apiserver with the flags k3s passes it, on `data_dir/server/tls`, its storage the
    /// kine at `kine` (plain HTTP on loopback, as k3s's embedded kine).
    pub(crate) fn k3s(bins: &Binaries, data_dir: &Path, kine: &str, work: &Path) -> Apiserver {
        let f = |rel: &str| s(&data_dir.join("server/tls").join(rel));
        let port = free_port();
        let certs = work.join("temporary-certs");
        std::fs::create_dir_all(&certs).unwrap();
        let args: Vec<String> = vec![
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", s(&certs)),
            "--allow-privileged=true".into(),
            "--anonymous-auth=false".into(),
            "--api-audiences=https://kubernetes.default.svc.cluster.local,k3s".into(),
            "--authorization-mode=Node,RBAC".into(),
            format!("--client-ca-file={}", f("client-ca.crt")),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--storage-backend=etcd3".into(),
            format!("--etcd-servers={kine}"),
            format!("--kubelet-certificate-authority={}", f("server-ca.crt")),
            format!(
                "--kubelet-client-certificate={}",
                f("client-kube-apiserver.crt")
            ),
            format!("--kubelet-client-key={}", f("client-kube-apiserver.key")),
            "--profiling=false".into(),
            format!("--proxy-client-cert-file={}", f("client-auth-proxy.crt")),
            format!("--proxy-client-key-file={}", f("client-auth-proxy.key")),
            "--requestheader-allowed-names=system:auth-proxy".into(),
            format!(
                "--requestheader-client-ca-file={}",
                f("request-header-ca.crt")
            ),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", f("service.key")),
            format!(
                "--service-account-signing-key-file={}",
                f("service.current.key")
            ),
            "--service-cluster-ip-range=10.43.0.0/16".into(),
            "--service-node-port-range=30000-32767".into(),
            format!("--tls-cert-file={}", f("serving-kube-apiserver.crt")),
            format!("--tls-private-key-file={}", f("serving-kube-apiserver.key")),
        ];
        Apiserver::launch_new(bins, Flavor::K3s, data_dir, args, port, work)
    }

    fn launch_new(
        bins: &Binaries,
        flavor: Flavor,
        data_dir: &Path,
        args: Vec<String>,
        port: u16,
        work: &Path,
    ) -> Apiserver {
        std::fs::create_dir_all(work).unwrap();
        let mut a = Apiserver {
            bin: bins.apiserver.clone(),
            kubectl: bins.kubectl.clone(),
            flavor,
            data_dir: data_dir.to_path_buf(),
            args,
            port,
            log: work.join("kube-apiserver.log"),
            proc: None,
        };
        a.launch();
        a
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc::from(child));
        self.wait_ready(Duration::from_secs(120));
    }

    /// Wait until `/readyz` says ok to the cluster admin.
    pub(crate) fn wait_ready(&self, limit: Duration) {
        let admin = self.admin();
        let start = Instant::now();
        loop {
            let out = self.kubectl(&admin, &["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            let last = String::from_utf8_lossy(&out.stderr);
            assert!(
                start.elapsed() < limit,
                "kube-apiserver: not ready after {limit:?}: kubectl said: {last}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill the apiserver and start it again with the same flags; how long until it was ready.
    pub(crate) fn restart(&mut self) -> Duration {
        self.proc = None;
        let t = Instant::now();
        self.launch();
        t.elapsed()
    }

    /// The URL clients use (kubeconfigs say port 6443: `--server` points them here).
    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The kubeconfig of an identity that can do anything (kubeadm: `super-admin.conf`, which
    /// is in `system:masters`; k3s: `admin.kubeconfig`).
    pub(crate) fn admin(&self) -> PathBuf {
        self.flavor.file(&self.data_dir, "admin")
    }

    /// A file of the data dir by its role ([`Flavor::file`]).
    pub(crate) fn file(&self, role: &str) -> PathBuf {
        self.flavor.file(&self.data_dir, role)
    }

    /// `kubectl --kubeconfig KUBECONFIG --server URL ARGS`.
    pub(crate) fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--server", &self.url(), "--request-timeout=10s"])
            .args(args)
            .output()
            .unwrap()
    }

    /// `kubectl ARGS` with credentials given as flags (a certificate and key, or a token), the
    /// server's CA from `ca`.
    pub(crate) fn kubectl_as(&self, ca: &Path, credentials: &[String], args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .args(["--kubeconfig", "/dev/null", "--server", &self.url()])
            .arg(format!("--certificate-authority={}", s(ca)))
            .arg("--request-timeout=10s")
            .args(credentials)
            .args(args)
            .output()
            .unwrap()
    }

    /// The serial number (hex, as openssl prints it) of the certificate the apiserver serves
    /// now, from a fresh TLS handshake; `None` while it does not answer.
    pub(crate) fn serving_serial(&self) -> Option<String> {
        let hello = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.port)])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let mut x509 = Command::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        use std::io::Write;
        x509.stdin.take()?.write_all(&hello.stdout).ok()?;
        let out = x509.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .strip_prefix("serial=")
            .map(|s| s.to_ascii_uppercase())
    }

    /// The log so far, for messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The serial number of a PEM certificate file, as [`Apiserver::serving_serial`] prints it.
pub(crate) fn file_serial(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_uppercase()
}

/// A running kube-controller-manager on a kubeconfig rotor wrote, signing with rotor's CA.
pub(crate) struct ControllerManager {
    proc: Proc,
    log: PathBuf,
}

impl ControllerManager {
    /// kube-controller-manager on the layout's controller-manager kubeconfig (pointed at
    /// `apiserver` with `--master`), its CSR signer on the client CA (`--cluster-signing-*`),
    /// running only `controllers` (e.g. `csrsigning`).
    pub(crate) fn start(
        bins: &Binaries,
        apiserver: &Apiserver,
        controllers: &str,
        work: &Path,
    ) -> ControllerManager {
        ControllerManager::start_with(bins, apiserver, controllers, work, &[])
    }

    /// [`ControllerManager::start`] with `extra` flags (e.g. `--kube-api-qps`).
    pub(crate) fn start_with(
        bins: &Binaries,
        apiserver: &Apiserver,
        controllers: &str,
        work: &Path,
        extra: &[&str],
    ) -> ControllerManager {
        std::fs::create_dir_all(work).unwrap();
        let log = work.join("kube-controller-manager.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bins.controller_manager)
            .arg(format!(
                "--kubeconfig={}",
                s(&apiserver.file("controller-manager"))
            ))
            .arg(format!("--master={}", apiserver.url()))
            .arg(format!(
                "--cluster-signing-cert-file={}",
                s(&apiserver.file("client-ca"))
            ))
            .arg(format!(
                "--cluster-signing-key-file={}",
                s(&apiserver.file("client-ca-key"))
            ))
            .arg(format!("--controllers={controllers}"))
            .args(["--leader-elect=false", "--bind-address=127.0.0.1"])
            .arg(format!("--secure-port={}", free_port()))
            // As kubeadm and k3s run it: each controller acts as its own service account
            // (certificate-controller may write CSR status), tokens from the TokenRequest API.
            .arg("--use-service-account-credentials=true")
            .args(extra)
            .arg(format!(
                "--root-ca-file={}",
                s(&apiserver.file("server-ca"))
            ))
            .arg(format!(
                "--service-account-private-key-file={}",
                s(&apiserver.file("service-key"))
            ))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        ControllerManager {
            proc: Proc::from(child),
            log,
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
