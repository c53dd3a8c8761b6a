//! State safety: one writer per data dir, all-or-nothing changes, recovery after any crash.
//!
//! These tests run the rotor binary that ships (`ROTOR_TEST_BIN`, set by `make test` to the
//! release build; the test profile's binary otherwise) and stop it for real: SIGKILL at every
//! step that changes the file system (counted by `ROTOR_FAILPOINT=kill@N`) and at random
//! moments, write errors (a full tmpfs as root, `chattr +i`, injected ENOSPC), and two writers
//! at once. After each, the next normal command must succeed and the data dir must hold:
//! every key beside the certificate it matches, every leaf verifying against the CA the
//! datastore holds, exactly one bootstrap record that the token file's token opens, no
//! temporary file, no partial generation, no journal.
//!
//! What these cannot show: a process killed by a signal leaves the kernel's page cache intact,
//! so they test the order of renames and the recovery logic, not that every fsync is in place
//! (a power cut would; the fsyncs are reviewed by reading `fs::Durable`, `Root::write_atomic`,
//! `Root::create_dir_all` and `DataDir::stage`/`switch`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rotor::cluster::{ClusterConfig, Layout, Storage};
use rotor::datastore::{Bootstrap, BootstrapData, Datastore, DirectoryDatastore};
use rotor::pki::{PrivateKey, Purpose, Token};
use time::OffsetDateTime;

use crate::common::*;

fn command(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(rotor_bin());
    c.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("ROTOR_PLUGIN_CACHE", shared_cache())
        .env_remove("ROTOR_BUNDLE")
        .env_remove("ROTOR_FAILPOINT")
        .env_remove("ROTOR_FAILPOINT_TRACE")
        .current_dir(repo_root());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    command(dir, args, env).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args, &[]);
    assert!(o.status.success(), "rotor {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn killed(o: &Output) -> bool {
    std::os::unix::process::ExitStatusExt::signal(&o.status) == Some(9)
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn at(days_after_t0: i64) -> String {
    rfc3339(t0() + days(days_after_t0))
}

/// A k3s data dir initialized at t0 (the k3s datastore format: its key derivation is cheap,
/// which keeps hundreds of runs fast; rotor-v1 differs only in the envelope).
fn k3s_template(base: &Path) -> PathBuf {
    let dir = base.join("template");
    ok(
        &dir,
        &[
            "init",
            "--node-name",
            "server-1",
            "--node-ip",
            "127.0.0.1",
            "--datastore-format",
            "k3s",
            "--now",
            &at(0),
        ],
    );
    dir
}

fn token_of(dir: &Path, layout: &Layout) -> Token {
    Token::parse(
        std::fs::read_to_string(dir.join(&layout.token_file))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

fn layout_of(dir: &Path) -> Layout {
    let config: ClusterConfig =
        serde_json::from_slice(&std::fs::read(dir.join("rotor.json")).unwrap()).unwrap();
    Layout::for_config(&config)
}

/// The bootstrap record, opened with the token file's token; every key of the datastore.
fn datastore(dir: &Path, layout: &Layout) -> (Vec<String>, Result<BootstrapData, String>) {
    let store = DirectoryDatastore::open(&dir.join(&layout.datastore_dir)).unwrap();
    let snapshot = store.snapshot("/bootstrap/").unwrap();
    let keys: Vec<String> = snapshot.entries.keys().cloned().collect();
    let token = token_of(dir, layout);
    let data = Bootstrap::new(&store, &snapshot, &token.password)
        .load()
        .map_err(|e| e.to_string())
        .and_then(|d| d.ok_or_else(|| "no bootstrap data".to_string()));
    (keys, data)
}

fn certs(pem: &[u8]) -> Vec<Vec<u8>> {
    rotor::facts::read_pem_blocks("t", pem)
        .unwrap()
        .into_iter()
        .filter(|b| b.kind == rotor::facts::PemKind::Certificate)
        .map(|b| b.der)
        .collect()
}

/// Every invariant of a data dir at rest; `Err` says which one broke.
fn verify(dir: &Path, now: OffsetDateTime) -> Result<(), String> {
    let layout = layout_of(dir);
    // One record, opened by the token file's token.
    let (keys, data) = datastore(dir, &layout);
    if keys.len() != 1 {
        return Err(format!("datastore keys: {keys:?} (exactly one expected)"));
    }
    let data = data.map_err(|e| format!("the token file's token: {e}"))?;
    // The CA files are the datastore's, each key its certificate's.
    for ca in &layout.cas {
        let stored = &data.get(ca.cert_field).ok_or("CA missing")?.content;
        let disk =
            std::fs::read(dir.join(&ca.cert)).map_err(|e| format!("{}: {e}", ca.cert.display()))?;
        if &disk != stored {
            return Err(format!("{}: not the datastore's CA", ca.cert.display()));
        }
        let key = PrivateKey::from_pem("k", &std::fs::read(dir.join(&ca.key)).unwrap())
            .map_err(|e| e.to_string())?;
        if !key.matches_certificate(&certs(&disk)[0]) {
            return Err(format!("{}: key does not match", ca.key.display()));
        }
    }
    // Every leaf: its key matches, it verifies against its CA as the datastore holds it.
    for leaf in &layout.leaves {
        let (cert_pem, key_pem) = match &leaf.storage {
            Storage::Files { cert, key, .. } => (
                std::fs::read(dir.join(cert)).map_err(|e| format!("{}: {e}", cert.display()))?,
                std::fs::read(dir.join(key)).map_err(|e| format!("{}: {e}", key.display()))?,
            ),
            Storage::Kubeconfig { file, .. } => {
                let e = rotor::cluster::read_kubeconfig_credential(
                    "kubeconfig",
                    &std::fs::read(dir.join(file)).unwrap(),
                )
                .map_err(|e| e.to_string())?;
                (e.cert_pem, e.key_pem.ok_or("kubeconfig without a key")?)
            }
        };
        let der = certs(&cert_pem).remove(0);
        let key = PrivateKey::from_pem("k", &key_pem).map_err(|e| e.to_string())?;
        if !key.matches_certificate(&der) {
            return Err(format!(
                "{}: the key does not match the certificate",
                leaf.name
            ));
        }
        let ca = layout.ca(leaf.ca).unwrap();
        let bundle = certs(&data.get(ca.cert_field).unwrap().content);
        let server = !matches!(leaf.purpose, Purpose::Client);
        webpki_verify_der(&der, &bundle, server, now).map_err(|e| {
            format!(
                "{}: does not verify against the datastore's {}: {e}",
                leaf.name, leaf.ca
            )
        })?;
    }
    // The service-account keys on disk are the datastore's.
    let sk = &layout.service_key;
    if let Some(all) = &sk.all_keys {
        let disk = std::fs::read(dir.join(all)).unwrap();
        if disk != data.get(sk.field).unwrap().content {
            return Err("service.key is not the datastore's".into());
        }
    }
    debris(dir)
}

/// Nothing a writer leaves while working: temporary files, partial generations, a journal,
/// unused datastore revisions, more backups than kept.
fn debris(dir: &Path) -> Result<(), String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".rotor-tmp-") || name.ends_with(".partial") {
                found.push(e.path());
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    if dir.join(".rotor/journal.json").exists() {
        found.push(dir.join(".rotor/journal.json"));
    }
    let gens = std::fs::read_dir(dir.join(".rotor/generations"))
        .unwrap()
        .count();
    if gens > 6 {
        found.push(format!("{gens} generations").into());
    }
    for db in ["server/db/.kv", "datastore/.kv"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(db)) {
            let n = rd.count();
            if n != 2 {
                found.push(format!("{db}: {n} entries (the live revision and 'current')").into());
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!("debris: {found:?}"))
    }
}

/// The certificates of every leaf, by name (what "old" and "new" are told apart by).
fn leaf_certs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let layout = layout_of(dir);
    layout
        .leaves
        .iter()
        .map(|l| {
            let bytes = std::fs::read(dir.join(l.storage.cert_path())).unwrap_or_default();
            (l.name.clone(), bytes)
        })
        .collect()
}

/// Old (`false`) or new (`true`), judged on a data dir; `Err` when the change is neither.
type Classify = Box<dyn Fn(&Path) -> Result<bool, String>>;

/// One command to stop at every step.
struct Scenario {
    name: &'static str,
    args: Vec<String>,
    /// What the next normal run is (after recovery).
    next: Vec<String>,
    /// The instant leaves must verify at.
    verify_at: OffsetDateTime,
    /// Old or new, judged after recovery and before the next run; `Err` when the change is
    /// neither (half made).
    classify: Classify,
}

/// Count the steps of a scenario on a copy of the template (and time it).
fn count_steps(template: &Path, work: &Path, s: &Scenario) -> (u64, Duration) {
    copy_tree(template, work);
    let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let o = run(work, &args, &[("ROTOR_FAILPOINT_TRACE", "1".into())]);
    let took = started.elapsed();
    assert!(o.status.success(), "{}: {}", s.name, text(&o));
    let steps = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.starts_with("rotor: step "))
        .count() as u64;
    std::fs::remove_dir_all(work).unwrap();
    (steps, took)
}

#[derive(Default, Debug)]
struct Outcomes {
    old: usize,
    new: usize,
    rolled_forward: usize,
    rolled_back: usize,
}

/// After a stop: recover (a reader is enough), judge old or new, run the next command, check
/// every invariant.
fn after_stop(work: &Path, s: &Scenario, what: &str, tally: &mut Outcomes) {
    let o = run(
        work,
        &["certificate", "check", "--now", &rfc3339(s.verify_at)],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let not_initialized = err.contains("not initialized");
    let code = o.status.code();
    assert!(
        matches!(code, Some(0 | 1)) || (s.name == "init" && not_initialized && code == Some(2)),
        "{}: {what}: the first command after the stop failed: {}",
        s.name,
        text(&o)
    );
    if err.contains("rolled forward") {
        tally.rolled_forward += 1;
    }
    if err.contains("rolled back") {
        tally.rolled_back += 1;
    }
    if err.contains("recovered") {
        assert_eq!(
            err.matches("rotor: recovered").count(),
            1,
            "one line says which: {err}"
        );
    }
    let is_new = match (s.classify)(work) {
        Ok(n) => n,
        Err(e) => panic!("{}: {what}: half made: {e}", s.name),
    };
    if is_new {
        tally.new += 1;
    } else {
        tally.old += 1;
    }
    let next: Vec<&str> = if s.name == "init" && !is_new {
        s.args.iter().map(String::as_str).collect()
    } else {
        s.next.iter().map(String::as_str).collect()
    };
    let o = run(work, &next, &[]);
    assert!(
        o.status.success(),
        "{}: {what}: the next run {next:?} failed: {}",
        s.name,
        text(&o)
    );
    if s.name == "init" && !is_new {
        // A rolled-back init is restartable from scratch: it generates, never adopts.
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("generated CAs:") && !out.contains("adopted"),
            "{out}"
        );
    }
    if let Err(e) = verify(work, s.verify_at) {
        panic!("{}: {what}: {e}\n{}", s.name, text(&o));
    }
}

/// Stop `s` at every step and at random moments.
fn kill_everywhere(template: &Path, base: &Path, s: &Scenario, random_kills: usize) {
    let work = base.join(format!("work-{}", s.name.replace(' ', "-")));
    let (steps, took) = count_steps(template, &work, s);
    assert!(steps > 3, "{}: only {steps} steps counted", s.name);
    let mut tally = Outcomes::default();
    let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
    for k in 1..=steps {
        copy_tree(template, &work);
        let o = run(&work, &args, &[("ROTOR_FAILPOINT", format!("kill@{k}"))]);
        assert!(
            killed(&o),
            "{}: step {k} of {steps}: not killed: {}",
            s.name,
            text(&o)
        );
        after_stop(&work, s, &format!("killed at step {k}/{steps}"), &mut tally);
        std::fs::remove_dir_all(&work).unwrap();
    }
    // Random moments within a normal run's duration: wherever the process happens to be.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut rng = seed | 1;
    for i in 0..random_kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = took.mul_f64((rng % 1000) as f64 / 1000.0);
        copy_tree(template, &work);
        let mut child = command(&work, &args, &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        after_stop(
            &work,
            s,
            &format!("killed after {delay:?} (seed {seed}, #{i})"),
            &mut tally,
        );
        std::fs::remove_dir_all(&work).unwrap();
    }
    println!(
        "{}: {steps} steps + {random_kills} random kills: {} old, {} new ({} rolled forward, {} rolled back by the next command)",
        s.name, tally.old, tally.new, tally.rolled_forward, tally.rolled_back
    );
    assert!(tally.old > 0 && tally.new > 0, "{}: {tally:?}", s.name);
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Leaves all old or all new: the count of changed leaves is 0 or all of them.
fn leaves_all_or_nothing(before: BTreeMap<String, Vec<u8>>) -> Classify {
    Box::new(move |dir: &Path| {
        let now = leaf_certs(dir);
        let changed: Vec<&String> = now
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        match changed.len() {
            0 => Ok(false),
            n if n == before.len() => Ok(true),
            _ => Err(format!("only these leaves changed: {changed:?}")),
        }
    })
}

#[test]
fn init_killed_anywhere_is_restartable() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("empty");
    std::fs::create_dir(&template).unwrap();
    let s = Scenario {
        name: "init",
        args: strings(&[
            "init",
            "--node-name",
            "server-1",
            "--node-ip",
            "127.0.0.1",
            "--datastore-format",
            "k3s",
            "--now",
            &at(0),
        ]),
        next: strings(&["start", "--now", &at(0)]),
        verify_at: t0(),
        classify: Box::new(|dir: &Path| Ok(dir.join(".rotor/current").exists())),
    };
    kill_everywhere(&template, tmp.path(), &s, 6);
}

#[test]
fn start_killed_anywhere_renews_all_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    kill_everywhere(&template, tmp.path(), &start_scenario(&template), 6);
}

#[test]
fn certificate_rotate_killed_anywhere_rotates_all_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    let s = Scenario {
        name: "certificate rotate",
        args: strings(&["certificate", "rotate", "--now", &at(1)]),
        next: strings(&["start", "--now", &at(1)]),
        verify_at: t0() + days(1),
        classify: leaves_all_or_nothing(leaf_certs(&template)),
    };
    kill_everywhere(&template, tmp.path(), &s, 6);
}

/// `rotate-ca --force` of a set staged by `rotate-default-ca` (staged into `base`).
fn rotate_ca_scenario(template: &Path, base: &Path) -> Scenario {
    let staged = base.join("staged");
    if !staged.exists() {
        ok(
            template,
            &[
                "certificate",
                "rotate-default-ca",
                "--out",
                staged.to_str().unwrap(),
                "--now",
                &at(1),
            ],
        );
    }
    let layout = layout_of(template);
    let (_, old) = datastore(template, &layout);
    let old = old.unwrap();
    let new_server_ca = std::fs::read(staged.join("server/tls/server-ca.crt")).unwrap();
    let fields: Vec<&'static str> = layout
        .cas
        .iter()
        .flat_map(|c| [c.cert_field, c.key_field])
        .collect();
    Scenario {
        name: "rotate-ca",
        args: strings(&[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
            "--now",
            &at(1),
        ]),
        next: strings(&["start", "--now", &at(1)]),
        verify_at: t0() + days(1),
        classify: Box::new(move |dir: &Path| {
            let layout = layout_of(dir);
            let (_, data) = datastore(dir, &layout);
            let data = data?;
            let is_new = data.get("ServerCA").unwrap().content == new_server_ca;
            for f in &fields {
                let same = data.get(f).unwrap().content == old.get(f).unwrap().content;
                if same == is_new {
                    return Err(format!(
                        "{f} is not {} like ServerCA",
                        if is_new { "new" } else { "old" }
                    ));
                }
            }
            Ok(is_new)
        }),
    }
}

fn token_rotate_scenario() -> Scenario {
    Scenario {
        name: "token rotate",
        args: strings(&["token", "rotate", "--new-token", "the-next-password"]),
        next: strings(&["start", "--now", &at(1)]),
        verify_at: t0() + days(1),
        classify: Box::new(|dir: &Path| {
            let layout = layout_of(dir);
            let token = token_of(dir, &layout);
            let (keys, data) = datastore(dir, &layout);
            data.map_err(|e| format!("the token file does not open the record: {e} ({keys:?})"))?;
            if keys.len() != 1 {
                return Err(format!("records: {keys:?}"));
            }
            Ok(token.password == "the-next-password")
        }),
    }
}

fn rotate_service_key_scenario(template: &Path) -> Scenario {
    let layout = layout_of(template);
    let (_, old) = datastore(template, &layout);
    let old_keys = old.unwrap().get("ServiceKey").unwrap().content.clone();
    Scenario {
        name: "rotate-service-key",
        args: strings(&["certificate", "rotate-service-key", "--now", &at(1)]),
        next: strings(&["start", "--now", &at(1)]),
        verify_at: t0() + days(1),
        classify: Box::new(move |dir: &Path| {
            let layout = layout_of(dir);
            let (_, data) = datastore(dir, &layout);
            let now = data?.get("ServiceKey").unwrap().content.clone();
            let keys = PrivateKey::all_from_pem("k", &now).map_err(|e| e.to_string())?;
            match (now == old_keys, keys.len()) {
                (true, 1) => Ok(false),
                (false, 2) => Ok(true),
                (_, n) => Err(format!("{n} service-account keys")),
            }
        }),
    }
}

fn start_scenario(template: &Path) -> Scenario {
    Scenario {
        name: "start",
        args: strings(&["start", "--now", &at(300)]),
        next: strings(&["start", "--now", &at(300)]),
        verify_at: t0() + days(300),
        classify: leaves_all_or_nothing(leaf_certs(template)),
    }
}

#[test]
fn rotate_ca_killed_anywhere_swaps_all_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    let s = rotate_ca_scenario(&template, tmp.path());
    kill_everywhere(&template, tmp.path(), &s, 6);
}

#[test]
fn token_rotate_killed_anywhere_keeps_token_file_and_record_together() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    kill_everywhere(&template, tmp.path(), &token_rotate_scenario(), 6);
}

#[test]
fn rotate_service_key_killed_anywhere_is_all_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    let s = rotate_service_key_scenario(&template);
    kill_everywhere(&template, tmp.path(), &s, 6);
}

fn both_succeeded(a: &Output, b: &Output) {
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        text(a),
        text(b)
    );
}

/// After a pair: the next start succeeds and every invariant holds.
fn settled(dir: &Path) {
    ok(dir, &["start", "--now", &at(1)]);
    verify(dir, t0() + days(1)).unwrap();
}

/// Two commands at once, `rounds` times, each from a fresh copy of the template.
fn pair(
    template: &Path,
    base: &Path,
    name: &str,
    a: &[&str],
    b: &[&str],
    rounds: usize,
    check: &dyn Fn(&Path, &Output, &Output),
) {
    for round in 0..rounds {
        let work = base.join(format!("pair-{}-{round}", name.replace(' ', "-")));
        copy_tree(template, &work);
        let ca = command(&work, a, &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let cb = command(&work, b, &[])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let oa = ca.wait_with_output().unwrap();
        let ob = cb.wait_with_output().unwrap();
        check(&work, &oa, &ob);
        std::fs::remove_dir_all(&work).unwrap();
    }
}

#[test]
fn concurrent_writers_take_turns() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    let later = at(300);
    let rounds = 4;

    // start ∥ start: one renews everything, the other finds nothing to do.
    pair(
        &template,
        tmp.path(),
        "start",
        &["start", "--now", &later],
        &["start", "--now", &later],
        rounds,
        &|dir, a, b| {
            both_succeeded(a, b);
            let outs = [
                String::from_utf8_lossy(&a.stdout),
                String::from_utf8_lossy(&b.stdout),
            ];
            assert_eq!(
                outs.iter()
                    .filter(|o| o.contains("renewed 17 certificate(s)"))
                    .count(),
                1,
                "{outs:?}"
            );
            assert_eq!(
                outs.iter().filter(|o| o.contains("nothing to do")).count(),
                1,
                "{outs:?}"
            );
            verify(dir, t0() + days(300)).unwrap();
        },
    );

    // token rotate ∥ token rotate: both succeed in turn; the record is under the last token.
    pair(
        &template,
        tmp.path(),
        "token",
        &["token", "rotate", "--new-token", "password-a"],
        &["token", "rotate", "--new-token", "password-b"],
        rounds,
        &|dir, a, b| {
            both_succeeded(a, b);
            let layout = layout_of(dir);
            let token = token_of(dir, &layout);
            assert!(["password-a", "password-b"].contains(&token.password.as_str()));
            let (keys, data) = datastore(dir, &layout);
            assert_eq!(keys.len(), 1, "{keys:?}");
            data.unwrap();
            settled(dir);
        },
    );

    // rotate-ca ∥ token rotate: the CA rotation is never lost.
    let rotate_ca = rotate_ca_scenario(&template, tmp.path());
    let rotate_ca: Vec<&str> = rotate_ca.args.iter().map(String::as_str).collect();
    let new_server_ca = std::fs::read(tmp.path().join("staged/server/tls/server-ca.crt")).unwrap();
    pair(
        &template,
        tmp.path(),
        "rotate-ca-token",
        &rotate_ca,
        &["token", "rotate", "--new-token", "password-c"],
        rounds,
        &|dir, a, b| {
            both_succeeded(a, b);
            let layout = layout_of(dir);
            let (keys, data) = datastore(dir, &layout);
            assert_eq!(keys.len(), 1, "{keys:?}");
            assert_eq!(
                data.unwrap().get("ServerCA").unwrap().content,
                new_server_ca,
                "the CA rotation was lost"
            );
            assert_eq!(token_of(dir, &layout).password, "password-c");
            settled(dir);
        },
    );

    // start ∥ rotate-service-key: both land, in one order or the other.
    pair(
        &template,
        tmp.path(),
        "start-sk",
        &["start", "--now", &at(1)],
        &["certificate", "rotate-service-key", "--now", &at(1)],
        rounds,
        &|dir, a, b| {
            both_succeeded(a, b);
            let layout = layout_of(dir);
            let (_, data) = datastore(dir, &layout);
            let keys =
                PrivateKey::all_from_pem("k", &data.unwrap().get("ServiceKey").unwrap().content)
                    .unwrap();
            assert_eq!(keys.len(), 2);
            settled(dir);
        },
    );

    // init ∥ init: one initializes, the other refuses; one record, one token.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let init = [
        "init",
        "--node-name",
        "server-1",
        "--node-ip",
        "127.0.0.1",
        "--datastore-format",
        "k3s",
        "--now",
        &at(0),
    ];
    pair(
        &empty,
        tmp.path(),
        "init",
        &init,
        &init,
        rounds,
        &|dir, a, b| {
            let codes = [a.status.code(), b.status.code()];
            assert!(
                codes.contains(&Some(0)) && codes.contains(&Some(2)),
                "{}\n{}",
                text(a),
                text(b)
            );
            let loser = if a.status.success() { b } else { a };
            assert!(
                String::from_utf8_lossy(&loser.stderr).contains("already initialized"),
                "{}",
                text(loser)
            );
            verify(dir, t0()).unwrap();
        },
    );
}

#[test]
fn a_second_writer_gives_up_after_the_lock_timeout_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    // Hold the lock the way a writer does: flock on .rotor/lock, from another process.
    if !require_command("flock") {
        return;
    }
    let mut holder = Command::new("flock")
        .arg("--exclusive")
        .arg(template.join(".rotor/lock"))
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) from util-linux");
    std::thread::sleep(Duration::from_millis(300));
    let before = tree(&template);
    let started = Instant::now();
    let o = run(
        &template,
        &["--lock-timeout", "1", "start", "--now", &at(300)],
        &[],
    );
    let waited = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("locked by pid") && err.contains("flock"),
        "{err}"
    );
    assert!(err.contains("gave up after 1 s"), "{err}");
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert_eq!(tree(&template), before);
    // Readers wait for writers too.
    let mut holder = Command::new("flock")
        .arg("--exclusive")
        .arg(template.join(".rotor/lock"))
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = run(
        &template,
        &["--lock-timeout", "1", "certificate", "check"],
        &[],
    );
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Free again: it works.
    ok(&template, &["start", "--now", &at(1)]);
}

/// A write error in the middle of `start`: the live set stays entirely old, the command fails,
/// nothing partial stays behind, and the next run (once the cause is gone) succeeds.
fn assert_failed_cleanly(dir: &Path, o: &Output, before: &Tree, why: &str) {
    assert_eq!(o.status.code(), Some(2), "{why}: {}", text(o));
    let now = tree(dir);
    let visible = |t: &Tree| -> Tree {
        t.iter()
            .filter(|(k, _)| !k.starts_with(".rotor"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(
        visible(&now),
        visible(before),
        "{why}: the live set changed"
    );
    debris(dir).unwrap_or_else(|e| panic!("{why}: {e}"));
}

/// ENOSPC injected at every step of `s`, one run each: the change is entirely old (then the
/// command failed, the live set and the datastore are as they were, nothing partial stays) or
/// entirely new; the next run succeeds and every invariant holds.
fn error_everywhere(template: &Path, base: &Path, s: &Scenario) {
    let work = base.join(format!("errors-{}", s.name.replace(' ', "-")));
    let (steps, _) = count_steps(template, &work, s);
    let args: Vec<&str> = s.args.iter().map(String::as_str).collect();
    let next: Vec<&str> = s.next.iter().map(String::as_str).collect();
    let mut failed_old = 0;
    for k in 1..=steps {
        copy_tree(template, &work);
        let before = tree(&work);
        let o = run(&work, &args, &[("ROTOR_FAILPOINT", format!("error@{k}"))]);
        let why = format!("{}: ENOSPC at step {k}", s.name);
        if work.join(".rotor/journal.json").exists() {
            // Failed after the datastore took the change: the command says the next command
            // finishes it (a reader is enough).
            assert_eq!(o.status.code(), Some(2), "{why}: {}", text(&o));
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("finishes it"),
                "{why}: {}",
                text(&o)
            );
            let r = run(
                &work,
                &["certificate", "check", "--now", &rfc3339(s.verify_at)],
                &[],
            );
            assert!(
                matches!(r.status.code(), Some(0 | 1)),
                "{why}: {}",
                text(&r)
            );
            assert!(
                String::from_utf8_lossy(&r.stderr).contains("rolled forward"),
                "{why}: {}",
                text(&r)
            );
        }
        let is_new = (s.classify)(&work).unwrap_or_else(|e| panic!("{why}: half made: {e}"));
        if !is_new {
            assert_failed_cleanly(&work, &o, &before, &why);
            failed_old += 1;
        }
        let again = run(&work, &next, &[]);
        assert!(
            again.status.success(),
            "{}: after ENOSPC at step {k}: {}",
            s.name,
            text(&again)
        );
        verify(&work, s.verify_at)
            .unwrap_or_else(|e| panic!("{}: ENOSPC at step {k}: {e}", s.name));
        std::fs::remove_dir_all(&work).unwrap();
    }
    println!(
        "{}: ENOSPC injected at each of {steps} steps: {failed_old} failed with everything old, {} made the change",
        s.name,
        steps as usize - failed_old
    );
    assert!(
        failed_old > 0 && failed_old < steps as usize,
        "{}: {failed_old} of {steps}",
        s.name
    );
}

#[test]
fn write_errors_in_datastore_changes_leave_all_old_or_all_new() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    error_everywhere(&template, tmp.path(), &token_rotate_scenario());
    error_everywhere(
        &template,
        tmp.path(),
        &rotate_service_key_scenario(&template),
    );
    let s = rotate_ca_scenario(&template, tmp.path());
    error_everywhere(&template, tmp.path(), &s);
}

#[test]
fn write_errors_in_the_middle_of_start_leave_the_live_set_old() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    let later = at(300);
    let start = ["start", "--now", later.as_str()];
    error_everywhere(&template, tmp.path(), &start_scenario(&template));

    if !require(
        "root (a real full disk on a tmpfs, chattr +i)",
        rustix::process::geteuid().is_root(),
    ) {
        return;
    }

    // A real full disk: a tmpfs just too small for the next generation.
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = |opts: &str| {
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success())
    };
    if require("mount -t tmpfs", mount("size=16m,mode=0700")) {
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.0).status();
            }
        }
        let _guard = Unmount(mnt.clone());
        let dir = mnt.join("data");
        copy_tree(&template, &dir);
        let used = {
            let st = rustix::fs::statvfs(&mnt).unwrap();
            (st.f_blocks - st.f_bfree) * st.f_frsize
        };
        // Room for about half a generation more.
        let remount = |bytes: u64| {
            Command::new("mount")
                .args(["-o", &format!("remount,size={}k", bytes.div_ceil(1024))])
                .arg(&mnt)
                .status()
                .unwrap()
                .success()
        };
        assert!(remount(used + 100 * 1024));
        let before = tree(&dir);
        let o = run(&dir, &start, &[]);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("No space left"),
            "{}",
            text(&o)
        );
        assert_failed_cleanly(&dir, &o, &before, "a full tmpfs");
        assert!(remount(16 * 1024 * 1024));
        ok(&dir, &start);
        verify(&dir, t0() + days(300)).unwrap();
    }

    // chattr +i: on a live certificate it no longer matters (nothing is written in place); on
    // .rotor the journal cannot be written, and the change is refused whole.
    let dir = tmp.path().join("immutable");
    copy_tree(&template, &dir);
    let live_crt =
        std::fs::canonicalize(dir.join("server/tls/serving-kube-apiserver.crt")).unwrap();
    let chattr = |flag: &str, p: &Path| {
        Command::new("chattr")
            .arg(flag)
            .arg(p)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !require(
        "chattr +i (e2fsprogs, on a file system that supports it)",
        chattr("+i", &live_crt),
    ) {
        return;
    }
    let meta = dir.join(".rotor");
    let o = run(
        &dir,
        &["--backup-keep", "0", "start", "--now", &at(300)],
        &[],
    );
    // The backup was renamed out of the generations before its removal stopped at the
    // immutable file: that file is now under `.N.pruned`.
    let gens = meta.join("generations");
    let pruned: Vec<PathBuf> = std::fs::read_dir(&gens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".pruned"))
        .collect();
    let stuck = pruned
        .first()
        .map(|p| p.join("server/tls/serving-kube-apiserver.crt"));
    if !stuck.as_ref().is_some_and(|p| p.exists()) {
        chattr("-i", &live_crt);
    }
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("could not remove the old backup"),
        "{}",
        text(&o)
    );
    let stuck = stuck.unwrap_or_else(|| panic!("no .N.pruned left in {}", gens.display()));
    verify(&dir, t0() + days(300)).unwrap();

    // The next command finishes that prune where it can, and where it cannot (the file is
    // still immutable) says so and goes on: a leftover backup never stops a command.
    let o = run(&dir, &["start", "--now", &at(300)], &[]);
    let said = String::from_utf8_lossy(&o.stderr).contains("could not remove the old backup");
    let still_there = pruned[0].exists();
    chattr("-i", &stuck);
    assert!(o.status.success(), "{}", text(&o));
    assert!(said && still_there, "{}", text(&o));
    ok(&dir, &["start", "--now", &at(300)]);
    assert!(
        !pruned[0].exists(),
        "{} was not removed",
        pruned[0].display()
    );

    assert!(chattr("+i", &meta));
    let before = tree(&dir);
    let o = run(&dir, &["start", "--now", &at(700)], &[]);
    chattr("-i", &meta);
    assert_failed_cleanly(&dir, &o, &before, "chattr +i .rotor");
    ok(&dir, &["start", "--now", &at(700)]);
    verify(&dir, t0() + days(700)).unwrap();
}

#[test]
fn shared_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap()
    };
    for (rel, mode) in [
        (".", 0o777),
        ("server", 0o770),
        ("agent", 0o702),
        ("server/tls", 0o720),
    ] {
        let dir = tmp.path().join("shared");
        copy_tree(&template, &dir);
        let target = std::fs::canonicalize(dir.join(rel)).unwrap();
        set(&target, mode);
        let before = tree(&dir);
        for args in [
            vec!["start", "--now", "2027-01-01T00:00:00Z"],
            vec!["certificate", "check"],
        ] {
            let o = run(&dir, &args, &[]);
            assert_eq!(o.status.code(), Some(2), "{rel} {mode:o}: {}", text(&o));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("writable by") && err.contains("chmod go-w"),
                "{err}"
            );
            assert!(
                err.contains(&target.display().to_string()),
                "names {}: {err}",
                target.display()
            );
        }
        assert_eq!(tree(&dir), before);
        set(&target, 0o700);
        ok(&dir, &["certificate", "check", "--now", &at(1)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // init too, on a world-writable data dir.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    set(&open, 0o777);
    let o = run(
        &open,
        &["init", "--node-name", "a", "--datastore-format", "k3s"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
}

#[test]
fn a_token_that_does_not_open_the_record_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = k3s_template(tmp.path());
    let layout = layout_of(&dir);
    let first = token_of(&dir, &layout);
    ok(
        &dir,
        &["token", "rotate", "--new-token", "the-new-password"],
    );
    // An explicit old token: the token file's opens it.
    let o = run(&dir, &["start", "--token", &first.render()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("token does not decrypt the bootstrap data"),
        "{err}"
    );
    assert!(err.contains("leave out --token"), "{err}");
    // One more change, then the live token file edited back to the old token by hand: the
    // backup generation that holds the right one is named, with the command to restore it.
    ok(&dir, &["start", "--now", &at(300)]);
    std::fs::write(
        dir.join(&layout.token_file),
        format!("{}\n", first.render()),
    )
    .unwrap();
    let o = run(&dir, &["start", "--now", &at(300)], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let cp = err
        .split("Restore it with 'cp ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("{err}"));
    let (from, to) = cp.split_once(' ').unwrap();
    assert!(from.contains(".rotor/generations/"), "{err}");
    std::fs::copy(from, to).unwrap();
    ok(&dir, &["start", "--now", &at(300)]);
}

#[test]
fn a_bit_flipped_plugin_cache_is_recompiled_not_run() {
    let cache = tempfile::tempdir().unwrap();
    let run_check = || {
        Command::new(rotor_bin())
            .args(["policy", "check"])
            .env("ROTOR_PLUGIN_CACHE", cache.path())
            .env_remove("ROTOR_BUNDLE")
            .current_dir(repo_root())
            .output()
            .unwrap()
    };
    let o = run_check();
    assert!(o.status.success(), "{}", text(&o));
    let artifacts: Vec<PathBuf> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    // Each default plugin compiled, and each one's settings snapshot (0.2) compiled.
    assert_eq!(artifacts.len(), 6, "{artifacts:?}");
    assert_eq!(
        artifacts
            .iter()
            .filter(|p| p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snapshot-"))
            .count(),
        3,
        "{artifacts:?}"
    );
    for (i, a) in artifacts.iter().enumerate() {
        let mut bytes = std::fs::read(a).unwrap();
        let at = bytes.len() * (i + 1) / (artifacts.len() + 1);
        bytes[at] ^= 0x10;
        std::fs::write(a, &bytes).unwrap();
    }
    let o = run_check();
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("recompiling it from the pinned plugin").count(),
        6,
        "{err}"
    );
    let o = run_check();
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("recompiling"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_closed_standard_output_never_panics_and_never_stops_a_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = k3s_template(tmp.path());
    let before = leaf_certs(&dir);
    // `rotor start | head -0`: the reader is gone before rotor prints its first line.
    let mut child = command(&dir, &["start", "--now", &at(300)], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!err.contains("panicked"), "{err}");
    // The change was made all the same.
    assert!(leaves_all_or_nothing(before)(&dir).unwrap());
    verify(&dir, t0() + days(300)).unwrap();
}

/// Every file of each numbered generation (the backups and the live one): path -> bytes.
fn generation_files(dir: &Path) -> BTreeMap<u64, BTreeMap<PathBuf, Vec<u8>>> {
    let gens = dir.join(".rotor/generations");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&gens).unwrap() {
        let e = e.unwrap();
        let Ok(n) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let mut files = BTreeMap::new();
        let mut stack = vec![e.path()];
        while let Some(d) = stack.pop() {
            for f in std::fs::read_dir(&d).unwrap() {
                let f = f.unwrap();
                if f.file_type().unwrap().is_dir() {
                    stack.push(f.path());
                } else {
                    let rel = f.path().strip_prefix(e.path()).unwrap().to_path_buf();
                    files.insert(rel, std::fs::read(f.path()).unwrap_or_default());
                }
            }
        }
        out.insert(n, files);
    }
    out
}

/// A kill at any step of pruning old generations (a rotate with `--backup-keep 1` over four
/// backups) never leaves a half-deleted backup under a generation's name: every numbered
/// generation left is whole, byte for byte; what was being removed is `.N.pruned`, which the
/// next writer removes.
#[test]
fn a_kill_while_pruning_never_leaves_a_half_deleted_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let template = k3s_template(tmp.path());
    for day in 1..=4 {
        ok(&template, &["certificate", "rotate", "--now", &at(day)]);
    }
    let before = generation_files(&template);
    assert!(before.len() >= 5, "{:?}", before.keys());
    let args = [
        "--backup-keep",
        "1",
        "certificate",
        "rotate",
        "--now",
        &at(5),
    ];
    // The steps of the prune: every step after the journal is removed (the change is live).
    let work = tmp.path().join("work");
    copy_tree(&template, &work);
    let o = run(&work, &args, &[("ROTOR_FAILPOINT_TRACE", "1".into())]);
    assert!(o.status.success(), "{}", text(&o));
    let trace = String::from_utf8_lossy(&o.stderr).into_owned();
    let traced: Vec<(u64, &str)> = trace
        .lines()
        .filter_map(|l| l.strip_prefix("rotor: step "))
        .filter_map(|l| {
            let (n, what) = l.split_once(": ")?;
            Some((n.parse().ok()?, what))
        })
        .collect();
    let journal_gone = traced
        .iter()
        .rposition(|(_, what)| what.contains("journal.json"))
        .unwrap_or_else(|| panic!("no journal step in the trace:\n{trace}"));
    let steps: Vec<u64> = traced[journal_gone + 1..]
        .iter()
        .filter(|(_, what)| what.contains("generations"))
        .map(|(n, _)| *n)
        .collect();
    assert!(
        traced[journal_gone + 1..]
            .iter()
            .any(|(_, what)| what.contains(".pruned")),
        "the prune renames each backup out first:\n{trace}"
    );
    assert!(
        steps.len() > 20,
        "the prune's steps were not found in the trace:\n{trace}"
    );
    std::fs::remove_dir_all(&work).unwrap();
    // Bounded: the prune's first steps, every step of one backup's removal, and its last steps.
    let mut chosen: Vec<u64> = steps.iter().copied().take(40).collect();
    chosen.extend(steps.iter().rev().take(10).copied());
    chosen.sort_unstable();
    chosen.dedup();
    for k in chosen {
        copy_tree(&template, &work);
        let o = run(&work, &args, &[("ROTOR_FAILPOINT", format!("kill@{k}"))]);
        assert!(killed(&o), "step {k}: not killed: {}", text(&o));
        // Every numbered generation left is one of the originals, whole, or the new one.
        for (n, files) in generation_files(&work) {
            if let Some(original) = before.get(&n) {
                assert!(
                    files == *original,
                    "step {k}: generation {n} is not whole: {} of {} files",
                    files.len(),
                    original.len()
                );
            }
        }
        // The change itself is live: the new generation, whole.
        assert!(generation_files(&work).contains_key(&6), "step {k}");
        // The next writer discards what was being removed; a later change prunes the rest.
        ok(&work, &["--backup-keep", "1", "start", "--now", &at(5)]);
        let names = |work: &Path| -> Vec<String> {
            std::fs::read_dir(work.join(".rotor/generations"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert!(
            names(&work).iter().all(|n| n.parse::<u64>().is_ok()),
            "step {k}: debris left: {:?}",
            names(&work)
        );
        verify(&work, t0() + days(5)).unwrap_or_else(|e| panic!("step {k}: {e}"));
        ok(
            &work,
            &[
                "--backup-keep",
                "1",
                "certificate",
                "rotate",
                "--now",
                &at(6),
            ],
        );
        assert_eq!(
            names(&work).len(),
            2,
            "step {k}: the live generation and one backup: {:?}",
            names(&work)
        );
        std::fs::remove_dir_all(&work).unwrap();
    }
}
