//! `rotor csr controller` against the real kube-apiserver and kube-controller-manager: node
//! identities (client certificates rotor issued) create CSRs through the API; the controller
//! decides them with the live Node objects as evidence; the controller manager (or rotor, for
//! a custom signer) signs what was approved.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::harness::ControllerManager;
use super::{Cluster, Flavor, tail, text};
use crate::common::*;
use crate::kine::components::{Proc, free_port};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A kubeconfig for the apiserver at its real port, with `user` (a token, or a client
/// certificate and key).
fn kubeconfig(c: &Cluster, path: &Path, user: Value) {
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
fn admin_kubeconfig(c: &Cluster) -> PathBuf {
    let path = c.work.join("admin-for-rotor.json");
    let out = c.admin_ok(&["config", "view", "--raw", "--minify", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    kubeconfig(c, &path, v["users"][0]["user"].clone());
    path
}

/// `openssl req`: a P-256 key and a CSR for `subject` with `sans` (`DNS:x,IP:y`).
fn openssl_csr(dir: &Path, name: &str, subject: &str, sans: &str) -> (PathBuf, PathBuf) {
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
fn node_identity(c: &Cluster, node: &str) -> Vec<String> {
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
fn create_node(c: &Cluster, name: &str, ips: &[&str]) {
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
fn create_csr(
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

const SERVING: &[&str] = &["digital signature", "server auth"];

/// A kubelet-serving CSR of `node` for `sans`, created by `as_who`.
fn serving_csr(c: &Cluster, as_who: &[String], name: &str, node: &str, sans: &str) -> PathBuf {
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
fn get_csr(c: &Cluster, name: &str) -> Value {
    serde_json::from_str(&c.admin_ok(&["get", "csr", name, "-o", "json"])).unwrap()
}

/// The CSR's Approved/Denied/Failed conditions.
fn decisions(csr: &Value) -> Vec<Value> {
    csr["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed")))
        .collect()
}

/// Wait until `done` says yes of the CSR (at most `limit`); the CSR then.
fn wait_csr(
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

fn decided_as(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |csr| decisions(csr).iter().any(|d| d["type"] == kind)
}

fn issued(csr: &Value) -> bool {
    csr["status"]["certificate"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
}

/// A running `rotor csr controller`, killed when dropped.
struct Controller {
    proc: Option<Proc>,
    log: PathBuf,
}

impl Controller {
    fn start(c: &Cluster, kubeconfig: &Path, name: &str, args: &[&str]) -> Controller {
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to give the Lease up.
    fn kill(&mut self) {
        self.proc = None;
    }

    fn leads(&self) -> bool {
        self.log().contains(" leads (Lease")
    }
}

/// The certificate of an issued CSR, written next to the work files.
fn certificate(c: &Cluster, csr: &Value, name: &str) -> PathBuf {
    let pem = B64
        .decode(csr["status"]["certificate"].as_str().unwrap())
        .unwrap();
    let path = c.work.join(format!("{name}.crt"));
    std::fs::write(&path, pem).unwrap();
    path
}

fn openssl_verify(ca: &Path, cert: &Path) -> Output {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap()
}

/// The subjectAltName line openssl prints.
fn sans_of(cert: &Path) -> String {
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
fn bundle_with_custom_signer(c: &Cluster) -> PathBuf {
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

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn the_controller_decides_csrs_with_node_evidence_in_a_real_apiserver() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(c) = Cluster::start(Flavor::Kubeadm, tmp.path(), &[]) else {
        return;
    };
    let _cm = ControllerManager::start(&c.bins, &c.apiserver, "csrsigning", &c.work);
    create_node(&c, "n1", &["10.0.1.1"]);
    create_node(&c, "n2", &["10.0.1.2"]);
    create_node(&c, "n3", &["10.0.1.3", "10.0.1.9"]);
    create_node(&c, "n4", &["10.0.1.4", "10.0.1.9"]);
    let n1 = node_identity(&c, "n1");
    let n3 = node_identity(&c, "n3");
    let late = node_identity(&c, "late");
    let admin = admin_kubeconfig(&c);
    let bundle = bundle_with_custom_signer(&c);
    let decision_log = c.work.join("decisions.jsonl");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let shadow = repo_root().join("policies/strict").display().to_string();
    let ctl_args = [
        "--bundle",
        &bundle.display().to_string(),
        "--shadow-bundle",
        &shadow,
        "--signer",
        "kubernetes.io/kubelet-serving",
        "--signer",
        "kubernetes.io/kube-apiserver-client-kubelet",
        "--sign",
        "example.com/node-serving=ca",
        "--lease-namespace",
        "kube-system",
        "--decision-log",
        &decision_log.display().to_string(),
        "--listen",
        &listen,
        "--signer",
        "example.com/nobody-knows",
    ];
    let mut ctl = Controller::start(&c, &admin, "ctl-a", &ctl_args);
    let wait = |name: &str, what: &'static str| {
        wait_csr(&c, name, LIMIT, what, &ctl.log, decided_as(what))
    };

    // 1. A node asks for its own name and address: approved by rotor, signed by the controller
    // manager; the certificate verifies and carries exactly the requested names.
    serving_csr(&c, &n1, "n1-serving", "n1", "DNS:n1,IP:10.0.1.1");
    wait("n1-serving", "Approved");
    let csr = wait_csr(&c, "n1-serving", LIMIT, "issued", &ctl.log, issued);
    let approved = &decisions(&csr)[0];
    assert_eq!(approved["reason"], "RotorPolicyApproved", "{csr:#}");
    assert_eq!(decisions(&csr).len(), 1, "{csr:#}");
    let cert = certificate(&c, &csr, "n1-serving");
    let out = openssl_verify(&c.file("client-ca"), &cert);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sans_of(&cert), "DNS:n1, IP Address:10.0.1.1");

    // 2. Denied, each with its reasons in the condition; nothing signed.
    serving_csr(&c, &n1, "n1-other-ip", "n1", "DNS:n1,IP:10.0.1.2");
    serving_csr(
        &c,
        &n1,
        "n1-extra-dns",
        "n1",
        "DNS:n1,DNS:evil.example,IP:10.0.1.1",
    );
    serving_csr(&c, &n3, "n3-disputed", "n3", "DNS:n3,IP:10.0.1.9");
    serving_csr(&c, &[], "admin-as-n1", "n1", "DNS:n1,IP:10.0.1.1");
    // A client certificate in system:masters: the apiserver itself refuses it for the
    // kube-apiserver-client signer, so the request comes for the kubelet client signer, from
    // the node whose name it carries.
    let (_, masters) = openssl_csr(
        &c.work,
        "masters",
        "/O=system:masters/CN=system:node:n1",
        "",
    );
    create_csr(
        &c,
        &n1,
        "masters",
        &masters,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
    );
    for (name, says) in [
        ("n1-other-ip", "10.0.1.2"),
        ("n1-extra-dns", "evil.example"),
        ("n3-disputed", "also listed by Node n4"),
        ("admin-as-n1", "is not a node"),
        ("masters", "system:masters"),
    ] {
        let csr = wait(name, "Denied");
        let d = decisions(&csr);
        assert_eq!(d.len(), 1, "{csr:#}");
        assert_eq!(d[0]["reason"], "RotorPolicyDenied", "{csr:#}");
        let message = d[0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{name}: {message}");
        assert!(!issued(&csr), "{csr:#}");
    }
    // n3's own undisputed address is fine.
    serving_csr(&c, &n3, "n3-own", "n3", "DNS:n3,IP:10.0.1.3");
    wait("n3-own", "Approved");

    // 3. A Node that does not exist: pending, with an Event saying why; approved once it does.
    serving_csr(&c, &late, "late-serving", "late", "DNS:late,IP:10.0.1.7");
    wait_event(&c, "late-serving", "NodeNotFound", &ctl);
    assert!(decisions(&get_csr(&c, "late-serving")).is_empty());
    create_node(&c, "late", &["10.0.1.7"]);
    wait("late-serving", "Approved");

    // 4. rotor as the signer of a custom signer name: it approves and signs, writing
    // status.certificate; the controller manager leaves it alone (not its signer).
    let (_, custom) = openssl_csr(
        &c.work,
        "n1-custom",
        "/O=system:nodes/CN=system:node:n1",
        "DNS:n1,IP:10.0.1.1",
    );
    create_csr(
        &c,
        &n1,
        "n1-custom",
        &custom,
        "example.com/node-serving",
        SERVING,
    );
    let csr = wait_csr(&c, "n1-custom", LIMIT, "issued", &ctl.log, issued);
    assert_eq!(decisions(&csr).len(), 1, "{csr:#}");
    let cert = certificate(&c, &csr, "n1-custom");
    let out = openssl_verify(&c.file("client-ca"), &cert);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sans_of(&cert), "DNS:n1, IP Address:10.0.1.1");

    // 5. A policy that abstains (the default bundle on a signer it has no profile for): the
    // CSR stays pending and an Event says why.
    let (_, unknown) = openssl_csr(&c.work, "unknown", "/O=acme/CN=widget", "");
    create_csr(
        &c,
        &[],
        "unknown",
        &unknown,
        "example.com/nobody-knows",
        &["digital signature", "client auth"],
    );
    wait_event(&c, "unknown", "RotorPolicyAbstained", &ctl);
    assert!(decisions(&get_csr(&c, "unknown")).is_empty());

    // /readyz and /metrics, as rotor serve has them; the decisions in the log, the shadow
    // bundle's beside them.
    let ready = Command::new("curl")
        .args(["-s", &format!("http://{listen}/readyz")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");
    let log = std::fs::read_to_string(&decision_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("n1-serving") && l.contains("\"decision\":\"approve\"")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("masters") && l.contains("\"decision\":\"deny\"")),
        "{log}"
    );
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://{listen}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("rotor_csr_controller_leader 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rotor_csr_controller_results_total{result=\"denied\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rotor_policy_decisions_total{hook=\"csr\",outcome=\"approve\""),
        "{metrics}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("n1-serving") && l.contains("\"role\":\"shadow\"")),
        "{log}"
    );

    // 6. Stopped between someone's approval and a signature: the next controller signs what
    // its review approves, and marks Failed what it does not (another node's address).
    ctl.kill();
    for (name, sans) in [
        ("approved-elsewhere", "DNS:n1,IP:10.0.1.1"),
        ("approved-badly", "DNS:n1,IP:10.0.1.2"),
    ] {
        let (_, csr) = openssl_csr(&c.work, name, "/O=system:nodes/CN=system:node:n1", sans);
        create_csr(&c, &n1, name, &csr, "example.com/node-serving", SERVING);
        c.admin_ok(&["certificate", "approve", name]);
    }
    let ctl = Controller::start(&c, &admin, "ctl-b", &ctl_args);
    let csr = wait_csr(&c, "approved-elsewhere", LIMIT, "issued", &ctl.log, issued);
    let cert = certificate(&c, &csr, "approved-elsewhere");
    let out = openssl_verify(&c.file("client-ca"), &cert);
    assert!(out.status.success(), "{}", text(&out));
    let csr = wait_csr(
        &c,
        "approved-badly",
        LIMIT,
        "Failed",
        &ctl.log,
        decided_as("Failed"),
    );
    assert!(!issued(&csr), "{csr:#}");
    let failed = decisions(&csr)
        .into_iter()
        .find(|d| d["type"] == "Failed")
        .unwrap();
    assert_eq!(failed["reason"], "RotorPolicyRefusedToSign");
    assert!(
        failed["message"].as_str().unwrap().contains("10.0.1.2"),
        "{csr:#}"
    );
}

/// Wait for an Event with `reason` on the CSR `name`.
fn wait_event(c: &Cluster, name: &str, reason: &str, ctl: &Controller) {
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
fn csrs_named(c: &Cluster, prefix: &str) -> Vec<Value> {
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

const HA_TIMINGS: &[&str] = &[
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

fn wait_leads(ctl: &Controller, limit: Duration) {
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

#[test]
fn two_replicas_one_leads_the_other_takes_over_and_a_restart_decides_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(c) = Cluster::start(Flavor::Kubeadm, tmp.path(), &[]) else {
        return;
    };
    create_node(&c, "n1", &["10.0.1.1"]);
    let n1 = node_identity(&c, "n1");
    let admin = admin_kubeconfig(&c);
    let mut a = Controller::start(&c, &admin, "replica-a", HA_TIMINGS);
    wait_leads(&a, LIMIT);
    let b = Controller::start(&c, &admin, "replica-b", HA_TIMINGS);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!b.leads(), "two leaders:\n{}\n{}", a.log(), b.log());
    serving_csr(&c, &n1, "ha-1", "n1", "DNS:n1,IP:10.0.1.1");
    wait_csr(
        &c,
        "ha-1",
        LIMIT,
        "Approved",
        &a.log,
        decided_as("Approved"),
    );
    assert!(a.log().contains("ha-1"), "{}", a.log());

    // The leader dies without giving the Lease up; the standby decides the next CSR within the
    // lease duration (4 s), plus its retry period and slack for a loaded machine.
    a.kill();
    let killed = Instant::now();
    serving_csr(&c, &n1, "ha-2", "n1", "DNS:n1,IP:10.0.1.1");
    wait_csr(
        &c,
        "ha-2",
        LIMIT,
        "Approved",
        &b.log,
        decided_as("Approved"),
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(4 + 1) + DEADLINE_SLACK,
        "the standby took {took:?}:\n{}",
        b.log()
    );
    assert!(b.leads() && b.log().contains("ha-2"), "{}", b.log());
    drop(b);

    // A controller killed mid-batch, and a new one: every CSR decided exactly once.
    let names = create_many_as(&c, &n1, "batch", 300, "n1", "10.0.1.1");
    let mut one = Controller::start(
        &c,
        &admin,
        "replica-c",
        &[HA_TIMINGS, &["--workers", "1"]].concat(),
    );
    let start = Instant::now();
    let at_kill = loop {
        let done = csrs_named(&c, "batch")
            .iter()
            .filter(|o| !decisions(o).is_empty())
            .count();
        if done >= 10 {
            one.kill();
            break done;
        }
        assert!(start.elapsed() < LIMIT, "nothing decided:\n{}", one.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    let two = Controller::start(&c, &admin, "replica-d", HA_TIMINGS);
    let start = Instant::now();
    loop {
        let all = csrs_named(&c, "batch");
        assert_eq!(all.len(), names.len());
        if all.iter().all(|o| !decisions(o).is_empty()) {
            for o in &all {
                let d = decisions(o);
                assert_eq!(d.len(), 1, "decided twice: {o:#}");
                assert_eq!(d[0]["type"], "Approved", "{o:#}");
            }
            break;
        }
        assert!(start.elapsed() < LIMIT, "not all decided:\n{}", two.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        at_kill < names.len(),
        "the first controller decided the whole batch before it was killed; nothing was left \
         to a restart"
    );
}

/// `n` CSRs at once, in one `kubectl create` (a List), created by `as_who` (a node identity,
/// so `spec.username` is the node's), all with the same request.
fn create_many_as(
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

#[test]
fn the_controller_needs_nothing_but_the_service_account_and_rbac_of_deploy() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(c) = Cluster::start(Flavor::Kubeadm, tmp.path(), &[]) else {
        return;
    };
    let deploy = repo_root().join("deploy");
    let d = deploy.display().to_string();
    // The namespace first: a server-side dry run of namespaced objects needs it to exist.
    c.admin_ok(&[
        "apply",
        "-f",
        &deploy.join("00-namespace.yaml").display().to_string(),
    ]);
    let out = c.admin_ok(&["apply", "--dry-run=server", "-f", &d]);
    assert!(
        out.contains("deployment.apps/rotor-csr-controller"),
        "{out}"
    );
    c.admin_ok(&["apply", "-f", &d]);
    let token = c.admin_ok(&[
        "-n",
        "rotor-system",
        "create",
        "token",
        "rotor-csr-controller",
    ]);
    let kc = c.work.join("sa.json");
    kubeconfig(&c, &kc, json!({"token": token.trim()}));

    create_node(&c, "n1", &["10.0.1.1"]);
    let n1 = node_identity(&c, "n1");
    let late = node_identity(&c, "late");
    // As the Deployment runs it: the default bundle, kubelet-serving, the Lease in
    // rotor-system.
    let ctl = Controller::start(&c, &kc, "in-rotor-system", &["--no-listen"]);
    serving_csr(&c, &n1, "sa-n1", "n1", "DNS:n1,IP:10.0.1.1");
    wait_csr(
        &c,
        "sa-n1",
        LIMIT,
        "Approved",
        &ctl.log,
        decided_as("Approved"),
    );
    // An abstention's Event is allowed too (a Node that does not exist).
    serving_csr(&c, &late, "sa-late", "late", "DNS:late,IP:10.0.1.7");
    let start = Instant::now();
    loop {
        let events = c.admin_ok(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"]);
        if events.contains("sa-late") && events.contains("NodeNotFound") {
            break;
        }
        assert!(start.elapsed() < LIMIT, "no event:\n{}", ctl.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let lease = c.admin_ok(&[
        "-n",
        "rotor-system",
        "get",
        "lease",
        "rotor-csr-controller",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, "in-rotor-system");
    assert!(!ctl.log().contains("forbidden"), "{}", ctl.log());

    // --node-evidence: a fixed list instead of the Node objects (none exists for n9). The
    // stopped controller gave the Lease up, so the next one leads at once.
    drop(ctl);
    let n9 = node_identity(&c, "n9");
    let evidence = c.work.join("evidence.json");
    std::fs::write(&evidence, r#"{"n9": ["10.0.9.9"]}"#).unwrap();
    let ctl = Controller::start(
        &c,
        &kc,
        "fixed-evidence",
        &[
            "--no-listen",
            "--node-evidence",
            &evidence.display().to_string(),
        ],
    );
    serving_csr(&c, &n9, "n9-fixed", "n9", "DNS:n9,IP:10.0.9.9");
    wait_csr(
        &c,
        "n9-fixed",
        LIMIT,
        "Approved",
        &ctl.log,
        decided_as("Approved"),
    );
    serving_csr(&c, &n9, "n9-not-listed", "n9", "DNS:n9,IP:10.0.9.8");
    let csr = wait_csr(
        &c,
        "n9-not-listed",
        LIMIT,
        "Denied",
        &ctl.log,
        decided_as("Denied"),
    );
    assert!(
        decisions(&csr)[0]["message"]
            .as_str()
            .unwrap()
            .contains("10.0.9.8"),
        "{csr:#}"
    );
}
