//! The supervisor API of `rotor serve --supervisor-listen`, spoken to as a k3s agent would:
//! curl over HTTPS on loopback (the server's certificate checked against `/cacerts`, whose hash
//! the join token pins), CSRs with an empty subject made with the node's own key (rcgen, DER as
//! k3s agents send them, and PEM); certificates checked with openssl and rustls-webpki, and used
//! for a mutual-TLS handshake.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::common::*;
use crate::serve::{Serve, init_k3s, parse_metrics, value};

/// A k3s data dir served with the supervisor API on loopback.
pub(crate) struct Server {
    _tmp: tempfile::TempDir,
    pub(crate) dir: PathBuf,
    work: PathBuf,
    pub(crate) serve: Serve,
    pub(crate) port: u16,
    password: String,
    pub(crate) ca: PathBuf,
}

impl Server {
    pub(crate) fn start(extra: &[&str]) -> Option<Server> {
        if !require_command("curl") {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("k3s");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        init_k3s(&dir, t0());
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--supervisor-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let serve = Serve::start(&dir, t0(), &args, &[]);
        let err = serve.stderr();
        let port: u16 = err
            .lines()
            .find_map(|l| l.strip_prefix("rotor serve: supervisor API on https://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no supervisor address:\n{err}"))
            .trim()
            .parse()
            .unwrap();
        let token = std::fs::read_to_string(dir.join("server/token")).unwrap();
        let password = token.trim().rsplit(':').next().unwrap().to_string();
        let mut server = Server {
            _tmp: tmp,
            dir,
            work,
            serve,
            port,
            password,
            ca: PathBuf::new(),
        };
        // The CA, fetched without trusting anyone yet, then pinned by the token's hash.
        let (status, cacerts) = server.curl(&["-k"], "/cacerts", None);
        assert_eq!(status, 200);
        let hash = token
            .trim()
            .strip_prefix("K10")
            .unwrap()
            .split("::")
            .next()
            .unwrap();
        let ders = rotor::facts::certificate_ders("cacerts", cacerts.as_bytes()).unwrap();
        assert_eq!(
            rotor::pki::ca_hash(cacerts.as_bytes(), &ders, rotor::clock::system_now()),
            hash,
            "the token pins /cacerts"
        );
        server.ca = server.work.join("server-ca.crt");
        std::fs::write(&server.ca, &cacerts).unwrap();
        Some(server)
    }

    /// curl `path` with `args` (and the CA pinned unless `-k`): (status, body).
    fn curl(&self, args: &[&str], path: &str, body: Option<&Path>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "30", "-w", "\n%{http_code}"]);
        if !args.contains(&"-k") {
            cmd.arg("--cacert").arg(&self.ca);
        }
        cmd.args(args);
        if let Some(b) = body {
            cmd.arg("--data-binary").arg(format!("@{}", b.display()));
        }
        cmd.arg(format!("https://127.0.0.1:{}{path}", self.port));
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_string())
    }

    /// POST `csr` to a certificate endpoint as node `node` with `password`.
    fn request(
        &self,
        endpoint: &str,
        node: &str,
        password: &str,
        ips: Option<&str>,
        csr: &Path,
    ) -> (u16, String) {
        self.request_with(&[], endpoint, node, password, ips, csr)
    }

    /// [`Server::request`] with extra curl arguments (`--interface 127.0.0.2`: another peer).
    fn request_with(
        &self,
        extra: &[&str],
        endpoint: &str,
        node: &str,
        password: &str,
        ips: Option<&str>,
        csr: &Path,
    ) -> (u16, String) {
        let auth = format!("node:{}", self.password);
        let name = format!("k3s-Node-Name: {node}");
        let pass = format!("k3s-Node-Password: {password}");
        let mut args = vec!["-u", &auth, "-H", &name, "-H", &pass];
        args.extend_from_slice(extra);
        let ip;
        if let Some(ips) = ips {
            ip = format!("k3s-Node-IP: {ips}");
            args.extend(["-H", &ip]);
        }
        self.curl(&args, &format!("/v1-k3s/{endpoint}"), Some(csr))
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.work.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// A CSR with an empty subject, as k3s agents make it: (DER, key PEM).
fn agent_csr() -> (Vec<u8>, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap();
    (csr.der().to_vec(), key.serialize_pem())
}

fn subject_of(pem: &str) -> rotor::facts::CertificateFacts {
    rotor::facts::parse_certificates_pem("c", pem.as_bytes())
        .unwrap()
        .remove(0)
}

#[test]
fn agents_get_their_certificates_with_the_host_fixing_every_name() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("decisions.jsonl");
    let strict = repo_root().join("policies/strict");
    let Some(s) = Server::start(&[
        "--supervisor-server-bootstrap",
        "--decision-log",
        log.to_str().unwrap(),
        "--shadow-bundle",
        strict.to_str().unwrap(),
    ]) else {
        return;
    };
    let (der, key) = agent_csr();
    let csr = s.write("agent.csr", &der);
    let key_file = s.write("agent.key", key.as_bytes());

    // The client kubelet certificate: the node's identity, from the client CA, for our key.
    // The first request binds the name, with the addresses the node gives.
    let (status, body) = s.request(
        "client-kubelet.crt",
        "Worker-1",
        "pw-1",
        Some("10.0.0.21,fd00::21"),
        &csr,
    );
    assert_eq!(status, 200, "{body}");
    let cert = subject_of(&body);
    assert_eq!(
        cert.subject.common_name.as_deref(),
        Some("system:node:worker-1")
    );
    assert_eq!(cert.subject.organizations, ["system:nodes"]);
    assert!(cert.sans.is_empty());
    let chain = s.write("client-kubelet.crt", body.as_bytes());
    assert_eq!(pem_certs(&chain).len(), 2, "the leaf, then the client CA");
    let client_ca = s.dir.join("server/tls/client-ca.crt");
    if require_command("openssl") {
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&client_ca)
            .arg(&chain)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The serving certificate: the node's name and the addresses it gave, from the server CA.
    let (status, body) = s.request(
        "serving-kubelet.crt",
        "worker-1",
        "pw-1",
        Some("10.0.0.21,fd00::21"),
        &csr,
    );
    assert_eq!(status, 200, "{body}");
    let serving = subject_of(&body);
    assert_eq!(serving.sans.dns_names, ["worker-1"]);
    assert_eq!(
        serving.sans.ip_addresses,
        [
            "10.0.0.21".parse::<std::net::IpAddr>().unwrap(),
            "fd00::21".parse().unwrap()
        ]
    );
    let serving_chain = s.write("serving-kubelet.crt", body.as_bytes());
    webpki_verify(
        &serving_chain,
        &s.dir.join("server/tls/server-ca.crt"),
        true,
        rotor::clock::system_now(),
    )
    .unwrap();
    // It serves TLS to a client that authenticates with the client kubelet certificate.
    let seen = tls_handshake_named(
        "worker-1",
        (&serving_chain, &key_file),
        &pem_certs(&client_ca),
        (&chain, &key_file),
        &pem_certs(&s.dir.join("server/tls/server-ca.crt")),
    )
    .unwrap();
    assert_eq!(seen, "system:node:worker-1");

    // An address the node did not join with is a request, not evidence: refused.
    let (status, body) = s.request(
        "serving-kubelet.crt",
        "worker-1",
        "pw-1",
        Some("10.0.0.99"),
        &csr,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("IpNotInNodeEvidence"), "{body}");

    // server-bootstrap, served here: only to the server user.
    let auth = format!("node:{}", s.password);
    let (status, _) = s.curl(&["-u", &auth], "/v1-k3s/server-bootstrap", None);
    assert_eq!(status, 403);
    let server_auth = format!("server:{}", s.password);
    let (status, json) = s.curl(&["-u", &server_auth], "/v1-k3s/server-bootstrap", None);
    assert_eq!(status, 200, "{json}");
    let bootstrap: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(bootstrap["ServerCA"]["Content"].is_string(), "{json}");

    // The components a node runs, as PEM too.
    let (pem_csr, _) = {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        (params.serialize_request(&key).unwrap().pem().unwrap(), ())
    };
    let pem_file = s.write("proxy.csr", pem_csr.as_bytes());
    for (endpoint, cn) in [
        ("client-kube-proxy.crt", "system:kube-proxy"),
        ("client-k3s-controller.crt", "system:k3s-controller"),
    ] {
        let (status, body) = s.request(endpoint, "worker-1", "pw-1", None, &pem_file);
        assert_eq!(status, 200, "{endpoint}: {body}");
        let c = subject_of(&body);
        assert_eq!(c.subject.common_name.as_deref(), Some(cn));
        assert!(c.subject.organizations.is_empty());
    }

    // The binding is listed, with what was issued.
    let out = rotor_ok(&s.dir, &["node", "list", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes[0]["name"], "worker-1");
    for kind in [
        "client-kubelet",
        "serving-kubelet",
        "client-kube-proxy",
        "client-k3s-controller",
    ] {
        assert!(
            nodes[0]["certificates"][kind].is_string(),
            "{kind}: {nodes}"
        );
    }
    // Every review is in the decision log, acted on and shadowed by the candidate bundle.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["hook"] == "csr")
        .collect();
    let acted: Vec<_> = records.iter().filter(|r| r["role"] == "acted").collect();
    let shadowed: Vec<_> = records.iter().filter(|r| r["role"] == "shadow").collect();
    assert_eq!(acted.len(), 5, "{records:?}");
    assert_eq!(shadowed.len(), 5, "{records:?}");
    assert!(
        acted
            .iter()
            .any(|r| r["subject"]["csr"] == "worker-1 ClientKubelet" && r["decision"] == "approve"),
        "{acted:?}"
    );
    assert!(
        acted.iter().any(|r| r["decision"] == "deny"),
        "the refused address: {acted:?}"
    );
    assert!(
        shadowed
            .iter()
            .all(|r| r["bundle"] == "strict" && r["disagrees"].is_boolean())
    );
    let (_, page) = s.serve.get("/metrics");
    if let Some(samples) = parse_metrics(&page) {
        assert_eq!(
            value(
                &samples,
                "rotor_supervisor_requests_total",
                &[("endpoint", "ClientKubelet"), ("status", "200")]
            ),
            1.0
        );
    }
}

#[test]
fn wrong_and_hostile_requests_get_their_status_and_nothing_is_signed() {
    let Some(s) = Server::start(&[]) else { return };
    let (der, _) = agent_csr();
    let csr = s.write("agent.csr", &der);
    let (status, body) = s.request("client-kubelet.crt", "node-a", "pw-a", None, &csr);
    assert_eq!(status, 200, "{body}");

    let garbage = s.write("garbage", b"this is no CSR");
    let huge = s.write("huge", &vec![b'x'; 70 * 1024]);
    let masters = {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        params.distinguished_name.push(DnType::CommonName, "evil");
        s.write("masters.csr", params.serialize_request(&key).unwrap().der())
    };
    let extra_names = {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["node-a".to_string(), "kubernetes".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "system:node:node-a");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        s.write("extra.csr", params.serialize_request(&key).unwrap().der())
    };
    // A CSR signed by one key carrying another's public key: no proof of possession.
    let tampered = {
        let signer = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        let mut bad = params.serialize_request(&signer).unwrap().der().to_vec();
        let mine = signer.public_key_raw().to_vec();
        let at = bad
            .windows(mine.len())
            .position(|w| w == mine.as_slice())
            .unwrap();
        bad[at..at + mine.len()].copy_from_slice(other.public_key_raw());
        s.write("tampered.csr", &bad)
    };

    for (what, auth) in [
        ("wrong token", Some("node:wrong")),
        ("no credentials", None),
    ] {
        let mut all: Vec<&str> = Vec::new();
        if let Some(a) = auth {
            all.extend(["-u", a]);
        }
        all.extend([
            "-H",
            "k3s-Node-Name: node-a",
            "-H",
            "k3s-Node-Password: pw-a",
        ]);
        let (status, text) = s.curl(&all, "/v1-k3s/client-kubelet.crt", Some(&csr));
        assert_eq!(status, 401, "{what}: {text}");
        assert!(text.contains("unauthorized"), "{what}: {text}");
        assert!(!text.contains("BEGIN CERTIFICATE"), "{what}");
    }
    for (what, node, password, body, expected, reason) in [
        (
            "another node password",
            "node-a",
            "not-pw-a",
            &csr,
            403,
            "hash does not match",
        ),
        (
            "garbage body",
            "node-a",
            "pw-a",
            &garbage,
            400,
            "body: not a certificate signing request",
        ),
        (
            "oversized body",
            "node-a",
            "pw-a",
            &huge,
            413,
            "body: more than",
        ),
        (
            "system:masters asked for",
            "node-a",
            "pw-a",
            &masters,
            403,
            "SubjectNotForEndpoint",
        ),
        (
            "extra names asked for",
            "node-a",
            "pw-a",
            &extra_names,
            403,
            "SubjectNotForEndpoint",
        ),
        (
            "no proof of possession",
            "node-a",
            "pw-a",
            &tampered,
            403,
            "InvalidSignature",
        ),
        (
            "a name that is no node name",
            "node_a!",
            "pw-a",
            &csr,
            400,
            "k3s-Node-Name",
        ),
    ] {
        let (status, text) = s.request("client-kubelet.crt", node, password, None, body);
        assert_eq!(status, expected, "{what}: {text}");
        assert!(text.contains(reason), "{what}: {text}");
        assert!(!text.contains("BEGIN CERTIFICATE"), "{what}");
    }
    // Missing node headers name the header.
    let auth = format!("node:{}", s.password);
    let (status, text) = s.curl(
        &["-u", &auth, "-H", "k3s-Node-Name: node-a"],
        "/v1-k3s/client-kubelet.crt",
        Some(&csr),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("k3s-Node-Password"), "{text}");
    // The serving endpoint with an address that is no address.
    let (status, text) = s.request(
        "serving-kubelet.crt",
        "node-a",
        "pw-a",
        Some("10.0.0.1,nope"),
        &csr,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("k3s-Node-IP"), "{text}");

    // A name the client asks for (SNI) is never added to the endpoint's certificate: curl,
    // trusting the CA, refuses it for that name.
    let resolve = format!("unknown.example:{}:127.0.0.1", s.port);
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30", "--cacert"])
        .arg(&s.ca)
        .args(["--resolve", &resolve])
        .arg(format!("https://unknown.example:{}/cacerts", s.port))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(60),
        "curl refuses the certificate for a name it was not issued for"
    );
    // Too many headers: refused before anything is read.
    let many: Vec<String> = (0..100).map(|i| format!("X-Filler-{i}: {i}")).collect();
    let mut args: Vec<&str> = Vec::new();
    for h in &many {
        args.extend(["-H", h.as_str()]);
    }
    let (status, _) = s.curl(&args, "/v1-k3s/readyz", None);
    assert_eq!(status, 431, "over the header limit");

    // server-bootstrap (every CA key) is not served unless asked for.
    let server_auth = format!("server:{}", s.password);
    let (status, text) = s.curl(&["-u", &server_auth], "/v1-k3s/server-bootstrap", None);
    assert_eq!(status, 404, "{text}");
    assert!(!text.contains("Content"), "{text}");

    // The server's own name, its addresses, loopback and the service network are no node's;
    // a refused request binds nothing.
    for (what, endpoint, node, ips, reason) in [
        (
            "the server's node name",
            "client-kubelet.crt",
            "server-1",
            None,
            "this server's own node name",
        ),
        (
            "the API server's name",
            "client-kubelet.crt",
            "kubernetes.default",
            None,
            "a name of the API server",
        ),
        (
            "the server's address",
            "serving-kubelet.crt",
            "ghost-1",
            Some("127.0.0.1"),
            "127.0.0.1",
        ),
        (
            "the service network",
            "serving-kubelet.crt",
            "ghost-2",
            Some("10.43.0.1"),
            "service network",
        ),
    ] {
        let (status, text) = s.request(endpoint, node, "pw", ips, &csr);
        assert_eq!(status, 403, "{what}: {text}");
        assert!(text.contains(reason), "{what}: {text}");
    }
    let listed = rotor_ok(&s.dir, &["node", "list", "-o", "json"]);
    for name in ["server-1", "kubernetes.default", "ghost-1", "ghost-2"] {
        assert!(
            !listed.contains(&format!("\"{name}\"")),
            "{name} bound: {listed}"
        );
    }
    let (status, text) = s.curl(&["-u", &auth], "/v1-k3s/readyz", None);
    assert_eq!((status, text.trim()), (200, "ok"));

    // One node asking too often is slowed down; another is not.
    let mut limited = false;
    for _ in 0..30 {
        let (status, _) = s.request("client-kubelet.crt", "node-a", "pw-a", None, &csr);
        limited |= status == 429;
    }
    assert!(limited, "a burst of 30 requests for one node is limited");
    let (status, body) = s.request("client-kubelet.crt", "node-b", "pw-b", None, &csr);
    assert_eq!(status, 200, "{body}");
    // Another address sending node-b's name with wrong passwords is slowed down itself, and
    // never locks node-b out.
    let mut refused = false;
    for _ in 0..30 {
        let (status, _) = s.request_with(
            &["--interface", "127.0.0.2"],
            "client-kubelet.crt",
            "node-b",
            "guess",
            None,
            &csr,
        );
        refused |= status == 429;
    }
    assert!(refused, "failures from one address are limited");
    let (status, body) = s.request("client-kubelet.crt", "node-b", "pw-b", None, &csr);
    assert_eq!(status, 200, "{body}");

    // A deleted binding frees the name for a new password.
    rotor_ok(&s.dir, &["node", "delete", "node-b"]);
    std::thread::sleep(Duration::from_millis(10));
    let (status, body) = s.request("client-kubelet.crt", "node-b", "new-pw", None, &csr);
    assert_eq!(status, 200, "{body}");
    let (code, _, err) = rotor_at(&s.dir, &["node", "delete", "nobody"]);
    assert_eq!(code, 2);
    assert!(err.contains("no binding"), "{err}");
}

/// A thousand connections that never speak (slowloris) do not stop a node from getting its
/// certificate, and the server closes each once its handshake time (10 s) is up.
#[test]
fn a_thousand_silent_connections_never_stop_the_others() {
    use std::io::Read;
    let Some(s) = Server::start(&[]) else { return };
    // This test holds a thousand descriptors itself.
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current = limit.maximum;
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, limit);
    let silent: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap())
        .collect();
    let (der, _) = agent_csr();
    let csr = s.write("busy.csr", &der);
    let started = std::time::Instant::now();
    let (status, body) = s.request("client-kubelet.crt", "busy-node", "pw", None, &csr);
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered while a thousand connections sat idle"
    );
    // Each silent connection is closed by the server, not left to hold a slot.
    for mut c in silent.into_iter().step_by(100) {
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("a silent connection is still open after 60 s")
            }
            Err(_) => {} // reset by the server: closed too
            Ok(n) => panic!("the server sent {n} bytes to a silent client"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}
