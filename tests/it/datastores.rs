//! The scenario suite of a datastore several servers share, run on etcd (etcd.rs) and on the
//! real kine over SQLite, PostgreSQL and MariaDB (here): joins share the CAs, a CA rotation on
//! one server reaches the others, two servers racing for one change give one winner, the store
//! or the database under it dying mid-command leaves all-old or all-new, a command killed
//! between its two datastore steps is finished by the next one (or undone when another server
//! changed the record meanwhile), and a token rotation locks the old token out everywhere.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rotor::pki::Token;

use crate::common::*;
use crate::kine::{Database, Kine, kine_bin};

/// What a scenario stops: the store's server (etcd, kine), or the database under kine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outage {
    Server,
    Database,
}

/// A datastore that servers share, as the scenarios see it.
pub(crate) trait SharedStore {
    /// The flags that point `rotor init` at it.
    fn flags(&self) -> Vec<String>;
    /// Every key it holds.
    fn keys(&self) -> Vec<String>;
    /// The value of `key`.
    fn value(&self, key: &str) -> Vec<u8>;
    /// The bootstrap records (the init lock's key comes and goes).
    fn records(&self) -> Vec<String> {
        self.keys()
            .into_iter()
            .filter(|k| k.contains("/bootstrap/"))
            .collect()
    }
    /// Kill what `outage` names.
    fn stop(&mut self, outage: Outage);
    /// Start it again and wait until the store serves.
    fn start(&mut self, outage: Outage);
    /// How rotor's messages name the store.
    fn named(&self) -> String;
}

/// kine on one database of a database server, for one scenario.
pub(crate) struct KineStore<'a> {
    kine: Kine,
    database: &'a mut Database,
}

impl SharedStore for KineStore<'_> {
    fn flags(&self) -> Vec<String> {
        vec!["--datastore-endpoint".into(), self.kine.url()]
    }

    fn keys(&self) -> Vec<String> {
        let out = self.kine.ctl(&["get", "/", "--prefix", "-w", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        let key = base64::Engine::decode(
                            &base64::engine::general_purpose::STANDARD,
                            kv["key"].as_str().unwrap(),
                        )
                        .unwrap();
                        String::from_utf8(key).unwrap()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn value(&self, key: &str) -> Vec<u8> {
        let out = self.kine.ctl(&["get", key, "--print-value-only"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut value = out.stdout;
        if value.last() == Some(&b'\n') {
            value.pop();
        }
        value
    }

    fn stop(&mut self, outage: Outage) {
        match outage {
            Outage::Server => self.kine.kill(),
            Outage::Database => self.database.kill(),
        }
    }

    fn start(&mut self, outage: Outage) {
        match outage {
            Outage::Server => self.kine.resume(),
            Outage::Database => {
                self.database.restart();
                // kine reconnects on its own; wait until it serves again.
                let start = Instant::now();
                while !self
                    .kine
                    .ctl(&["get", "/", "--prefix", "--limit", "1"])
                    .status
                    .success()
                {
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "kine did not reconnect"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn named(&self) -> String {
        "etcd http://127.0.0.1:".into()
    }
}

pub(crate) fn args<'a>(fixed: &[&'a str], more: &'a [String]) -> Vec<&'a str> {
    let mut all = fixed.to_vec();
    all.extend(more.iter().map(String::as_str));
    all
}

pub(crate) fn printed_token(out: &str) -> Token {
    Token::parse(out.lines().find(|l| l.starts_with("K10")).unwrap()).unwrap()
}

/// `rotor init` of server `n` (address 127.0.0.n) against `store`, with `extra` flags.
pub(crate) fn init_server(
    dir: &Path,
    n: u8,
    store: &dyn SharedStore,
    extra: &[&str],
) -> (i32, String, String) {
    let name = format!("s{n}");
    let ip = format!("127.0.0.{n}");
    let flags = store.flags();
    let mut all = args(&["init", "--node-name", &name, "--node-ip", &ip], &flags);
    all.extend_from_slice(extra);
    rotor_at(dir, &all)
}

/// `init_server` that must succeed; returns what it printed and the token.
pub(crate) fn init_ok(
    dir: &Path,
    n: u8,
    store: &dyn SharedStore,
    extra: &[&str],
) -> (String, Token) {
    let (code, out, err) = init_server(dir, n, store, extra);
    assert_eq!(code, 0, "{out}{err}");
    let token = printed_token(&out);
    (out, token)
}

/// A rotor process started in the background, with extra environment.
pub(crate) fn spawn_rotor(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Child {
    let mut cmd = Command::new(rotor_bin());
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("ROTOR_PLUGIN_CACHE", shared_cache())
        .env_remove("ROTOR_BUNDLE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Wait (at most 60 s) until `child` says it waits at its failpoint; returns the stderr reader
/// thread, which collects the rest.
pub(crate) fn wait_at_failpoint(child: &mut Child) -> std::thread::JoinHandle<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            if line.contains("failpoint: waiting at") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the command reached its failpoint");
    reader
}

pub(crate) fn finish(
    mut child: Child,
    stderr: std::thread::JoinHandle<String>,
) -> (i32, String, String) {
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), out, stderr.join().unwrap())
}

pub(crate) const CA_FILES: &[&str] = &[
    "server/tls/server-ca.crt",
    "server/tls/server-ca.key",
    "server/tls/client-ca.crt",
    "server/tls/client-ca.key",
    "server/tls/request-header-ca.crt",
    "server/tls/etcd/server-ca.crt",
    "server/tls/etcd/peer-ca.crt",
    "server/tls/service.key",
];

pub(crate) fn same_cas(a: &Path, b: &Path) {
    for f in CA_FILES {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// A handshake between server `s`'s API server and server `c`'s admin client.
pub(crate) fn handshake(
    s: &Path,
    server_trusts: &[Vec<u8>],
    c: &Path,
    client_trusts: &[Vec<u8>],
) -> Result<String, String> {
    tls_handshake_named(
        "kubernetes.default.svc",
        (
            &s.join("server/tls/serving-kube-apiserver.crt"),
            &s.join("server/tls/serving-kube-apiserver.key"),
        ),
        server_trusts,
        (
            &c.join("server/tls/client-admin.crt"),
            &c.join("server/tls/client-admin.key"),
        ),
        client_trusts,
    )
}

/// Three servers on one store: the first generates the CAs, the others join with its token and
/// issue their own leaves; the store restarted in between changes nothing; a CA rotation on one
/// reaches the others at `start`, with old and new trust both accepted (cross-signed chains).
pub(crate) fn three_servers_join_rotate_and_reconcile(store: &mut dyn SharedStore, tmp: &Path) {
    let s: Vec<PathBuf> = (1..=3).map(|n| tmp.join(format!("s{n}"))).collect();
    let (out, token) = init_ok(&s[0], 1, store, &[]);
    assert!(out.contains("generated CAs"), "{out}");
    assert!(!s[0].join("server/db").exists(), "no local datastore");
    // A rotor-v1 record, under rotor's own key (k3s's key stays free for k3s records).
    let records = store.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].starts_with("/rotor/bootstrap/"), "{records:?}");

    // The store killed and started again serves what it held.
    store.stop(Outage::Server);
    store.start(Outage::Server);
    assert_eq!(store.records(), records);
    for (i, dir) in s.iter().enumerate().skip(1) {
        let n = u8::try_from(i + 1).unwrap();
        let (code, out, err) = init_server(dir, n, store, &["--token", &token.render()]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("joined the cluster"), "{out}");
        assert!(!out.contains("generated CAs"), "{out}");
        same_cas(&s[0], dir);
        // Its own leaves, for its own names.
        let facts = rotor::facts::parse_certificate_der(
            "test",
            &pem_certs(&dir.join("server/tls/serving-kube-apiserver.crt"))[0],
        )
        .unwrap();
        assert!(
            facts
                .sans
                .ip_addresses
                .contains(&format!("127.0.0.{n}").parse().unwrap()),
            "{:?}",
            facts.sans
        );
    }
    assert_eq!(store.records().len(), 1, "joins write nothing to the store");
    let trust = |dir: &Path, ca: &str| pem_certs(&dir.join("server/tls").join(ca));
    // Server 1's API server and server 3's admin client, under the shared CAs.
    assert_eq!(
        handshake(
            &s[0],
            &trust(&s[0], "client-ca.crt"),
            &s[2],
            &trust(&s[2], "server-ca.crt")
        )
        .unwrap(),
        "system:admin"
    );
    let old_server_ca = trust(&s[0], "server-ca.crt");
    let old_client_ca = trust(&s[0], "client-ca.crt");

    // Server 2 rotates the CAs (cross-signed by the old ones).
    let staged = tmp.join("rotate");
    let out = rotor_ok(
        &s[1],
        &[
            "certificate",
            "rotate-default-ca",
            "--out",
            staged.to_str().unwrap(),
        ],
    );
    let new_token = printed_token(&out);
    assert_eq!(new_token.password, token.password);
    let out = rotor_ok(
        &s[1],
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
        ],
    );
    assert!(out.contains("saved to the datastore"), "{out}");
    assert_eq!(store.records().len(), 1);

    // Servers 1 and 3 reconcile at start: the new CAs from the store, leaves re-issued under
    // them.
    for dir in [&s[0], &s[2], &s[1]] {
        let out = rotor_ok(dir, &["start"]);
        assert!(
            out.contains("extract  server/tls/server-ca.crt") || dir == &s[1],
            "{out}"
        );
        assert!(out.contains("renewed 17 certificate(s)"), "{out}");
    }
    same_cas(&s[0], &s[1]);
    same_cas(&s[2], &s[1]);
    assert_ne!(trust(&s[0], "server-ca.crt"), old_server_ca);
    let ssigned = pem_certs(&staged.join("server/tls/server-ca-root-ssigned.pem"));
    // New trust on both sides.
    handshake(
        &s[0],
        &trust(&s[0], "client-ca.crt"),
        &s[2],
        std::slice::from_ref(&ssigned[0]),
    )
    .unwrap();
    // Old trust on both sides still accepts the new certificates (cross-signed chains).
    handshake(&s[2], &old_client_ca, &s[0], &old_server_ca).unwrap();
    // A leaf of the old CA is refused by a server that trusts only the new client CA.
    let stale = tmp.join("stale");
    std::fs::create_dir_all(stale.join("server/tls")).unwrap();
    let old_admin = s[2].join(".rotor/generations");
    let first_gen = std::fs::read_dir(&old_admin)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    for f in ["client-admin.crt", "client-admin.key"] {
        std::fs::copy(
            first_gen.join("server/tls").join(f),
            stale.join("server/tls").join(f),
        )
        .unwrap();
    }
    let new_client_root = pem_certs(&staged.join("server/tls/client-ca-root-ssigned.pem"));
    assert!(
        handshake(
            &s[0],
            &new_client_root,
            &stale,
            &trust(&s[0], "server-ca.crt")
        )
        .is_err(),
        "a client certificate of the old CA is not trusted by new-only trust"
    );
}

/// Two servers rotate the CAs at once: exactly one wins, the other fails with a conflict and
/// its data dir unchanged; then both start on the winner's CAs, and the loser's retry (staged
/// again from them) goes through.
pub(crate) fn racing_rotations_one_wins(store: &mut dyn SharedStore, tmp: &Path) {
    let s1 = tmp.join("s1");
    let s2 = tmp.join("s2");
    let (_, token) = init_ok(&s1, 1, store, &[]);
    init_ok(&s2, 2, store, &["--token", &token.render()]);
    let staged: Vec<PathBuf> = [&s1, &s2]
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let out = tmp.join(format!("rotate-{i}"));
            rotor_ok(
                dir,
                &[
                    "certificate",
                    "rotate-default-ca",
                    "--out",
                    out.to_str().unwrap(),
                ],
            );
            out
        })
        .collect();
    let before = [tree(&s1.join("server")), tree(&s2.join("server"))];
    let resume = tmp.join("go");
    // Both read the record, then both write: one transaction wins.
    let mut children: Vec<_> = [&s1, &s2]
        .iter()
        .zip(&staged)
        .map(|(dir, path)| {
            let mut child = spawn_rotor(
                dir,
                &[
                    "certificate",
                    "rotate-ca",
                    "--path",
                    path.to_str().unwrap(),
                    "--force",
                ],
                &[
                    ("ROTOR_FAILPOINT", Path::new("wait:commit:journaled")),
                    ("ROTOR_FAILPOINT_RESUME", &resume),
                ],
            );
            let reader = wait_at_failpoint(&mut child);
            (child, reader)
        })
        .collect();
    std::fs::write(&resume, b"").unwrap();
    let results: Vec<_> = children
        .drain(..)
        .map(|(child, reader)| finish(child, reader))
        .collect();
    let winners: Vec<usize> = (0..2).filter(|&i| results[i].0 == 0).collect();
    assert_eq!(winners.len(), 1, "exactly one wins: {results:?}");
    let winner = winners[0];
    let loser = 1 - winner;
    let (code, _, err) = &results[loser];
    assert_ne!(*code, 0);
    assert!(
        err.contains("changed by someone else since this command read it")
            && err.contains("nothing was written"),
        "{err}"
    );
    let dirs = [&s1, &s2];
    assert_eq!(
        tree(&dirs[loser].join("server")),
        before[loser],
        "the loser's data dir is as it was"
    );
    // The record is whole: one record, which the winner's CAs are in; both servers start.
    assert_eq!(store.records().len(), 1);
    for dir in dirs {
        rotor_ok(dir, &["start"]);
    }
    let winner_ca = std::fs::read(staged[winner].join("server/tls/server-ca.crt")).unwrap();
    for dir in dirs {
        assert_eq!(
            std::fs::read(dir.join("server/tls/server-ca.crt")).unwrap(),
            winner_ca
        );
    }
    // The loser's clean retry: a rotation staged from the CAs it has now goes through, and
    // reaches the winner.
    let retry = tmp.join("rotate-retry");
    let r = retry.to_str().unwrap();
    rotor_ok(
        dirs[loser],
        &["certificate", "rotate-default-ca", "--out", r],
    );
    rotor_ok(
        dirs[loser],
        &["certificate", "rotate-ca", "--path", r, "--force"],
    );
    rotor_ok(dirs[winner], &["start"]);
    assert_eq!(
        std::fs::read(dirs[winner].join("server/tls/server-ca.crt")).unwrap(),
        std::fs::read(retry.join("server/tls/server-ca.crt")).unwrap()
    );
}

/// The store (etcd, kine, or the database under kine) dies after a `token rotate` read it and
/// before it wrote: the command fails saying it does not know whether the store holds the
/// change, the live files are as they were, and once the store is back the next command rolls
/// the change back and works.
pub(crate) fn store_dying_mid_command(store: &mut dyn SharedStore, tmp: &Path, outage: Outage) {
    let s1 = tmp.join("s1");
    init_ok(&s1, 1, store, &[]);
    let token_file = std::fs::read(s1.join("server/token")).unwrap();
    let records = store.records();
    let live = |dir: &Path| {
        (
            tree(&dir.join("server/tls")),
            std::fs::read(dir.join("server/token")).unwrap(),
        )
    };
    let before = live(&s1);

    let resume = tmp.join("go");
    let mut child = spawn_rotor(
        &s1,
        &[
            "--datastore-timeout",
            "3",
            "token",
            "rotate",
            "--new-token",
            "the-next-password",
        ],
        &[
            ("ROTOR_FAILPOINT", Path::new("wait:commit:journaled")),
            ("ROTOR_FAILPOINT_RESUME", &resume),
        ],
    );
    let reader = wait_at_failpoint(&mut child);
    store.stop(outage);
    std::fs::write(&resume, b"").unwrap();
    let (code, out, err) = finish(child, reader);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&store.named())
            && err.contains("whether the datastore holds this change is not known"),
        "{err}"
    );
    assert_eq!(live(&s1), before, "the live files are as they were");

    store.start(outage);
    assert_eq!(
        store.records(),
        records,
        "the store holds the old record only"
    );
    // The next command rolls the staged change back, then works with the old token.
    let (code, out, err) = rotor_at(&s1, &["start"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(std::fs::read(s1.join("server/token")).unwrap(), token_file);
    let out = rotor_ok(
        &s1,
        &["token", "rotate", "--new-token", "the-next-password"],
    );
    assert_eq!(printed_token(&out).password, "the-next-password");
    rotor_ok(&s1, &["start"]);
}

/// A token rotation on one server (k3s's record format) deletes the old record: the other
/// servers and new joins are refused the old token and work with the new one.
pub(crate) fn token_rotation_locks_the_old_token_out(store: &mut dyn SharedStore, tmp: &Path) {
    let s: Vec<PathBuf> = (1..=3).map(|n| tmp.join(format!("s{n}"))).collect();
    // k3s's record format: at k3s's key, bytes k3s opens.
    let (_, old) = init_ok(&s[0], 1, store, &["--datastore-format", "k3s"]);
    let key = rotor::datastore::bootstrap_key(&old.password);
    assert_eq!(store.records(), vec![key.clone()]);
    let plain = rotor::datastore::open_record(&old.password, &key, &store.value(&key)).unwrap();
    assert!(String::from_utf8_lossy(&plain).contains("\"ServerCA\""));
    for (i, dir) in s.iter().enumerate().skip(1) {
        let n = u8::try_from(i + 1).unwrap();
        let (code, out, err) = init_server(dir, n, store, &["--token", &old.render()]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let out = rotor_ok(
        &s[0],
        &["token", "rotate", "--new-token", "rotated-password"],
    );
    let new = printed_token(&out);
    assert_eq!(
        store.records(),
        vec![rotor::datastore::bootstrap_key(&new.password)],
        "the old record is deleted in the same transaction; the format stays k3s's"
    );
    for dir in &s[1..] {
        for given in [None, Some(old.render())] {
            let mut cmd = vec!["start".to_string()];
            if let Some(t) = &given {
                cmd.extend(["--token".to_string(), t.clone()]);
            }
            let (code, _, err) = rotor_at(dir, &args(&[], &cmd));
            assert_eq!(code, 2, "{err}");
            assert!(
                err.contains("token does not decrypt the bootstrap data"),
                "{err}"
            );
        }
        rotor_ok(dir, &["start", "--token", &new.render()]);
        // Given once: the token file holds it now.
        let kept = std::fs::read_to_string(dir.join("server/token")).unwrap();
        assert_eq!(Token::parse(kept.trim()).unwrap().password, new.password);
        rotor_ok(dir, &["start"]);
    }
    // A new server cannot join with the old token; it can with the new one.
    let s4 = tmp.join("s4");
    let (code, _, err) = init_server(&s4, 4, store, &["--token", &old.render()]);
    assert_ne!(code, 0);
    assert!(err.contains("token does not decrypt"), "{err}");
    assert!(!s4.join(".rotor").exists(), "a refused join writes nothing");
    init_ok(&s4, 4, store, &["--token", &new.render()]);
}

/// `rotor serve` on a server whose datastore is shared: its cycles read the store; it starts and
/// says it is not ready while the store is down, fails its cycles without changing anything,
/// and is ready again once the store is back.
pub(crate) fn serve_not_ready_while_the_store_is_down(store: &mut dyn SharedStore, tmp: &Path) {
    use crate::serve::Serve;
    let s1 = tmp.join("s1");
    init_ok(&s1, 1, store, &[]);
    let now =
        time::OffsetDateTime::from_unix_timestamp(time::OffsetDateTime::now_utc().unix_timestamp())
            .unwrap();
    let serve_args = ["--listen", "127.0.0.1:0", "--datastore-timeout", "3"];
    let mut serve = Serve::start(&s1, now, &serve_args, &[]);
    serve.advance(now);
    assert_eq!(serve.get("/readyz").0, 200, "{}", serve.stderr());

    store.stop(Outage::Server);
    let before = tree(&s1);
    // The next cycle (an hour later) and its retries fail: not ready, nothing changed.
    serve.advance(now + time::Duration::minutes(61));
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("datastore cannot be loaded"), "{body}");
    assert!(
        serve.stderr().contains("cycle failed"),
        "{}",
        serve.stderr()
    );
    assert_eq!(tree(&s1), before);
    assert_eq!(serve.get("/healthz").0, 200);

    // A server started while the store is down starts, and says why it is not ready; once the store
    // is back, it is ready.
    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
    let mut serve = Serve::start(&s1, now, &serve_args, &[]);
    wait_ready_state(&mut serve, 503);
    store.start(Outage::Server);
    serve.advance(now + time::Duration::minutes(30));
    wait_ready_state(&mut serve, 200);
    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
}

fn wait_ready_state(serve: &mut crate::serve::Serve, want: u16) {
    let start = Instant::now();
    loop {
        let (code, body) = serve.get("/readyz");
        // Not ready first because no cycle ran yet, then because the cycle failed on the store.
        if code == want && (want != 503 || body.contains("datastore cannot be loaded")) {
            return;
        }
        assert!(!serve.exited(), "rotor serve exited: {}", serve.stderr());
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "readyz stayed {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `args` in `dir` with extra environment, to its end: (exit code, stdout, stderr).
pub(crate) fn rotor_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let out = spawn_rotor(dir, args, env).wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `token rotate` killed between its two datastore steps: the new record created, the old one
/// not yet deleted.
fn token_rotate_killed_between_steps(store: &dyn SharedStore, dir: &Path) {
    let (code, out, err) = rotor_env(
        dir,
        &["token", "rotate", "--new-token", "the-next-password"],
        &[("ROTOR_FAILPOINT", Path::new("datastore:between-steps"))],
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("failpoint: killed at datastore:between-steps"),
        "{err}"
    );
    assert_eq!(
        store.records().len(),
        2,
        "the new record and the old one: {:?}",
        store.records()
    );
}

/// A `token rotate` killed between its datastore steps is finished by the next command: the
/// old record deleted, the new token live, and the old one refused.
pub(crate) fn killed_between_steps_rolls_forward(store: &mut dyn SharedStore, tmp: &Path) {
    let s1 = tmp.join("s1");
    let (_, old) = init_ok(&s1, 1, store, &[]);
    let token_file = std::fs::read(s1.join("server/token")).unwrap();
    token_rotate_killed_between_steps(store, &s1);
    assert_eq!(
        std::fs::read(s1.join("server/token")).unwrap(),
        token_file,
        "not live yet"
    );

    let (code, out, err) = rotor_at(&s1, &["start"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("rolled forward"), "{err}");
    let new = Token::parse(
        std::fs::read_to_string(s1.join("server/token"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(new.password, "the-next-password");
    let records = store.records();
    let new_key = rotor::datastore::bootstrap_key(&new.password);
    assert!(
        records.len() == 1 && records[0].ends_with(&new_key),
        "{records:?}"
    );
    let (code, _, err) = rotor_at(&s1, &["start", "--token", &old.render()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("token does not decrypt the bootstrap data"),
        "{err}"
    );
}

/// A `token rotate` killed between its datastore steps, and another server changed the record
/// it was about to delete (a service-key rotation): the next command undoes its created record
/// and rolls back; the old token and the other server's record stay, and the rotation can be
/// run again.
pub(crate) fn killed_between_steps_and_overtaken_rolls_back(
    store: &mut dyn SharedStore,
    tmp: &Path,
) {
    let s1 = tmp.join("s1");
    let s2 = tmp.join("s2");
    let (_, token) = init_ok(&s1, 1, store, &[]);
    init_ok(&s2, 2, store, &["--token", &token.render()]);
    let records = store.records();
    let token_file = std::fs::read(s1.join("server/token")).unwrap();
    token_rotate_killed_between_steps(store, &s1);
    rotor_ok(&s2, &["certificate", "rotate-service-key"]);
    let theirs = store.value(&records[0]);

    let (code, out, err) = rotor_at(&s1, &["start"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(store.records(), records, "the created record undone");
    assert_eq!(std::fs::read(s1.join("server/token")).unwrap(), token_file);
    assert_eq!(
        store.value(&records[0]),
        theirs,
        "server 2's record stays as server 2 wrote it"
    );
    rotor_ok(
        &s1,
        &["token", "rotate", "--new-token", "the-next-password"],
    );
    assert_eq!(store.records().len(), 1);
}

type Scenario = fn(&mut dyn SharedStore, &Path);

/// Every scenario, each on a fresh store.
pub(crate) const SCENARIOS: &[(&str, Scenario)] = &[
    ("join", three_servers_join_rotate_and_reconcile),
    ("race", racing_rotations_one_wins),
    ("server-dies", |s, t| {
        store_dying_mid_command(s, t, Outage::Server)
    }),
    ("token", token_rotation_locks_the_old_token_out),
    ("forward", killed_between_steps_rolls_forward),
    ("back", killed_between_steps_and_overtaken_rolls_back),
    ("serve", serve_not_ready_while_the_store_is_down),
];

/// The suite on the real kine over `database`, each scenario on a database of its own on the
/// same server, plus the database server dying mid-command where there is one.
fn on_kine(database: impl FnOnce(&Path) -> Option<Database>) {
    if !require_command("etcdctl") {
        return;
    }
    let Some(bin) = kine_bin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut database) = database(&tmp.path().join("database")) else {
        return;
    };
    let mut scenarios: Vec<(&str, Scenario)> = SCENARIOS.to_vec();
    if database.name != "sqlite" {
        scenarios.push(("database-dies", |s, t| {
            store_dying_mid_command(s, t, Outage::Database)
        }));
    }
    for (i, (name, scenario)) in scenarios.into_iter().enumerate() {
        let dir = tmp.path().join(name);
        let endpoint = database.endpoint_of(&format!("scenario{i}"));
        let kine = Kine::start_on(&bin, &endpoint, database.name, &dir);
        eprintln!("scenario {name} on kine over {}", database.name);
        let mut store = KineStore {
            kine,
            database: &mut database,
        };
        scenario(&mut store, &dir);
    }
}

#[test]
fn the_shared_datastore_scenarios_on_kine_over_sqlite() {
    on_kine(|dir| Some(Database::sqlite(dir)));
}

#[test]
fn the_shared_datastore_scenarios_on_kine_over_postgresql() {
    on_kine(Database::postgres);
}

#[test]
fn the_shared_datastore_scenarios_on_kine_over_mariadb() {
    on_kine(Database::mariadb);
}
