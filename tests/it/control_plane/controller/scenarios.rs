//! One controller on a real apiserver and controller manager: approvals signed by the
//! controller manager, denials with their reasons, a missing Node, a custom signer rotor signs,
//! an abstention, metrics, the decision log and the shadow bundle, and a restart between
//! someone's approval and the signature.

use std::process::Command;

use super::*;
use crate::control_plane::harness::ControllerManager;
use crate::control_plane::{Cluster, Flavor, text};
use crate::kine::components::free_port;

#[test]
fn the_controller_decides_csrs_with_node_evidence_in_a_real_apiserver() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(c) = Cluster::start(Flavor::Kubeadm, tmp.path(), &[]) else {
        return;
    };
    let _cm = ControllerManager::start(&c.bins, &c.apiserver, "csrsigning", &c.work);
    create_node(&c, "n1", &["10.0.1.1"]);
    create_node(&c, "n2", &["10.0.1.2"]);
    create_node(&c, "n3", &["10.0.1.3", "10.0.1.9"]);
    create_node(&c, "n4", &["10.0.1.4", "10.0.1.9"]);
    let n1 = node_identity(&c, "n1");
    let n3 = node_identity(&c, "n3");
    let late = node_identity(&c, "late");
    let admin = admin_kubeconfig(&c);
    let bundle = bundle_with_custom_signer(&c);
    let decision_log = c.work.join("decisions.jsonl");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let shadow = repo_root().join("policies/strict").display().to_string();
    let ctl_args = [
        "--bundle",
        &bundle.display().to_string(),
        "--shadow-bundle",
        &shadow,
        "--signer",
        "kubernetes.io/kubelet-serving",
        "--signer",
        "kubernetes.io/kube-apiserver-client-kubelet",
        "--sign",
        "example.com/node-serving=ca",
        "--max-lifetime",
        "example.com/node-serving=30d",
        "--lease-namespace",
        "kube-system",
        "--decision-log",
        &decision_log.display().to_string(),
        "--listen",
        &listen,
        "--signer",
        "example.com/nobody-knows",
    ];
    let mut ctl = Controller::start(&c, &admin, "ctl-a", &ctl_args);
    let wait = |name: &str, what: &'static str| {
        wait_csr(&c, name, LIMIT, what, &ctl.log, decided_as(what))
    };

    // 1. A node asks for its own name and address: approved by rotor, signed by the controller
    // manager; the certificate verifies and carries exactly the requested names.
    serving_csr(&c, &n1, "n1-serving", "n1", "DNS:n1,IP:10.0.1.1");
    wait("n1-serving", "Approved");
    let csr = wait_csr(&c, "n1-serving", LIMIT, "issued", &ctl.log, issued);
    let approved = &decisions(&csr)[0];
    assert_eq!(approved["reason"], "RotorPolicyApproved", "{csr:#}");
    assert_eq!(decisions(&csr).len(), 1, "{csr:#}");
    let cert = certificate(&c, &csr, "n1-serving");
    let out = openssl_verify(&c.file("client-ca"), &cert);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sans_of(&cert), "DNS:n1, IP Address:10.0.1.1");

    // 2. Denied, each with its reasons in the condition; nothing signed.
    serving_csr(&c, &n1, "n1-other-ip", "n1", "DNS:n1,IP:10.0.1.2");
    serving_csr(
        &c,
        &n1,
        "n1-extra-dns",
        "n1",
        "DNS:n1,DNS:evil.example,IP:10.0.1.1",
    );
    serving_csr(&c, &n3, "n3-disputed", "n3", "DNS:n3,IP:10.0.1.9");
    serving_csr(&c, &[], "admin-as-n1", "n1", "DNS:n1,IP:10.0.1.1");
    // A client certificate in system:masters: the apiserver itself refuses it for the
    // kube-apiserver-client signer, so the request comes for the kubelet client signer, from
    // the node whose name it carries.
    let (_, masters) = openssl_csr(
        &c.work,
        "masters",
        "/O=system:masters/CN=system:node:n1",
        "",
    );
    create_csr(
        &c,
        &n1,
        "masters",
        &masters,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
    );
    for (name, says) in [
        ("n1-other-ip", "10.0.1.2"),
        ("n1-extra-dns", "evil.example"),
        ("n3-disputed", "also listed by Node n4"),
        ("admin-as-n1", "is not a node"),
        ("masters", "system:masters"),
    ] {
        let csr = wait(name, "Denied");
        let d = decisions(&csr);
        assert_eq!(d.len(), 1, "{csr:#}");
        assert_eq!(d[0]["reason"], "RotorPolicyDenied", "{csr:#}");
        let message = d[0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{name}: {message}");
        assert!(!issued(&csr), "{csr:#}");
    }
    // n3's own undisputed address is fine.
    serving_csr(&c, &n3, "n3-own", "n3", "DNS:n3,IP:10.0.1.3");
    wait("n3-own", "Approved");

    // 3. A Node that does not exist: pending, with an Event saying why; approved once it does.
    serving_csr(&c, &late, "late-serving", "late", "DNS:late,IP:10.0.1.7");
    wait_event(&c, "late-serving", "NodeNotFound", &ctl);
    assert!(decisions(&get_csr(&c, "late-serving")).is_empty());
    create_node(&c, "late", &["10.0.1.7"]);
    wait("late-serving", "Approved");

    // 4. rotor as the signer of a custom signer name: it approves and signs, writing
    // status.certificate; the controller manager leaves it alone (not its signer).
    let (_, custom) = openssl_csr(
        &c.work,
        "n1-custom",
        "/O=system:nodes/CN=system:node:n1",
        "DNS:n1,IP:10.0.1.1",
    );
    create_csr(
        &c,
        &n1,
        "n1-custom",
        &custom,
        "example.com/node-serving",
        SERVING,
    );
    let csr = wait_csr(&c, "n1-custom", LIMIT, "issued", &ctl.log, issued);
    assert_eq!(decisions(&csr).len(), 1, "{csr:#}");
    let cert = certificate(&c, &csr, "n1-custom");
    let out = openssl_verify(&c.file("client-ca"), &cert);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sans_of(&cert), "DNS:n1, IP Address:10.0.1.1");
    // The lifetime the host fixes for this signer (--max-lifetime): 30 days, not the 365 of
    // the others.
    let expires_within = |days: u64| {
        !Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-checkend",
                &(days * 86_400).to_string(),
                "-in",
            ])
            .arg(&cert)
            .status()
            .unwrap()
            .success()
    };
    assert!(expires_within(31) && !expires_within(29));

    // 5. A policy that abstains (the default bundle on a signer it has no profile for): the
    // CSR stays pending and an Event says why.
    let (_, unknown) = openssl_csr(&c.work, "unknown", "/O=acme/CN=widget", "");
    create_csr(
        &c,
        &[],
        "unknown",
        &unknown,
        "example.com/nobody-knows",
        &["digital signature", "client auth"],
    );
    wait_event(&c, "unknown", "RotorPolicyAbstained", &ctl);
    assert!(decisions(&get_csr(&c, "unknown")).is_empty());

    // /readyz and /metrics, as rotor serve has them; the decisions in the log, the shadow
    // bundle's beside them.
    let ready = Command::new("curl")
        .args(["-s", &format!("http://{listen}/readyz")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");
    let log = std::fs::read_to_string(&decision_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("n1-serving") && l.contains("\"decision\":\"approve\"")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("masters") && l.contains("\"decision\":\"deny\"")),
        "{log}"
    );
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://{listen}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("rotor_csr_controller_leader 1"),
        "{metrics}"
    );
    // Nothing of rotor serve's cycles, which the controller has not.
    assert!(!metrics.contains("rotor_cycles"), "{metrics}");
    assert!(
        metrics.contains("rotor_csr_controller_results_total{result=\"denied\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rotor_policy_decisions_total{hook=\"csr\",outcome=\"approve\""),
        "{metrics}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("n1-serving") && l.contains("\"role\":\"shadow\"")),
        "{log}"
    );

    // 6. Stopped between someone's approval and a signature: the next controller signs what
    // its review approves, and marks Failed what it does not (another node's address).
    ctl.kill();
    for (name, sans) in [
        ("approved-elsewhere", "DNS:n1,IP:10.0.1.1"),
        ("approved-badly", "DNS:n1,IP:10.0.1.2"),
    ] {
        let (_, csr) = openssl_csr(&c.work, name, "/O=system:nodes/CN=system:node:n1", sans);
        create_csr(&c, &n1, name, &csr, "example.com/node-serving", SERVING);
        c.admin_ok(&["certificate", "approve", name]);
    }
    let ctl = Controller::start(&c, &admin, "ctl-b", &ctl_args);
    let csr = wait_csr(&c, "approved-elsewhere", LIMIT, "issued", &ctl.log, issued);
    let cert = certificate(&c, &csr, "approved-elsewhere");
    let out = openssl_verify(&c.file("client-ca"), &cert);
    assert!(out.status.success(), "{}", text(&out));
    let csr = wait_csr(
        &c,
        "approved-badly",
        LIMIT,
        "Failed",
        &ctl.log,
        decided_as("Failed"),
    );
    assert!(!issued(&csr), "{csr:#}");
    let failed = decisions(&csr)
        .into_iter()
        .find(|d| d["type"] == "Failed")
        .unwrap();
    assert_eq!(failed["reason"], "RotorPolicyRefusedToSign");
    assert!(
        failed["message"].as_str().unwrap().contains("10.0.1.2"),
        "{csr:#}"
    );
}
