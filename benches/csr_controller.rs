//! `rotor csr controller` at work (issue 32): 1,000 kubelet-serving CSRs created through the
//! real kube-apiserver v1.37.2 by 100 node identities (kubelet client certificates rotor
//! issued), decided by the controller with the Node objects as evidence, signed by the real
//! kube-controller-manager; beside the in-process `csr sign` batch on the same 1,000 requests,
//! in one run.
//!
//! Reports: the time from the first create to the last certificate; p50 and p99 from a CSR's
//! create call to its approval (as an admin watch sees it) and to its certificate; the
//! controller's peak RSS; and the ratio of the in-process batch's time (review and sign, 2
//! threads, median of 5) to the controller's. Not criterion: one multi-second run of a whole
//! cluster. `cargo bench -p rotor --bench csr_controller` (after `make deps` built the control
//! plane and `make build` the release rotor; `ROTOR_BIN` to choose another). Skips, saying why,
//! when the control plane or etcd is missing (fails under `CI`).

#![allow(
    clippy::disallowed_methods,
    reason = "a bench sets up files as an operator would"
)]

#[path = "common.rs"]
#[allow(dead_code, reason = "the bench uses node_address only")]
mod common;
#[path = "../tests/support/components.rs"]
mod components;
#[path = "../tests/support/control_plane.rs"]
mod control_plane;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use control_plane::{Apiserver, Binaries, ControllerManager, TlsEtcd};
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest as Csr;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{Value, json};

const NODES: u32 = 100;
const PER_NODE: u32 = 10;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn skip(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "csr_controller bench: {what} is missing"
    );
    eprintln!("csr_controller bench skipped: {what} is missing");
}

/// A kubeconfig (JSON) for `server` with `user`.
fn kubeconfig(path: &Path, server: &str, ca_pem: &[u8], user: Value) {
    let cfg = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": B64.encode(ca_pem)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    });
    std::fs::write(path, cfg.to_string()).unwrap();
}

async fn client_for(path: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A P-256 CSR (PEM) and its key (PEM) for `cn` in `o`, with `sans`.
fn csr_pem(cn: &str, o: &str, sans: Vec<rcgen::SanType>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.distinguished_name.push(DnType::OrganizationName, o);
    params.subject_alt_names = sans;
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key.serialize_pem())
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.iter().any(|f| !"csr_controller".contains(f.as_str())) {
        return;
    }
    let bins = match Binaries::find() {
        Ok(b) => b,
        Err(what) => return skip(&what),
    };
    let rotor = std::env::var_os("ROTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/rotor"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let cache = tmp.path().join("cache");
    let rotor_cmd = |args: &[&str]| {
        let out = Command::new(&rotor)
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .env("ROTOR_PLUGIN_CACHE", &cache)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rotor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    rotor_cmd(&[
        "init",
        "--profile",
        "kubeadm",
        "--node-name",
        "cp1",
        "--node-ip",
        "127.0.0.1",
    ]);
    let etcd = match TlsEtcd::start(&dir, &work) {
        Ok(e) => e,
        Err(what) => return skip(&what),
    };
    let apiserver = Apiserver::kubeadm(&bins, &dir, &etcd.url(), &work);
    // The signer's client may write as fast as the apiserver takes it (its default, 20
    // requests/s, would make the controller manager the whole measurement).
    let _cm = ControllerManager::start_with(
        &bins,
        &apiserver,
        "csrsigning",
        &work,
        &["--kube-api-qps=2000", "--kube-api-burst=2000"],
    );
    let server = apiserver.url();
    let ca_pem = std::fs::read(apiserver.file("server-ca")).unwrap();

    // The admin, for the controller and for watching.
    let admin_cfg = work.join("admin.json");
    {
        let out = apiserver.kubectl(
            &apiserver.admin(),
            &["config", "view", "--raw", "--minify", "-o", "json"],
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        kubeconfig(&admin_cfg, &server, &ca_pem, v["users"][0]["user"].clone());
    }

    // 100 node identities: kubelet client certificates from one `rotor csr sign --jsonl`.
    let mut lines = String::new();
    let mut node_keys = Vec::new();
    for i in 0..NODES {
        let node = format!("node-{i}");
        let (pem, key) = csr_pem(&format!("system:node:{node}"), "system:nodes", vec![]);
        node_keys.push(key);
        let ctx = rotor::contract::CsrContext {
            signer_name: "kubernetes.io/kube-apiserver-client-kubelet".into(),
            username: format!("system:node:{node}"),
            groups: vec!["system:nodes".into()],
            usages: vec![
                rotor::facts::Usage::DigitalSignature,
                rotor::facts::Usage::ClientAuth,
            ],
            ..Default::default()
        };
        lines.push_str(&rotor::csr::k8s_object_for(&node, &pem, &ctx).to_string());
        lines.push('\n');
    }
    let jsonl = work.join("clients.jsonl");
    std::fs::write(&jsonl, lines).unwrap();
    let signed = work.join("clients");
    rotor_cmd(&[
        "csr",
        "sign",
        "--jsonl",
        &jsonl.display().to_string(),
        "--out-dir",
        &signed.display().to_string(),
    ]);
    let mut node_cfgs = Vec::new();
    for (i, key) in node_keys.iter().enumerate() {
        let object = std::fs::read(signed.join(format!("node-{i}.json"))).unwrap();
        let v: Value = serde_json::from_slice(&object).unwrap();
        let cert = v["status"]["certificate"]
            .as_str()
            .expect("client certificate issued");
        let path = work.join(format!("node-{i}.json"));
        kubeconfig(
            &path,
            &server,
            &ca_pem,
            json!({"client-certificate-data": cert, "client-key-data": B64.encode(key)}),
        );
        node_cfgs.push(path);
    }
    assert_eq!(node_cfgs.len(), NODES as usize);

    // The 1,000 requests: 10 per node, for its name and its address.
    let requests: Vec<(usize, String, String)> = (0..NODES)
        .flat_map(|i| {
            (0..PER_NODE).map(move |k| {
                let node = format!("node-{i}");
                let (pem, _) = csr_pem(
                    &format!("system:node:{node}"),
                    "system:nodes",
                    vec![
                        rcgen::SanType::DnsName(node.as_str().try_into().unwrap()),
                        rcgen::SanType::IpAddress(common::node_address(i)),
                    ],
                );
                (i as usize, format!("{node}-{k}"), pem)
            })
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admin = runtime.block_on(client_for(&admin_cfg));
    // The Nodes, with their addresses, as kubelets register them.
    runtime.block_on(async {
        let nodes: Api<Node> = Api::all(admin.clone());
        for i in 0..NODES {
            let name = format!("node-{i}");
            let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            nodes.create(&PostParams::default(), &node).await.unwrap();
            let status = json!({"status": {"addresses": [
                {"type": "InternalIP", "address": common::node_address(i).to_string()},
                {"type": "Hostname", "address": name},
            ]}});
            nodes
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
        }
    });

    let log = work.join("controller.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut controller = Command::new(&rotor)
        .arg("--data-dir")
        .arg(&dir)
        .args(["csr", "controller", "--kubeconfig"])
        .arg(&admin_cfg)
        .args(["--lease-namespace", "kube-system", "--no-listen"])
        .arg("--decision-log")
        .arg(work.join("decisions.jsonl"))
        .env("ROTOR_PLUGIN_CACHE", &cache)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let pid = controller.id();
    let started = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" leads (Lease")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the controller did not lead"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Watch, create, and wait for every certificate.
    type Seen = Arc<Mutex<HashMap<String, (Option<Instant>, Option<Instant>)>>>;
    let seen: Seen = Arc::default();
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = requests.len();
    let (first, last) = runtime.block_on(async {
        let watch_seen = Arc::clone(&seen);
        let api: Api<Csr> = Api::all(admin.clone());
        let mut events = watcher(api, watcher::Config::default()).boxed();
        let watching = tokio::spawn(async move {
            while let Some(Ok(e)) = events.next().await {
                let (watcher::Event::Apply(c) | watcher::Event::InitApply(c)) = e else {
                    continue;
                };
                let name = c.metadata.name.clone().unwrap_or_default();
                let status = c.status.unwrap_or_default();
                let approved = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Approved");
                let issued = status.certificate.is_some_and(|c| !c.0.is_empty());
                let now = Instant::now();
                let mut seen = watch_seen.lock().unwrap();
                let entry = seen.entry(name).or_default();
                if approved && entry.0.is_none() {
                    entry.0 = Some(now);
                }
                if issued && entry.1.is_none() {
                    entry.1 = Some(now);
                }
                let done = seen.values().filter(|(_, c)| c.is_some()).count();
                if done == total {
                    return;
                }
            }
        });
        let mut clients = Vec::new();
        for cfg in &node_cfgs {
            clients.push(client_for(cfg).await);
        }
        let first = Instant::now();
        let mut creators = Vec::new();
        for (i, client) in clients.into_iter().enumerate() {
            let mine: Vec<(String, String)> = requests
                .iter()
                .filter(|(n, _, _)| *n == i)
                .map(|(_, name, pem)| (name.clone(), pem.clone()))
                .collect();
            let created = Arc::clone(&created);
            creators.push(tokio::spawn(async move {
                let api: Api<Csr> = Api::all(client);
                for (name, pem) in mine {
                    let csr: Csr = serde_json::from_value(json!({
                        "metadata": {"name": name},
                        "spec": {
                            "request": B64.encode(pem),
                            "signerName": "kubernetes.io/kubelet-serving",
                            "usages": ["digital signature", "server auth"],
                        }
                    }))
                    .unwrap();
                    let at = Instant::now();
                    api.create(&PostParams::default(), &csr).await.unwrap();
                    created.lock().unwrap().insert(name, at);
                }
            }));
        }
        for c in creators {
            c.await.unwrap();
        }
        tokio::time::timeout(Duration::from_secs(600), watching)
            .await
            .expect("every CSR approved and signed within 10 minutes")
            .unwrap();
        (first, Instant::now())
    });
    let last_created = created
        .lock()
        .unwrap()
        .values()
        .max()
        .copied()
        .unwrap_or(first);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    let (peak, now_rss) = (rss("VmHWM:"), rss("VmRSS:"));
    // The controller's CPU time (user + system, clock ticks of 1/100 s), from its start.
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .collect::<Vec<_>>();
            let ticks = after.get(11)?.parse::<f64>().ok()? + after.get(12)?.parse::<f64>().ok()?;
            Some(Duration::from_secs_f64(ticks / 100.0))
        })
        .unwrap_or_default();
    let _ = controller.kill();
    let _ = controller.wait();

    let created = created.lock().unwrap();
    let seen = seen.lock().unwrap();
    let mut to_approval = Vec::new();
    let mut to_certificate = Vec::new();
    for (name, at) in created.iter() {
        let (approved, issued) = seen[name];
        to_approval.push(approved.expect("approved").saturating_duration_since(*at));
        to_certificate.push(issued.expect("issued").saturating_duration_since(*at));
    }
    to_approval.sort();
    to_certificate.sort();
    let wall = last - first;

    // The same 1,000 requests in process, as `rotor csr sign --jsonl` decides them.
    let engine = rotor::plugin::PluginEngine::new(rotor::plugin::EngineOptions::default()).unwrap();
    let bundle = rotor::policy::Bundle::load(&engine, &repo().join("policies/default")).unwrap();
    let ca = rotor::pki::CaSigner::load(
        "client-ca",
        &std::fs::read(apiserver.file("client-ca")).unwrap(),
        &std::fs::read(apiserver.file("client-ca-key")).unwrap(),
    )
    .unwrap();
    let items: Vec<rotor::csr::Item> = requests
        .iter()
        .map(|(i, name, pem)| {
            let ctx = rotor::contract::CsrContext {
                signer_name: "kubernetes.io/kubelet-serving".into(),
                username: format!("system:node:node-{i}"),
                groups: vec!["system:nodes".into(), "system:authenticated".into()],
                usages: vec![
                    rotor::facts::Usage::DigitalSignature,
                    rotor::facts::Usage::ServerAuth,
                ],
                ..Default::default()
            };
            let object = rotor::csr::k8s_object_for(name, pem, &ctx);
            let parsed =
                rotor::csr::parse_k8s_object("bench", object, &[common::node_address(*i as u32)])
                    .unwrap();
            rotor::csr::Item {
                name: name.clone(),
                input: rotor::csr::ItemInput::Object(Box::new(parsed)),
            }
        })
        .collect();
    let limits = rotor::csr::SignerLimits::default();
    let how = rotor::csr::Decide {
        limits: &limits,
        sign_approved: true,
        now: rotor::clock::system_now(),
    };
    let signer = |_: &str| Some(&ca);
    let mut batch: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let out =
                rotor::csr::process_batch(&bundle, &items, &signer, &how, 2, &AtomicUsize::new(0));
            let d = t.elapsed();
            assert!(
                out.iter().all(|o| o.certificate.is_some()),
                "all signed in process"
            );
            d
        })
        .collect();
    batch.sort();
    let batch50 = batch[2];

    println!(
        "kube-apiserver and kube-controller-manager {}, kubeadm flags, etcd on loopback; {} CSRs from {} node identities",
        control_plane::K8S_VERSION,
        total,
        NODES
    );
    println!("| | value |");
    println!("| --- | --- |");
    let last_approved = seen.values().filter_map(|(a, _)| *a).max().unwrap_or(last);
    println!(
        "| first create -> last create call issued | {} |",
        ms(last_created - first)
    );
    println!(
        "| first create -> last approval | {} ({:.0} CSRs/s) |",
        ms(last_approved - first),
        total as f64 / (last_approved - first).as_secs_f64()
    );
    println!(
        "| first create -> last certificate | {} ({:.0} CSRs/s) |",
        ms(wall),
        total as f64 / wall.as_secs_f64()
    );
    println!(
        "| create -> approved, p50 / p99 | {} / {} |",
        ms(percentile(&to_approval, 0.5)),
        ms(percentile(&to_approval, 0.99))
    );
    println!(
        "| create -> certificate, p50 / p99 | {} / {} |",
        ms(percentile(&to_certificate, 0.5)),
        ms(percentile(&to_certificate, 0.99))
    );
    println!("| controller RSS, peak / at the end | {peak:.0} MiB / {now_rss:.0} MiB |");
    println!(
        "| controller CPU time (user + system, from its start) | {} |",
        ms(cpu)
    );
    println!(
        "| in-process `csr sign` batch, same {total} requests, 2 threads (median of 5) | {} ({:.0} CSRs/s) |",
        ms(batch50),
        total as f64 / batch50.as_secs_f64()
    );
    println!(
        "in-process batch / through the API: to the last approval {:.3}, to the last certificate {:.3}",
        batch50.as_secs_f64() / (last_approved - first).as_secs_f64(),
        batch50.as_secs_f64() / wall.as_secs_f64()
    );
    drop(etcd);
}
