//! A fleet through the supervisor API: N simulated agents (in-process async clients, each with
//! its own P-256 key and node password) join through three `rotor serve --supervisor-listen`
//! servers on one real etcd, then all renew at once (a renewal storm); beside them, in the
//! same run, what the work cannot go below: the Argon2id hashes a join costs (one per new
//! node), on both cores, and the in-process CSR batch path (`rotor csr sign --jsonl` on the
//! same number of kubelet CSRs).
//!
//! A join is what `rotor agent` asks for: `/v1-k3s/client-ca.crt`, then the serving, kubelet,
//! kube-proxy and controller certificates, each a CSR from the agent's key, each decided in a
//! fresh plugin instance. Each agent talks to one server (agent i to server i mod 3, as an
//! agent keeps the server that answered it), on a connection of its own per request.
//!
//! `cargo build --release -p rotor --bin rotor && cargo bench -p rotor --bench agents`
//! (`ROTOR_BENCH_AGENTS=N`, default 10,000; `ROTOR_BENCH_CONCURRENCY=C`, agents in flight,
//! default 64; needs etcd and the built plugins: `make plugins`). Not a criterion bench: one
//! fleet is one measurement. Figures: docs/performance.md.

#![allow(
    clippy::disallowed_methods,
    reason = "benches set up data dirs and inputs directly"
)]

#[path = "common.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use rotor::agent::{Call, Servers, Trust};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rotor(bin: &Path, cache: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("ROTOR_PLUGIN_CACHE", cache)
        .env_remove("ROTOR_BUNDLE")
        .output()
        .expect("run rotor");
    assert!(
        out.status.success(),
        "rotor {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Resident and peak memory of a process, KiB (VmRSS, VmHWM).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Argon2id hashes per second of the supervisor's parameters, on `threads` threads at once.
fn hashes_per_second(threads: usize, for_at_least: Duration) -> f64 {
    let start = Instant::now();
    let counts: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while start.elapsed() < for_at_least {
                        rotor::supervisor::hash_password("bench-node-password").expect("hash");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    counts.iter().sum::<usize>() as f64 / start.elapsed().as_secs_f64()
}

/// One simulated agent: its key and password, the server it talks to.
struct SimAgent {
    name: String,
    password: String,
    key: rotor::pki::PrivateKey,
    ip: std::net::IpAddr,
}

const ENDPOINTS: [&str; 4] = [
    "serving-kubelet.crt",
    "client-kubelet.crt",
    "client-kube-proxy.crt",
    "client-k3s-controller.crt",
];

/// The requests of one agent's pass (`endpoints` of them), each timed: (latencies, failures).
async fn pass(
    agent: &SimAgent,
    servers: &Servers,
    trust: &Trust,
    auth: &(String, String),
    endpoints: &[&str],
    with_ca: bool,
) -> (Vec<Duration>, Vec<String>) {
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut calls = Vec::new();
    if with_ca {
        calls.push(Call {
            auth: Some(auth.clone()),
            ..Call::get("/v1-k3s/client-ca.crt")
        });
    }
    let csr = agent.key.empty_csr_pem().expect("csr");
    for e in endpoints {
        calls.push(Call {
            method: Method::POST,
            path: format!("/v1-k3s/{e}"),
            auth: Some(auth.clone()),
            headers: vec![
                ("k3s-Node-Name".into(), agent.name.clone()),
                ("k3s-Node-Password".into(), agent.password.clone()),
                ("k3s-Node-IP".into(), agent.ip.to_string()),
            ],
            body: csr.clone().into_bytes(),
        });
    }
    for call in &calls {
        let started = Instant::now();
        match servers.send(trust, call).await {
            Ok(_) => latencies.push(started.elapsed()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    (latencies, failures)
}

/// Run `agents` through their servers, `concurrency` at once: (wall time, sorted latencies,
/// failures).
#[allow(clippy::too_many_arguments, reason = "one fleet's parts")]
fn fleet(
    runtime: &tokio::runtime::Runtime,
    agents: &Arc<Vec<SimAgent>>,
    servers: &Arc<Vec<Servers>>,
    trust: &Trust,
    auth: &(String, String),
    concurrency: usize,
    endpoints: &'static [&'static str],
    with_ca: bool,
) -> (Duration, Vec<Duration>, Vec<String>) {
    let started = Instant::now();
    let results = runtime.block_on(async {
        let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = Vec::with_capacity(agents.len());
        for i in 0..agents.len() {
            let (agents, servers, trust, auth) = (
                Arc::clone(agents),
                Arc::clone(servers),
                trust.clone(),
                auth.clone(),
            );
            let slot = Arc::clone(&slots).acquire_owned().await.expect("semaphore");
            tasks.push(tokio::spawn(async move {
                let _slot = slot;
                pass(
                    &agents[i],
                    &servers[i % servers.len()],
                    &trust,
                    &auth,
                    endpoints,
                    with_ca,
                )
                .await
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("agent task"));
        }
        all
    });
    let wall = started.elapsed();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for (l, f) in results {
        latencies.extend(l);
        failures.extend(f);
    }
    latencies.sort();
    (wall, latencies, failures)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = env_usize("ROTOR_BENCH_AGENTS", 10_000);
    let concurrency = env_usize("ROTOR_BENCH_CONCURRENCY", 64);
    let bin = std::env::var_os("ROTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/rotor"));
    assert!(
        bin.is_file(),
        "{} is missing: cargo build --release -p rotor --bin rotor",
        bin.display()
    );
    if Command::new("etcd").arg("--version").output().is_err() {
        panic!("etcd is not installed (make deps)");
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let cache = root.join("plugin-cache");

    // One etcd, three servers on it.
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let _etcd = Killed(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(root.join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--quota-backend-bytes", "8589934592"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd"),
    );
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.join(format!("s{i}"))).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let token = loop {
        let out = Command::new(&bin)
            .arg("--data-dir")
            .arg(&dirs[0])
            .args([
                "init",
                "--profile",
                "k3s",
                "--node-name",
                "s1",
                "--node-ip",
                "127.0.0.1",
            ])
            .args(["--datastore-endpoint", &client])
            .env("ROTOR_PLUGIN_CACHE", &cache)
            .env_remove("ROTOR_BUNDLE")
            .output()
            .expect("init");
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            break text
                .lines()
                .find(|l| l.starts_with("K10"))
                .expect("token printed")
                .trim()
                .to_string();
        }
        assert!(
            Instant::now() < deadline,
            "etcd never became ready: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let name = format!("s{}", i + 1);
        let ip = format!("127.0.0.{}", i + 1);
        rotor(
            &bin,
            &cache,
            &[
                "--data-dir",
                dir.to_str().expect("utf-8"),
                "init",
                "--profile",
                "k3s",
                "--node-name",
                &name,
                "--node-ip",
                &ip,
                "--datastore-endpoint",
                &client,
                "--token",
                &token,
            ],
        );
    }
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for dir in &dirs {
        let mut child = Command::new(&bin)
            .arg("--data-dir")
            .arg(dir)
            .args(["serve", "--no-listen", "--supervisor-listen", "127.0.0.1:0"])
            .args([
                "--decision-log",
                root.join(format!(
                    "{}.log",
                    dir.display().to_string().replace('/', "_")
                ))
                .to_str()
                .expect("utf-8"),
            ])
            .args([
                "--supervisor-node-burst",
                "1000000",
                "--supervisor-node-rate",
                "1000000",
            ])
            .args([
                "--supervisor-new-nodes-burst",
                "1000000",
                "--supervisor-new-nodes-rate",
                "1000000",
            ])
            .env("ROTOR_PLUGIN_CACHE", &cache)
            .env_remove("ROTOR_BUNDLE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve");
        let stderr = child.stderr.take().expect("stderr");
        let port = Arc::new(Mutex::new(None));
        let p = Arc::clone(&port);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                if let Some(rest) =
                    line.strip_prefix("rotor serve: supervisor API on https://127.0.0.1:")
                {
                    *p.lock().expect("port") = rest.trim().parse::<u16>().ok();
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(port) = *port.lock().expect("port") {
                break port;
            }
            assert!(Instant::now() < deadline, "a server did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        ports.push(port);
        servers.push(Killed(child));
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("https://127.0.0.1:{p}"))
        .collect();
    // Agent i talks to server i mod 3 first (and fails over to the others).
    let clients: Arc<Vec<Servers>> = Arc::new(
        (0..urls.len())
            .map(|i| {
                let mut order = urls.clone();
                order.rotate_left(i);
                Servers::new(&order, Duration::from_secs(60)).expect("servers")
            })
            .collect(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let token = rotor::pki::Token::parse(&token).expect("token");
    let auth = ("node".to_string(), token.password.clone());
    // Trust as an agent does: /cacerts without trust, checked against the token's hash.
    let cacerts = runtime
        .block_on(clients[0].send(&Trust::any().expect("trust"), &Call::get("/cacerts")))
        .expect("cacerts");
    let ders = rotor::facts::certificate_ders("cacerts", &cacerts.body).expect("pem");
    assert_eq!(
        Some(rotor::pki::ca_hash(
            &cacerts.body,
            &ders,
            rotor::clock::system_now()
        )),
        token.ca_hash,
        "the token pins /cacerts"
    );
    let trust = Trust::pinned(&cacerts.body).expect("trust");

    let agents: Arc<Vec<SimAgent>> = Arc::new(
        (0..n)
            .map(|i| SimAgent {
                name: format!("node-{i}"),
                password: rotor::pki::generate_password().expect("password"),
                key: rotor::pki::KeyType::EcdsaP256.generate().expect("key"),
                ip: common::node_address(i as u32),
            })
            .collect(),
    );
    let rss = |when: &str| {
        let m: Vec<(u64, u64)> = servers.iter().map(|s| memory(s.0.id())).collect();
        eprintln!(
            "agents: server memory {when}: RSS {} MiB, peak {} MiB",
            m.iter()
                .map(|(r, _)| format!("{}", r / 1024))
                .collect::<Vec<_>>()
                .join(" / "),
            m.iter()
                .map(|(_, h)| format!("{}", h / 1024))
                .collect::<Vec<_>>()
                .join(" / ")
        );
        m
    };
    let before = rss("before");

    // The floor of a join: one Argon2id hash per new node, both cores.
    let hashes = hashes_per_second(2, Duration::from_secs(3));
    eprintln!("agents: Argon2id (19 MiB, t=2, p=1) hashes on 2 threads: {hashes:.1}/s");

    // The joins.
    let (wall, lat, fail) = fleet(
        &runtime,
        &agents,
        &clients,
        &trust,
        &auth,
        concurrency,
        &ENDPOINTS,
        true,
    );
    let after_join = rss("after the joins");
    let joins_per_s = n as f64 / wall.as_secs_f64();
    eprintln!(
        "agents: {n} joins ({} requests) in {:.1} s: {joins_per_s:.1} joins/s ({:.0}% of the Argon2id ceiling), p50 {:.1} ms, p99 {:.1} ms, {} errors",
        lat.len() + fail.len(),
        wall.as_secs_f64(),
        100.0 * joins_per_s / hashes,
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        fail.len()
    );
    for f in fail.iter().take(5) {
        eprintln!("agents:   error: {f}");
    }

    // The renewal storm: every agent renews its kubelet client certificate, all at once (up
    // to the concurrency), through the server it joined (its node password verified there).
    let storm_concurrency = env_usize("ROTOR_BENCH_STORM_CONCURRENCY", 512);
    let (swall, slat, sfail) = fleet(
        &runtime,
        &agents,
        &clients,
        &trust,
        &auth,
        storm_concurrency,
        &ENDPOINTS[1..2],
        false,
    );
    let after_storm = rss("after the renewal storm");
    eprintln!(
        "agents: renewal storm, {n} renewals ({storm_concurrency} in flight) in {:.1} s: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
        swall.as_secs_f64(),
        n as f64 / swall.as_secs_f64(),
        percentile(&slat, 0.5).as_secs_f64() * 1e3,
        percentile(&slat, 0.99).as_secs_f64() * 1e3,
        sfail.len()
    );
    for f in sfail.iter().take(5) {
        eprintln!("agents:   error: {f}");
    }

    // The baseline: the same number of kubelet CSRs through `rotor csr sign --jsonl` (one
    // process, every decision in a fresh instance, no network, no passwords).
    let batch = root.join("batch");
    rotor(
        &bin,
        &cache,
        &[
            "--data-dir",
            batch.to_str().expect("utf-8"),
            "init",
            "--profile",
            "k3s",
            "--node-name",
            "server-1",
            "--node-ip",
            "10.0.0.5",
        ],
    );
    let objects = common::kubelet_csr_objects(n as u32);
    let jsonl = root.join("csrs.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&jsonl).expect("jsonl"));
    for o in &objects {
        writeln!(file, "{o}").expect("write");
    }
    file.flush().expect("flush");
    drop(file);
    let mut evidence = serde_json::Map::new();
    for i in 0..n {
        evidence.insert(
            format!("node-{i}"),
            serde_json::json!([common::node_address(i as u32)]),
        );
    }
    let evidence_path = root.join("nodes.json");
    std::fs::write(&evidence_path, serde_json::to_vec(&evidence).expect("json")).expect("write");
    let started = Instant::now();
    let out = Command::new(&bin)
        .args([
            "--data-dir",
            batch.to_str().expect("utf-8"),
            "csr",
            "sign",
            "--jsonl",
        ])
        .arg(&jsonl)
        .arg("--node-evidence")
        .arg(&evidence_path)
        .env("ROTOR_PLUGIN_CACHE", &cache)
        .env_remove("ROTOR_BUNDLE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("csr sign");
    let batch_wall = started.elapsed();
    assert!(out.success(), "csr sign --jsonl");
    let batch_rate = n as f64 / batch_wall.as_secs_f64();
    let storm_rate = n as f64 / swall.as_secs_f64();
    eprintln!(
        "agents: baseline csr sign --jsonl, {n} CSRs in {:.2} s: {batch_rate:.0}/s; the storm's renewals run at {:.2}x that (network, TLS, auth, three processes)",
        batch_wall.as_secs_f64(),
        storm_rate / batch_rate
    );
    let growth: Vec<String> = before
        .iter()
        .zip(&after_join)
        .zip(&after_storm)
        .map(|((b, j), s)| format!("{}→{}→{} MiB", b.0 / 1024, j.0 / 1024, s.0 / 1024))
        .collect();
    let summary = serde_json::json!({
        "agents": n,
        "concurrency": concurrency,
        "argon2id_hashes_per_second": hashes,
        "join": {
            "seconds": wall.as_secs_f64(),
            "joins_per_second": joins_per_s,
            "of_argon2id_ceiling": joins_per_s / hashes,
            "requests": lat.len() + fail.len(),
            "p50_ms": percentile(&lat, 0.5).as_secs_f64() * 1e3,
            "p99_ms": percentile(&lat, 0.99).as_secs_f64() * 1e3,
            "errors": fail.len(),
        },
        "storm": {
            "concurrency": storm_concurrency,
            "seconds": swall.as_secs_f64(),
            "p50_ms": percentile(&slat, 0.5).as_secs_f64() * 1e3,
            "p99_ms": percentile(&slat, 0.99).as_secs_f64() * 1e3,
            "errors": sfail.len(),
        },
        "baseline_csr_sign_per_second": batch_rate,
        "storm_vs_baseline": storm_rate / batch_rate,
        "server_rss_mib_before_join_storm": growth,
    });
    eprintln!(
        "agents: server RSS before → after joins → after storm: {}",
        growth.join(", ")
    );
    let report = repo().join("target/bench-agents.json");
    let _ = std::fs::write(&report, serde_json::to_vec_pretty(&summary).expect("json"));
    eprintln!("agents: summary in {}", report.display());
    drop(servers);
}
