//! `rotor serve` as an operator runs it: a real process on a data dir, a test clock the test
//! advances (`ROTOR_TEST_CLOCK`), real HTTP (and HTTPS) on loopback, the metrics page read by
//! an independent parser (Python's prometheus_client), a real TLS consumer that re-reads its
//! files for each connection, SIGHUP, SIGTERM.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::common::*;

/// A running `rotor serve`; killed when dropped.
pub struct Serve {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    clock: PathBuf,
    port: Option<u16>,
}

fn write_clock(path: &Path, t: OffsetDateTime) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", rfc3339(t))).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub(crate) fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Serve {
    /// Start `rotor serve` on `dir` at `at` (the test clock) and, unless `--no-listen`, wait
    /// until it listens (then [`Serve::advance`] to `at` waits for the first cycle).
    pub fn start(dir: &Path, at: OffsetDateTime, args: &[&str], env: &[(&str, &Path)]) -> Serve {
        let clock = dir.with_extension("clock");
        write_clock(&clock, at);
        let _ = std::fs::remove_file(clock.with_extension("clock.now"));
        let mut cmd = Command::new(rotor_bin());
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("serve")
            .args(args)
            .env("ROTOR_PLUGIN_CACHE", shared_cache())
            .env("ROTOR_TEST_CLOCK", &clock)
            .env_remove("ROTOR_BUNDLE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let line = line.unwrap_or_default();
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut serve = Serve {
            child: Some(child),
            stderr,
            clock,
            port: None,
        };
        if !args.contains(&"--no-listen") {
            wait_for("the listening address", Duration::from_secs(60), || {
                serve.stderr().contains("listening on") || serve.exited()
            });
            let err = serve.stderr();
            let line = err
                .lines()
                .find(|l| l.contains("listening on"))
                .unwrap_or_else(|| panic!("rotor serve did not listen:\n{err}"));
            serve.port = Some(line.rsplit(':').next().unwrap().trim().parse().unwrap());
        }
        serve
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// Move the test clock to `to` and wait until the server has done everything due by then.
    pub fn advance(&mut self, to: OffsetDateTime) {
        write_clock(&self.clock, to);
        let ack = self.clock.with_extension("clock.now");
        let want = rfc3339(to);
        let start = Instant::now();
        loop {
            if std::fs::read_to_string(&ack).is_ok_and(|s| s.trim() == want) {
                return;
            }
            assert!(!self.exited(), "rotor serve exited:\n{}", self.stderr());
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "rotor serve did not reach {want}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port.expect("listening"), path)
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill")
            .args(["-s", sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {sig} {pid}");
    }

    /// SIGTERM, and the exit code and standard error once it stopped (at most 60 s).
    pub fn terminate(self) -> (i32, String) {
        self.signal("TERM");
        self.terminate_after_signal()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    parse_http(&raw)
}

fn parse_http(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// One sample of the metrics page, as Python's prometheus_client parsed it.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse an OpenMetrics page with the official Python client's parser (strict: a malformed
/// page is an error there).
pub(crate) fn parse_metrics(page: &str) -> Option<Vec<Sample>> {
    let present = Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require("python3 with prometheus_client", present) {
        return None;
    }
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the metrics page does not parse:\n{}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

pub(crate) fn sample<'a>(
    samples: &'a [Sample],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(samples, name, labels).map_or(0.0, |s| s.value)
}

/// The first certificate of a PEM file: (serial hex, notBefore, notAfter).
fn cert_of(path: &Path) -> (String, i64, i64) {
    let der = pem_certs(path).remove(0);
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        hex::encode(c.raw_serial()),
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    )
}

/// Every record of a decision log and its rotated files, oldest first, read without rotor.
fn decisions(log: &Path) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    let mut n = 1;
    loop {
        let f = PathBuf::from(format!("{}.{n}", log.display()));
        if !f.exists() {
            break;
        }
        files.push(f);
        n += 1;
    }
    files.reverse();
    files.push(log.to_path_buf());
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn time_of(v: &serde_json::Value, field: &str) -> OffsetDateTime {
    OffsetDateTime::parse(
        v[field].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

pub(crate) fn init_k3s(dir: &Path, at: OffsetDateTime) {
    rotor_ok(
        dir,
        &[
            "init",
            "--profile",
            "k3s",
            "--node-name",
            "server-1",
            "--node-ip",
            "127.0.0.1",
            "--now",
            &rfc3339(at),
        ],
    );
}

/// Over 800 days, every leaf is renewed exactly when the default policy says (90 days before
/// it expires) and at no other time; the post-renewal action runs (and is retried after it
/// fails); the metrics page parses and says what the files say; the decision log rotates and
/// `rotor policy log` reads it back.
#[test]
fn serve_renews_at_the_policys_times_and_exports_what_the_files_say() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k3s");
    let t0 = t0();
    init_k3s(&dir, t0);
    let log = tmp.path().join("decisions.jsonl");
    let out = tmp.path().join("action.out");
    let mark = tmp.path().join("action.mark");
    let actions = tmp.path().join("actions.toml");
    std::fs::write(
        &actions,
        format!(
            r#"[[action]]
name = "record"
components = ["*"]
command = ["sh", "-c", "echo \"$ROTOR_RENEWED_CERTIFICATES|$ROTOR_COMPONENTS\" >> {out}; test -e {mark} || {{ touch {mark}; exit 3; }}"]
retries = 3
"#,
            out = out.display(),
            mark = mark.display()
        ),
    )
    .unwrap();
    let mut serve = Serve::start(
        &dir,
        t0,
        &[
            "--listen",
            "127.0.0.1:0",
            "--decision-log",
            log.to_str().unwrap(),
            "--decision-log-max-bytes",
            "65536",
            "--decision-log-keep",
            "100",
            "--max-interval",
            "30d",
            "--actions",
            actions.to_str().unwrap(),
        ],
        &[],
    );
    serve.advance(t0);
    assert_eq!(serve.get("/healthz").0, 200);
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 200, "{body}");
    // One server per data dir.
    let (code, _, err) = rotor_at(&dir, &["serve", "--no-listen"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("another rotor serve keeps"), "{err}");

    let end = t0 + days(800);
    serve.advance(end);

    // The decision log (read here, without rotor): renewals exactly 90 days before expiry.
    let records = decisions(&log);
    assert!(
        log.with_extension("jsonl.1").exists(),
        "the decision log was rotated"
    );
    for f in std::fs::read_dir(tmp.path()).unwrap() {
        let f = f.unwrap();
        if f.file_name()
            .to_string_lossy()
            .starts_with("decisions.jsonl")
        {
            assert!(
                f.metadata().unwrap().len() <= 65536,
                "{:?} too big",
                f.path()
            );
        }
    }
    let mut renewals: BTreeMap<String, Vec<OffsetDateTime>> = BTreeMap::new();
    for r in &records {
        assert_eq!(r["role"], "acted");
        assert_eq!(r["bundle"], "default");
        let name = r["subject"]["certificate"].as_str().unwrap().to_string();
        let at = time_of(r, "time");
        let not_after = time_of(r, "not_after");
        match r["decision"].as_str().unwrap() {
            "renew" => {
                assert_eq!(at, not_after - days(90), "{name} renewed at {at}: {r}");
                renewals.entry(name).or_default().push(at);
            }
            "keep" => {
                assert!(
                    at < not_after - days(90),
                    "{name} kept at {at} inside the window: {r}"
                );
                assert_eq!(time_of(r, "renew_at"), not_after - days(90), "{r}");
            }
            other => panic!("unexpected decision {other}: {r}"),
        }
    }
    // First certificates end at t0+365d (renewed at t0+275d); their replacements, issued then
    // for 365 days, at t0+640d (renewed at t0+550d); the next window opens after the end.
    assert_eq!(renewals.len(), 17, "{renewals:?}");
    for (name, at) in &renewals {
        assert_eq!(at, &vec![t0 + days(275), t0 + days(550)], "{name}");
    }

    // The metrics page, parsed by an independent parser, says what the files say.
    let (code, page) = serve.get("/metrics");
    assert_eq!(code, 200);
    if let Some(samples) = parse_metrics(&page) {
        let expiry: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "rotor_certificate_expiration_timestamp_seconds")
            .collect();
        assert_eq!(expiry.len(), 17 + 5, "17 leaves and 5 CAs");
        for s in expiry {
            let file = dir.join(&s.labels["file"]);
            let (_, not_before, not_after) = cert_of(&file);
            assert_eq!(s.value as i64, not_after, "{file:?}");
            assert_eq!(s.labels["layout"], "k3s");
            let nb = value(
                &samples,
                "rotor_certificate_not_before_timestamp_seconds",
                &[("file", &s.labels["file"])],
            );
            assert_eq!(nb as i64, not_before, "{file:?}");
            if s.labels["kind"] == "leaf" {
                assert_eq!(not_after, (t0 + days(915)).unix_timestamp(), "{file:?}");
                let renewal = value(
                    &samples,
                    "rotor_certificate_renewal_timestamp_seconds",
                    &[("file", &s.labels["file"])],
                );
                assert_eq!(
                    renewal as i64,
                    not_after - days(90).whole_seconds(),
                    "{file:?}"
                );
            }
        }
        assert_eq!(
            value(
                &samples,
                "rotor_renewals_total",
                &[("outcome", "success"), ("reason", "policy")]
            ),
            34.0
        );
        let acted: f64 = samples
            .iter()
            .filter(|s| s.name == "rotor_policy_decisions_total")
            .map(|s| s.value)
            .sum();
        assert_eq!(acted as usize, records.len());
        let pin =
            std::fs::read_to_string(repo_root().join("policies/default/bundle.toml")).unwrap();
        let info = sample(
            &samples,
            "rotor_policy_plugin_info",
            &[("role", "active"), ("hook", "renewal")],
        )
        .expect("the bundle's info metric");
        assert!(pin.contains(&info.labels["digest"]), "{info:?}");
        // Accepted by its pin (a signed plugin says `signature`, its key and version: tested
        // in distribution.rs).
        assert_eq!(info.labels["accepted_by"], "pin", "{info:?}");
        assert_eq!(info.labels["key"], "", "{info:?}");
        assert_eq!(
            value(
                &samples,
                "rotor_last_successful_cycle_timestamp_seconds",
                &[]
            ) as i64,
            records
                .last()
                .map(|r| time_of(r, "time").unix_timestamp())
                .unwrap()
        );
        let count = value(
            &samples,
            "rotor_plugin_evaluation_seconds_count",
            &[("hook", "renewal"), ("plugin", "renewal-window")],
        );
        assert_eq!(count as usize, records.len());
    }

    // The action ran with the renewal in its environment; its first run failed and was
    // retried (rotor counts a run once it has seen the command exit).
    let action_runs = |outcome: &str| {
        let (_, page) = serve.get("/metrics");
        parse_metrics(&page).map(|samples| {
            value(
                &samples,
                "rotor_post_renewal_actions_total",
                &[("action", "record"), ("outcome", outcome)],
            )
        })
    };
    if action_runs("failure").is_some() {
        wait_for("the action's retry", Duration::from_secs(30), || {
            action_runs("success").unwrap_or(0.0) >= 1.0
        });
        assert_eq!(action_runs("failure"), Some(1.0));
    }
    let ran = std::fs::read_to_string(&out).unwrap();
    assert!(ran.lines().count() >= 2, "{ran}");
    let first = ran.lines().next().unwrap();
    let (names, components) = first.split_once('|').unwrap();
    assert_eq!(names.split(' ').count(), 17, "{first}");
    assert!(
        names.split(' ').any(|n| n == "serving-kube-apiserver"),
        "{first}"
    );
    assert!(
        components.split(' ').any(|c| c == "kube-apiserver"),
        "{first}"
    );

    // `rotor policy log` reads the rotated files back and filters.
    let out = rotor_ok(
        &dir,
        &[
            "policy",
            "log",
            log.to_str().unwrap(),
            "--rotated",
            "--decision",
            "renew",
            "--json",
        ],
    );
    assert_eq!(out.lines().count(), 34);
    let out = rotor_ok(
        &dir,
        &[
            "policy",
            "log",
            log.to_str().unwrap(),
            "--rotated",
            "--certificate",
            "serving-kube-apiserver",
            "--decision",
            "renew",
        ],
    );
    assert!(out.contains("2026-10-03T00:00:00Z  renewal renew"), "{out}");
    assert!(out.contains("2 of"), "{out}");

    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
}

/// A TLS consumer that re-reads its certificate and key for every connection (as etcd does)
/// serves the renewed certificate to new connections, without a restart; and the metrics
/// endpoint itself serves HTTPS with a certificate rotor issued from the cluster's CA.
#[test]
fn a_consumer_that_rereads_its_files_serves_the_renewed_certificate() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k3s");
    // Real time: TLS clients check validity against the system clock. Issued 300 days ago,
    // the leaves expire in 65 days, inside the default 90-day window.
    let now =
        OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    init_k3s(&dir, now - days(300));
    let tls = dir.join("server/tls");
    let cert_file = tls.join("serving-kube-apiserver.crt");
    let key_file = tls.join("serving-kube-apiserver.key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

    // The consumer: each connection reads the files anew.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let consumer_port = listener.local_addr().unwrap().port();
    {
        let (cert_file, key_file, provider) =
            (cert_file.clone(), key_file.clone(), provider.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let key = PrivateKeyDer::from_pem_file(&key_file).unwrap();
                let config = rustls::ServerConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .unwrap();
                let mut conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
                let _ = conn.complete_io(&mut stream);
            }
        });
    }
    let roots = {
        let mut store = rustls::RootCertStore::empty();
        for der in pem_certs(&tls.join("server-ca.crt")) {
            store.add(CertificateDer::from(der)).unwrap();
        }
        Arc::new(store)
    };
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    // A new connection: the serial of the certificate the consumer presented (verified).
    let served = |port: u16, name: &str| -> String {
        let mut conn = rustls::ClientConnection::new(
            client.clone(),
            ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        let der = conn.peer_certificates().unwrap()[0].to_vec();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        hex::encode(c.raw_serial())
    };
    let before = served(consumer_port, "kubernetes.default.svc");
    assert_eq!(before, cert_of(&cert_file).0);

    let log = tmp.path().join("decisions.jsonl");
    let mut serve = Serve::start(
        &dir,
        now,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-ca",
            "server-ca",
            "--decision-log",
            log.to_str().unwrap(),
        ],
        &[],
    );
    serve.advance(now);
    let renewed = decisions(&log)
        .iter()
        .filter(|r| r["decision"] == "renew")
        .count();
    assert_eq!(renewed, 17);
    let after = served(consumer_port, "kubernetes.default.svc");
    let (file_serial, _, not_after) = cert_of(&cert_file);
    assert_ne!(
        after, before,
        "the consumer still serves the old certificate"
    );
    assert_eq!(after, file_serial);
    assert_eq!(not_after, (now + days(365)).unix_timestamp());

    // The endpoint's own HTTPS, verified against the cluster's server CA.
    let port = serve.port.unwrap();
    let mut conn =
        rustls::ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut tls_stream = rustls::Stream::new(&mut conn, &mut sock);
    write!(
        tls_stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = tls_stream.read_to_end(&mut raw);
    let (code, page) = parse_http(&String::from_utf8_lossy(&raw));
    assert_eq!(code, 200);
    if let Some(samples) = parse_metrics(&page) {
        let gauge = value(
            &samples,
            "rotor_certificate_expiration_timestamp_seconds",
            &[("name", "serving-kube-apiserver")],
        );
        assert_eq!(gauge as i64, not_after);
    }
    // Plain HTTP is not served there.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(
        !raw.contains("rotor_certificate"),
        "plain HTTP served the metrics"
    );

    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
}

/// The default bundle with another name and renewal window, written atomically over `dir`'s
/// manifest.
fn rewrite_manifest(dir: &Path, name: &str, window_days: u32) {
    let manifest = dir.join("bundle.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replacen("name = \"default\"", &format!("name = \"{name}\""), 1)
        .replacen(
            "renew_before_days = 90",
            &format!("renew_before_days = {window_days}"),
            1,
        );
    let tmp = dir.parent().unwrap().join("manifest.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &manifest).unwrap();
}

/// A shadow bundle that disagrees is counted and never acts; a new bundle whose fixtures fail
/// is refused while the old one keeps deciding; a fixed one is switched in (on a change of its
/// files, and on SIGHUP) and decides from the next decision on.
#[test]
fn hot_swaps_refuse_a_bad_bundle_and_a_shadow_bundle_never_acts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k3s");
    let t0 = t0();
    init_k3s(&dir, t0);
    let bundle = tmp.path().join("bundle");
    copy_dir(&repo_root().join("policies/default"), &bundle);
    let shadow = tmp.path().join("eager");
    copy_dir(&repo_root().join("policies/default"), &shadow);
    std::fs::remove_dir_all(shadow.join("fixtures")).unwrap();
    rewrite_manifest(&shadow, "eager", 300);
    let log = tmp.path().join("decisions.jsonl");
    let serials = |dir: &Path| cert_of(&dir.join("server/tls/serving-kube-apiserver.crt")).0;
    let original = serials(&dir);

    let mut serve = Serve::start(
        &dir,
        t0,
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--shadow-bundle",
            shadow.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--decision-log",
            log.to_str().unwrap(),
            "--max-interval",
            "30d",
            "--watch-interval",
            "200ms",
        ],
        &[],
    );
    // The shadow's 300-day window opens at t0+65d, the active one's 90-day window at t0+275d.
    serve.advance(t0 + days(100));
    let records = decisions(&log);
    let acted: Vec<_> = records.iter().filter(|r| r["role"] == "acted").collect();
    let shadowed: Vec<_> = records.iter().filter(|r| r["role"] == "shadow").collect();
    assert!(!acted.is_empty());
    assert_eq!(acted.len(), shadowed.len(), "every decision is shadowed");
    assert!(
        acted
            .iter()
            .all(|r| r["decision"] == "keep" && r["bundle"] == "default")
    );
    assert!(shadowed.iter().all(|r| r["bundle"] == "eager"));
    for r in &shadowed {
        let renew = r["decision"] == "renew";
        assert_eq!(renew, time_of(r, "time") >= t0 + days(65), "{r}");
        assert_eq!(r["disagrees"] == true, renew, "{r}");
    }
    let shadowed: Vec<_> = shadowed
        .into_iter()
        .filter(|r| r["disagrees"] == true)
        .collect();
    assert!(
        shadowed.len() >= 17,
        "the shadow bundle disagreed at t0+90d"
    );
    assert_eq!(serials(&dir), original, "the shadow bundle acted");
    let (_, page) = serve.get("/metrics");
    if let Some(samples) = parse_metrics(&page) {
        let disagreements = value(
            &samples,
            "rotor_shadow_disagreements_total",
            &[("hook", "renewal"), ("plugin", "renewal-window")],
        );
        assert_eq!(disagreements as usize, shadowed.len());
        assert_eq!(
            value(
                &samples,
                "rotor_policy_decisions_total",
                &[("role", "shadow"), ("outcome", "renew")]
            ) as usize,
            shadowed.len()
        );
        assert!(
            sample(
                &samples,
                "rotor_policy_plugin_info",
                &[("role", "shadow"), ("bundle", "eager")]
            )
            .is_some()
        );
    }

    // A 200-day window breaks the bundle's own fixtures (they expect 90 days): refused.
    rewrite_manifest(&bundle, "wide", 200);
    wait_for("the refusal", Duration::from_secs(60), || {
        serve.stderr().contains("REFUSED")
    });
    assert!(serve.stderr().contains("fixture"), "{}", serve.stderr());
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 200, "the old bundle still decides: {body}");
    let seen = decisions(&log).len();
    serve.advance(t0 + days(200));
    let records = decisions(&log);
    let later: Vec<_> = records[seen..]
        .iter()
        .filter(|r| r["role"] == "acted")
        .collect();
    assert!(!later.is_empty());
    assert!(
        later
            .iter()
            .all(|r| r["bundle"] == "default" && r["decision"] == "keep"),
        "the refused bundle decided: {later:?}"
    );
    assert_eq!(serials(&dir), original);
    let (_, page) = serve.get("/metrics");
    if let Some(samples) = parse_metrics(&page) {
        assert_eq!(
            value(
                &samples,
                "rotor_policy_bundle_reloads_total",
                &[("role", "active"), ("outcome", "refused")]
            ),
            1.0
        );
        assert_eq!(value(&samples, "rotor_policy_bundle_refused", &[]), 1.0);
        assert_eq!(
            value(
                &samples,
                "rotor_policy_bundle_reloads_total",
                &[("role", "active"), ("outcome", "accepted")]
            ),
            0.0
        );
    }

    // Without the stale fixtures it is accepted (the watcher sees the change; SIGHUP reloads
    // too) and decides from then on: with 165 days left, a 200-day window renews.
    let switched = |serve: &Serve| {
        serve
            .stderr()
            .matches("'wide' loaded, validated and switched in")
            .count()
    };
    std::fs::rename(bundle.join("fixtures"), tmp.path().join("old-fixtures")).unwrap();
    wait_for("the swap", Duration::from_secs(60), || {
        switched(&serve) == 1
    });
    serve.signal("HUP");
    wait_for("the reload on SIGHUP", Duration::from_secs(60), || {
        switched(&serve) == 2
            && serve
                .stderr()
                .contains("shadow bundle 'eager' loaded, validated and switched in")
    });
    wait_for(
        "the renewals of the new bundle",
        Duration::from_secs(60),
        || {
            decisions(&log)
                .iter()
                .filter(|r| {
                    r["role"] == "acted" && r["bundle"] == "wide" && r["decision"] == "renew"
                })
                .count()
                == 17
        },
    );
    let records = decisions(&log);
    let first_wide = records
        .iter()
        .position(|r| r["role"] == "acted" && r["bundle"] == "wide")
        .unwrap();
    assert!(
        records[first_wide..]
            .iter()
            .filter(|r| r["role"] == "acted")
            .all(|r| r["bundle"] == "wide"),
        "the old bundle decided after the swap"
    );
    assert_ne!(serials(&dir), original);
    let (_, page) = serve.get("/metrics");
    if let Some(samples) = parse_metrics(&page) {
        assert_eq!(value(&samples, "rotor_policy_bundle_refused", &[]), 0.0);
        assert!(
            value(
                &samples,
                "rotor_policy_bundle_reloads_total",
                &[("role", "active"), ("outcome", "accepted")]
            ) >= 2.0
        );
        assert!(
            sample(
                &samples,
                "rotor_policy_plugin_info",
                &[("role", "active"), ("bundle", "wide")]
            )
            .is_some()
        );
    }
    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
}

/// Not ready while the bundle or the datastore cannot be loaded; ready once they can.
#[test]
fn readyz_says_why_the_server_is_not_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k3s");
    init_k3s(&dir, t0());
    let bundle = tmp.path().join("bundle");
    copy_dir(&repo_root().join("policies/default"), &bundle);
    let manifest = bundle.join("bundle.toml");
    let good = std::fs::read_to_string(&manifest).unwrap();
    let pin = good
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .map(|rest| &rest[..64])
        .expect("a pin");
    std::fs::write(&manifest, good.replacen(pin, &"0".repeat(64), 1)).unwrap();
    let serve = Serve::start(
        &dir,
        t0(),
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--watch-interval",
            "200ms",
        ],
        &[],
    );
    wait_for("a failed cycle", Duration::from_secs(60), || {
        serve.stderr().contains("cycle failed")
    });
    assert_eq!(serve.get("/healthz").0, 200);
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("policy bundle cannot be loaded"), "{body}");
    std::fs::write(&manifest, &good).unwrap();
    wait_for("ready", Duration::from_secs(60), || {
        serve.get("/readyz").0 == 200
    });
    drop(serve);

    // A token that does not open the datastore.
    let serve = Serve::start(
        &dir,
        t0(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--token",
            "K10aaaa::server:not-the-password",
        ],
        &[],
    );
    wait_for("a failed cycle", Duration::from_secs(60), || {
        serve.stderr().contains("cycle failed")
    });
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("datastore cannot be loaded"), "{body}");
}

/// SIGTERM while a renewal is being committed: the change is finished, the process exits 0,
/// the lock is released, and the data dir is consistent (every key matches its certificate).
#[test]
fn sigterm_in_the_middle_of_a_renewal_finishes_it_and_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k3s");
    let t0 = t0();
    init_k3s(&dir, t0);
    let resume = tmp.path().join("resume");
    let at = t0 + days(300);
    // The renewal's action is owed when SIGTERM comes: it runs before the process exits.
    let out = tmp.path().join("action.out");
    let actions = tmp.path().join("actions.toml");
    std::fs::write(
        &actions,
        format!(
            "[[action]]\nname = \"record\"\ncomponents = [\"*\"]\ncommand = [\"sh\", \"-c\", \"echo \\\"$ROTOR_RENEWED_CERTIFICATES\\\" >> {}\"]\n",
            out.display()
        ),
    )
    .unwrap();
    let serve = Serve::start(
        &dir,
        at,
        &[
            "--no-listen",
            "--decision-log",
            tmp.path().join("d.jsonl").to_str().unwrap(),
            "--actions",
            actions.to_str().unwrap(),
        ],
        &[
            ("ROTOR_FAILPOINT", Path::new("wait:commit:journaled")),
            ("ROTOR_FAILPOINT_RESUME", &resume),
        ],
    );
    wait_for("the failpoint", Duration::from_secs(60), || {
        serve
            .stderr()
            .contains("failpoint: waiting at commit:journaled")
    });
    serve.signal("TERM");
    wait_for("the SIGTERM notice", Duration::from_secs(30), || {
        serve
            .stderr()
            .contains("stopping after the change in progress")
    });
    std::fs::write(&resume, "").unwrap();
    let (code, err) = serve.terminate_after_signal();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("renewed"), "{err}");
    assert!(err.contains("rotor serve: stopped"), "{err}");
    let ran = std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(ran.lines().count(), 1, "{ran}\n{err}");
    assert_eq!(ran.split_whitespace().count(), 17, "{ran}");
    // Consistent and complete: nothing left to do at that time, and the lock is free.
    let start = Instant::now();
    let out = rotor_ok(&dir, &["start", "--dry-run", "--now", &rfc3339(at)]);
    assert!(out.contains("nothing to do"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(20));
    let (_, not_before, _) = cert_of(&dir.join("server/tls/serving-kube-apiserver.crt"));
    assert_eq!(not_before, (at - time::Duration::hours(1)).unix_timestamp());
    let check = rotor_ok(
        &dir,
        &[
            "certificate",
            "check",
            "--now",
            &rfc3339(at),
            "--output",
            "json",
        ],
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&check).unwrap();
    let bad: Vec<_> = rows.iter().filter(|r| r["status"] != "OK").collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

impl Serve {
    /// Wait (at most 60 s) for the exit after a signal already sent.
    fn terminate_after_signal(mut self) -> (i32, String) {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "rotor serve did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(50));
        (status.code().unwrap_or(-1), self.stderr())
    }
}

/// On the system clock, a server sleeping until its next cycle (an hour away) stops at once
/// on SIGTERM, and SIGHUP before `run` does not kill it.
#[test]
fn sigterm_while_sleeping_stops_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k3s");
    init_k3s(&dir, OffsetDateTime::now_utc() - days(1));
    let mut serve = Serve::start(
        &dir,
        t0(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--decision-log",
            tmp.path().join("d.jsonl").to_str().unwrap(),
        ],
        &[("ROTOR_TEST_CLOCK", Path::new(""))],
    );
    serve.signal("HUP");
    wait_for("ready", Duration::from_secs(60), || {
        serve.get("/readyz").0 == 200
    });
    assert!(!serve.exited(), "{}", serve.stderr());
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(
        started.elapsed() < DEADLINE_SLACK,
        "{:?}",
        started.elapsed()
    );
}

/// A plugin that traps: the failure mode decides (the built-in rule), the decision log says
/// so, and the error is counted by kind; a shadow plugin that loops until its deadline (failure
/// mode `error`) is logged as an error of the shadow, counted, and is not a disagreement.
#[test]
fn plugin_failures_are_logged_and_counted_by_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k3s");
    let t0 = t0();
    init_k3s(&dir, t0);
    let trap = test_plugin("hostile-trap");
    let looping = test_plugin("hostile-loop");
    let bundle = write_bundle(
        &tmp.path().join("trapping"),
        &[HookSpec {
            hook: "renewal",
            plugin: &trap,
            extra: "failure_mode = \"fallback\"",
            settings: "",
        }],
    );
    let shadow = write_bundle(
        &tmp.path().join("looping"),
        &[HookSpec {
            hook: "renewal",
            plugin: &looping,
            extra: "failure_mode = \"error\"\ntimeout_ms = 20",
            settings: "",
        }],
    );
    let log = tmp.path().join("decisions.jsonl");
    let mut serve = Serve::start(
        &dir,
        t0,
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "--shadow-bundle",
            shadow.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--decision-log",
            log.to_str().unwrap(),
        ],
        &[],
    );
    serve.advance(t0);
    let records = decisions(&log);
    let acted: Vec<_> = records.iter().filter(|r| r["role"] == "acted").collect();
    let shadowed: Vec<_> = records.iter().filter(|r| r["role"] == "shadow").collect();
    assert_eq!(acted.len(), 17);
    assert_eq!(shadowed.len(), 17);
    for r in &acted {
        assert_eq!(r["source"], "failure_mode", "{r}");
        assert_eq!(r["error"], "trap", "{r}");
        assert_eq!(r["decision"], "keep", "{r}");
    }
    for r in &shadowed {
        assert_eq!(r["decision"], "error", "{r}");
        assert_eq!(r["error"], "timeout", "{r}");
        assert!(r.get("disagrees").is_none(), "{r}");
    }
    let (_, page) = serve.get("/metrics");
    if let Some(samples) = parse_metrics(&page) {
        let errors = |kind: &str, role: &str| {
            value(
                &samples,
                "rotor_plugin_errors_total",
                &[("hook", "renewal"), ("kind", kind), ("role", role)],
            )
        };
        assert_eq!(errors("trap", "acted"), 17.0);
        assert_eq!(errors("timeout", "shadow"), 17.0);
        assert_eq!(
            value(
                &samples,
                "rotor_shadow_disagreements_total",
                &[("plugin", "hostile-loop")]
            ),
            0.0
        );
        assert!(
            sample(
                &samples,
                "rotor_shadow_disagreements_total",
                &[("plugin", "hostile-loop")]
            )
            .is_some()
        );
    }
    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
}

/// Renewal plugins that cannot be loaded (a `configure` that never returns, one that exhausts
/// its memory, one that imports WASI): the server does not sit idle while the certificates run
/// out. The hook decides by the failure mode (the built-in rule), the server says why on
/// standard error and on /readyz (not ready), and counts the load failure; a hot swap to a
/// whole bundle makes it ready again, and a broken candidate never replaces a whole bundle (it
/// is counted as a candidate, and nothing says it decides).
#[test]
fn a_renewal_plugin_that_cannot_load_renews_through_the_fallback() {
    let broken: [(&str, &str, &str, &str); 3] = [
        (
            "hostile-loop",
            "timeout_ms = 50",
            "in_configure = true",
            "timeout",
        ),
        (
            "hostile-memory",
            "",
            "in_configure = true",
            "memory_exhausted",
        ),
        ("hostile-wasi", "", "", "forbidden_import"),
    ];
    for (plugin, extra, settings, kind) in broken {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k3s");
        let t0 = t0();
        init_k3s(&dir, t0);
        let bundle_dir = tmp.path().join("bundle");
        let write_broken = |dir: &Path| {
            write_bundle(
                dir,
                &[HookSpec {
                    hook: "renewal",
                    plugin: &test_plugin(plugin),
                    extra: &format!("failure_mode = \"fallback\"\n{extra}"),
                    settings,
                }],
            )
        };
        write_broken(&bundle_dir);
        let log = tmp.path().join("decisions.jsonl");
        let mut serve = Serve::start(
            &dir,
            t0,
            &[
                "--bundle",
                bundle_dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--decision-log",
                log.to_str().unwrap(),
                // Wake by the built-in rule's hints, not every hour of the simulated year.
                "--max-interval",
                "365d",
            ],
            &[],
        );
        serve.advance(t0);
        let before = std::fs::read(dir.join("server/tls/client-admin.crt")).unwrap();
        serve.advance(t0 + days(300));
        let records = decisions(&log);
        let renewed: Vec<_> = records
            .iter()
            .filter(|r| r["role"] == "acted" && r["decision"] == "renew")
            .collect();
        assert!(!renewed.is_empty(), "{plugin}: {records:?}");
        for r in &renewed {
            assert_eq!(r["source"], "failure_mode", "{plugin}: {r}");
            assert_eq!(r["plugin"], plugin, "{r}");
            assert_eq!(r["error"], kind, "{r}");
        }
        assert_ne!(
            std::fs::read(dir.join("server/tls/client-admin.crt")).unwrap(),
            before,
            "{plugin}: renewed through the fallback"
        );
        let err = serve.stderr();
        assert!(
            err.contains("warning (active bundle)")
                && err.contains("could not be loaded")
                && err.contains("the built-in rule decides instead"),
            "{plugin}: {err}"
        );
        let (code, body) = serve.get("/readyz");
        assert_eq!(code, 503, "{plugin}: {body}");
        assert!(
            body.contains(&format!(
                "the renewal plugin '{plugin}' could not be loaded"
            )) && body.contains("'fallback' decides"),
            "{body}"
        );
        let load_failures = |serve: &Serve, role: &str| {
            let (_, page) = serve.get("/metrics");
            parse_metrics(&page).map(|samples| {
                value(
                    &samples,
                    "rotor_plugin_load_failures_total",
                    &[
                        ("hook", "renewal"),
                        ("plugin", plugin),
                        ("kind", kind),
                        ("role", role),
                    ],
                )
            })
        };
        if let Some(n) = load_failures(&serve, "active") {
            assert_eq!(n, 1.0, "{plugin}");
        }
        if plugin != "hostile-loop" {
            let (code, err) = serve.terminate();
            assert_eq!(code, 0, "{err}");
            continue;
        }

        // Fixed: a whole bundle is switched in and the server is ready.
        std::fs::remove_dir_all(&bundle_dir).unwrap();
        write_bundle(
            &bundle_dir,
            &[HookSpec {
                hook: "renewal",
                plugin: &default_plugin("renewal-window"),
                extra: "",
                settings: "mode = \"window\"\nrenew_before_days = 90",
            }],
        );
        serve.signal("HUP");
        wait_for("the fixed bundle", Duration::from_secs(60), || {
            serve.get("/readyz").0 == 200
        });
        // Broken again: refused and counted as a candidate; the whole bundle keeps deciding,
        // the server stays ready, and nothing says the broken one decides.
        let warnings_before = serve.stderr().matches("warning (active bundle)").count();
        std::fs::remove_dir_all(&bundle_dir).unwrap();
        write_broken(&bundle_dir);
        serve.signal("HUP");
        wait_for("the refusal", Duration::from_secs(60), || {
            serve.stderr().contains("new policy bundle REFUSED")
        });
        assert_eq!(serve.get("/readyz").0, 200);
        assert_eq!(
            serve.stderr().matches("warning (active bundle)").count(),
            warnings_before,
            "{}",
            serve.stderr()
        );
        if let Some(n) = load_failures(&serve, "candidate") {
            assert_eq!(n, 1.0);
            assert_eq!(load_failures(&serve, "active"), Some(1.0));
        }
        let (code, err) = serve.terminate();
        assert_eq!(code, 0, "{err}");
    }
}
