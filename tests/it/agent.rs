//! `rotor agent` against real `rotor serve --supervisor-listen` servers on loopback: it joins
//! (the token's CA hash checked), writes k3s's agent layout through generations, keeps its
//! keys, renews by the local renewal policy, refuses what it must, and its certificates work:
//! openssl verifies them, a rustls mutual-TLS handshake accepts them, and the kubeconfigs it
//! writes are loaded by the Python Kubernetes client against an HTTPS server that requires the
//! client certificate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::serve::{init_k3s, wait_for};
use crate::supervisor::Server;

/// The files an agent writes in `agent/`.
const FILES: &[&str] = &[
    "client-kubelet.crt",
    "client-kubelet.key",
    "serving-kubelet.crt",
    "serving-kubelet.key",
    "client-kube-proxy.crt",
    "client-kube-proxy.key",
    "client-k3s-controller.crt",
    "client-k3s-controller.key",
    "client-ca.crt",
    "server-ca.crt",
    "kubelet.kubeconfig",
    "kubeproxy.kubeconfig",
    "k3scontroller.kubeconfig",
    "node-password",
    "rotor-agent.json",
];

/// `rotor --data-dir DIR agent ARGS` with `env`: its output.
pub(crate) fn agent_run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(rotor_bin());
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("agent")
        .args(args)
        .env("ROTOR_PLUGIN_CACHE", shared_cache())
        .env_remove("ROTOR_BUNDLE")
        .env_remove("ROTOR_TOKEN")
        .env_remove("ROTOR_TEST_CLOCK")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The agent token of a server data dir: `K10<hash>::node:<password>`.
pub(crate) fn agent_token(server_dir: &Path) -> String {
    let token = std::fs::read_to_string(server_dir.join("server/token")).unwrap();
    let (hash, creds) = token.trim().split_once("::").unwrap();
    let password = creds.split_once(':').unwrap().1;
    format!("{hash}::node:{password}")
}

/// Every certificate of the agent matches its key, chains to its CA, and its kubeconfig names
/// files that exist: the state a reader may see at any moment.
pub(crate) fn assert_consistent(dir: &Path) {
    let agent = dir.join("agent");
    for (name, ca) in [
        ("serving-kubelet", "server-ca.crt"),
        ("client-kubelet", "client-ca.crt"),
        ("client-kube-proxy", "client-ca.crt"),
        ("client-k3s-controller", "client-ca.crt"),
    ] {
        let cert = pem_certs(&agent.join(format!("{name}.crt")));
        let key = std::fs::read(agent.join(format!("{name}.key"))).unwrap();
        let key = rotor::pki::PrivateKey::from_pem(name, &key).unwrap();
        assert!(
            key.matches_certificate(&cert[0]),
            "{name}: the key is not the certificate's"
        );
        let ca = pem_certs(&agent.join(ca));
        assert!(
            rotor::pki::signed_by(&cert[0], &ca[0]),
            "{name}: not signed by {}",
            agent.join(name).display()
        );
    }
    for kc in [
        "kubelet.kubeconfig",
        "kubeproxy.kubeconfig",
        "k3scontroller.kubeconfig",
    ] {
        let text = std::fs::read_to_string(agent.join(kc)).unwrap();
        for line in text.lines() {
            let line = line.trim();
            for field in [
                "certificate-authority:",
                "client-certificate:",
                "client-key:",
            ] {
                if let Some(path) = line.strip_prefix(field) {
                    assert!(
                        Path::new(path.trim()).is_file(),
                        "{kc}: {} is not a file",
                        path.trim()
                    );
                }
            }
        }
    }
}

/// Every certificate that can be seen beside its key is that key's.
fn assert_pairs_match(dir: &Path) {
    for name in [
        "serving-kubelet",
        "client-kubelet",
        "client-kube-proxy",
        "client-k3s-controller",
    ] {
        let (crt, key) = (
            dir.join(format!("agent/{name}.crt")),
            dir.join(format!("agent/{name}.key")),
        );
        if crt.exists() && key.exists() {
            let key = rotor::pki::PrivateKey::from_pem(name, &read(&key)).unwrap();
            assert!(key.matches_certificate(&pem_certs(&crt)[0]), "{name}");
        }
    }
}

fn openssl_verify(ca: &Path, cert: &Path) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify {}: {}",
        cert.display(),
        text(&out)
    );
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Join, run again (everything kept), renew at a later time (keys kept), and use what it got.
#[test]
fn an_agent_joins_keeps_and_renews_its_certificates_and_they_work() {
    if !require_command("openssl") {
        return;
    }
    let Some(server) = Server::start(&[]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent-1");
    let url = format!("https://127.0.0.1:{}", server.port);
    let token = agent_token(&server.dir);
    let join = [
        "--once",
        "--server",
        &url,
        "--token",
        &token,
        "--node-name",
        "Worker-1",
        "--node-ip",
        "10.0.0.21",
        "--apiserver",
        "https://127.0.0.1:1",
    ];
    let o = agent_run(&dir, &join, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for name in [
        "serving-kubelet",
        "client-kubelet",
        "client-kube-proxy",
        "client-k3s-controller",
    ] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with("issued")
                && l.contains(name)
                && l.contains("missing")),
            "{name}:\n{out}"
        );
    }
    assert!(out.contains("written: generation 2 is live"), "{out}");
    let agent = dir.join("agent");
    for f in FILES {
        let p = agent.join(f);
        assert!(
            std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{f} is a link into the live generation"
        );
        assert!(p.is_file(), "{f}");
    }
    for (f, mode) in [
        ("client-kubelet.key", 0o600),
        ("node-password", 0o600),
        ("kubelet.kubeconfig", 0o600),
        ("client-kubelet.crt", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(agent.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            mode,
            "{f}"
        );
    }
    assert_consistent(&dir);
    // The servers' CA, exactly; the certificates verify with openssl.
    assert_eq!(read(&agent.join("server-ca.crt")), read(&server.ca));
    assert_eq!(
        read(&agent.join("client-ca.crt")),
        read(&server.dir.join("server/tls/client-ca.crt"))
    );
    openssl_verify(
        &agent.join("server-ca.crt"),
        &agent.join("serving-kubelet.crt"),
    );
    for c in [
        "client-kubelet",
        "client-kube-proxy",
        "client-k3s-controller",
    ] {
        openssl_verify(
            &agent.join("client-ca.crt"),
            &agent.join(format!("{c}.crt")),
        );
    }
    // The subjects the host fixes: the node name lower-cased, its address.
    let facts = |f: &str| {
        rotor::facts::parse_certificates_pem(f, &read(&agent.join(f)))
            .unwrap()
            .remove(0)
    };
    let serving = facts("serving-kubelet.crt");
    assert_eq!(
        serving.subject.common_name.as_deref(),
        Some("system:node:worker-1")
    );
    assert_eq!(serving.sans.dns_names, ["worker-1"]);
    assert_eq!(
        serving.sans.ip_addresses,
        ["10.0.0.21".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        facts("client-kube-proxy.crt")
            .subject
            .common_name
            .as_deref(),
        Some("system:kube-proxy")
    );
    // The server knows the node now.
    let list = rotor_ok(&server.dir, &["node", "list", "-o", "json"]);
    assert!(list.contains("\"worker-1\""), "{list}");

    // Mutual TLS: the kubelet's serving certificate, as the API server reaches it (asked for
    // its address, with the API server's kubelet client certificate)...
    let client_ca = pem_certs(&agent.join("client-ca.crt"));
    let server_ca = pem_certs(&agent.join("server-ca.crt"));
    let cn = tls_handshake_named(
        "10.0.0.21",
        (
            &agent.join("serving-kubelet.crt"),
            &agent.join("serving-kubelet.key"),
        ),
        &client_ca,
        (
            &server.dir.join("server/tls/client-kube-apiserver.crt"),
            &server.dir.join("server/tls/client-kube-apiserver.key"),
        ),
        &server_ca,
    )
    .unwrap();
    assert_eq!(cn, "system:apiserver");
    // ... and the kubelet's client certificate through its kubeconfig, loaded by the Python
    // Kubernetes client, against an HTTPS server with the API server's certificate that
    // requires a client certificate from the client CA.
    kubeconfig_works(
        &server.dir,
        &dir,
        "kubelet.kubeconfig",
        "system:node:worker-1",
    );
    kubeconfig_works(
        &server.dir,
        &dir,
        "kubeproxy.kubeconfig",
        "system:kube-proxy",
    );

    // Again: nothing to do, nothing written, the same files.
    let before: Vec<Vec<u8>> = FILES.iter().map(|f| read(&agent.join(f))).collect();
    let o = agent_run(&dir, &join, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("keep"))
            .count(),
        4,
        "{out}"
    );
    assert!(out.contains("nothing changed on disk"), "{out}");
    let after: Vec<Vec<u8>> = FILES.iter().map(|f| read(&agent.join(f))).collect();
    assert!(before == after, "a pass with nothing to do changed files");

    // 300 days later (the agent's clock): the renewal policy renews every certificate, with
    // the same keys, and the node password is the one it joined with.
    let clock = tmp.path().join("agent.clock");
    std::fs::write(
        &clock,
        rfc3339(rotor::clock::system_now() + time::Duration::days(300)),
    )
    .unwrap();
    let o = agent_run(
        &dir,
        &join,
        &[("ROTOR_TEST_CLOCK", clock.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("renewed") && l.contains("policy"))
            .count(),
        4,
        "{out}"
    );
    for (i, f) in FILES.iter().enumerate() {
        let now = read(&agent.join(f));
        if f.ends_with(".key") || *f == "node-password" || f.ends_with("ca.crt") {
            assert!(now == before[i], "{f} changed");
        } else if f.ends_with(".crt") {
            assert!(now != before[i], "{f} was not renewed");
        }
    }
    assert_consistent(&dir);
}

/// A Python HTTPS server with the API server's certificate requires a client certificate
/// from the client CA and answers `/version` with the client certificate's CN; the Python
/// Kubernetes client loads `kubeconfig` (with its server rewritten to that server) and asks.
fn kubeconfig_works(server_dir: &Path, agent_dir: &Path, kubeconfig: &str, want_cn: &str) {
    if !require("python3 with the kubernetes package", python_kubernetes()) {
        return;
    }
    let script = r#"
import http.server, json, ssl, sys, threading
import kubernetes

tls, client_ca, kubeconfig = sys.argv[1], sys.argv[2], sys.argv[3]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        cert = self.connection.getpeercert()
        cn = [v for rdn in cert["subject"] for (k, v) in rdn if k == "commonName"][0]
        body = json.dumps({"major": "1", "minor": "37", "gitVersion": cn, "gitCommit": "x",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go",
            "compiler": "gc", "platform": "linux/amd64"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(tls + "/serving-kube-apiserver.crt", tls + "/serving-kube-apiserver.key")
ctx.load_verify_locations(client_ca)
ctx.verify_mode = ssl.CERT_REQUIRED
httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
threading.Thread(target=httpd.serve_forever, daemon=True).start()

loader = kubernetes.config.kube_config.KubeConfigLoader(
    config_dict=__import__("yaml").safe_load(open(kubeconfig)))
conf = kubernetes.client.Configuration()
loader.load_and_set(conf)
conf.host = "https://127.0.0.1:%d" % httpd.server_address[1]
api = kubernetes.client.VersionApi(kubernetes.client.ApiClient(conf))
print(api.get_code().git_version)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(server_dir.join("server/tls"))
        .arg(agent_dir.join("agent/client-ca.crt"))
        .arg(agent_dir.join("agent").join(kubeconfig))
        .output()
        .unwrap();
    assert!(out.status.success(), "{kubeconfig}: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want_cn,
        "{kubeconfig}"
    );
}

fn python_kubernetes() -> bool {
    Command::new("python3")
        .args(["-c", "import kubernetes, yaml"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What an agent must refuse, and what the servers refuse it: each with its reason, nothing
/// signed, nothing of a refused join on disk.
#[test]
fn wrong_tokens_passwords_names_and_data_dirs_are_refused() {
    let Some(server) = Server::start(&[
        "--supervisor-node-burst",
        "1000",
        "--supervisor-node-rate",
        "1000",
    ]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let token = agent_token(&server.dir);
    let run = |dir: &Path, token: &str, node: &str, extra: &[&str]| {
        let mut args = vec![
            "--once",
            "--server",
            &url,
            "--token",
            token,
            "--node-name",
            node,
            "--node-ip",
            "10.0.0.31",
        ];
        args.extend_from_slice(extra);
        agent_run(dir, &args, &[])
    };
    let certs_of = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("agent"))
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "crt" || e == "key"))
                    .collect()
            })
            .unwrap_or_default()
    };

    // A token pinning another CA: refused before anything is asked or written.
    let other = format!(
        "K10{}::node:{}",
        "ab".repeat(32),
        token.rsplit(':').next().unwrap()
    );
    let d = tmp.path().join("wrong-hash");
    let o = run(&d, &other, "w1", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("token CA hash does not match the Cluster CA certificate hash"),
        "{}",
        text(&o)
    );
    assert!(certs_of(&d).is_empty());

    // A token that pins nothing: refused unless the operator says so.
    let unpinned = format!("K10::node:{}", token.rsplit(':').next().unwrap());
    let d = tmp.path().join("unpinned");
    let o = run(&d, &unpinned, "w2", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--insecure-unpinned-token"),
        "{}",
        text(&o)
    );
    assert!(certs_of(&d).is_empty());
    let o = run(&d, &unpinned, "w2", &["--insecure-unpinned-token"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("the token pins no CA"), "{}", text(&o));

    // A wrong token password: 401, nothing issued.
    let d = tmp.path().join("bad-password");
    let bad = format!(
        "{}::node:not-the-password",
        token.split("::").next().unwrap()
    );
    let o = run(&d, &bad, "w3", &[]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("401"), "{}", text(&o));
    assert!(certs_of(&d).is_empty());

    // Another machine claiming a bound name (its own node password): 403, nothing signed.
    let d = tmp.path().join("impostor");
    let o = run(&d, &token, "w2", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert_eq!(t.matches("FAILED").count(), 4, "{t}");
    assert!(t.contains("hash does not match"), "{t}");
    assert!(certs_of(&d).is_empty(), "{:?}", certs_of(&d));

    // A loopback address in the serving certificate: that one is refused, the rest issued.
    let d = tmp.path().join("loopback");
    let o = agent_run(
        &d,
        &[
            "--once",
            "--server",
            &url,
            "--token",
            &token,
            "--node-name",
            "w4",
            "--node-ip",
            "127.0.0.5",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.lines().any(|l| l.contains("FAILED")
            && l.contains("serving-kubelet")
            && l.contains("loopback")),
        "{t}"
    );
    assert_eq!(t.matches("FAILED").count(), 1, "{t}");
    assert!(!d.join("agent/serving-kubelet.crt").exists());
    assert!(d.join("agent/client-kubelet.crt").is_file());

    // The server's own node name.
    let d = tmp.path().join("server-name");
    let o = run(&d, &token, "server-1", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("this server's own node name"),
        "{}",
        text(&o)
    );
    assert!(certs_of(&d).is_empty());

    // A mistyped hash on a data dir that joined long ago: refused, nothing changed.
    let joined = tmp.path().join("unpinned");
    let before = tree(&joined);
    let o = run(&joined, &other, "w2", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("neither the servers' CA")
            && text(&o).contains("nor one this agent has trusted"),
        "{}",
        text(&o)
    );
    assert_eq!(tree(&joined), before);
    // Said once, not twice.
    assert_eq!(
        text(&o).matches("neither the servers' CA").count(),
        1,
        "{}",
        text(&o)
    );

    // A first join refused for its name holds no certificate: it may be retried as another.
    let o = run(&tmp.path().join("server-name"), &token, "renamed", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // A data dir is one node's; a server's data dir is not an agent's.
    let o = run(&tmp.path().join("unpinned"), &token, "w9", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("is the agent of k3s node w2"),
        "{}",
        text(&o)
    );
    let before = tree(&server.dir);
    let o = run(&server.dir, &token, "w9", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("rotor server's data dir"), "{}", text(&o));
    assert_eq!(tree(&server.dir), before);

    // Bad flags: named, exit 2.
    for (args, needle) in [
        (vec!["--server", "http://127.0.0.1:1"], "HTTPS only"),
        (vec!["--server", &url, "--jitter", "2"], "not a fraction"),
        (vec!["--server", &url, "--node-name", "a_b"], "--node-name"),
    ] {
        let mut all = vec!["--once", "--token", &token];
        all.extend(args);
        let o = agent_run(&tmp.path().join("flags"), &all, &[]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains(needle), "{needle}: {}", text(&o));
    }
}

/// An agent killed at every step of its first join and of a renewal: the next run recovers,
/// and what a reader sees is always a whole generation (nothing, or every file consistent).
#[test]
fn an_agent_killed_at_every_write_step_recovers() {
    let Some(server) = Server::start(&[
        "--supervisor-node-burst",
        "100000",
        "--supervisor-node-rate",
        "100000",
    ]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let token = agent_token(&server.dir);
    let args = |node: &'static str| {
        vec![
            "--once".to_string(),
            "--server".into(),
            url.clone(),
            "--token".into(),
            token.clone(),
            "--node-name".into(),
            node.into(),
            "--node-ip".into(),
            "10.0.0.41".into(),
        ]
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let steps = |o: &Output| {
        String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.starts_with("rotor: step "))
            .count()
    };
    let clock = tmp.path().join("later.clock");
    std::fs::write(
        &clock,
        rfc3339(rotor::clock::system_now() + time::Duration::days(300)),
    )
    .unwrap();
    // How many steps: a first join, and a renewal of a joined agent.
    let a = args("kill-join");
    let probe = tmp.path().join("probe");
    let o = agent_run(&probe, &strs(&a), &[("ROTOR_FAILPOINT_TRACE", "1")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let join_steps = steps(&o);
    let o = agent_run(
        &probe,
        &strs(&a),
        &[
            ("ROTOR_FAILPOINT_TRACE", "1"),
            ("ROTOR_TEST_CLOCK", clock.to_str().unwrap()),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let renew_steps = steps(&o);
    assert!(
        join_steps > 10 && renew_steps > 10,
        "{join_steps} {renew_steps}"
    );

    for k in 1..=join_steps {
        let d = tmp.path().join(format!("join-{k}"));
        let mut a = a.clone();
        a[6] = format!("join-{k}");
        let o = agent_run(&d, &strs(&a), &[("ROTOR_FAILPOINT", &format!("kill@{k}"))]);
        assert!(
            text(&o).contains("failpoint: killed"),
            "step {k}: {}",
            text(&o)
        );
        // What a reader sees now: each certificate with its own key (a first join's links
        // appear one by one after its switch; the next run finishes them).
        assert_pairs_match(&d);
        let o = agent_run(&d, &strs(&a), &[]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "after a kill at step {k}: {}",
            text(&o)
        );
        assert_consistent(&d);
    }
    // Renewals, from a copy of the joined agent each time.
    for k in 1..=renew_steps {
        let d = tmp.path().join(format!("renew-{k}"));
        copy_tree(&probe, &d);
        let before = read(&d.join("agent/client-kubelet.crt"));
        let o = agent_run(
            &d,
            &strs(&a),
            &[
                ("ROTOR_FAILPOINT", &format!("kill@{k}")),
                ("ROTOR_TEST_CLOCK", clock.to_str().unwrap()),
            ],
        );
        assert!(
            text(&o).contains("failpoint: killed"),
            "step {k}: {}",
            text(&o)
        );
        assert_consistent(&d);
        let o = agent_run(&d, &strs(&a), &[]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "after a kill at step {k}: {}",
            text(&o)
        );
        assert_consistent(&d);
        let _ = before;
    }
}

/// `cp -a`: the links of a data dir stay links.
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A running agent: serves its status, renews when the policy says (the test clock), picks
/// up a CA rotation on the server by itself (its old trust still reaches the server through
/// the cross-signed root), and stops on SIGTERM.
#[test]
fn a_running_agent_follows_a_ca_rotation_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut server) = Server::start(&["--max-interval", "365d"]) else {
        return;
    };
    let url = format!("https://127.0.0.1:{}", server.port);
    let token = agent_token(&server.dir);
    let dir = tmp.path().join("agent");
    let mut child = Command::new(rotor_bin())
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "agent",
            "--server",
            &url,
            "--token",
            &token,
            "--node-name",
            "runner",
            "--node-ip",
            "10.0.0.51",
            "--check-interval",
            "1s",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("ROTOR_PLUGIN_CACHE", shared_cache())
        .env_remove("ROTOR_TEST_CLOCK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = collect(&mut child);
    wait_for("the agent's first pass", Duration::from_secs(60), || {
        out.lock().unwrap().contains("next check at")
    });
    let port: u16 = err
        .lock()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rotor agent: listening on 127.0.0.1:"))
        .expect("listening")
        .trim()
        .parse()
        .unwrap();
    let (status, ready) = crate::serve::http_get(port, "/readyz");
    assert_eq!((status, ready.trim()), (200, "ready"));
    let (_, metrics) = crate::serve::http_get(port, "/metrics");
    assert!(
        metrics.contains(
            "rotor_agent_certificate_expiration_timestamp_seconds{certificate=\"client-kubelet\"}"
        ),
        "{metrics}"
    );
    let old_serving = read(&dir.join("agent/serving-kubelet.crt"));

    // Rotate the server's CAs (cross-signed by the old ones) and let the server take them.
    let staged = tmp.path().join("rotate");
    rotor_ok(
        &server.dir,
        &[
            "certificate",
            "rotate-default-ca",
            "--out",
            staged.to_str().unwrap(),
        ],
    );
    rotor_ok(
        &server.dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
        ],
    );
    server.serve.signal("HUP");
    server.serve.advance(t0() + time::Duration::seconds(1));
    let new_ca = pem_certs(&server.dir.join("server/tls/server-ca.crt"));
    wait_for(
        "the agent to re-issue under the new CA",
        Duration::from_secs(120),
        || {
            std::fs::read(dir.join("agent/server-ca.crt"))
                .is_ok_and(|b| rotor::facts::certificate_ders("ca", &b).is_ok_and(|d| d == new_ca))
                && pem_certs(&dir.join("agent/serving-kubelet.crt"))
                    .first()
                    .is_some_and(|c| rotor::pki::signed_by(c, &new_ca[0]))
        },
    );
    wait_for(
        "every certificate under the new CAs",
        Duration::from_secs(60),
        || {
            let o = out.lock().unwrap();
            o.contains("the servers' CA bundle changed")
                && o.matches("not issued by the current").count() >= 4
        },
    );
    assert_consistent(&dir);
    assert!(read(&dir.join("agent/serving-kubelet.crt")) != old_serving);
    let (_, metrics) = crate::serve::http_get(port, "/metrics");
    assert!(
        metrics.contains("rotor_agent_server_ca_changes_total 1"),
        "{metrics}"
    );

    // A second agent on the same data dir is refused at once, naming the first.
    let started = std::time::Instant::now();
    let o = agent_run(
        &dir,
        &[
            "--once",
            "--server",
            &url,
            "--token",
            &token,
            "--node-name",
            "runner",
            "--node-ip",
            "10.0.0.51",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("another rotor agent runs on"),
        "{}",
        text(&o)
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The servers gone: passes fail, but a node whose certificates are all valid stays ready.
    let (code, _) = server.serve.terminate();
    assert_eq!(code, 0);
    wait_for("a failed pass", Duration::from_secs(60), || {
        let (_, m) = crate::serve::http_get(port, "/metrics");
        m.contains("rotor_agent_passes_total{result=\"failed\"}")
    });
    let (status, ready) = crate::serve::http_get(port, "/readyz");
    assert_eq!((status, ready.trim()), (200, "ready"));
    assert!(
        err.lock().unwrap().contains("no server answered"),
        "{}",
        err.lock().unwrap()
    );

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-s", "TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status, Some(0), "{}", err.lock().unwrap());
}

/// Three servers on one etcd: an agent joins through any of them, a server killed in the
/// middle of its request leaves nothing half-written (the request lands on the next server),
/// and it keeps working with one etcd member gone.
#[test]
fn three_servers_on_one_etcd_any_live_server_will_do() {
    use crate::datastores::init_ok;
    use crate::etcd::Etcd;
    use crate::serve::Serve;
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut etcd) = Etcd::start(tmp.path(), 3) else {
        return;
    };
    let dirs: Vec<PathBuf> = (1..=3).map(|n| tmp.path().join(format!("s{n}"))).collect();
    let (_, token) = init_ok(&dirs[0], 1, &etcd, &[]);
    init_ok(&dirs[1], 2, &etcd, &["--token", &token.render()]);
    init_ok(&dirs[2], 3, &etcd, &["--token", &token.render()]);
    let now =
        time::OffsetDateTime::from_unix_timestamp(time::OffsetDateTime::now_utc().unix_timestamp())
            .unwrap();
    // Server 1 stops in the middle of a certificate request: approved, the name bound, not
    // signed yet.
    let wait = Path::new("wait:supervisor:signing");
    let start = |dir: &Path, env: &[(&str, &Path)]| {
        let serve = Serve::start(
            dir,
            now,
            &[
                "--listen",
                "127.0.0.1:0",
                "--supervisor-listen",
                "127.0.0.1:0",
            ],
            env,
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
    let (s1, p1) = start(&dirs[0], &[("ROTOR_FAILPOINT", wait)]);
    let (_s2, p2) = start(&dirs[1], &[]);
    let (_s3, p3) = start(&dirs[2], &[]);
    let servers = format!("https://127.0.0.1:{p1},https://127.0.0.1:{p2},https://127.0.0.1:{p3}");
    let token = agent_token(&dirs[0]);
    let dir = tmp.path().join("agent");
    let args = |node: &str| {
        vec![
            "--once".to_string(),
            "--server".into(),
            servers.clone(),
            "--token".into(),
            token.clone(),
            "--node-name".into(),
            node.into(),
            "--node-ip".into(),
            "10.0.1.1".into(),
        ]
    };
    let a = args("ha-1");
    let mut child = Command::new(rotor_bin())
        .arg("--data-dir")
        .arg(&dir)
        .arg("agent")
        .args(&a)
        .env("ROTOR_PLUGIN_CACHE", shared_cache())
        .env_remove("ROTOR_TEST_CLOCK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = collect(&mut child);
    wait_for(
        "server 1 to stop mid-request",
        Duration::from_secs(60),
        || s1.stderr().contains("waiting at supervisor:signing"),
    );
    s1.signal("KILL");
    let code = wait_exit(&mut child, Duration::from_secs(120));
    let said = format!("{}{}", out.lock().unwrap(), err.lock().unwrap());
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("pass through https://127.0.0.1:{p2}")),
        "{said}"
    );
    assert_consistent(&dir);
    let list = rotor_ok(&dirs[2], &["node", "list", "-o", "json"]);
    assert!(list.contains("\"ha-1\""), "{list}");

    // One etcd member gone: the agent renews (its clock 300 days on) and another joins,
    // through the servers that are left.
    etcd.kill(0);
    let clock = tmp.path().join("agent.clock");
    std::fs::write(
        &clock,
        rfc3339(rotor::clock::system_now() + time::Duration::days(300)),
    )
    .unwrap();
    let o = agent_run(
        &dir,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("ROTOR_TEST_CLOCK", clock.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("renewed")
            .count(),
        4,
        "{}",
        text(&o)
    );
    assert_consistent(&dir);
    let b = args("ha-2");
    let o = agent_run(
        &tmp.path().join("agent-2"),
        &b.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_consistent(&tmp.path().join("agent-2"));
}

/// Servers on one machine without etcd: the directory backend's bindings are per data dir.
#[test]
fn an_agent_fails_over_between_servers() {
    let Some(a) = Server::start(&[]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let token = agent_token(&a.dir);
    let servers = format!("https://127.0.0.1:{dead},https://127.0.0.1:{}", a.port);
    let o = agent_run(
        &dir,
        &[
            "--once",
            "--server",
            &servers,
            "--token",
            &token,
            "--node-name",
            "fo",
            "--node-ip",
            "10.0.0.61",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("pass through https://127.0.0.1:{}", a.port)),
        "{}",
        text(&o)
    );
    // No server at all: the error names each, exit 2, nothing changed.
    let before = tree(&dir);
    let o = agent_run(
        &dir,
        &[
            "--once",
            "--server",
            &format!("https://127.0.0.1:{dead}"),
            "--token",
            &token,
            "--node-name",
            "fo",
            "--node-ip",
            "10.0.0.61",
            "--request-timeout",
            "2s",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no server answered"), "{}", text(&o));
    assert_eq!(tree(&dir), before);
    let _ = init_k3s;
}

/// Standard output and error of `child`, collected as they come.
pub(crate) fn collect(
    child: &mut std::process::Child,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::{BufRead, BufReader, Read};
    fn pump(pipe: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
        let sink = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let s = std::sync::Arc::clone(&sink);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let mut t = s.lock().unwrap();
                t.push_str(&line.unwrap_or_default());
                t.push('\n');
            }
        });
        sink
    }
    (
        pump(child.stdout.take().unwrap()),
        pump(child.stderr.take().unwrap()),
    )
}

/// The exit code of `child` within `limit` (killed and `None` after it).
pub(crate) fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One address binds at most so many new node names (its burst, then its rate); nodes it
/// already bound keep getting their certificates.
#[test]
fn an_address_binds_only_so_many_new_node_names() {
    let Some(server) = Server::start(&[
        "--supervisor-new-nodes-burst",
        "2",
        "--supervisor-new-nodes-rate",
        "0.001",
    ]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("https://127.0.0.1:{}", server.port);
    let token = agent_token(&server.dir);
    let join = |n: usize| {
        let node = format!("many-{n}");
        agent_run(
            &tmp.path().join(&node),
            &[
                "--once",
                "--server",
                &url,
                "--token",
                &token,
                "--node-name",
                &node,
                "--node-ip",
                &format!("10.0.2.{n}"),
            ],
            &[],
        )
    };
    for n in 1..=2 {
        let o = join(n);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = join(3);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert_eq!(
        t.matches("too many new node names from 127.0.0.1").count(),
        4,
        "{t}"
    );
    let list = rotor_ok(&server.dir, &["node", "list", "-o", "json"]);
    assert!(
        list.contains("many-2") && !list.contains("many-3"),
        "{list}"
    );
    // A bound node is no new name.
    let o = join(1);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
