//! Whole `rotor` processes, as operators run them: `rotor start` with nothing and with
//! everything to renew, `rotor init` (k3s, kubeadm RSA-2048), `generate-custom-ca` against the
//! same CA set built by the `openssl` command line (benches/openssl-custom-ca.sh), and a
//! 10,000-CSR batch with its peak memory; `rotor start` against etcd (a real etcd on loopback,
//! TLS with client certificates) as a ratio to the directory datastore, and a server's join.
//!
//! `cargo bench --bench commands` (after `make plugins`). The plugin cache is a temp dir warmed
//! before measuring, as on a server after its first start. Figures: docs/performance.md.
//!
//! `ROTOR_BASELINE_BIN=/path/to/an/older/rotor` adds the `rotor start` and CSR batch cases run
//! by that binary on data dirs it initialized itself, in the same run, for ratios against an
//! earlier version (docs/performance.md names the commit each figure was compared with).

#![allow(
    clippy::disallowed_methods,
    reason = "benches set up data dirs and inputs directly"
)]

#[path = "common.rs"]
mod common;
#[path = "settings.rs"]
mod settings;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const ROTOR: &str = env!("CARGO_BIN_EXE_rotor");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cache: PathBuf,
    bin: PathBuf,
}

impl Env {
    fn new() -> Env {
        Env::with_bin(PathBuf::from(ROTOR))
    }

    /// The same environment for another rotor binary (its own plugin cache).
    fn with_bin(bin: PathBuf) -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_path_buf();
        let cache = root.join("plugin-cache");
        let env = Env {
            _tmp: tmp,
            root,
            cache,
            bin,
        };
        // Warm the precompiled-plugin cache, as the first start of a server does.
        env.rotor(&["policy", "check"]).expect("policy check");
        env
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("ROTOR_BUNDLE", repo().join("policies/default"))
            .env("ROTOR_PLUGIN_CACHE", &self.cache)
            .env_remove("ROTOR_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Run rotor to completion; an error carries its stderr.
    fn rotor(&self, args: &[&str]) -> Result<(), String> {
        let out = self.command(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "rotor {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn init(&self, dir: &Path, extra: &[&str]) {
        let mut args = vec![
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
            "init",
            "--node-name",
            "server-1",
            "--node-ip",
            "10.0.0.5",
        ];
        args.extend_from_slice(extra);
        self.rotor(&args).expect("init");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

fn in_days(days: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::days(days))
        .format(&Rfc3339)
        .expect("format")
}

/// 5: `rotor start`: nothing to renew (the boot path of every server; with k3s's datastore
/// format the key derivation costs about 1 ms, with rotor-v1 it is the deliberate 600,000
/// PBKDF2 rounds), and everything to renew (a year later: every leaf re-issued with a new key).
fn start(c: &mut Criterion) {
    let mut envs = vec![("", Env::new())];
    if let Some(baseline) = std::env::var_os("ROTOR_BASELINE_BIN") {
        envs.push(("/baseline", Env::with_bin(PathBuf::from(baseline))));
    }
    let mut group = c.benchmark_group("rotor_start");
    group.sample_size(20);
    for (suffix, env) in &envs {
        let k3s_format = env.root.join("k3s-format");
        env.init(
            &k3s_format,
            &["--profile", "k3s", "--datastore-format", "k3s"],
        );
        let v1_format = env.root.join("rotor-v1");
        env.init(&v1_format, &["--profile", "k3s"]);
        for (name, dir) in [
            ("nothing_to_renew/k3s_datastore", &k3s_format),
            ("nothing_to_renew/rotor_v1_datastore", &v1_format),
        ] {
            let d = dir.to_str().expect("utf-8");
            group.bench_function(format!("{name}{suffix}"), |b| {
                b.iter(|| env.rotor(&["--data-dir", d, "start"]).expect("start"))
            });
        }
        let later = in_days(400);
        let mut n = 0;
        group.bench_function(format!("everything_to_renew/k3s_datastore{suffix}"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let dir = env.root.join(format!("renew-{n}"));
                    copy_tree(&k3s_format, &dir);
                    dir
                },
                |dir| {
                    env.rotor(&[
                        "--data-dir",
                        dir.to_str().expect("utf-8"),
                        "start",
                        "--now",
                        &later,
                    ])
                    .expect("start");
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// 5: `rotor init` for k3s (P-256) and kubeadm (RSA-2048), each on an empty data dir,
/// k3s datastore format (rotor-v1's key derivation is reported by the `pki` bench).
fn init(c: &mut Criterion) {
    let env = Env::new();
    let mut group = c.benchmark_group("rotor_init");
    group.sample_size(10);
    let mut n = 0;
    for (name, profile) in [("k3s", "k3s"), ("kubeadm_rsa2048", "kubeadm")] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    env.root.join(format!("init-{n}"))
                },
                |dir| {
                    env.init(&dir, &["--profile", profile, "--datastore-format", "k3s"]);
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// 6: the custom CA set (root, intermediate, 5 CAs, service key), by rotor and by the openssl
/// command line with the same key algorithms.
fn custom_ca(c: &mut Criterion) {
    let env = Env::new();
    let script = repo().join("benches/openssl-custom-ca.sh");
    let have_openssl = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut group = c.benchmark_group("generate_custom_ca");
    group.sample_size(10);
    let mut n = 0;
    // (name, root and intermediate, service-account key; the script's spelling of each)
    for (name, root_alg, service_alg, openssl_alg, openssl_service) in [
        ("p256_every_key", "ecdsa-p256", "ecdsa-p256", "p256", "p256"),
        (
            "p256_cas_rsa2048_service_key",
            "ecdsa-p256",
            "rsa-2048",
            "p256",
            "rsa2048",
        ),
        (
            "rsa4096_root_and_intermediate",
            "rsa-4096",
            "rsa-2048",
            "rsa4096",
            "rsa2048",
        ),
    ] {
        group.bench_function(BenchmarkId::new("rotor", name), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    env.root.join(format!("ca-{n}"))
                },
                |dir| {
                    env.rotor(&[
                        "certificate",
                        "generate-custom-ca",
                        "--out",
                        dir.to_str().expect("utf-8"),
                        "--root-key-type",
                        root_alg,
                        "--intermediate-key-type",
                        root_alg,
                        "--ca-key-type",
                        "ecdsa-p256",
                        "--service-key-type",
                        service_alg,
                    ])
                    .expect("generate-custom-ca");
                    dir
                },
                BatchSize::PerIteration,
            )
        });
        if !have_openssl {
            eprintln!("openssl not found: skipping the openssl baseline");
            continue;
        }
        group.bench_function(BenchmarkId::new("openssl_cli", name), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    env.root.join(format!("ca-{n}"))
                },
                |dir| {
                    let status = Command::new("sh")
                        .arg(&script)
                        .arg(openssl_alg)
                        .arg(&dir)
                        .arg(openssl_service)
                        .stdout(Stdio::null())
                        .status()
                        .expect("sh");
                    assert!(status.success(), "{} failed", script.display());
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Run a command and return its wall time and peak resident memory (KiB), from `wait4`.
fn run_measured(mut cmd: Command) -> (Duration, i64) {
    let start = Instant::now();
    // Reaped by the wait4 below, not by `Child::wait` (which cannot report resource usage).
    #[allow(clippy::zombie_processes, reason = "reaped by wait4")]
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `rusage` is plain data that wait4 fills; `pid` is our own child, not yet waited
    // for (so the `Child` handle is dropped without waiting).
    #[allow(
        unsafe_code,
        reason = "wait4 is the only way to get one child's peak memory"
    )]
    let rusage = unsafe {
        let mut rusage: libc::rusage = std::mem::zeroed();
        let r = libc::wait4(pid, &mut status, 0, &mut rusage);
        assert_eq!(r, pid, "wait4");
        rusage
    };
    let elapsed = start.elapsed();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "batch failed: {status}"
    );
    (elapsed, rusage.ru_maxrss)
}

/// 7 and 8: `rotor csr sign --jsonl` on 1, 100 and 10,000 kubelet-serving CSR objects (parse,
/// both plugins, signing, JSON results), whole process, with peak memory.
fn csr_batch(c: &mut Criterion) {
    // With ROTOR_BASELINE_BIN, the same batches by an older binary in the same run (before
    // issue 11 it reused one plugin instance per thread; rotor now runs every decision fresh).
    let mut envs = vec![("", Env::new())];
    if let Some(baseline) = std::env::var_os("ROTOR_BASELINE_BIN") {
        envs.push(("/baseline", Env::with_bin(PathBuf::from(baseline))));
    }
    let objects = common::kubelet_csr_objects(10_000);
    let mut group = c.benchmark_group("csr_batch_process");
    group.sample_size(10);
    for (suffix, env) in &envs {
        let data = env.root.join("cluster");
        env.init(&data, &["--profile", "k3s", "--datastore-format", "k3s"]);
        let mut evidence = serde_json::Map::new();
        for i in 0..objects.len() {
            evidence.insert(
                format!("node-{i}"),
                serde_json::json!([common::node_address(i as u32)]),
            );
        }
        let evidence_path = env.root.join("nodes.json");
        std::fs::write(&evidence_path, serde_json::to_vec(&evidence).expect("json"))
            .expect("write evidence");
        for n in [1usize, 100, 10_000] {
            let jsonl = env.root.join(format!("csrs-{n}.jsonl"));
            let mut file = std::io::BufWriter::new(std::fs::File::create(&jsonl).expect("jsonl"));
            for o in &objects[..n] {
                writeln!(file, "{o}").expect("write");
            }
            file.flush().expect("flush");
            drop(file);
            let args = [
                "--data-dir",
                data.to_str().expect("utf-8"),
                "csr",
                "sign",
                "--jsonl",
                jsonl.to_str().expect("utf-8"),
                "--node-evidence",
                evidence_path.to_str().expect("utf-8"),
            ];
            let command = || {
                let mut cmd = env.command(&args);
                cmd.stderr(Stdio::null());
                cmd
            };
            let (elapsed, peak_kib) = run_measured(command());
            eprintln!(
                "csr_batch_process{suffix}/{n}: one run {:.3} s, {:.0} CSRs/s, peak memory {} MiB",
                elapsed.as_secs_f64(),
                n as f64 / elapsed.as_secs_f64(),
                peak_kib / 1024
            );
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::from_parameter(format!("{n}{suffix}")), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| run_measured(command()).0)
                        .sum::<Duration>()
                })
            });
        }
    }
    group.finish();
}

/// A real etcd on a free loopback port, serving TLS with client-certificate auth under
/// certificates rotor issued (a kubeadm data dir's etcd CA, server and apiserver-etcd-client
/// certificates); killed when dropped.
struct EtcdServer {
    child: std::process::Child,
    flags: Vec<String>,
}

impl EtcdServer {
    fn start(env: &Env) -> Option<EtcdServer> {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!("etcd is not installed (make deps): the datastore benches are skipped");
            return None;
        }
        let pki = env.root.join("etcd-pki");
        env.rotor(&[
            "--data-dir",
            pki.to_str().expect("utf-8"),
            "init",
            "--profile",
            "kubeadm",
            "--node-name",
            "etcd",
            "--node-ip",
            "127.0.0.1",
            "--key-type",
            "ecdsa-p256",
        ])
        .expect("etcd pki");
        let file = |rel: &str| {
            pki.join("pki")
                .join(rel)
                .to_str()
                .expect("utf-8")
                .to_string()
        };
        let port = |()| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        };
        let client = format!("https://127.0.0.1:{}", port(()));
        let peer = format!("https://127.0.0.1:{}", port(()));
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(env.root.join("etcd-data"))
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
            .args([
                "--cert-file",
                &file("etcd/server.crt"),
                "--key-file",
                &file("etcd/server.key"),
            ])
            .args([
                "--trusted-ca-file",
                &file("etcd/ca.crt"),
                "--client-cert-auth",
            ])
            .args([
                "--peer-cert-file",
                &file("etcd/peer.crt"),
                "--peer-key-file",
                &file("etcd/peer.key"),
            ])
            .args(["--peer-trusted-ca-file", &file("etcd/ca.crt")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let flags = vec![
            "--datastore-endpoint".to_string(),
            client,
            "--datastore-cafile".into(),
            file("etcd/ca.crt"),
            "--datastore-certfile".into(),
            file("apiserver-etcd-client.crt"),
            "--datastore-keyfile".into(),
            file("apiserver-etcd-client.key"),
        ];
        let server = EtcdServer { child, flags };
        // Ready when a first server can initialize against it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = env.root.join("etcd-first");
        loop {
            let mut args = vec!["--data-dir", first.to_str().expect("utf-8"), "init"];
            args.extend(["--node-name", "server-1", "--node-ip", "10.0.0.5"]);
            args.extend(["--datastore-format", "k3s", "--token", "bench-password"]);
            args.extend(server.flags.iter().map(String::as_str));
            match env.rotor(&args) {
                Ok(()) => return Some(server),
                Err(e) if Instant::now() > deadline => panic!("etcd never became ready: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 13: the shared datastore. `rotor start` with nothing to renew on a server whose datastore
/// is etcd, against the same on the directory datastore (both in k3s's record format, so the
/// key derivation does not hide the datastore's cost); and a server joining (init on a new data
/// dir against an initialized etcd: CAs extracted, its own 17 leaves issued) against a first
/// init on the directory datastore.
fn datastore(c: &mut Criterion) {
    let env = Env::new();
    let Some(etcd) = EtcdServer::start(&env) else {
        return;
    };
    let mut group = c.benchmark_group("datastore");
    group.sample_size(20);
    let local = env.root.join("local");
    env.init(&local, &["--profile", "k3s", "--datastore-format", "k3s"]);
    let shared = env.root.join("etcd-first");
    for (name, dir) in [
        ("start_nothing_to_renew/directory", &local),
        ("start_nothing_to_renew/etcd", &shared),
    ] {
        let d = dir.to_str().expect("utf-8");
        group.bench_function(name, |b| {
            b.iter(|| env.rotor(&["--data-dir", d, "start"]).expect("start"))
        });
    }
    let mut n = 0;
    group.bench_function("init/directory", |b| {
        b.iter_batched(
            || {
                n += 1;
                env.root.join(format!("local-init-{n}"))
            },
            |dir| {
                env.init(&dir, &["--profile", "k3s", "--datastore-format", "k3s"]);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("join/etcd", |b| {
        b.iter_batched(
            || {
                n += 1;
                env.root.join(format!("join-{n}"))
            },
            |dir| {
                let mut args = vec!["--token", "bench-password"];
                args.extend(etcd.flags.iter().map(String::as_str));
                env.init(&dir, &args);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// 9: `rotor serve`: one idle cycle over the k3s layout (17 leaves, nothing to renew) in the
/// running server, against `rotor start` with nothing to renew (a process) in the same run;
/// the idle server's resident memory against `rotor start`'s peak; and a hot swap's pause (from
/// the last decision with the old bundle to the first with the new, decisions running all the
/// time on another thread) against a stop-the-world reload (load and validate, then decide).
fn serve(c: &mut Criterion) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rotor::plugin::{EngineOptions, PluginEngine};
    use rotor::serve::{Clock, ServeOptions, Service};

    let env = Env::new();
    let dir = env.root.join("serve-k3s");
    env.init(&dir, &["--profile", "k3s", "--datastore-format", "k3s"]);
    let d = dir.to_str().expect("utf-8");
    let engine = Arc::new(
        PluginEngine::new(EngineOptions {
            cache_dir: Some(env.cache.clone()),
            ..EngineOptions::default()
        })
        .expect("engine"),
    );
    let options = |bundle: PathBuf| ServeOptions {
        data_dir: dir.clone(),
        datadir: rotor::datadir::Options {
            command: "serve".into(),
            ..rotor::datadir::Options::default()
        },
        bundle: Some(bundle),
        shadow_bundle: None,
        token: None,
        listen: None,
        tls_ca: None,
        decision_log: Some(env.root.join("decisions.jsonl")),
        decision_log_max_bytes: 1 << 20,
        decision_log_keep: 1,
        actions: None,
        max_interval: Duration::from_secs(3600),
        expiry_margin: Duration::from_secs(3600),
        watch_interval: Duration::from_secs(3600),
        supervisor_listen: None,
        supervisor_limits: rotor::supervisor::Limits::default(),
    };

    let mut group = c.benchmark_group("serve");
    group.sample_size(20);
    group.bench_function("rotor_start_nothing_to_renew/k3s", |b| {
        b.iter(|| env.rotor(&["--data-dir", d, "start"]).expect("start"))
    });
    let mut service = Service::new(
        options(repo().join("policies/default")),
        Arc::clone(&engine),
        Clock::System,
    )
    .expect("serve");
    group.bench_function("idle_cycle/k3s", |b| {
        b.iter(|| {
            let report = service.cycle().expect("cycle");
            assert!(report.renewed.is_empty() && report.checked == 17);
        })
    });
    drop(service);

    // Resident memory: the idle server after its first cycle, and `rotor start`'s peak.
    let mut cmd = env.command(&["--data-dir", d, "serve", "--listen", "127.0.0.1:0"]);
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("rotor serve");
    let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    // Read standard error to the end: a closed pipe would fail the server's next message.
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            let port = line
                .split("listening on ")
                .nth(1)
                .and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok());
            if let Some(port) = port {
                let _ = port_tx.send(port);
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("listening");
    let ready = || {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut answer);
        answer.starts_with("HTTP/1.1 200")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("status");
    let rss_kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let _ = child.kill();
    let _ = child.wait();
    let (_, start_peak_kib) = run_measured(env.command(&["--data-dir", d, "start"]));
    eprintln!(
        "serve/idle_rss: {:.1} MiB; rotor start peak {:.1} MiB ({:.2}x)",
        rss_kib as f64 / 1024.0,
        start_peak_kib as f64 / 1024.0,
        rss_kib as f64 / start_peak_kib as f64
    );

    // Hot swap. The bundle's name alternates, so the decision thread sees which one decided.
    let bundle = env.root.join("swap-bundle");
    copy_tree(&repo().join("policies/default"), &bundle);
    let manifest = bundle.join("bundle.toml");
    let original = std::fs::read_to_string(&manifest).expect("manifest");
    let name_it = |name: &str| {
        let tmp = env.root.join("manifest.tmp");
        std::fs::write(
            &tmp,
            original.replacen("name = \"default\"", &format!("name = \"{name}\""), 1),
        )
        .expect("manifest");
        std::fs::rename(&tmp, &manifest).expect("manifest");
    };
    name_it("b0");
    let service =
        Service::new(options(bundle.clone()), Arc::clone(&engine), Clock::System).expect("serve");
    let request = {
        let pem = std::fs::read(dir.join("server/tls/serving-kube-apiserver.crt")).expect("leaf");
        let certs = rotor::facts::parse_certificates_pem("leaf", &pem).expect("leaf");
        rotor::contract::RenewalRequest {
            name: "serving-kube-apiserver".into(),
            certificate: certs[0].clone().into(),
            issuer_not_after: Some(certs[1].not_after),
            now: OffsetDateTime::now_utc(),
        }
    };
    let mut generation = 0u64;
    group.sample_size(10);
    group.bench_function("hot_swap_pause", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                generation += 1;
                let new_name = format!("b{generation}");
                name_it(&new_name);
                let stop = AtomicBool::new(false);
                let deciding = AtomicBool::new(false);
                let pause = std::thread::scope(|scope| {
                    let decider = scope.spawn(|| {
                        let mut last_old = None;
                        loop {
                            let bundle = service.active_bundle().expect("bundle");
                            bundle.renewal(&request).expect("decision");
                            let at = Instant::now();
                            if bundle.name == new_name {
                                return last_old.map(|old| at - old);
                            }
                            last_old = Some(at);
                            deciding.store(true, Ordering::Release);
                            if stop.load(Ordering::Relaxed) {
                                return None;
                            }
                        }
                    });
                    while !deciding.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    let swapped = service.reload();
                    if !swapped {
                        stop.store(true, Ordering::Relaxed);
                    }
                    let pause = decider.join().expect("decider");
                    assert!(swapped, "the new bundle was refused");
                    pause.expect("an old decision before the new one")
                });
                total += pause;
            }
            total
        })
    });
    group.bench_function("stop_the_world_reload", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                generation += 1;
                name_it(&format!("b{generation}"));
                // The decisions wait while the bundle is loaded and validated, then resume.
                let started = Instant::now();
                assert!(service.reload(), "reload");
                let bundle = service.active_bundle().expect("bundle");
                bundle.renewal(&request).expect("decision");
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = settings::config();
    targets = start, init, custom_ca, csr_batch, datastore, serve
}
criterion_main!(benches);
