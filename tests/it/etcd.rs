//! The etcd datastore with real etcd servers (Debian's `etcd-server`) on loopback ports,
//! serving TLS with client-certificate auth; every certificate is one rotor issued (a kubeadm
//! data dir: its etcd CA, serving, peer and apiserver-etcd-client certificates).
//!
//! Three servers share one etcd (joins, CA rotation on one, `start` on the others, TLS
//! handshakes across them); two rotations race; a three-member etcd loses one member, then
//! quorum, then gets it back; etcd dies in the middle of a command; a token rotation locks the
//! old token out everywhere; two first inits race, and a dead holder's init lock expires.

use std::io::BufReader;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::datastores::{
    Outage, SharedStore, args, finish, init_ok, printed_token, same_cas, spawn_rotor,
    wait_at_failpoint,
};

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

impl SharedStore for Etcd {
    fn flags(&self) -> Vec<String> {
        Etcd::flags(self)
    }

    fn keys(&self) -> Vec<String> {
        Etcd::keys(self)
    }

    fn value(&self, key: &str) -> Vec<u8> {
        Etcd::value(self, key)
    }

    fn stop(&mut self, outage: Outage) {
        assert_eq!(outage, Outage::Server, "etcd has no database under it");
        self.kill(0);
    }

    fn start(&mut self, outage: Outage) {
        assert_eq!(outage, Outage::Server, "etcd has no database under it");
        self.launch(0);
        self.wait_healthy(0);
    }

    fn named(&self) -> String {
        "etcd https://127.0.0.1:".into()
    }
}

/// One scenario of the shared-store suite on a one-member etcd of its own.
fn on_etcd(name: &str) {
    let (_, scenario) = crate::datastores::SCENARIOS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut etcd) = Etcd::start(tmp.path(), 1) else {
        return;
    };
    scenario(&mut etcd, tmp.path());
}

#[test]
fn three_servers_share_one_etcd_join_rotate_and_reconcile() {
    on_etcd("join");
}

#[test]
fn concurrent_rotations_on_two_servers_one_wins_the_other_changes_nothing() {
    on_etcd("race");
}

#[test]
fn etcd_dying_between_read_and_write_leaves_nothing_half_written() {
    on_etcd("server-dies");
}

#[test]
fn a_token_rotation_on_one_server_locks_the_old_token_out_everywhere() {
    on_etcd("token");
}

#[test]
fn a_token_rotation_killed_between_its_steps_is_finished_by_the_next_command() {
    on_etcd("forward");
}

#[test]
fn a_token_rotation_killed_between_its_steps_and_overtaken_is_undone() {
    on_etcd("back");
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
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

/// `rotor serve` on a server whose datastore is etcd: not ready while etcd is down, ready again
/// after.
#[test]
fn serve_is_not_ready_while_etcd_is_down_and_ready_again_after() {
    on_etcd("serve");
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

/// A k3s data dir with a managed etcd (`server/db/etcd/`): `rotor init` without an endpoint
/// keeps the CA material in that etcd, reached as k3s reaches it (https://127.0.0.1:2379, the
/// client certificate `server/tls/etcd/client.crt`, trusting `server/tls/etcd/server-ca.crt`),
/// against a real etcd serving mTLS with certificates rotor issued; later commands use it.
#[test]
fn a_k3s_data_dir_with_a_managed_etcd_defaults_to_it_over_mtls() {
    if !require_command("etcd") || !require_command("etcdctl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The TLS files a k3s server made (here rotor issues them, in k3s's layout).
    let pki = tmp.path().join("pki");
    rotor_ok(
        &pki,
        &["init", "--node-name", "server-1", "--node-ip", "127.0.0.1"],
    );
    let k3s = tmp.path().join("k3s");
    std::fs::create_dir_all(k3s.join("server/db")).unwrap();
    let st = Command::new("cp")
        .arg("-rL")
        .arg(pki.join("server/tls"))
        .arg(k3s.join("server/tls"))
        .status()
        .unwrap();
    assert!(st.success());
    let tls = k3s.join("server/tls/etcd");
    let file = |name: &str| tls.join(name).to_str().unwrap().to_string();
    // k3s's managed etcd: its data in server/db/etcd, clients on 127.0.0.1:2379 with mTLS.
    let log = std::fs::File::create(tmp.path().join("etcd.log")).unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new("etcd")
        .args(["--name", "server-1"])
        .arg("--data-dir")
        .arg(k3s.join("server/db/etcd"))
        .args(["--listen-client-urls", "https://127.0.0.1:2379"])
        .args(["--advertise-client-urls", "https://127.0.0.1:2379"])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("server-1={peer}")])
        .args(["--cert-file", &file("server-client.crt")])
        .args(["--key-file", &file("server-client.key")])
        .args(["--trusted-ca-file", &file("server-ca.crt")])
        .arg("--client-cert-auth")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _etcd = crate::kine::Proc::from(child);
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .args(["--endpoints", "https://127.0.0.1:2379"])
            .args(["--cacert", &file("server-ca.crt")])
            .args(["--cert", &file("client.crt")])
            .args(["--key", &file("client.key")])
            .args(["--command-timeout", "3s"])
            .args(args)
            .output()
            .unwrap()
    };
    let start = Instant::now();
    while !etcdctl(&["endpoint", "health"]).status.success() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "etcd on 127.0.0.1:2379 (k3s's port: is another etcd there?): {}",
            std::fs::read_to_string(tmp.path().join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (code, out, err) = rotor_at(
        &k3s,
        &["init", "--node-name", "server-1", "--node-ip", "127.0.0.1"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let config = std::fs::read_to_string(k3s.join("rotor.json")).unwrap();
    assert!(
        config.contains("https://127.0.0.1:2379") && config.contains("server/tls/etcd/client.crt"),
        "{config}"
    );
    assert!(
        !k3s.join("server/db/.kv").exists(),
        "no datastore of rotor's"
    );
    let keys = etcdctl(&["get", "--prefix", "/rotor/bootstrap/", "--keys-only"]);
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 1, "{keys}");
    // Later commands reach it with the certificates now in the data dir (re-issued by init
    // under the same etcd CA).
    rotor_ok(&k3s, &["certificate", "rotate-service-key"]);
    rotor_ok(&k3s, &["start"]);
}
