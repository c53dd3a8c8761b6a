//! The cluster PKI through the real binary: init, start, rotate, check, kubeadm's certs.

use std::path::Path;

use rotor::facts::{ExtendedKeyUsage, KeyUsageBit, parse_certificates_pem};

use crate::common::*;

const K3S_LEAVES: &[(&str, &str, bool)] = &[
    // (file, CA file, server?)
    (
        "server/tls/client-admin.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "server/tls/client-supervisor.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "server/tls/client-controller.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "server/tls/client-scheduler.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "server/tls/client-kube-apiserver.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "server/tls/client-k3s-cloud-controller.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "server/tls/client-auth-proxy.crt",
        "server/tls/request-header-ca.crt",
        false,
    ),
    (
        "server/tls/serving-kube-apiserver.crt",
        "server/tls/server-ca.crt",
        true,
    ),
    (
        "server/tls/kube-scheduler/kube-scheduler.crt",
        "server/tls/server-ca.crt",
        true,
    ),
    (
        "server/tls/kube-controller-manager/kube-controller-manager.crt",
        "server/tls/server-ca.crt",
        true,
    ),
    (
        "server/tls/etcd/client.crt",
        "server/tls/etcd/server-ca.crt",
        false,
    ),
    (
        "server/tls/etcd/server-client.crt",
        "server/tls/etcd/server-ca.crt",
        true,
    ),
    (
        "server/tls/etcd/peer-server-client.crt",
        "server/tls/etcd/peer-ca.crt",
        true,
    ),
    (
        "agent/client-k3s-controller.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "agent/client-kube-proxy.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "agent/client-kubelet.crt",
        "server/tls/client-ca.crt",
        false,
    ),
    (
        "agent/serving-kubelet.crt",
        "server/tls/server-ca.crt",
        true,
    ),
];

fn init_k3s(dir: &Path, extra: &[&str]) -> String {
    let now = rfc3339(t0());
    let mut args = vec![
        "init",
        "--profile",
        "k3s",
        "--node-name",
        "server-1",
        "--node-ip",
        "192.168.1.10",
        "--tls-san",
        "k8s.example.com",
        "--now",
        &now,
    ];
    args.extend_from_slice(extra);
    rotor_ok(dir, &args)
}

fn openssl_verify(ca: &Path, leaf: &Path) {
    if !require_command("openssl") {
        return;
    }
    // The leaf file carries its CA bundle after it; openssl verifies the first certificate.
    let out = std::process::Command::new("openssl")
        .args([
            "verify",
            "-attime",
            &t0().unix_timestamp().saturating_add(86_400).to_string(),
            "-CAfile",
        ])
        .arg(ca)
        .arg(leaf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify {}: {}{}",
        leaf.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn k3s_init_issues_the_full_set_and_every_leaf_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = init_k3s(&dir, &[]);
    assert!(
        out.contains(
            "generated CAs: server-ca, client-ca, request-header-ca, etcd-server-ca, etcd-peer-ca"
        ),
        "{out}"
    );
    let token_line = out.lines().find(|l| l.starts_with("K10")).unwrap();
    let token = rotor::pki::Token::parse(token_line).unwrap();
    assert_eq!(token.user, "server");
    assert_eq!(token.password.len(), 32);
    assert_eq!(
        std::fs::read_to_string(dir.join("server/token"))
            .unwrap()
            .trim(),
        token_line
    );
    // The hash is SHA-256 of the server CA file (one certificate: raw bytes, as k3s computes it).
    let ca_bytes = std::fs::read(dir.join("server/tls/server-ca.crt")).unwrap();
    assert_eq!(
        token.ca_hash.unwrap(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&ca_bytes))
    );

    let at = t0() + days(1);
    for (leaf, ca, server) in K3S_LEAVES {
        let leaf = dir.join(leaf);
        let ca = dir.join(ca);
        webpki_verify(&leaf, &ca, *server, at)
            .unwrap_or_else(|e| panic!("{}: {e}", leaf.display()));
        openssl_verify(&ca, &leaf);
        let certs = parse_certificates_pem("leaf", &std::fs::read(&leaf).unwrap()).unwrap();
        let c = &certs[0];
        assert_eq!(
            certs.len(),
            2,
            "{}: leaf followed by its CA",
            leaf.display()
        );
        assert!(!c.is_ca);
        assert_eq!(
            c.public_key.algorithm,
            rotor::facts::KeyAlgorithm::EcdsaP256
        );
        assert_eq!(
            c.key_usage.as_deref(),
            Some(&[KeyUsageBit::DigitalSignature, KeyUsageBit::KeyEncipherment][..]),
            "{}",
            leaf.display()
        );
        let eku = if *server {
            ExtendedKeyUsage::ServerAuth
        } else {
            ExtendedKeyUsage::ClientAuth
        };
        assert!(c.extended_key_usages.contains(&eku), "{}", leaf.display());
        assert_eq!(
            (c.not_after - c.not_before).whole_days(),
            365,
            "{}",
            leaf.display()
        );
        let key_path = leaf.with_extension("key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", key_path.display());
    }
    for ca in [
        "server-ca",
        "client-ca",
        "request-header-ca",
        "etcd/server-ca",
        "etcd/peer-ca",
    ] {
        let c = &parse_certificates_pem(
            "ca",
            &std::fs::read(dir.join(format!("server/tls/{ca}.crt"))).unwrap(),
        )
        .unwrap()[0];
        assert!(c.is_ca);
        assert_eq!(
            (c.not_after - c.not_before).whole_days(),
            3650,
            "{ca}: 10 years"
        );
        assert!(
            c.key_usage
                .as_ref()
                .unwrap()
                .contains(&KeyUsageBit::KeyCertSign)
        );
    }
    let apiserver = &parse_certificates_pem(
        "a",
        &std::fs::read(dir.join("server/tls/serving-kube-apiserver.crt")).unwrap(),
    )
    .unwrap()[0];
    for name in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster",
        "kubernetes.default.svc.cluster.local",
        "server-1",
        "k8s.example.com",
    ] {
        assert!(
            apiserver.sans.dns_names.iter().any(|d| d == name),
            "missing {name}"
        );
    }
    for ip in ["10.43.0.1", "192.168.1.10", "127.0.0.1"] {
        assert!(
            apiserver.sans.ip_addresses.contains(&ip.parse().unwrap()),
            "missing {ip}"
        );
    }
    let kubelet = &parse_certificates_pem(
        "k",
        &std::fs::read(dir.join("agent/client-kubelet.crt")).unwrap(),
    )
    .unwrap()[0];
    assert_eq!(
        kubelet.subject.common_name.as_deref(),
        Some("system:node:server-1")
    );
    assert_eq!(kubelet.subject.organizations, ["system:nodes"]);
    let service = rotor::pki::PrivateKey::from_pem(
        "service.key",
        &std::fs::read(dir.join("server/tls/service.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(service.algorithm(), rotor::facts::KeyAlgorithm::Rsa);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("server/tls"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    // The datastore record is the stronger format by default.
    let record_dir = dir.join("server/db/bootstrap");
    let record = std::fs::read(
        std::fs::read_dir(&record_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    assert!(record.starts_with(b"rotor-v1$pbkdf2-sha256$600000$"));

    // `check -o table` shows every certificate, CAs included, all OK.
    let (code, out, _) = rotor_at(
        &dir,
        &["certificate", "check", "-o", "table", "--now", &rfc3339(at)],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("FILENAME"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" OK ")).count(),
        5 + 17 * 2,
        "{out}"
    );
}

#[test]
fn init_refuses_an_initialized_data_dir_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init_k3s(&dir, &[]);
    let before = tree(&dir);
    let (code, _, err) = rotor_at(&dir, &["init", "--node-name", "other"]);
    assert_eq!(code, 2);
    assert!(err.contains("already initialized"), "{err}");
    assert_eq!(tree(&dir), before);
}

#[test]
fn invalid_names_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (code, _, err) = rotor_at(
        &dir,
        &[
            "init",
            "--node-name",
            "server-1",
            "--tls-san",
            "*.example.com",
            "--tls-san",
            "bad..name",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("the SAN policy denies names of serving-kube-apiserver"),
        "{err}"
    );
    assert!(
        err.contains("LiteralWildcardNotAllowed") && err.contains("InvalidDnsName"),
        "{err}"
    );
    assert!(tree(&dir).is_empty(), "nothing written: {:?}", tree(&dir));
    let (code, _, err) = rotor_at(&dir, &["init", "--node-name", "Server_1"]);
    assert_eq!(code, 2);
    assert!(err.contains("'--node-name'"), "{err}");
}

fn leaf_facts(path: &Path) -> rotor::facts::CertificateFacts {
    parse_certificates_pem("leaf", &std::fs::read(path).unwrap())
        .unwrap()
        .remove(0)
}

#[test]
fn start_renews_exactly_the_leaves_inside_the_window_and_no_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init_k3s(&dir, &[]);
    // At t0 + 200 days, rotate the api-server certificates: they now expire at t0 + 565 days.
    rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate",
            "--service",
            "api-server",
            "--now",
            &rfc3339(t0() + days(200)),
        ],
    );
    let rotated = [
        "server/tls/client-kube-apiserver.crt",
        "server/tls/serving-kube-apiserver.crt",
    ];
    let before = tree(&dir);

    // A dry run at t0 + 300 days changes no byte.
    let later = rfc3339(t0() + days(300));
    let out = rotor_ok(&dir, &["start", "--dry-run", "--now", &later]);
    assert!(
        out.contains("dry run: would renew 15 certificate(s)"),
        "{out}"
    );
    assert_eq!(tree(&dir), before, "a dry run changed the data dir");

    let out = rotor_ok(&dir, &["start", "--now", &later]);
    assert!(
        out.contains("renewed 15 certificate(s) with new keys"),
        "{out}"
    );
    assert!(out.contains("restart needed for:"), "{out}");
    let backup_line = out
        .lines()
        .find_map(|l| l.strip_prefix("previous files kept in "))
        .unwrap_or_else(|| panic!("the backup is named: {out}"));
    let backup = std::path::PathBuf::from(backup_line);
    assert!(backup.starts_with(dir.join(".rotor/generations")), "{out}");
    let after = tree(&dir);
    for (leaf, _, _) in K3S_LEAVES {
        let key = leaf.replace(".crt", ".key");
        let changed = before[*leaf] != after[*leaf];
        let key_changed = before[&key] != after[&key];
        if rotated.contains(leaf) {
            assert!(
                !changed && !key_changed,
                "{leaf} was outside the window and must be kept"
            );
        } else {
            assert!(
                changed && key_changed,
                "{leaf} was inside the window: renewed with a new key"
            );
            let f = leaf_facts(&dir.join(leaf));
            assert_eq!(f.not_after, t0() + days(300 + 365));
        }
    }
    for ca in [
        "server-ca",
        "client-ca",
        "request-header-ca",
        "etcd/server-ca",
        "etcd/peer-ca",
    ] {
        for ext in ["crt", "key"] {
            let f = format!("server/tls/{ca}.{ext}");
            assert_eq!(before[&f], after[&f], "{f} must not change");
        }
    }
    // The backup is the whole previous generation: the old certificates and keys, agent's too.
    for f in ["server/tls/client-admin.crt", "agent/client-kubelet.key"] {
        let backed_up = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            std::fs::read(backup.join(f)).unwrap(),
        ));
        assert_eq!(backed_up, before[f].0, "{f}");
    }
    // Nothing left to do.
    let out = rotor_ok(&dir, &["start", "--now", &later]);
    assert!(out.contains("nothing to do"), "{out}");
}

#[test]
fn mtls_handshake_with_issued_certificates_before_and_after_renewal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init_k3s(&dir, &["--node-ip", "127.0.0.1"]);
    handshake(&dir).unwrap();
    let old_serving = std::fs::read(dir.join("server/tls/serving-kube-apiserver.crt")).unwrap();
    rotor_ok(&dir, &["start", "--now", &rfc3339(t0() + days(300))]);
    assert_ne!(
        std::fs::read(dir.join("server/tls/serving-kube-apiserver.crt")).unwrap(),
        old_serving
    );
    handshake(&dir).unwrap();
}

/// The API server's certificate on the server side (client certificates required, trusting
/// client-ca), the admin certificate on the client side (trusting server-ca).
fn handshake(dir: &Path) -> Result<(), String> {
    let peer = tls_handshake(
        &dir.join("server/tls/serving-kube-apiserver.crt"),
        &dir.join("server/tls/serving-kube-apiserver.key"),
        &pem_certs(&dir.join("server/tls/client-ca.crt")),
        &dir.join("server/tls/client-admin.crt"),
        &dir.join("server/tls/client-admin.key"),
        &pem_certs(&dir.join("server/tls/server-ca.crt")),
    )?;
    assert_eq!(peer, "system:admin");
    Ok(())
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init_k3s(&dir, &["--datastore-format", "k3s"]);
    let later = rfc3339(t0() + days(300));
    let pristine = tree(&dir);
    let expect_error = |args: &[&str], needle: &str| {
        let (code, out, err) = rotor_at(&dir, args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    };

    // Wrong token.
    expect_error(
        &["start", "--now", &later, "--token", "K10::server:wrong"],
        "token does not decrypt the bootstrap data",
    );
    assert_eq!(tree(&dir), pristine);

    // Unknown service.
    expect_error(
        &["certificate", "rotate", "--service", "api-server,nope"],
        "unknown service 'nope'; valid services: admin, api-server",
    );
    assert_eq!(tree(&dir), pristine);

    // Truncated and tampered bootstrap records.
    let record_dir = dir.join("server/db/bootstrap");
    let record_path = std::fs::read_dir(&record_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let record = std::fs::read(&record_path).unwrap();
    for cut in [record.len() / 2, record.len() / 2 + 1, record.len() - 1] {
        std::fs::write(&record_path, &record[..cut]).unwrap();
        let truncated = tree(&dir);
        let (code, out, err) = rotor_at(&dir, &["start", "--now", &later]);
        assert_eq!(code, 2, "{out}{err}");
        // Depending on where it is cut, the base64 breaks or the authentication tag does.
        assert!(
            err.contains("malformed bootstrap record")
                || err.contains("tampered or truncated record"),
            "{err}"
        );
        assert_eq!(tree(&dir), truncated);
    }
    let mut tampered = record.clone();
    let i = tampered.len() - 30;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    std::fs::write(&record_path, &tampered).unwrap();
    let snapshot = tree(&dir);
    expect_error(
        &["start", "--now", &later],
        "token does not decrypt the bootstrap data",
    );
    assert_eq!(tree(&dir), snapshot);
    std::fs::write(&record_path, &record).unwrap();

    // A corrupted certificate.
    let serving = dir.join("server/tls/serving-kube-apiserver.crt");
    let good = std::fs::read(&serving).unwrap();
    std::fs::write(&serving, &good[..good.len() / 3]).unwrap();
    let snapshot = tree(&dir);
    expect_error(
        &["start", "--now", &later],
        "serving-kube-apiserver.crt: malformed PEM",
    );
    assert_eq!(tree(&dir), snapshot);
    std::fs::write(&serving, &good).unwrap();

    // A symlink pointing outside the data dir.
    let admin = dir.join("server/tls/client-admin.crt");
    let admin_bytes = std::fs::read(&admin).unwrap();
    std::fs::write(tmp.path().join("outside.crt"), &admin_bytes).unwrap();
    std::fs::remove_file(&admin).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside.crt"), &admin).unwrap();
    let snapshot = tree(&dir);
    expect_error(&["start", "--now", &later], "leads outside its directory");
    assert_eq!(tree(&dir), snapshot);
    assert_eq!(
        std::fs::read(tmp.path().join("outside.crt")).unwrap(),
        admin_bytes
    );
    std::fs::remove_file(&admin).unwrap();
    std::fs::write(&admin, &admin_bytes).unwrap();

    // A CA changed on disk after the datastore was written: conflict, nothing overwritten.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let server_ca = dir.join("server/tls/server-ca.crt");
    let ca_bytes = std::fs::read(&server_ca).unwrap();
    let mut changed = ca_bytes.clone();
    changed.extend_from_slice(b"\n");
    std::fs::write(&server_ca, &changed).unwrap();
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&server_ca)
        .unwrap()
        .set_modified(future)
        .unwrap();
    let snapshot = tree(&dir);
    expect_error(
        &["start", "--now", &later],
        "differs from the datastore and is newer",
    );
    assert_eq!(tree(&dir), snapshot);

    // Once the operator removes the stray copy, start restores the datastore's.
    std::fs::remove_file(&server_ca).unwrap();
    let out = rotor_ok(&dir, &["start", "--now", &rfc3339(t0() + days(1))]);
    assert!(out.contains("extract  server/tls/server-ca.crt"), "{out}");
    assert_eq!(std::fs::read(&server_ca).unwrap(), ca_bytes);
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_reissued() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init_k3s(&dir, &[]);
    // As after a crash between writing a new key and its certificate.
    std::fs::copy(
        dir.join("server/tls/client-scheduler.key"),
        dir.join("server/tls/client-admin.key"),
    )
    .unwrap();
    let out = rotor_ok(&dir, &["start", "--now", &rfc3339(t0() + days(2))]);
    assert!(
        out.contains("renew    client-admin")
            && out.contains("the private key does not match the certificate"),
        "{out}"
    );
    assert!(out.contains("renewed 1 certificate(s)"), "{out}");
}

#[test]
fn k3s_format_records_decrypt_with_an_independent_implementation() {
    let cryptography = have("python3")
        && std::process::Command::new("python3")
            .args(["-c", "import cryptography"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !require("python3 with the cryptography package", cryptography) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = init_k3s(&dir, &["--datastore-format", "k3s"]);
    let token =
        rotor::pki::Token::parse(out.lines().find(|l| l.starts_with("K10")).unwrap()).unwrap();
    let record_dir = dir.join("server/db/bootstrap");
    let entry = std::fs::read_dir(&record_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    // The key name is the first 12 hex digits of SHA-256(password), as k3s names it.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        token.password.as_bytes(),
    ));
    assert_eq!(entry.file_name().to_string_lossy(), &digest[..12]);
    let script = r#"
import sys, json, base64
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
record = open(sys.argv[1]).read()
salt, body = record.split(':', 1)
key = PBKDF2HMAC(algorithm=hashes.SHA1(), length=32, salt=salt.encode(), iterations=4096).derive(sys.argv[2].encode())
raw = base64.b64decode(body)
plain = AESGCM(key).decrypt(raw[:12], raw[12:], None)
data = json.loads(plain)
sys.stdout.buffer.write(base64.b64decode(data['ServerCA']['Content']))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(entry.path())
        .arg(&token.password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        std::fs::read(dir.join("server/tls/server-ca.crt")).unwrap()
    );
}

#[test]
fn kubeadm_layout_kubeconfigs_renew_and_csrs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("etc-kubernetes");
    let out = rotor_ok(
        &dir,
        &[
            "init",
            "--profile",
            "kubeadm",
            "--node-name",
            "cp-1",
            "--node-ip",
            "10.0.0.10",
            "--key-type",
            "ecdsa-p256",
            "--now",
            &rfc3339(t0()),
        ],
    );
    assert!(
        out.contains("generated CAs: ca, front-proxy-ca, etcd-ca"),
        "{out}"
    );
    assert!(
        out.contains("--discovery-token-ca-cert-hash sha256:"),
        "{out}"
    );
    for f in [
        "pki/ca.crt",
        "pki/ca.key",
        "pki/front-proxy-ca.crt",
        "pki/etcd/ca.crt",
        "pki/apiserver.crt",
        "pki/apiserver-kubelet-client.crt",
        "pki/apiserver-etcd-client.crt",
        "pki/front-proxy-client.crt",
        "pki/etcd/server.crt",
        "pki/etcd/peer.crt",
        "pki/etcd/healthcheck-client.crt",
        "pki/sa.key",
        "pki/sa.pub",
        "admin.conf",
        "super-admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
        "kubelet.conf",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let at = t0() + days(1);
    for (leaf, ca, server) in [
        ("pki/apiserver.crt", "pki/ca.crt", true),
        ("pki/apiserver-kubelet-client.crt", "pki/ca.crt", false),
        (
            "pki/front-proxy-client.crt",
            "pki/front-proxy-ca.crt",
            false,
        ),
        ("pki/etcd/server.crt", "pki/etcd/ca.crt", true),
        ("pki/etcd/peer.crt", "pki/etcd/ca.crt", false),
        ("pki/apiserver-etcd-client.crt", "pki/etcd/ca.crt", false),
    ] {
        webpki_verify(&dir.join(leaf), &dir.join(ca), server, at)
            .unwrap_or_else(|e| panic!("{leaf}: {e}"));
        openssl_verify(&dir.join(ca), &dir.join(leaf));
    }
    // Kubeconfigs embed the CA, a client certificate for the right user, and its key.
    let conf = rotor::cluster::read_kubeconfig_credential(
        "admin.conf",
        &std::fs::read(dir.join("admin.conf")).unwrap(),
    )
    .unwrap();
    assert_eq!(conf.server, "https://10.0.0.10:6443");
    assert_eq!(conf.ca_pem, std::fs::read(dir.join("pki/ca.crt")).unwrap());
    let client = parse_certificates_pem("admin", &conf.cert_pem)
        .unwrap()
        .remove(0);
    assert_eq!(
        client.subject.common_name.as_deref(),
        Some("kubernetes-admin")
    );
    assert_eq!(client.subject.organizations, ["kubeadm:cluster-admins"]);
    let key =
        rotor::pki::PrivateKey::from_pem("admin key", conf.key_pem.as_ref().unwrap()).unwrap();
    assert!(
        key.matches_certificate(
            &rotor::facts::read_pem_blocks("c", &conf.cert_pem).unwrap()[0].der
        )
    );
    let sa =
        rotor::pki::PrivateKey::from_pem("sa.key", &std::fs::read(dir.join("pki/sa.key")).unwrap())
            .unwrap();
    let sa_pub = std::fs::read_to_string(dir.join("pki/sa.pub")).unwrap();
    assert_eq!(
        sa_pub,
        rotor::pki::pem_encode("PUBLIC KEY", &sa.public_key_der())
    );

    // check-expiration: kubeadm's columns, kubelet.conf left out, a separate CA table.
    let out = rotor_ok(&dir, &["certs", "check-expiration", "--now", &rfc3339(at)]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("CERTIFICATE")
            && lines[0].contains("RESIDUAL TIME")
            && lines[0].contains("EXTERNALLY MANAGED"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("admin.conf")
            && lines[1].contains("Jan 01, 2027")
            && lines[1].contains("364d"),
        "{out}"
    );
    assert!(!out.contains("kubelet.conf"), "{out}");
    assert!(out.contains("CERTIFICATE AUTHORITY   EXPIRES"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("etcd-ca") && l.contains("9y")),
        "{out}"
    );

    // renew copies the attributes of the existing certificate and changes the key.
    let before = leaf_facts(&dir.join("pki/apiserver.crt"));
    let before_key = std::fs::read(dir.join("pki/apiserver.key")).unwrap();
    let out = rotor_ok(
        &dir,
        &[
            "certs",
            "renew",
            "apiserver",
            "--now",
            &rfc3339(t0() + days(100)),
        ],
    );
    assert!(
        out.contains("certificate apiserver renewed")
            && !out.contains("You must restart")
            && out.contains("Loaded without a restart by kube-apiserver"),
        "{out}"
    );
    let after = leaf_facts(&dir.join("pki/apiserver.crt"));
    assert_eq!(after.sans, before.sans);
    assert_eq!(after.subject.common_name, before.subject.common_name);
    assert_ne!(after.serial, before.serial);
    assert_ne!(
        std::fs::read(dir.join("pki/apiserver.key")).unwrap(),
        before_key
    );
    assert_eq!(after.not_after, t0() + days(465));
    // The previous generation is the backup: the old key is there.
    let backup = out
        .lines()
        .find_map(|l| l.strip_prefix("previous files kept in "))
        .unwrap_or_else(|| panic!("the backup is named: {out}"));
    assert_eq!(
        std::fs::read(Path::new(backup).join("pki/apiserver.key")).unwrap(),
        before_key
    );
    // kubeadm's static pod mounting pki/ pins the generation it started with: then the
    // apiserver must restart after all, and rotor says why.
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(
        dir.join("manifests/kube-apiserver.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\nspec:\n  containers: []\n  volumes:\n  - hostPath:\n      path: {}\n      type: DirectoryOrCreate\n    name: k8s-certs\n",
            dir.join("pki").display()
        ),
    )
    .unwrap();
    let out = rotor_ok(
        &dir,
        &[
            "certs",
            "renew",
            "apiserver",
            "--now",
            &rfc3339(t0() + days(100)),
        ],
    );
    assert!(
        out.contains("You must restart kube-apiserver")
            && out.contains("manifests/kube-apiserver.yaml) mounts a directory rotor manages")
            && !out.contains("Loaded without a restart"),
        "{out}"
    );
    std::fs::remove_dir_all(dir.join("manifests")).unwrap();
    let out = rotor_ok(
        &dir,
        &["certs", "renew", "all", "--now", &rfc3339(t0() + days(101))],
    );
    assert_eq!(out.matches(" renewed").count(), 11, "{out}");

    // generate-csr: one valid CSR per certificate, never overwriting.
    let csrs = tmp.path().join("csrs");
    rotor_ok(
        &dir,
        &["certs", "generate-csr", "--csr-dir", csrs.to_str().unwrap()],
    );
    let csr = rotor::facts::parse_csr_pem(
        "apiserver.csr",
        &std::fs::read(csrs.join("apiserver.csr")).unwrap(),
    )
    .unwrap();
    assert!(csr.defects.is_empty(), "{:?}", csr.defects);
    assert!(
        csr.sans
            .dns_names
            .contains(&"kubernetes.default.svc".to_string())
    );
    assert!(csrs.join("etcd/server.csr").is_file() && csrs.join("admin.conf.csr").is_file());
    let snapshot = tree(&csrs);
    let (code, _, err) = rotor_at(
        &dir,
        &["certs", "generate-csr", "--csr-dir", csrs.to_str().unwrap()],
    );
    assert_eq!(code, 2);
    assert!(err.contains("file exists"), "{err}");
    assert_eq!(tree(&csrs), snapshot);
}

#[test]
fn kubeadm_rsa_2048_is_the_default_key_type() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k");
    rotor_ok(
        &dir,
        &["init", "--profile", "kubeadm", "--node-name", "cp-1"],
    );
    let ca = leaf_facts(&dir.join("pki/ca.crt"));
    assert_eq!(
        (ca.public_key.algorithm, ca.public_key.bits),
        (rotor::facts::KeyAlgorithm::Rsa, 2048)
    );
    assert_eq!(ca.subject.common_name.as_deref(), Some("kubernetes"));
    let leaf = leaf_facts(&dir.join("pki/apiserver.crt"));
    assert_eq!(
        (leaf.public_key.algorithm, leaf.public_key.bits),
        (rotor::facts::KeyAlgorithm::Rsa, 2048)
    );
}

#[test]
fn kubeadm_external_ca_mode_marks_and_skips_its_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    rotor_ok(
        &first,
        &[
            "init",
            "--profile",
            "kubeadm",
            "--node-name",
            "cp-1",
            "--key-type",
            "ecdsa-p256",
            "--now",
            &rfc3339(t0()),
        ],
    );
    // A second control plane gets ca.crt without ca.key, and the certificates that CA signs.
    let dir = tmp.path().join("second");
    std::fs::create_dir_all(dir.join("pki")).unwrap();
    for f in [
        "pki/ca.crt",
        "pki/apiserver.crt",
        "pki/apiserver.key",
        "pki/apiserver-kubelet-client.crt",
        "pki/apiserver-kubelet-client.key",
        "admin.conf",
        "super-admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
        "kubelet.conf",
    ] {
        std::fs::copy(first.join(f), dir.join(f)).unwrap();
    }
    let out = rotor_ok(
        &dir,
        &[
            "init",
            "--profile",
            "kubeadm",
            "--node-name",
            "cp-1",
            "--key-type",
            "ecdsa-p256",
            "--now",
            &rfc3339(t0()),
        ],
    );
    assert!(out.contains("external CAs (no key here"), "{out}");
    assert!(!dir.join("pki/ca.key").exists());
    let out = rotor_ok(
        &dir,
        &[
            "certs",
            "check-expiration",
            "--now",
            &rfc3339(t0() + days(1)),
        ],
    );
    let apiserver = out.lines().find(|l| l.starts_with("apiserver ")).unwrap();
    assert!(apiserver.trim_end().ends_with("yes"), "{out}");
    let front = out
        .lines()
        .find(|l| l.starts_with("front-proxy-client"))
        .unwrap();
    assert!(front.trim_end().ends_with("no"), "{out}");
    let out = rotor_ok(
        &dir,
        &["certs", "renew", "all", "--now", &rfc3339(t0() + days(1))],
    );
    assert!(
        out.contains("certificate apiserver skipped: signed by an external CA"),
        "{out}"
    );
    assert!(
        out.contains("certificate front-proxy-client renewed"),
        "{out}"
    );
    // Without the CA-signed certificates in place, init explains what is missing.
    let third = tmp.path().join("third");
    std::fs::create_dir_all(third.join("pki")).unwrap();
    std::fs::copy(first.join("pki/ca.crt"), third.join("pki/ca.crt")).unwrap();
    let (code, _, err) = rotor_at(
        &third,
        &["init", "--profile", "kubeadm", "--node-name", "cp-1"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("external-CA mode") && err.contains("apiserver.crt"),
        "{err}"
    );
}

#[test]
fn custom_cas_in_place_are_adopted_and_the_token_pins_the_root() {
    use rotor::pki::{CaSigner, KeyType, Subject, Validity, self_signed_ca};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let tls = dir.join("server/tls");
    std::fs::create_dir_all(tls.join("etcd")).unwrap();
    let v = Validity {
        not_before: t0() - days(1),
        not_after: t0() + days(3700),
    };
    let subject = |cn: &str| Subject {
        common_name: cn.into(),
        ..Default::default()
    };
    let root_key = KeyType::EcdsaP256.generate().unwrap();
    let root = self_signed_ca(&subject("test-root-ca"), &root_key, v).unwrap();
    let root_signer =
        CaSigner::load("root", root.pem.as_bytes(), root_key.pem().as_bytes()).unwrap();
    let int_key = KeyType::EcdsaP256.generate().unwrap();
    let int = root_signer
        .issue_ca(&subject("test-intermediate-ca"), &int_key, v)
        .unwrap();
    let int_signer = CaSigner::load("int", int.pem.as_bytes(), int_key.pem().as_bytes()).unwrap();
    for name in [
        "server-ca",
        "client-ca",
        "request-header-ca",
        "etcd/server-ca",
        "etcd/peer-ca",
    ] {
        let key = KeyType::EcdsaP256.generate().unwrap();
        let ca = int_signer
            .issue_ca(
                &subject(&format!("test-{}", name.replace('/', "-"))),
                &key,
                v,
            )
            .unwrap();
        std::fs::write(
            tls.join(format!("{name}.crt")),
            format!("{}{}{}", ca.pem, int.pem, root.pem),
        )
        .unwrap();
        std::fs::write(tls.join(format!("{name}.key")), key.pem()).unwrap();
    }
    let out = init_k3s(&dir, &[]);
    assert!(out.contains("adopted CAs found in place: server-ca, client-ca, request-header-ca, etcd-server-ca, etcd-peer-ca"), "{out}");
    let token =
        rotor::pki::Token::parse(out.lines().find(|l| l.starts_with("K10")).unwrap()).unwrap();
    assert_eq!(
        token.ca_hash.unwrap(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&root.der)),
        "the root's DER"
    );
    // Leaves chain through the intermediate to the root.
    webpki_verify(
        &dir.join("server/tls/serving-kube-apiserver.crt"),
        &tls.join("server-ca.crt"),
        true,
        t0() + days(1),
    )
    .unwrap();
    if require_command("openssl") {
        // Independently: openssl trusting only the root, with the CA bundle as untrusted chain.
        std::fs::write(tmp.path().join("root.pem"), &root.pem).unwrap();
        std::fs::copy(tls.join("server-ca.crt"), tmp.path().join("chain.pem")).unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "verify",
                "-attime",
                &(t0() + days(1)).unix_timestamp().to_string(),
                "-CAfile",
            ])
            .arg(tmp.path().join("root.pem"))
            .arg("-untrusted")
            .arg(tmp.path().join("chain.pem"))
            .arg(dir.join("server/tls/serving-kube-apiserver.crt"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A partial custom set is refused with the missing files listed.
    let other = tmp.path().join("partial");
    std::fs::create_dir_all(other.join("server/tls")).unwrap();
    std::fs::copy(
        tls.join("server-ca.crt"),
        other.join("server/tls/server-ca.crt"),
    )
    .unwrap();
    let (code, _, err) = rotor_at(&other, &["init", "--node-name", "n"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("some CA files are in place but not all") && err.contains("client-ca.key"),
        "{err}"
    );
}

#[test]
fn rke2_names_and_rotate_force_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rke2");
    rotor_ok(
        &dir,
        &[
            "init",
            "--profile",
            "rke2",
            "--node-name",
            "n1",
            "--now",
            &rfc3339(t0()),
        ],
    );
    let ca = leaf_facts(&dir.join("server/tls/server-ca.crt"));
    assert!(
        ca.subject
            .common_name
            .unwrap()
            .starts_with("rke2-server-ca@")
    );
    assert!(dir.join("agent/client-rke2-controller.crt").is_file());
    let out = rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate",
            "--service",
            "rke2-controller,rke2-server",
            "--now",
            &rfc3339(t0() + days(1)),
        ],
    );
    assert!(out.contains("rotated 1 certificate(s)"), "{out}");
    assert!(dir.join("force-restart").is_file());
    assert!(dir.join("server/tls/dynamic-cert-regenerate").is_file());
}

#[test]
fn check_reports_warnings_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init_k3s(&dir, &[]);
    let later = rfc3339(t0() + days(300));
    let (code, out, _) = rotor_at(
        &dir,
        &["certificate", "check", "-o", "json", "--now", &later],
    );
    assert_eq!(code, 1, "leaves inside the window need attention");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 5 + 17 * 2);
    let warnings = rows.iter().filter(|r| r["status"] == "WARNING").count();
    assert_eq!(warnings, 17, "every leaf, no CA");
    let (_, yaml, _) = rotor_at(
        &dir,
        &["certificate", "check", "-o", "yaml", "--now", &later],
    );
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(parsed.as_sequence().unwrap().len(), rows.len());
    let (_, text, _) = rotor_at(
        &dir,
        &["certificate", "check", "--now", &rfc3339(t0() + days(400))],
    );
    assert!(
        text.contains("server/tls/client-admin.crt: O=system:masters, CN=system:admin is EXPIRED"),
        "{text}"
    );
}
