//! A CA rotation on a live cluster, and its end: `rotate-default-ca`, `rotate-ca`, `start`,
//! what rotor's output asks restarted; then new credentials and OLD ones (the admin's, the
//! kubelet's, a client trusting only the old server CA) all work. Once every leaf is under the
//! new CAs, `retire-old-ca` takes the old CA out of every bundle (refused while a leaf rotor
//! knows is still signed by it), and the running apiserver, with no restart, refuses old-CA
//! clients and accepts new ones.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::scenarios::whoami_as;
use super::*;

/// Copies of a client certificate and key (the data dir's files change under us).
fn keep(c: &Cluster, crt: &str, key: &str, as_name: &str) -> String {
    let dir = c.work.join("old");
    std::fs::create_dir_all(&dir).unwrap();
    let (to_crt, to_key) = (
        dir.join(format!("{as_name}.crt")),
        dir.join(format!("{as_name}.key")),
    );
    std::fs::copy(c.dir.join(crt), &to_crt).unwrap();
    std::fs::copy(c.dir.join(key), &to_key).unwrap();
    format!("cert:{}:{}", to_crt.display(), to_key.display())
}

/// A kubeconfig's client certificate and key written out as files (kubeadm embeds them).
fn kubeconfig_credentials(c: &Cluster, rel: &str, as_name: &str) -> String {
    let text = std::fs::read_to_string(c.dir.join(rel)).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .map(|v| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .unwrap()
            })
    };
    let dir = c.work.join("old");
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) = (
        dir.join(format!("{as_name}.crt")),
        dir.join(format!("{as_name}.key")),
    );
    match (field("client-certificate-data"), field("client-key-data")) {
        (Some(cert), Some(k)) => {
            std::fs::write(&crt, cert).unwrap();
            std::fs::write(&key, k).unwrap();
        }
        _ => {
            // k3s's kubeconfigs name the files.
            let path = |name: &str| {
                PathBuf::from(
                    text.lines()
                        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
                        .unwrap(),
                )
            };
            std::fs::copy(path("client-certificate"), &crt).unwrap();
            std::fs::copy(path("client-key"), &key).unwrap();
        }
    }
    format!("cert:{}:{}", crt.display(), key.display())
}

/// `whoami` through the absolute `cert:CRT:KEY` credential, trusting `ca`.
fn whoami_with(c: &Cluster, ca: &Path, credential: &str) -> Result<String, String> {
    let (crt, key) = credential
        .strip_prefix("cert:")
        .and_then(|p| p.split_once(':'))
        .unwrap();
    whoami(&c.apiserver.kubectl_as(
        ca,
        &[
            format!("--client-certificate={crt}"),
            format!("--client-key={key}"),
        ],
        &["auth", "whoami", "-o", "json"],
    ))
    .map(|(user, _)| user)
}

fn ca_rotation_on_a_live_cluster(flavor: Flavor) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut c) = Cluster::start(flavor, tmp.path(), &[]) else {
        return;
    };
    let (admin_conf, admin_user) = match flavor {
        Flavor::Kubeadm => ("admin.conf", "kubernetes-admin"),
        Flavor::K3s => ("server/cred/admin.kubeconfig", "system:admin"),
    };
    let old_admin = kubeconfig_credentials(&c, admin_conf, "admin");
    let old_kubelet = match flavor {
        Flavor::Kubeadm => kubeconfig_credentials(&c, "kubelet.conf", "kubelet"),
        Flavor::K3s => keep(
            &c,
            "agent/client-kubelet.crt",
            "agent/client-kubelet.key",
            "kubelet",
        ),
    };
    let old_ca = c.work.join("old/server-ca.crt");
    std::fs::copy(c.file("server-ca"), &old_ca).unwrap();
    let node = format!("system:node:{NODE}");

    let stage = c.work.join("new-ca");
    let stage_s = stage.display().to_string();
    rotor_ok(
        &c.dir,
        &["certificate", "rotate-default-ca", "--out", &stage_s],
    );
    rotor_ok(
        &c.dir,
        &["certificate", "rotate-ca", "--path", &stage_s, "--force"],
    );
    // Not yet: every leaf is still under the old CAs.
    let before = tree(&c.dir);
    let (code, out, err) = rotor_at(&c.dir, &["certificate", "retire-old-ca"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("still signed by the old CA"), "{err}");
    assert_eq!(
        tree(&c.dir),
        before,
        "a refused retire-old-ca changed the data dir"
    );

    let out = rotor_ok(&c.dir, &["start"]);
    let restarted = c.restart_as_told(&out);
    assert!(restarted.contains(&"kube-apiserver"), "{out}");
    // New credentials, and the old ones, all work; so does a client that trusts the old CA.
    let new_admin = kubeconfig_credentials(&c, admin_conf, "new-admin");
    for (what, credential, user) in [
        ("new admin", &new_admin, admin_user),
        ("old admin", &old_admin, admin_user),
        ("old kubelet", &old_kubelet, node.as_str()),
    ] {
        assert_eq!(
            whoami_with(&c, &c.file("server-ca"), credential).as_deref(),
            Ok(user),
            "{what}"
        );
    }
    assert_eq!(
        whoami_with(&c, &old_ca, &new_admin).as_deref(),
        Ok(admin_user),
        "a client trusting only the old server CA"
    );
    assert!(whoami_as(&c, admin_conf).is_ok());

    // The end of the rotation: the old CA out of every bundle.
    let out = rotor_ok(&c.dir, &["certificate", "retire-old-ca"]);
    assert!(out.contains("retired"), "{out}");
    let out = rotor_ok(&c.dir, &["start"]);
    // No restart: the apiserver reloads its client CA by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let old = whoami_with(&c, &c.file("server-ca"), &old_admin);
        if old.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the running apiserver still accepts the old admin 10 s after retire-old-ca and start:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = whoami_with(&c, &c.file("server-ca"), &old_kubelet).unwrap_err();
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
    assert_eq!(
        whoami_with(&c, &c.file("server-ca"), &new_admin).as_deref(),
        Ok(admin_user)
    );
    assert!(whoami_as(&c, admin_conf).is_ok());
}

#[test]
fn kubeadm_ca_rotation_on_a_live_cluster_and_its_end() {
    ca_rotation_on_a_live_cluster(Flavor::Kubeadm);
}

#[test]
fn k3s_ca_rotation_on_a_live_cluster_and_its_end() {
    ca_rotation_on_a_live_cluster(Flavor::K3s);
}
