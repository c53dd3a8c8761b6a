//! Identities, a CSR signed by the controller manager, service-account tokens across a key
//! rotation, and renewals picked up by the running apiserver, for the kubeadm and k3s layouts.

use std::process::Command;
use std::time::{Duration, Instant};

use super::harness::ControllerManager;
use super::*;

/// (credential, the user the apiserver must see, groups it must include). A credential is a
/// kubeconfig of the data dir, or `cert:CRT:KEY` (a client certificate and key).
fn identities(flavor: Flavor) -> Vec<(String, String, Vec<&'static str>)> {
    let node = format!("system:node:{NODE}");
    match flavor {
        Flavor::Kubeadm => vec![
            (
                "admin.conf".into(),
                "kubernetes-admin".into(),
                vec!["kubeadm:cluster-admins"],
            ),
            (
                "super-admin.conf".into(),
                "kubernetes-super-admin".into(),
                vec!["system:masters"],
            ),
            (
                "controller-manager.conf".into(),
                "system:kube-controller-manager".into(),
                vec![],
            ),
            (
                "scheduler.conf".into(),
                "system:kube-scheduler".into(),
                vec![],
            ),
            ("kubelet.conf".into(), node, vec!["system:nodes"]),
            (
                "cert:pki/apiserver-kubelet-client.crt:pki/apiserver-kubelet-client.key".into(),
                "kube-apiserver-kubelet-client".into(),
                vec!["kubeadm:cluster-admins"],
            ),
        ],
        Flavor::K3s => {
            vec![
            ("server/cred/admin.kubeconfig".into(), "system:admin".into(), vec!["system:masters"]),
            (
                "server/cred/supervisor.kubeconfig".into(),
                "system:k3s-supervisor".into(),
                vec!["system:masters"],
            ),
            (
                "server/cred/controller.kubeconfig".into(),
                "system:kube-controller-manager".into(),
                vec![],
            ),
            ("server/cred/scheduler.kubeconfig".into(), "system:kube-scheduler".into(), vec![]),
            (
                "server/cred/api-server.kubeconfig".into(),
                "system:apiserver".into(),
                vec!["system:masters"],
            ),
            (
                "server/cred/cloud-controller.kubeconfig".into(),
                "k3s-cloud-controller-manager".into(),
                vec![],
            ),
            (
                "cert:agent/client-kubelet.crt:agent/client-kubelet.key".into(),
                node,
                vec!["system:nodes"],
            ),
            (
                "cert:agent/client-kube-proxy.crt:agent/client-kube-proxy.key".into(),
                "system:kube-proxy".into(),
                vec![],
            ),
            (
                "cert:agent/client-k3s-controller.crt:agent/client-k3s-controller.key".into(),
                "system:k3s-controller".into(),
                vec![],
            ),
            (
                "cert:server/tls/client-kube-apiserver.crt:server/tls/client-kube-apiserver.key"
                    .into(),
                "system:apiserver".into(),
                vec!["system:masters"],
            ),
        ]
        }
    }
}

/// `kubectl auth whoami` with `credential` (see [`identities`]).
pub(crate) fn whoami_as(c: &Cluster, credential: &str) -> Result<(String, Vec<String>), String> {
    let args = ["auth", "whoami", "-o", "json"];
    let out = match credential.strip_prefix("cert:") {
        Some(pair) => {
            let (crt, key) = pair.split_once(':').unwrap();
            c.apiserver.kubectl_as(
                &c.file("server-ca"),
                &[
                    format!("--client-certificate={}", c.dir.join(crt).display()),
                    format!("--client-key={}", c.dir.join(key).display()),
                ],
                &args,
            )
        }
        None => c.kubectl(credential, &args),
    };
    whoami(&out)
}

/// Check every row of the identity table.
fn check_identities(c: &Cluster) {
    for (credential, user, groups) in identities(c.apiserver.flavor) {
        let (got, got_groups) = whoami_as(c, &credential)
            .unwrap_or_else(|e| panic!("{credential}: not authenticated: {e}"));
        assert_eq!(got, user, "{credential}");
        for g in groups {
            assert!(
                got_groups.iter().any(|x| x == g),
                "{credential}: {got_groups:?} lacks {g}"
            );
        }
        assert!(
            got_groups.iter().any(|x| x == "system:authenticated"),
            "{credential}"
        );
    }
}

/// Request-header authentication: the front-proxy client certificate vouches for `alice`.
fn check_front_proxy(c: &Cluster) {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--max-time", "10"])
        .arg("--cacert")
        .arg(c.file("server-ca"))
        .arg("--cert")
        .arg(c.file("proxy-client-cert"))
        .arg("--key")
        .arg(c.file("proxy-client-key"))
        .args(["-H", "X-Remote-User: alice", "-H", "X-Remote-Group: devs"])
        .args(["-H", "Content-Type: application/json", "-X", "POST"])
        .args([
            "-d",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
        ])
        .arg(format!(
            "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            c.apiserver.url()
        ))
        .output()
        .unwrap();
    let (user, groups) = whoami(&out).expect("request-header authentication");
    assert_eq!(user, "alice", "{}", text(&out));
    assert!(groups.iter().any(|g| g == "devs"), "{groups:?}");
}

/// A token for the service account `name` (created if missing), from the TokenRequest API,
/// signed with the key rotor wrote.
fn token(c: &Cluster, name: &str) -> String {
    let _ = c.admin(&["create", "serviceaccount", name, "-n", "default"]);
    c.admin_ok(&["create", "token", name, "-n", "default", "--duration=1h"])
        .trim()
        .to_string()
}

fn whoami_token(c: &Cluster, token: &str) -> Result<(String, Vec<String>), String> {
    whoami(&c.apiserver.kubectl_as(
        &c.file("server-ca"),
        &[format!("--token={token}")],
        &["auth", "whoami", "-o", "json"],
    ))
}

/// The controller manager, on rotor's controller-manager kubeconfig and with rotor's CA as its
/// signer, signs an approved kubelet client CSR; the result verifies against that CA.
fn check_csr_signing(c: &Cluster) {
    let cm = ControllerManager::start(&c.bins, &c.apiserver, "csrsigning", &c.work);
    let key = c.work.join("cp2.key");
    let csr = c.work.join("cp2.csr");
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args([
            "-nodes",
            "-subj",
            "/O=system:nodes/CN=system:node:cp2",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    use base64::Engine;
    let request = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).unwrap());
    let manifest = c.work.join("csr.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": "cp2-client"},
            "spec": {
                "request": request,
                "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                "usages": ["digital signature", "client auth"],
            }
        })
        .to_string(),
    )
    .unwrap();
    c.admin_ok(&["create", "-f", &manifest.display().to_string()]);
    c.admin_ok(&["certificate", "approve", "cp2-client"]);
    let start = Instant::now();
    let pem = loop {
        let out = c.admin(&[
            "get",
            "csr",
            "cp2-client",
            "-o",
            "jsonpath={.status.certificate}",
        ]);
        let b64 = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !b64.is_empty() {
            break base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the controller manager did not sign: {}",
            tail(&cm.log())
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let cert = c.work.join("cp2.crt");
    std::fs::write(&cert, &pem).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(c.file("client-ca"))
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // And the new certificate is cp2 to the apiserver.
    let (user, _) = whoami(&c.apiserver.kubectl_as(
        &c.file("server-ca"),
        &[
            format!("--client-certificate={}", cert.display()),
            format!("--client-key={}", key.display()),
        ],
        &["auth", "whoami", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(user, "system:node:cp2");
}

/// Renew the apiserver's serving certificate the layout's way; rotor's output.
fn renew_serving(c: &Cluster) -> String {
    match c.apiserver.flavor {
        Flavor::Kubeadm => rotor_ok(&c.dir, &["certs", "renew", "apiserver"]),
        Flavor::K3s => rotor_ok(
            &c.dir,
            &["certificate", "rotate", "--service", "api-server"],
        ),
    }
}

fn identities_renewals_and_a_csr(flavor: Flavor) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut c) = Cluster::start(flavor, tmp.path(), &[]) else {
        return;
    };
    check_identities(&c);
    check_front_proxy(&c);
    // kubeadm:cluster-admins is bound to cluster-admin, as kubeadm init binds it.
    if flavor == Flavor::Kubeadm {
        let out = c.kubectl("admin.conf", &["auth", "can-i", "*", "*"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "yes",
            "{}",
            text(&out)
        );
    }
    let old_token = token(&c, "probe");
    let (user, _) = whoami_token(&c, &old_token).unwrap();
    assert_eq!(user, "system:serviceaccount:default:probe");
    check_csr_signing(&c);

    // A renewal is served by the running apiserver, twice in a row (the watch follows).
    let before = c.apiserver.serving_serial().unwrap();
    assert_eq!(before, file_serial(&c.file("serving-cert")));
    for i in 1..=2 {
        let out = renew_serving(&c);
        let renewed = Instant::now();
        assert_ne!(file_serial(&c.file("serving-cert")), before, "{out}");
        let took = c.wait_serving_file(renewed, Duration::from_secs(5));
        eprintln!("{flavor:?}: renewal {i} served after {took:?}");
    }
    // Identities still hold after the renewals (what was renewed kept its names).
    check_identities(&c);

    // rotate-service-key: tokens signed with the previous key still verify, new ones too.
    rotor_ok(&c.dir, &["certificate", "rotate-service-key"]);
    let out = rotor_ok(&c.dir, &["start"]);
    // The service-account key is read at start: the apiserver restarts, as rotor says.
    assert!(out.contains("restart needed for:"), "{out}");
    c.apiserver.restart();
    let (user, _) = whoami_token(&c, &old_token).expect("a token of the previous key");
    assert_eq!(user, "system:serviceaccount:default:probe");
    let new_token = token(&c, "probe");
    assert_ne!(new_token, old_token);
    whoami_token(&c, &new_token).expect("a token of the new key");
}

#[test]
fn kubeadm_identities_renewals_and_a_csr_in_a_real_apiserver() {
    identities_renewals_and_a_csr(Flavor::Kubeadm);
}

#[test]
fn k3s_identities_renewals_and_a_csr_in_a_real_apiserver() {
    identities_renewals_and_a_csr(Flavor::K3s);
}
