//! The etcd datastore with real etcd servers (Debian's `etcd-server`) on loopback ports,
//! serving TLS with client-certificate auth; every certificate is one rotor issued (a kubeadm
//! data dir: its etcd CA, serving, peer and apiserver-etcd-client certificates).
//!
//! Three servers share one etcd (joins, CA rotation on one, `start` on the others, TLS
//! handshakes across them); two rotations race; a three-member etcd loses one member, then
//! quorum, then gets it back; etcd dies in the middle of a command; a token rotation locks the
//! old token out everywhere; two first inits race, and a dead holder's init lock expires.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rotor::pki::Token;

use crate::common::*;

/// The TLS material etcd and rotor use, issued by rotor.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tmp: &Path) -> Pki {
        let dir = tmp.join("etcd-pki");
        rotor_ok(
            &dir,
            &[
                "init",
                "--profile",
                "kubeadm",
                "--node-name",
                "etcd",
                "--node-ip",
                "127.0.0.1",
                "--key-type",
                "ecdsa-p256",
            ],
        );
        Pki { dir }
    }

    fn file(&self, rel: &str) -> String {
        self.dir.join("pki").join(rel).to_str().unwrap().to_string()
    }
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster on loopback; killed when dropped.
pub(crate) struct Etcd {
    pki: Pki,
    members: Vec<Member>,
    initial_cluster: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// `n` members, started and healthy; `None` when etcd is not installed (a failure under CI).
    pub(crate) fn start(tmp: &Path, n: usize) -> Option<Etcd> {
        if !require_command("etcd") || !require_command("etcdctl") {
            return None;
        }
        let pki = Pki::new(tmp);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                data: tmp.join(format!("etcd-{i}")),
                log: tmp.join(format!("etcd-{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=https://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            pki,
            members,
            initial_cluster,
        };
        for i in 0..n {
            etcd.launch(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        Some(etcd)
    }

    fn launch(&mut self, i: usize) {
        let m = &self.members[i];
        let client = format!("https://127.0.0.1:{}", m.client);
        let peer = format!("https://127.0.0.1:{}", m.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "rotor-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--cert-file", &self.pki.file("etcd/server.crt")])
            .args(["--key-file", &self.pki.file("etcd/server.key")])
            .args(["--trusted-ca-file", &self.pki.file("etcd/ca.crt")])
            .arg("--client-cert-auth")
            .args(["--peer-cert-file", &self.pki.file("etcd/peer.crt")])
            .args(["--peer-key-file", &self.pki.file("etcd/peer.key")])
            .args(["--peer-trusted-ca-file", &self.pki.file("etcd/ca.crt")])
            .arg("--peer-client-cert-auth")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    fn etcdctl(&self, endpoints: &str, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints])
            .args(["--cacert", &self.pki.file("etcd/ca.crt")])
            .args(["--cert", &self.pki.file("apiserver-etcd-client.crt")])
            .args(["--key", &self.pki.file("apiserver-etcd-client.key")])
            .args(["--command-timeout", "3s"])
            .args(args)
            .output()
            .unwrap()
    }

    fn wait_healthy(&self, i: usize) {
        let endpoint = format!("https://127.0.0.1:{}", self.members[i].client);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.etcdctl(&endpoint, &["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} not healthy after 60 s: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("https://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags that point `rotor init` at this etcd, with a client certificate.
    fn flags(&self) -> Vec<String> {
        vec![
            "--datastore-endpoint".into(),
            self.endpoints(),
            "--datastore-cafile".into(),
            self.pki.file("etcd/ca.crt"),
            "--datastore-certfile".into(),
            self.pki.file("apiserver-etcd-client.crt"),
            "--datastore-keyfile".into(),
            self.pki.file("apiserver-etcd-client.key"),
        ]
    }

    /// Every key in etcd.
    fn keys(&self) -> Vec<String> {
        let out = self.etcdctl(&self.endpoints(), &["get", "--prefix", "/", "--keys-only"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The value of `key`.
    fn value(&self, key: &str) -> Vec<u8> {
        let out = self.etcdctl(&self.endpoints(), &["get", key, "--print-value-only"]);
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

    /// The bootstrap records (the init lock's keys come and go).
    fn records(&self) -> Vec<String> {
        self.keys()
            .into_iter()
            .filter(|k| k.contains("/bootstrap/"))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn args<'a>(fixed: &[&'a str], more: &'a [String]) -> Vec<&'a str> {
    let mut all = fixed.to_vec();
    all.extend(more.iter().map(String::as_str));
    all
}

fn printed_token(out: &str) -> Token {
    Token::parse(out.lines().find(|l| l.starts_with("K10")).unwrap()).unwrap()
}

/// `rotor init` of server `n` (address 127.0.0.n) against `etcd`, with `extra` flags.
fn init_server(dir: &Path, n: u8, etcd: &Etcd, extra: &[&str]) -> (i32, String, String) {
    let name = format!("s{n}");
    let ip = format!("127.0.0.{n}");
    let flags = etcd.flags();
    let mut all = args(&["init", "--node-name", &name, "--node-ip", &ip], &flags);
    all.extend_from_slice(extra);
    rotor_at(dir, &all)
}

/// `init_server` that must succeed; returns what it printed and the token.
pub(crate) fn init_ok(dir: &Path, n: u8, etcd: &Etcd, extra: &[&str]) -> (String, Token) {
    let (code, out, err) = init_server(dir, n, etcd, extra);
    assert_eq!(code, 0, "{out}{err}");
    let token = printed_token(&out);
    (out, token)
}

/// A rotor process started in the background, with extra environment.
fn spawn_rotor(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Child {
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
fn wait_at_failpoint(child: &mut Child) -> std::thread::JoinHandle<String> {
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

fn finish(mut child: Child, stderr: std::thread::JoinHandle<String>) -> (i32, String, String) {
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), out, stderr.join().unwrap())
}

const CA_FILES: &[&str] = &[
    "server/tls/server-ca.crt",
    "server/tls/server-ca.key",
    "server/tls/client-ca.crt",
    "server/tls/client-ca.key",
    "server/tls/request-header-ca.crt",
    "server/tls/etcd/server-ca.crt",
    "server/tls/etcd/peer-ca.crt",
    "server/tls/service.key",
];

fn same_cas(a: &Path, b: &Path) {
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
fn handshake(
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

#[test]
fn three_servers_share_one_etcd_join_rotate_and_reconcile() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(tmp.path(), 1) else {
        return;
    };
    let s: Vec<PathBuf> = (1..=3).map(|n| tmp.path().join(format!("s{n}"))).collect();
    let (out, token) = init_ok(&s[0], 1, &etcd, &[]);
    assert!(out.contains("generated CAs"), "{out}");
    assert!(!s[0].join("server/db").exists(), "no local datastore");
    // A rotor-v1 record, under rotor's own key (k3s's key stays free for k3s records).
    let records = etcd.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].starts_with("/rotor/bootstrap/"), "{records:?}");

    for (i, dir) in s.iter().enumerate().skip(1) {
        let n = u8::try_from(i + 1).unwrap();
        let (code, out, err) = init_server(dir, n, &etcd, &["--token", &token.render()]);
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
    assert_eq!(etcd.records().len(), 1, "joins write nothing to etcd");
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
    let staged = tmp.path().join("rotate");
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
    assert_eq!(etcd.records().len(), 1);

    // Servers 1 and 3 reconcile at start: the new CAs from etcd, leaves re-issued under them.
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
    let stale = tmp.path().join("stale");
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

#[test]
fn concurrent_rotations_on_two_servers_one_wins_the_other_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(tmp.path(), 1) else {
        return;
    };
    let s1 = tmp.path().join("s1");
    let s2 = tmp.path().join("s2");
    let (_, token) = init_ok(&s1, 1, &etcd, &[]);
    init_ok(&s2, 2, &etcd, &["--token", &token.render()]);
    let staged: Vec<PathBuf> = [&s1, &s2]
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let out = tmp.path().join(format!("rotate-{i}"));
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
    let resume = tmp.path().join("go");
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
    assert_eq!(etcd.records().len(), 1);
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
}

#[test]
fn a_three_member_etcd_survives_one_loss_fails_cleanly_without_quorum_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut etcd) = Etcd::start(tmp.path(), 3) else {
        return;
    };
    let s1 = tmp.path().join("s1");
    init_ok(&s1, 1, &etcd, &[]);
    let t = ["--datastore-timeout", "4"];

    // One member down: reads and writes go on through the other two.
    etcd.kill(0);
    rotor_ok(&s1, &args(&t, &["start".into()]));
    let out = rotor_ok(
        &s1,
        &args(
            &t,
            &[
                "token".into(),
                "rotate".into(),
                "--new-token".into(),
                "second-password".into(),
            ],
        ),
    );
    let token = printed_token(&out);

    // Two down: no quorum. Every command fails in bounded time, naming etcd; nothing changes.
    etcd.kill(1);
    let before = tree(&s1);
    for cmd in [
        vec!["start"],
        vec!["token", "rotate", "--new-token", "third-password"],
        vec!["certificate", "rotate-service-key"],
    ] {
        let started = Instant::now();
        let (code, out, err) = rotor_at(
            &s1,
            &args(&t, &cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        );
        assert_ne!(code, 0, "{cmd:?}: {out}");
        assert!(err.contains("etcd https://127.0.0.1:"), "{cmd:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{cmd:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(tree(&s1), before, "{cmd:?} changed the data dir");
    }

    // Quorum back: it works again, with the token rotated while one member was down.
    etcd.launch(0);
    etcd.launch(1);
    for i in 0..3 {
        etcd.wait_healthy(i);
    }
    rotor_ok(
        &s1,
        &args(&t, &["start".into(), "--token".into(), token.render()]),
    );
    rotor_ok(
        &s1,
        &args(
            &t,
            &[
                "token".into(),
                "rotate".into(),
                "--new-token".into(),
                "third-password".into(),
            ],
        ),
    );
    assert_eq!(etcd.records().len(), 1);
}

#[test]
fn etcd_dying_between_read_and_write_leaves_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut etcd) = Etcd::start(tmp.path(), 1) else {
        return;
    };
    let s1 = tmp.path().join("s1");
    init_ok(&s1, 1, &etcd, &[]);
    let token_file = std::fs::read(s1.join("server/token")).unwrap();
    let records = etcd.records();
    let live = |dir: &Path| {
        (
            tree(&dir.join("server/tls")),
            std::fs::read(dir.join("server/token")).unwrap(),
        )
    };
    let before = live(&s1);

    let resume = tmp.path().join("go");
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
    etcd.kill(0);
    std::fs::write(&resume, b"").unwrap();
    let (code, out, err) = finish(child, reader);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("etcd https://127.0.0.1:")
            && err.contains("whether the datastore holds this change is not known"),
        "{err}"
    );
    assert_eq!(live(&s1), before, "the live files are as they were");

    etcd.launch(0);
    etcd.wait_healthy(0);
    assert_eq!(etcd.records(), records, "etcd holds the old record only");
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

#[test]
fn a_token_rotation_on_one_server_locks_the_old_token_out_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(tmp.path(), 1) else {
        return;
    };
    let s: Vec<PathBuf> = (1..=3).map(|n| tmp.path().join(format!("s{n}"))).collect();
    // k3s's record format: at k3s's key, bytes k3s opens.
    let (_, old) = init_ok(&s[0], 1, &etcd, &["--datastore-format", "k3s"]);
    let key = rotor::datastore::bootstrap_key(&old.password);
    assert_eq!(etcd.records(), vec![key.clone()]);
    let plain = rotor::datastore::open_record(&old.password, &key, &etcd.value(&key)).unwrap();
    assert!(String::from_utf8_lossy(&plain).contains("\"ServerCA\""));
    for (i, dir) in s.iter().enumerate().skip(1) {
        let n = u8::try_from(i + 1).unwrap();
        let (code, out, err) = init_server(dir, n, &etcd, &["--token", &old.render()]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let out = rotor_ok(
        &s[0],
        &["token", "rotate", "--new-token", "rotated-password"],
    );
    let new = printed_token(&out);
    assert_eq!(
        etcd.records(),
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
    }
    // A new server cannot join with the old token; it can with the new one.
    let s4 = tmp.path().join("s4");
    let (code, _, err) = init_server(&s4, 4, &etcd, &["--token", &old.render()]);
    assert_ne!(code, 0);
    assert!(err.contains("token does not decrypt"), "{err}");
    assert!(!s4.join(".rotor").exists(), "a refused join writes nothing");
    init_ok(&s4, 4, &etcd, &["--token", &new.render()]);
}

#[test]
fn first_inits_are_serialized_and_a_dead_holders_lock_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(tmp.path(), 1) else {
        return;
    };
    let flags = etcd.flags();
    // Two servers started with the same token at once: one initializes, the other joins.
    let resume = tmp.path().join("go");
    let mut children: Vec<_> = (1..=2)
        .map(|n| {
            let name = format!("s{n}");
            let ip = format!("127.0.0.{n}");
            let mut child = spawn_rotor(
                &tmp.path().join(&name),
                &args(
                    &[
                        "init",
                        "--node-name",
                        &name,
                        "--node-ip",
                        &ip,
                        "--token",
                        "one-shared-password",
                    ],
                    &flags,
                ),
                &[
                    ("ROTOR_FAILPOINT", Path::new("wait:init:decide")),
                    ("ROTOR_FAILPOINT_RESUME", &resume),
                ],
            );
            // The first holds the lock at its failpoint; the second waits for the lock.
            if n == 1 {
                let reader = wait_at_failpoint(&mut child);
                (child, Some(reader))
            } else {
                (child, None)
            }
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&resume, b"").unwrap();
    let results: Vec<_> = children
        .drain(..)
        .map(|(mut child, reader)| {
            let reader = reader.unwrap_or_else(|| {
                let stderr = child.stderr.take().unwrap();
                std::thread::spawn(move || {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s).unwrap();
                    s
                })
            });
            finish(child, reader)
        })
        .collect();
    for r in &results {
        assert_eq!(r.0, 0, "{r:?}");
    }
    assert!(results[0].1.contains("generated CAs"), "{:?}", results[0]);
    assert!(
        results[1].1.contains("joined the cluster"),
        "{:?}",
        results[1]
    );
    same_cas(&tmp.path().join("s1"), &tmp.path().join("s2"));

    // A holder killed in the middle: its lease expires and the next server's init goes on.
    let etcd2 = Etcd::start(&tmp.path().join("second"), 1).unwrap();
    let flags2 = etcd2.flags();
    let resume2 = tmp.path().join("never");
    let mut holder = spawn_rotor(
        &tmp.path().join("h1"),
        &args(
            &["init", "--node-name", "h1", "--node-ip", "127.0.0.1"],
            &flags2,
        ),
        &[
            ("ROTOR_FAILPOINT", Path::new("wait:init:decide")),
            ("ROTOR_FAILPOINT_RESUME", &resume2),
        ],
    );
    let _reader = wait_at_failpoint(&mut holder);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let started = Instant::now();
    let (code, out, err) = rotor_at(
        &tmp.path().join("h2"),
        &args(
            &["init", "--node-name", "h2", "--node-ip", "127.0.0.2"],
            &flags2,
        ),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("generated CAs"), "{out}");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(rotor::datastore::LEASE_TTL_SECONDS as u64 + 15),
        "waited {waited:?} for a dead holder's lock"
    );
}

/// `rotor serve` on a server whose datastore is etcd: it starts and says it is not ready while
/// etcd is down, fails its cycles without changing anything, and is ready again once etcd is
/// back.
#[test]
fn serve_is_not_ready_while_etcd_is_down_and_ready_again_after() {
    use crate::serve::Serve;
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut etcd) = Etcd::start(tmp.path(), 1) else {
        return;
    };
    let s1 = tmp.path().join("s1");
    init_ok(&s1, 1, &etcd, &[]);
    let now =
        time::OffsetDateTime::from_unix_timestamp(time::OffsetDateTime::now_utc().unix_timestamp())
            .unwrap();
    let serve_args = ["--listen", "127.0.0.1:0", "--datastore-timeout", "3"];
    let mut serve = Serve::start(&s1, now, &serve_args, &[]);
    serve.advance(now);
    assert_eq!(serve.get("/readyz").0, 200, "{}", serve.stderr());

    etcd.kill(0);
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

    // A server started while etcd is down starts, and says why it is not ready; once etcd is
    // back, it is ready.
    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
    let mut serve = Serve::start(&s1, now, &serve_args, &[]);
    wait_ready_state(&mut serve, 503);
    etcd.launch(0);
    etcd.wait_healthy(0);
    serve.advance(now + time::Duration::minutes(30));
    wait_ready_state(&mut serve, 200);
    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
}

fn wait_ready_state(serve: &mut crate::serve::Serve, want: u16) {
    let start = Instant::now();
    loop {
        let (code, body) = serve.get("/readyz");
        // Not ready first because no cycle ran yet, then because the cycle failed on etcd.
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

/// The supervisor APIs of two servers on one etcd share the node bindings: a node bound
/// through one is refused another password through the other; of two first requests for one
/// name racing on the two servers, exactly one binds it; `rotor node list` and `node delete`
/// on either see and change them all.
#[test]
fn supervisor_node_bindings_are_shared_by_the_servers_of_one_etcd() {
    use crate::serve::Serve;
    if !require_command("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(etcd) = Etcd::start(tmp.path(), 1) else {
        return;
    };
    let s1 = tmp.path().join("s1");
    let s2 = tmp.path().join("s2");
    let (_, token) = init_ok(&s1, 1, &etcd, &[]);
    init_ok(&s2, 2, &etcd, &["--token", &token.render()]);
    let now =
        time::OffsetDateTime::from_unix_timestamp(time::OffsetDateTime::now_utc().unix_timestamp())
            .unwrap();
    let start = |dir: &Path| {
        let serve = Serve::start(
            dir,
            now,
            &[
                "--listen",
                "127.0.0.1:0",
                "--supervisor-listen",
                "127.0.0.1:0",
            ],
            &[],
        );
        let err = serve.stderr();
        let port: u16 = err
            .lines()
            .find_map(|l| l.strip_prefix("rotor serve: supervisor API on https://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no supervisor address:\n{err}"))
            .trim()
            .parse()
            .unwrap();
        (serve, port)
    };
    let (_serve1, port1) = start(&s1);
    let (_serve2, port2) = start(&s2);
    let ca = s1.join("server/tls/server-ca.crt");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = tmp.path().join("agent.csr");
    std::fs::write(&csr, params.serialize_request(&key).unwrap().der()).unwrap();
    let request = |port: u16, node: &str, password: &str| {
        Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "30",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(&ca)
            .args(["-u", &format!("node:{}", token.password)])
            .args(["-H", &format!("k3s-Node-Name: {node}")])
            .args(["-H", &format!("k3s-Node-Password: {password}")])
            .arg("--data-binary")
            .arg(format!("@{}", csr.display()))
            .arg(format!(
                "https://127.0.0.1:{port}/v1-k3s/client-kubelet.crt"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let status = |child: Child| {
        let out = child.wait_with_output().unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if code.is_empty() {
            panic!(
                "curl {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        code
    };
    // Bound through server 1: server 2 knows it.
    assert_eq!(status(request(port1, "worker-1", "pw-1")), "200");
    assert_eq!(status(request(port2, "worker-1", "other")), "403");
    assert_eq!(status(request(port2, "worker-1", "pw-1")), "200");
    // Races: each name's two first requests, on the two servers at once, bind it once.
    for round in 0..5 {
        let name = format!("racer-{round}");
        let a = request(port1, &name, "pw-a");
        let b = request(port2, &name, "pw-b");
        let mut got = [status(a), status(b)];
        got.sort();
        assert_eq!(got, ["200", "403"], "{name}");
    }
    // Listed from either server; freed from the other.
    let listed = rotor_ok(&s2, &["node", "list", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 6, "{listed}");
    rotor_ok(&s2, &["node", "delete", "worker-1"]);
    assert_eq!(status(request(port1, "worker-1", "a-new-password")), "200");
}
