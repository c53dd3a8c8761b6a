//! `rotor csr controller` against the real kube-apiserver and kube-controller-manager: node
//! identities (client certificates rotor issued) create CSRs through the API; the controller
//! decides them with the live Node objects as evidence; the controller manager (or rotor, for
//! a custom signer) signs what was approved.

mod ha;
mod scenarios;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::{Cluster, tail, text};
use crate::common::*;
use crate::kine::components::Proc;

pub(super) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A kubeconfig for the apiserver at its real port, with `user` (a token, or a client
/// certificate and key).
pub(super) fn kubeconfig(c: &Cluster, path: &Path, user: Value) {
    let ca = B64.encode(std::fs::read(c.file("server-ca")).unwrap());
    let cfg = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": c.apiserver.url(),
            "certificate-authority-data": ca,
        }}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "u"}}],
        "current-context": "test",
    });
    std::fs::write(path, cfg.to_string()).unwrap();
}

/// The cluster admin's kubeconfig, pointed at the apiserver's real port.
pub(super) fn admin_kubeconfig(c: &Cluster) -> PathBuf {
    let path = c.work.join("admin-for-rotor.json");
    let out = c.admin_ok(&["config", "view", "--raw", "--minify", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    kubeconfig(c, &path, v["users"][0]["user"].clone());
    path
}

/// `openssl req`: a P-256 key and a CSR for `subject` with `sans` (`DNS:x,IP:y`).
pub(super) fn openssl_csr(dir: &Path, name: &str, subject: &str, sans: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-subj", subject])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr);
    if !sans.is_empty() {
        cmd.args(["-addext", &format!("subjectAltName={sans}")]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    (key, csr)
}

/// A node identity: a kubelet client certificate rotor issues for `system:node:<node>`.
pub(super) fn node_identity(c: &Cluster, node: &str) -> Vec<String> {
    let (key, csr) = openssl_csr(
        &c.work,
        &format!("{node}-client"),
        &format!("/O=system:nodes/CN=system:node:{node}"),
        "",
    );
    let cert = c.work.join(format!("{node}-client.crt"));
    let s = |p: &Path| p.display().to_string();
    rotor_ok(
        &c.dir,
        &[
            "csr",
            "sign",
            "--csr",
            &s(&csr),
            "--signer",
            "kubernetes.io/kube-apiserver-client-kubelet",
            "--username",
            &format!("system:node:{node}"),
            "--group",
            "system:nodes",
            "--usage",
            "digital signature",
            "--usage",
            "client auth",
            "--out",
            &s(&cert),
        ],
    );
    vec![
        format!("--client-certificate={}", s(&cert)),
        format!("--client-key={}", s(&key)),
    ]
}

/// Create a Node with InternalIP `ips`, as a kubelet registers it.
pub(super) fn create_node(c: &Cluster, name: &str, ips: &[&str]) {
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
    });
    let file = c.work.join(format!("node-{name}.json"));
    std::fs::write(&file, node.to_string()).unwrap();
    c.admin_ok(&["create", "-f", &file.display().to_string()]);
    let addresses: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .chain(std::iter::once(
            json!({"type": "Hostname", "address": name}),
        ))
        .collect();
    let patch = json!({"status": {"addresses": addresses}}).to_string();
    c.admin_ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// A CSR object named `name` for `csr_pem`, created with `as_who` (kubectl credential flags;
/// empty: the admin).
pub(super) fn create_csr(
    c: &Cluster,
    as_who: &[String],
    name: &str,
    csr: &Path,
    signer: &str,
    usages: &[&str],
) {
    let object = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": B64.encode(std::fs::read(csr).unwrap()),
            "signerName": signer,
            "usages": usages,
        }
    });
    let file = c.work.join(format!("csr-{name}.json"));
    std::fs::write(&file, object.to_string()).unwrap();
    let f = file.display().to_string();
    let out = if as_who.is_empty() {
        c.admin(&["create", "-f", &f])
    } else {
        c.apiserver
            .kubectl_as(&c.file("server-ca"), as_who, &["create", "-f", &f])
    };
    assert!(out.status.success(), "creating CSR {name}: {}", text(&out));
}

pub(super) const SERVING: &[&str] = &["digital signature", "server auth"];

/// A kubelet-serving CSR of `node` for `sans`, created by `as_who`.
pub(super) fn serving_csr(
    c: &Cluster,
    as_who: &[String],
    name: &str,
    node: &str,
    sans: &str,
) -> PathBuf {
    let (key, csr) = openssl_csr(
        &c.work,
        name,
        &format!("/O=system:nodes/CN=system:node:{node}"),
        sans,
    );
    create_csr(
        c,
        as_who,
        name,
        &csr,
        "kubernetes.io/kubelet-serving",
        SERVING,
    );
    key
}

/// The CSR object.
pub(super) fn get_csr(c: &Cluster, name: &str) -> Value {
    serde_json::from_str(&c.admin_ok(&["get", "csr", name, "-o", "json"])).unwrap()
}

/// The CSR's Approved/Denied/Failed conditions.
pub(super) fn decisions(csr: &Value) -> Vec<Value> {
    csr["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed")))
        .collect()
}

/// Wait until `done` says yes of the CSR (at most `limit`); the CSR then.
pub(super) fn wait_csr(
    c: &Cluster,
    name: &str,
    limit: Duration,
    what: &str,
    log: &Path,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let csr = get_csr(c, name);
        if done(&csr) {
            return csr;
        }
        assert!(
            start.elapsed() < limit,
            "CSR {name}: not {what} after {limit:?}: {csr:#}\ncontroller log:\n{}",
            tail(&std::fs::read_to_string(log).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn decided_as(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |csr| decisions(csr).iter().any(|d| d["type"] == kind)
}

pub(super) fn issued(csr: &Value) -> bool {
    csr["status"]["certificate"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
}

/// A running `rotor csr controller`, killed when dropped.
pub(super) struct Controller {
    proc: Option<Proc>,
    pub(super) log: PathBuf,
}

impl Controller {
    pub(super) fn start(c: &Cluster, kubeconfig: &Path, name: &str, args: &[&str]) -> Controller {
        let log = c.work.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(rotor_bin())
            .arg("--data-dir")
            .arg(&c.dir)
            .args(["csr", "controller", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--identity", name])
            .args(args)
            .env("ROTOR_PLUGIN_CACHE", shared_cache())
            .env_remove("ROTOR_BUNDLE")
            .env_remove("POD_NAMESPACE")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Controller {
            proc: Some(Proc::from(child)),
            log,
        }
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to give the Lease up.
    pub(super) fn kill(&mut self) {
        self.proc = None;
    }

    pub(super) fn leads(&self) -> bool {
        self.log().contains(" leads (Lease")
    }
}

/// The certificate of an issued CSR, written next to the work files.
pub(super) fn certificate(c: &Cluster, csr: &Value, name: &str) -> PathBuf {
    let pem = B64
        .decode(csr["status"]["certificate"].as_str().unwrap())
        .unwrap();
    let path = c.work.join(format!("{name}.crt"));
    std::fs::write(&path, pem).unwrap();
    path
}

pub(super) fn openssl_verify(ca: &Path, cert: &Path) -> Output {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap()
}

/// The subjectAltName line openssl prints.
pub(super) fn sans_of(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The default bundle with a custom signer, example.com/node-serving, under kubelet-serving's
/// rules (CSR profile and SAN profile).
pub(super) fn bundle_with_custom_signer(c: &Cluster) -> PathBuf {
    let dir = c.work.join("bundle");
    copy_dir(&repo_root().join("policies/default"), &dir);
    let manifest = dir.join("bundle.toml");
    let mut toml = std::fs::read_to_string(&manifest).unwrap();
    let serving = toml
        .split("[san.settings.profiles.kubelet-serving]")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap()
        .to_string();
    toml.push_str(&format!(
        "\n[san.settings.profiles.\"example.com/node-serving\"]{serving}\n\n\
         [csr.settings.profiles.\"example.com/node-serving\"]\nkind = \"kubelet-serving\"\n"
    ));
    std::fs::write(&manifest, toml).unwrap();
    manifest
}

pub(super) const LIMIT: Duration = Duration::from_secs(60);

/// Wait for an Event with `reason` on the CSR `name`.
pub(super) fn wait_event(c: &Cluster, name: &str, reason: &str, ctl: &Controller) {
    let start = Instant::now();
    loop {
        let events = c.admin_ok(&[
            "get",
            "events.events.k8s.io",
            "-n",
            "default",
            "--field-selector",
            &format!("regarding.name={name}"),
            "-o",
            "json",
        ]);
        if events.contains(reason) {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "no {reason} event on {name}: {events}\n{}",
            ctl.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every CSR whose name starts with `prefix`, by name.
pub(super) fn csrs_named(c: &Cluster, prefix: &str) -> Vec<Value> {
    let all: Value = serde_json::from_str(&c.admin_ok(&["get", "csr", "-o", "json"])).unwrap();
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
        })
        .cloned()
        .collect()
}

pub(super) const HA_TIMINGS: &[&str] = &[
    "--lease-namespace",
    "kube-system",
    "--lease-duration",
    "4s",
    "--renew-deadline",
    "3s",
    "--retry-period",
    "1s",
    "--no-listen",
];

pub(super) fn wait_leads(ctl: &Controller, limit: Duration) {
    let start = Instant::now();
    while !ctl.leads() {
        assert!(
            start.elapsed() < limit,
            "{} never led:\n{}",
            ctl.log.display(),
            ctl.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` CSRs at once, in one `kubectl create` (a List), created by `as_who` (a node identity,
/// so `spec.username` is the node's), all with the same request.
pub(super) fn create_many_as(
    c: &Cluster,
    as_who: &[String],
    prefix: &str,
    n: usize,
    node: &str,
    ip: &str,
) -> Vec<String> {
    let (_, csr) = openssl_csr(
        &c.work,
        prefix,
        &format!("/O=system:nodes/CN=system:node:{node}"),
        &format!("DNS:{node},IP:{ip}"),
    );
    let request = B64.encode(std::fs::read(csr).unwrap());
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let items: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({
                "apiVersion": "certificates.k8s.io/v1",
                "kind": "CertificateSigningRequest",
                "metadata": {"name": name},
                "spec": {
                    "request": request,
                    "signerName": "kubernetes.io/kubelet-serving",
                    "usages": SERVING,
                }
            })
        })
        .collect();
    let file = c.work.join(format!("{prefix}.json"));
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .unwrap();
    let out = c.apiserver.kubectl_as(
        &c.file("server-ca"),
        as_who,
        &["create", "-f", &file.display().to_string()],
    );
    assert!(out.status.success(), "{}", text(&out));
    names
}
