//! The expiry experiment of the seed article, end to end: a running cluster whose certificates
//! expire under it (issued a year back, less a minute, so they end while it runs); kubectl
//! fails with the apiserver's certificate-expired error; `rotor start`, and what its output
//! tells the operator to restart, nothing else, make the same kubectl command work again.

use std::time::Duration;

use super::*;

fn expiry_experiment(flavor: Flavor) {
    let tmp = tempfile::tempdir().unwrap();
    // Leaves live 365 days: issued 365 days minus 90 s ago, they end 90 s from now.
    let issued =
        rotor::clock::system_now() - time::Duration::days(365) + time::Duration::seconds(90);
    let ends = issued + time::Duration::days(365);
    let at = rfc3339(issued);
    let Some(mut c) = Cluster::start(flavor, tmp.path(), &["--now", &at]) else {
        return;
    };
    let admin = match flavor {
        Flavor::Kubeadm => "admin.conf",
        Flavor::K3s => "server/cred/admin.kubeconfig",
    };
    let get = ["get", "namespaces", "-o", "name"];
    let out = c.kubectl(admin, &get);
    assert!(out.status.success(), "before the expiry: {}", text(&out));

    // Wait out the certificates (bounded: they end 90 s after the start).
    while rotor::clock::system_now() < ends + time::Duration::seconds(2) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = c.kubectl(admin, &get);
    assert!(!out.status.success(), "after the expiry: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate has expired or is not yet valid"),
        "kubectl after the expiry: {err}"
    );

    // What an operator runs, and what the output asks, nothing more.
    let out = rotor_ok(&c.dir, &["start"]);
    assert!(out.contains("renewed"), "{out}");
    let restarted = c.restart_as_told(&out);
    let out2 = c.kubectl(admin, &get);
    assert!(
        out2.status.success(),
        "after rotor start and restarting {restarted:?} as it said:\n{out}\n{}",
        text(&out2)
    );
    assert!(String::from_utf8_lossy(&out2.stdout).contains("namespace/default"));
}

#[test]
fn kubeadm_expiry_experiment_rotor_start_brings_kubectl_back() {
    expiry_experiment(Flavor::Kubeadm);
}

#[test]
fn k3s_expiry_experiment_rotor_start_brings_kubectl_back() {
    expiry_experiment(Flavor::K3s);
}
