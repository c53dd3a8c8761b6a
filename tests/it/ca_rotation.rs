//! CA rotation: generate-custom-ca, rotate-default-ca, rotate-ca with its checks, crash safety,
//! service-account key and token rotation.

use std::path::{Path, PathBuf};

use rotor::pki::Token;
use sha2::{Digest, Sha256};

use crate::common::*;

fn init(dir: &Path, extra: &[&str]) -> Token {
    let now = rfc3339(t0());
    let mut args = vec![
        "init",
        "--node-name",
        "server-1",
        "--node-ip",
        "127.0.0.1",
        "--now",
        &now,
    ];
    args.extend_from_slice(extra);
    let out = rotor_ok(dir, &args);
    Token::parse(out.lines().find(|l| l.starts_with("K10")).unwrap()).unwrap()
}

fn token_in(dir: &Path) -> Token {
    Token::parse(
        std::fs::read_to_string(dir.join("server/token"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The datastore and the live TLS dir: what a refused rotation must leave byte-identical.
fn state(dir: &Path) -> (Tree, Tree) {
    (tree(&dir.join("server/db")), tree(&dir.join("server/tls")))
}

#[test]
fn cross_signed_rotation_keeps_old_trust_clients_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init(&dir, &[]);
    let old_server_ca = std::fs::read(dir.join("server/tls/server-ca.crt")).unwrap();
    let old_client_ca = pem_certs(&dir.join("server/tls/client-ca.crt"));
    std::fs::write(tmp.path().join("old-server-ca.crt"), &old_server_ca).unwrap();
    let at = rfc3339(t0() + days(10));

    let staged = tmp.path().join("rotate");
    let out = rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-default-ca",
            "--out",
            staged.to_str().unwrap(),
            "--now",
            &at,
        ],
    );
    let printed = Token::parse(out.lines().find(|l| l.starts_with("K10")).unwrap()).unwrap();
    let tls = staged.join("server/tls");
    // The token pins the new self-signed root, as nodes compute it (k3s's script prints the
    // intermediate's fingerprint instead, which no node computes).
    let ssigned = pem_certs(&tls.join("server-ca-root-ssigned.pem")).remove(0);
    let intermediate = pem_certs(&tls.join("server-ca.crt")).remove(0);
    assert_eq!(printed.ca_hash.as_deref(), Some(sha256(&ssigned).as_str()));
    assert_ne!(
        printed.ca_hash.as_deref(),
        Some(sha256(&intermediate).as_str())
    );
    assert_eq!(
        pem_certs(&tls.join("server-ca.crt")).len(),
        4,
        "intermediate, cross-signed root, self-signed root, old root"
    );

    // The root changes: refused without --force, nothing changed.
    let before = state(&dir);
    let (code, _, err) = rotor_at(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--now",
            &at,
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("the join token's CA hash changes") && err.contains("[--force overrides]"),
        "{err}"
    );
    assert_eq!(state(&dir), before);
    let out = rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
            "--dry-run",
            "--now",
            &at,
        ],
    );
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(state(&dir), before);

    let out = rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
            "--now",
            &at,
        ],
    );
    assert!(
        out.contains("CA material saved to the datastore in one step"),
        "{out}"
    );
    assert_eq!(
        token_in(&dir),
        printed,
        "the token file carries the new hash"
    );
    // The live TLS dir is untouched until start.
    assert_eq!(tree(&dir.join("server/tls")), before.1);

    let out = rotor_ok(&dir, &["start", "--now", &at]);
    assert!(
        out.contains("renewed 17 certificate(s)")
            && out.contains("not signed by the current server-ca"),
        "{out}"
    );
    assert!(out.contains("extract  server/tls/server-ca.crt"), "{out}");

    let serving = dir.join("server/tls/serving-kube-apiserver.crt");
    // A client that trusts only the OLD server CA still connects (through the cross-signed root).
    let peer = tls_handshake(
        &serving,
        &dir.join("server/tls/serving-kube-apiserver.key"),
        &pem_certs(&dir.join("server/tls/client-ca.crt")),
        &dir.join("server/tls/client-admin.crt"),
        &dir.join("server/tls/client-admin.key"),
        &pem_certs(&tmp.path().join("old-server-ca.crt")),
    )
    .unwrap();
    assert_eq!(peer, "system:admin");
    // A client trusting only the new root connects too; and a server trusting only the old
    // client CA accepts the new client certificate.
    tls_handshake(
        &serving,
        &dir.join("server/tls/serving-kube-apiserver.key"),
        &old_client_ca,
        &dir.join("server/tls/client-admin.crt"),
        &dir.join("server/tls/client-admin.key"),
        std::slice::from_ref(&ssigned),
    )
    .unwrap();
    if require_command("openssl") {
        let check = |ca: &Path| {
            let out = std::process::Command::new("openssl")
                .args([
                    "verify",
                    "-attime",
                    &(t0() + days(11)).unix_timestamp().to_string(),
                    "-CAfile",
                ])
                .arg(ca)
                .arg("-untrusted")
                .arg(dir.join("server/tls/server-ca.crt"))
                .arg(&serving)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                ca.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        check(&tmp.path().join("old-server-ca.crt"));
        check(&tls.join("server-ca-root-ssigned.pem"));
    }
}

fn generate(out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "certificate",
        "generate-custom-ca",
        "--out",
        out.to_str().unwrap(),
        "--root-key-type",
        "ecdsa-p384",
        "--intermediate-key-type",
        "ecdsa-p256",
        "--now",
    ];
    let now = rfc3339(t0() - days(1));
    args.push(&now);
    args.extend_from_slice(extra);
    rotor_ok(out, &args)
}

#[test]
fn generate_custom_ca_output_is_adopted_by_init_and_rotates_without_disruption_under_the_same_root()
{
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = generate(&dir, &[]);
    assert!(
        out.contains("move these keys off the nodes")
            && out.contains("root-ca.key")
            && out.contains("intermediate-ca.key"),
        "{out}"
    );
    let tls = dir.join("server/tls");
    let root = pem_certs(&tls.join("root-ca.pem")).remove(0);
    let token = init(&dir, &[]);
    assert_eq!(
        token.ca_hash.as_deref(),
        Some(sha256(&root).as_str()),
        "the token pins the root"
    );
    webpki_verify(
        &tls.join("serving-kube-apiserver.crt"),
        &tls.join("server-ca.crt"),
        true,
        t0() + days(1),
    )
    .unwrap();

    // New intermediate and CAs under the same root: non-disruptive, no --force needed.
    let staged = tmp.path().join("same-root");
    std::fs::create_dir_all(&staged).unwrap();
    let root_cert = tls.join("root-ca.pem");
    let root_key = tls.join("root-ca.key");
    let out = rotor_ok(
        &staged,
        &[
            "certificate",
            "generate-custom-ca",
            "--out",
            staged.to_str().unwrap(),
            "--root-cert",
            root_cert.to_str().unwrap(),
            "--root-key",
            root_key.to_str().unwrap(),
            "--intermediate-key-type",
            "ecdsa-p256",
            "--service-key-type",
            "ecdsa-p256",
            "--now",
            &rfc3339(t0()),
        ],
    );
    assert!(
        !out.contains("root-ca.key"),
        "the root key stays where it was: {out}"
    );
    // An ES256 service-account key (Kubernetes signs tokens with it), as SEC1: the only EC form
    // kube-apiserver's --service-account-key-file reader takes. Checked by openssl.
    let sa_text = std::fs::read_to_string(staged.join("server/tls/service.key")).unwrap();
    assert!(
        sa_text.starts_with("-----BEGIN EC PRIVATE KEY-----\n"),
        "{sa_text}"
    );
    if require_command("openssl") {
        let o = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-text", "-in"])
            .arg(staged.join("server/tls/service.key"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{text}");
        assert!(text.contains("prime256v1"), "{text}");
    }
    // Keep the current service-account key in the staged list (partial rotation would too).
    let mut sa = std::fs::read(staged.join("server/tls/service.key")).unwrap();
    sa.extend(std::fs::read(tls.join("service.key")).unwrap());
    std::fs::write(staged.join("server/tls/service.key"), sa).unwrap();
    let at = rfc3339(t0() + days(5));
    let out = rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.join("server").to_str().unwrap(),
            "--now",
            &at,
        ],
    );
    assert!(
        out.contains("token CA hash unchanged (non-disruptive)"),
        "{out}"
    );
    assert_eq!(token_in(&dir).ca_hash, token.ca_hash);
    let out = rotor_ok(&dir, &["start", "--now", &at]);
    assert!(out.contains("renewed 17 certificate(s)"), "{out}");
    webpki_verify(
        &tls.join("serving-kube-apiserver.crt"),
        &tls.join("server-ca.crt"),
        true,
        t0() + days(6),
    )
    .unwrap();

    // A new root: refused without --force (the chain breaks and the token hash changes).
    let other = tmp.path().join("new-root");
    generate(&other, &[]);
    let mut sa = std::fs::read(other.join("server/tls/service.key")).unwrap();
    sa.extend(std::fs::read(tls.join("service.key")).unwrap());
    std::fs::write(other.join("server/tls/service.key"), sa).unwrap();
    let before = state(&dir);
    let (code, _, err) = rotor_at(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            other.to_str().unwrap(),
            "--now",
            &at,
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot be verified using the current CA chain")
            && err.contains("CA hash changes"),
        "{err}"
    );
    assert_eq!(state(&dir), before);
    let out = rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            other.to_str().unwrap(),
            "--force",
            "--now",
            &at,
        ],
    );
    assert!(out.contains("warning (forced)"), "{out}");
}

/// A data dir and a staged cross-signed set, for the refusal cases.
fn staged_cluster(tmp: &Path) -> (PathBuf, PathBuf) {
    let dir = tmp.join("data");
    init(&dir, &["--datastore-format", "k3s"]);
    let staged = tmp.join("rotate");
    rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-default-ca",
            "--out",
            staged.to_str().unwrap(),
            "--now",
            &rfc3339(t0() + days(1)),
        ],
    );
    (dir, staged.join("server/tls"))
}

fn refused(dir: &Path, staged: &Path, needle: &str) {
    let before = state(dir);
    let (code, out, err) = rotor_at(
        dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--now",
            &rfc3339(t0() + days(1)),
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("rotate-ca refused, nothing changed") && err.contains(needle),
        "expected {needle:?} in {err}"
    );
    assert_eq!(
        state(dir),
        before,
        "a refused rotation changed the datastore or the tls dir"
    );
}

#[test]
fn refusals_list_the_reason_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, staged) = staged_cluster(tmp.path());

    // A key that is not the certificate's: refused even with --force.
    let key = staged.join("client-ca.key");
    let original_key = std::fs::read(&key).unwrap();
    std::fs::copy(staged.join("request-header-ca.key"), &key).unwrap();
    refused(&dir, &staged, "client-ca: ");
    refused(
        &dir,
        &staged,
        "the private key does not belong to the certificate",
    );
    let (code, _, err) = rotor_at(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("--force does not override unusable material"),
        "{err}"
    );
    std::fs::write(&key, &original_key).unwrap();

    // A certificate that is not a CA.
    let cert = staged.join("request-header-ca.crt");
    let original_cert = std::fs::read(&cert).unwrap();
    let original_rh_key = std::fs::read(staged.join("request-header-ca.key")).unwrap();
    let leaf = std::fs::read(dir.join("server/tls/client-auth-proxy.crt")).unwrap();
    std::fs::write(&cert, &leaf).unwrap();
    std::fs::copy(
        dir.join("server/tls/client-auth-proxy.key"),
        staged.join("request-header-ca.key"),
    )
    .unwrap();
    refused(&dir, &staged, "the certificate is not a CA");
    std::fs::write(&cert, &original_cert).unwrap();
    std::fs::write(staged.join("request-header-ca.key"), &original_rh_key).unwrap();

    // A single-certificate bundle (the new intermediate alone).
    let etcd = staged.join("etcd/peer-ca.crt");
    let full = std::fs::read(&etcd).unwrap();
    let first = rotor::pki::pem_encode("CERTIFICATE", &pem_certs(&etcd)[0]);
    std::fs::write(&etcd, first).unwrap();
    refused(&dir, &staged, "holds a single certificate");
    std::fs::write(&etcd, &full).unwrap();

    // A dropped service-account key.
    let sa = staged.join("service.key");
    let sa_full = std::fs::read(&sa).unwrap();
    let only_new = rotor::pki::PrivateKey::all_from_pem("sa", &sa_full)
        .unwrap()
        .remove(0);
    std::fs::write(&sa, only_new.pem()).unwrap();
    refused(
        &dir,
        &staged,
        "the current signing key is not in the new key list",
    );
    std::fs::write(&sa, &sa_full).unwrap();

    // A symlink escaping the staging dir.
    let server_ca = staged.join("server-ca.crt");
    let server_ca_bytes = std::fs::read(&server_ca).unwrap();
    std::fs::write(tmp.path().join("elsewhere.crt"), &server_ca_bytes).unwrap();
    std::fs::remove_file(&server_ca).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere.crt"), &server_ca).unwrap();
    refused(&dir, &staged, "leads outside its directory");
    std::fs::remove_file(&server_ca).unwrap();
    std::fs::write(&server_ca, &server_ca_bytes).unwrap();

    // The live TLS dir itself is never a staging dir.
    let before = state(&dir);
    let (code, _, err) = rotor_at(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            dir.join("server").to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("this is the live TLS directory"), "{err}");
    assert_eq!(state(&dir), before);

    // Restored, the same staged set passes (with --force for the new root).
    rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
            "--now",
            &rfc3339(t0() + days(1)),
        ],
    );
}

#[test]
fn service_key_rotation_keeps_previous_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init(&dir, &[]);
    let first = std::fs::read_to_string(dir.join("server/tls/service.key")).unwrap();
    let at = rfc3339(t0() + days(1));
    let (code, _, err) = rotor_at(&dir, &["certificate", "rotate-service-key", "--keep", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("'--keep': 0 would drop"), "{err}");
    rotor_ok(&dir, &["certificate", "rotate-service-key", "--now", &at]);
    let out = rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-service-key",
            "--keep",
            "1",
            "--now",
            &at,
        ],
    );
    assert!(
        out.contains("2 key(s) in the list (1 old key(s) dropped)"),
        "{out}"
    );
    rotor_ok(&dir, &["start", "--now", &at]);
    let keys = rotor::pki::PrivateKey::all_from_pem(
        "service.key",
        &std::fs::read(dir.join("server/tls/service.key")).unwrap(),
    )
    .unwrap();
    assert_eq!(keys.len(), 2);
    assert!(
        !keys.iter().any(|k| k.pem() == first),
        "the oldest key was dropped by --keep 1"
    );
    let current = std::fs::read_to_string(dir.join("server/tls/service.current.key")).unwrap();
    assert_eq!(
        current,
        keys[0].pem(),
        "service.current.key holds only the signing key"
    );
}

#[test]
fn token_rotation_locks_out_the_old_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let old = init(&dir, &[]);
    let out = rotor_ok(
        &dir,
        &["token", "rotate", "--new-token", "a-new-secret-password"],
    );
    let new = Token::parse(out.lines().find(|l| l.starts_with("K10")).unwrap()).unwrap();
    assert_eq!(new.password, "a-new-secret-password");
    assert_eq!(new.ca_hash, old.ca_hash);
    assert_eq!(token_in(&dir), new);
    let (code, _, err) = rotor_at(&dir, &["start", "--token", &old.render()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("token does not decrypt the bootstrap data"),
        "{err}"
    );
    rotor_ok(&dir, &["start"]);
    let records: Vec<_> = std::fs::read_dir(dir.join("server/db/bootstrap"))
        .unwrap()
        .collect();
    assert_eq!(records.len(), 1, "the old record is gone");
}

#[test]
fn kubeadm_cas_rotate_with_the_same_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("k");
    rotor_ok(
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
    let staged = tmp.path().join("stage");
    let at = rfc3339(t0() + days(3));
    rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-default-ca",
            "--out",
            staged.to_str().unwrap(),
            "--now",
            &at,
        ],
    );
    assert!(staged.join("pki/etcd/ca.crt").is_file());
    rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
            "--now",
            &at,
        ],
    );
    let out = rotor_ok(&dir, &["start", "--now", &at]);
    assert!(out.contains("renewed 12 certificate(s)"), "{out}");
    let conf = rotor::cluster::read_kubeconfig_credential(
        "admin.conf",
        &std::fs::read(dir.join("admin.conf")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        conf.ca_pem,
        std::fs::read(dir.join("pki/ca.crt")).unwrap(),
        "kubeconfigs embed the new CA bundle"
    );
    webpki_verify(
        &dir.join("pki/apiserver.crt"),
        &dir.join("pki/ca.crt"),
        true,
        t0() + days(4),
    )
    .unwrap();
}

#[test]
fn a_partial_rotation_of_only_the_service_key_keeps_every_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init(&dir, &[]);
    // As the documents do it: a new key, then the existing keys, in a staging dir of its own.
    let staged = tmp.path().join("sa-only/tls");
    std::fs::create_dir_all(&staged).unwrap();
    let new_key = rotor::pki::KeyType::Rsa2048.generate().unwrap();
    let mut pem = new_key.pem().as_bytes().to_vec();
    pem.extend(std::fs::read(dir.join("server/tls/service.key")).unwrap());
    std::fs::write(staged.join("service.key"), &pem).unwrap();
    let cas_before = tree(&dir.join("server/tls"));
    let at = rfc3339(t0() + days(1));
    let out = rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            tmp.path().join("sa-only").to_str().unwrap(),
            "--now",
            &at,
        ],
    );
    assert!(out.contains("replace: service-account key"), "{out}");
    assert!(out.contains("keep (not staged): server-ca, client-ca, request-header-ca, etcd-server-ca, etcd-peer-ca"), "{out}");
    assert!(out.contains("token CA hash unchanged"), "{out}");
    let out = rotor_ok(&dir, &["start", "--now", &at]);
    assert!(
        out.contains("renewed 0 certificate(s)") && out.contains("extract  server/tls/service.key"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(dir.join("server/tls/service.key")).unwrap(),
        pem
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("server/tls/service.current.key")).unwrap(),
        new_key.pem()
    );
    let after = tree(&dir.join("server/tls"));
    for (path, v) in &cas_before {
        if path.ends_with("-ca.crt") || path.ends_with("-ca.key") {
            assert_eq!(after.get(path), Some(v), "{path} must not change");
        }
    }
}

#[test]
fn ca_files_are_never_staged_into_a_live_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    init(&dir, &[]);
    let before = tree(&dir);
    for args in [
        vec![
            "certificate",
            "generate-custom-ca",
            "--out",
            dir.to_str().unwrap(),
        ],
        vec![
            "certificate",
            "rotate-default-ca",
            "--out",
            dir.to_str().unwrap(),
        ],
    ] {
        let (code, _, err) = rotor_at(&dir, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("this is a rotor data dir"), "{err}");
    }
    assert_eq!(tree(&dir), before);
}
