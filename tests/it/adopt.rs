//! `rotor init --adopt` on data dirs another tool made: a k3s server's, laid out as k3s lays
//! it out with every certificate and key made by openssl and the bootstrap record (k3s's JSON,
//! encrypted by an independent implementation of k3s's format) written through the real kine
//! into `server/db/state.db`; and a kubeadm `/etc/kubernetes` made by openssl with kubeadm's
//! names, subjects and usages. (The subjects, names and usages are read from a data dir rotor
//! made with the same settings, the template; nothing of it is copied but its kubeconfigs'
//! text.) A half-made dir is refused with the list of what is wrong and nothing changed; an
//! adopted one keeps every byte, lists what it does not recognise, and then `certificate
//! check`, `start --dry-run`, `certificate rotate` and a CA rotation work on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rotor::facts::{CertificateFacts, ExtendedKeyUsage, parse_certificate_der};

use crate::common::*;
use crate::kine::{Database, Kine, kine_bin};

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    let mut pipe = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut pipe, &input);
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The key algorithm of the fixture.
#[derive(Clone, Copy)]
enum Alg {
    P256,
    Rsa,
}

impl Alg {
    fn new_key(self, path: &Path) {
        let p = path.to_str().unwrap();
        match self {
            Alg::P256 => openssl(
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    p,
                ],
                None,
            ),
            Alg::Rsa => openssl(&["genrsa", "-out", p, "2048"], None),
        };
    }
}

/// `-subj` for openssl: the O attributes, then the CN.
fn subj(facts: &CertificateFacts) -> String {
    let mut s = String::new();
    for o in &facts.subject.organizations {
        s.push_str(&format!("/O={o}"));
    }
    if let Some(cn) = &facts.subject.common_name {
        s.push_str(&format!("/CN={cn}"));
    }
    s
}

/// The fixture's CAs by the template's subject: (certificate PEM, key path).
type Cas = BTreeMap<String, (Vec<u8>, PathBuf)>;

/// openssl's CA with the template CA's subject; the key at `key`.
fn make_ca(facts: &CertificateFacts, key: &Path, alg: Alg) -> Vec<u8> {
    alg.new_key(key);
    openssl(
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            &subj(facts),
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
        ],
        None,
    )
}

/// openssl's certificate with the template leaf's subject, names and usages, signed by the
/// fixture CA of its issuer; its new key at `key`.
fn make_leaf(facts: &CertificateFacts, key: &Path, cas: &Cas, alg: Alg, work: &Path) -> Vec<u8> {
    let (ca_pem, ca_key) = &cas[&facts.issuer.text];
    alg.new_key(key);
    let csr = openssl(
        &[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            &subj(facts),
        ],
        None,
    );
    let mut ext = String::from("basicConstraints=critical,CA:FALSE\n");
    ext.push_str(match alg {
        Alg::P256 => "keyUsage=critical,digitalSignature\n",
        Alg::Rsa => "keyUsage=critical,digitalSignature,keyEncipherment\n",
    });
    let ekus: Vec<&str> = facts
        .extended_key_usages
        .iter()
        .filter_map(|e| match e {
            ExtendedKeyUsage::ServerAuth => Some("serverAuth"),
            ExtendedKeyUsage::ClientAuth => Some("clientAuth"),
            _ => None,
        })
        .collect();
    if !ekus.is_empty() {
        ext.push_str(&format!("extendedKeyUsage={}\n", ekus.join(",")));
    }
    let sans: Vec<String> = facts
        .sans
        .dns_names
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(facts.sans.ip_addresses.iter().map(|i| format!("IP:{i}")))
        .collect();
    if !sans.is_empty() {
        ext.push_str(&format!("subjectAltName={}\n", sans.join(",")));
    }
    let ext_file = work.join("ext.cnf");
    let ca_file = work.join("ca.pem");
    std::fs::write(&ext_file, ext).unwrap();
    std::fs::write(&ca_file, ca_pem).unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-CA",
            ca_file.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-set_serial",
            &format!("0x{:x}", rand_serial()),
            "-days",
            "365",
            "-extfile",
            ext_file.to_str().unwrap(),
        ],
        Some(&csr),
    )
}

fn rand_serial() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u64::from_le_bytes(b) >> 1
}

fn facts_of(pem: &[u8]) -> Vec<CertificateFacts> {
    pem_certs_from(pem)
        .iter()
        .map(|d| parse_certificate_der("template", d).unwrap())
        .collect()
}

fn pem_certs_from(pem: &[u8]) -> Vec<Vec<u8>> {
    rotor::facts::certificate_ders("template", pem).unwrap_or_default()
}

/// Every regular file under `dir` (following rotor's links), relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            let meta = std::fs::metadata(dir.join(&rel)).unwrap();
            if meta.is_dir() {
                stack.push(rel);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// The template's certificate files under `dirs`, made again by openssl into `out`: every CA
/// (one per subject, its key where the template has one), every leaf with a key beside it
/// (followed by its CA where the template's file holds a chain). Returns the CAs.
fn remake_certificates(template: &Path, out: &Path, dirs: &[&str], alg: Alg) -> Cas {
    let work = tempfile::tempdir().unwrap();
    let mut crts: Vec<PathBuf> = Vec::new();
    for d in dirs {
        for rel in files_under(&template.join(d)) {
            if rel.extension().is_some_and(|e| e == "crt") {
                crts.push(Path::new(d).join(rel));
            }
        }
    }
    let mut cas: Cas = BTreeMap::new();
    // CAs first: those with a key beside them make the CA, copies follow.
    crts.sort_by_key(|c| !template.join(c).with_extension("key").exists());
    let mut leaves = Vec::new();
    for rel in &crts {
        let pem = std::fs::read(template.join(rel)).unwrap();
        let facts = facts_of(&pem);
        let first = &facts[0];
        let target = out.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if first.is_ca {
            let key = target.with_extension("key");
            if !cas.contains_key(&first.subject.text) {
                let has_key = template.join(rel).with_extension("key").exists();
                assert!(has_key, "{}: a CA copy before its CA", rel.display());
                let cert = make_ca(first, &key, alg);
                cas.insert(first.subject.text.clone(), (cert, key));
            }
            std::fs::write(&target, &cas[&first.subject.text].0).unwrap();
        } else if template.join(rel).with_extension("key").exists() {
            leaves.push((rel.clone(), facts));
        }
    }
    for (rel, facts) in leaves {
        let target = out.join(&rel);
        let mut cert = make_leaf(
            &facts[0],
            &target.with_extension("key"),
            &cas,
            alg,
            work.path(),
        );
        if facts.len() > 1 {
            cert.extend_from_slice(&cas[&facts[0].issuer.text].0);
        }
        std::fs::write(&target, cert).unwrap();
    }
    cas
}

/// k3s's `hashCA`: SHA-256 of the server CA file, hex.
fn ca_hash(pem: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(pem))
}

/// A k3s server's data dir as k3s lays it out, made by openssl from the template's settings,
/// with its bootstrap record written through the real kine into `server/db/state.db`.
fn k3s_fixture(template: &Path, dir: &Path, bin: &Path) -> String {
    remake_certificates(template, dir, &["server/tls", "agent"], Alg::P256);
    let tls = dir.join("server/tls");
    Alg::Rsa.new_key(&tls.join("service.key"));
    std::fs::copy(tls.join("service.key"), tls.join("service.current.key")).unwrap();
    // What k3s keeps beside them, that rotor does not manage.
    std::fs::write(tls.join("dynamic-cert.json"), b"{}\n").unwrap();
    std::fs::create_dir_all(tls.join("temporary-certs")).unwrap();
    std::fs::write(
        tls.join("temporary-certs/apiserver-loopback-client__.crt"),
        b"",
    )
    .unwrap();
    // The kubeconfigs name files by path.
    std::fs::create_dir_all(dir.join("server/cred")).unwrap();
    for rel in files_under(&template.join("server/cred")) {
        let text = std::fs::read_to_string(template.join("server/cred").join(&rel)).unwrap();
        let text = text.replace(template.to_str().unwrap(), dir.to_str().unwrap());
        std::fs::write(dir.join("server/cred").join(rel), text).unwrap();
    }
    let password = "adopted-cluster-password";
    let token = format!(
        "K10{}::server:{password}",
        ca_hash(&std::fs::read(tls.join("server-ca.crt")).unwrap())
    );
    std::fs::write(dir.join("server/token"), format!("{token}\n")).unwrap();

    // The bootstrap record: k3s's JSON, encrypted as k3s does (PBKDF2-SHA1, 4096 rounds,
    // AES-GCM), by Python's cryptography, then written through kine.
    let fields = [
        ("ServerCA", "server-ca.crt"),
        ("ServerCAKey", "server-ca.key"),
        ("ClientCA", "client-ca.crt"),
        ("ClientCAKey", "client-ca.key"),
        ("RequestHeaderCA", "request-header-ca.crt"),
        ("RequestHeaderCAKey", "request-header-ca.key"),
        ("ETCDServerCA", "etcd/server-ca.crt"),
        ("ETCDServerCAKey", "etcd/server-ca.key"),
        ("ETCDPeerCA", "etcd/peer-ca.crt"),
        ("ETCDPeerCAKey", "etcd/peer-ca.key"),
        ("ServiceKey", "service.key"),
    ];
    let mut json = serde_json::Map::new();
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    for (field, file) in fields {
        json.insert(
            field.into(),
            serde_json::json!({
                "Timestamp": "2026-01-01T00:00:00Z",
                "Content": b64(&std::fs::read(tls.join(file)).unwrap()),
            }),
        );
    }
    json.insert(
        "PasswdFile".into(),
        serde_json::json!({"Timestamp": "2026-01-01T00:00:00Z", "Content": b64(b"")}),
    );
    let script = r#"
import sys, os, base64
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
salt = os.urandom(8).hex()
key = PBKDF2HMAC(algorithm=hashes.SHA1(), length=32, salt=salt.encode(), iterations=4096).derive(sys.argv[1].encode())
nonce = os.urandom(12)
sealed = nonce + AESGCM(key).encrypt(nonce, sys.stdin.buffer.read(), None)
sys.stdout.write(salt + ":" + base64.b64encode(sealed).decode())
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, password])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        serde_json::Value::Object(json).to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let record = String::from_utf8(out.stdout).unwrap();
    let database = Database::sqlite(&dir.join("server/db"));
    let kine = Kine::start(bin, &database, &dir.join("../kine-logs"));
    let key = format!(
        "/bootstrap/{}",
        &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(password.as_bytes()))[..12]
    );
    let put = kine.ctl(&["put", &key, &record]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    drop(kine);
    token
}

/// Every file under `dir` and its bytes (through links).
fn contents(dir: &Path, under: &[&str]) -> BTreeMap<PathBuf, Vec<u8>> {
    under
        .iter()
        .flat_map(|d| {
            files_under(&dir.join(d))
                .into_iter()
                .map(move |rel| Path::new(d).join(rel))
        })
        .map(|rel| {
            let bytes = std::fs::read(dir.join(&rel)).unwrap();
            (rel, bytes)
        })
        .collect()
}

fn have_tools() -> bool {
    require_command("openssl")
        && require_command("etcdctl")
        && require(
            "python3 with the cryptography package",
            Command::new("python3")
                .args(["-c", "import cryptography"])
                .status()
                .is_ok_and(|s| s.success()),
        )
}

const NODE: &[&str] = &["--node-name", "server-1", "--node-ip", "127.0.0.1"];

/// A k3s server's data dir made by openssl and kine: refused while half made (every problem
/// listed, nothing changed), then adopted as it is; rotor works on it afterwards, and kine
/// serves what a CA rotation wrote.
#[test]
fn a_k3s_server_dir_made_by_openssl_and_kine_is_adopted_in_place() {
    if !have_tools() {
        return;
    }
    let Some(bin) = kine_bin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    rotor_ok(&template, &[&["init"][..], NODE].concat());
    let dir = tmp.path().join("k3s");
    let token = k3s_fixture(&template, &dir, &bin);
    let under = ["server/tls", "server/cred", "server/token", "agent"];

    // Half made: a key gone, a certificate of another CA.
    let half = tmp.path().join("half");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&dir)
        .arg(&half)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(half.join("server/tls/client-admin.key")).unwrap();
    std::fs::copy(
        half.join("server/tls/etcd/client.crt"),
        half.join("agent/client-kubelet.crt"),
    )
    .unwrap();
    let before = contents(&half, &under);
    let (code, out, err) = rotor_at(&half, &[&["init", "--adopt"][..], NODE].concat());
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("cannot adopt")
            && err.contains("client-admin.crt: private key missing")
            && err.contains("client-kubelet.crt"),
        "{err}"
    );
    assert_eq!(contents(&half, &under), before, "nothing changed");
    assert!(!half.join(".rotor").exists());

    // Whole: adopted as it is.
    let before = contents(&dir, &under);
    let out = rotor_ok(&dir, &[&["init", "--adopt"][..], NODE].concat());
    assert!(
        out.contains("adopted") && out.contains("nothing issued"),
        "{out}"
    );
    assert!(out.contains("sqlite") && out.contains("state.db"), "{out}");
    assert!(
        out.contains("server/tls/dynamic-cert.json")
            && out.contains("temporary-certs/apiserver-loopback-client__.crt"),
        "{out}"
    );
    assert_eq!(contents(&dir, &under), before, "every byte as it was");
    let config = std::fs::read_to_string(dir.join("rotor.json")).unwrap();
    assert!(config.contains("\"datastore_format\": \"k3s\""), "{config}");

    // rotor works on it as on a dir it made.
    rotor_ok(&dir, &["certificate", "check"]);
    let out = rotor_ok(&dir, &["start", "--dry-run"]);
    assert!(!out.contains("renew "), "nothing to renew yet: {out}");
    rotor_ok(&dir, &["certificate", "rotate", "--service", "admin"]);
    let staged = tmp.path().join("rotate");
    rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-default-ca",
            "--out",
            staged.to_str().unwrap(),
        ],
    );
    rotor_ok(
        &dir,
        &[
            "certificate",
            "rotate-ca",
            "--path",
            staged.to_str().unwrap(),
            "--force",
        ],
    );
    // As k3s: the new CAs are in the datastore; the next start takes them.
    rotor_ok(&dir, &["start"]);
    assert_ne!(
        std::fs::read(dir.join("server/tls/server-ca.crt")).unwrap(),
        before[Path::new("server/tls/server-ca.crt")]
    );
    // kine serves the rotated record, in k3s's format, under the same token.
    let database = Database::sqlite(&dir.join("server/db"));
    let kine = Kine::start(&bin, &database, &tmp.path().join("kine-after"));
    let key = format!(
        "/bootstrap/{}",
        &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            b"adopted-cluster-password"
        ))[..12]
    );
    let got = kine.ctl(&["get", &key, "--print-value-only"]);
    let value = String::from_utf8_lossy(&got.stdout).trim().to_string();
    let plain =
        rotor::datastore::open_record("adopted-cluster-password", &key, value.as_bytes()).unwrap();
    let data: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    let server_ca = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        data["ServerCA"]["Content"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        server_ca,
        std::fs::read(dir.join("server/tls/server-ca.crt")).unwrap()
    );
    assert!(token.starts_with("K10"));
}

/// A kubeadm `/etc/kubernetes` made by openssl (RSA, kubeadm's names, subjects and usages,
/// kubeconfigs embedding their credentials): adopted as it is, with rotor's own token and
/// datastore record added; then checked and renewed by rotor.
#[test]
fn a_kubeadm_etc_kubernetes_made_by_openssl_is_adopted_in_place() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let kubeadm = [
        "--profile",
        "kubeadm",
        "--node-name",
        "cp-1",
        "--node-ip",
        "10.0.0.10",
    ];
    rotor_ok(&template, &[&["init"][..], &kubeadm].concat());
    let dir = tmp.path().join("etc-kubernetes");
    let cas = remake_certificates(&template, &dir, &["pki"], Alg::Rsa);
    let pki = dir.join("pki");
    Alg::Rsa.new_key(&pki.join("sa.key"));
    let public = openssl(
        &[
            "pkey",
            "-in",
            pki.join("sa.key").to_str().unwrap(),
            "-pubout",
        ],
        None,
    );
    std::fs::write(pki.join("sa.pub"), public).unwrap();
    // The kubeconfigs: the template's, with openssl's credentials embedded.
    let work = tempfile::tempdir().unwrap();
    let b64 = |b: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b);
    let unb64 = |s: &str| {
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s.trim()).unwrap()
    };
    for name in [
        "admin.conf",
        "super-admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
        "kubelet.conf",
    ] {
        let Ok(text) = std::fs::read_to_string(template.join(name)) else {
            continue;
        };
        let mut out = String::new();
        let mut key_b64 = String::new();
        for line in text.lines() {
            let (indent, rest) = line.split_at(line.len() - line.trim_start().len());
            if let Some(v) = rest.strip_prefix("client-certificate-data: ") {
                let facts = facts_of(&unb64(v));
                let key = work.path().join("k.pem");
                let cert = make_leaf(&facts[0], &key, &cas, Alg::Rsa, work.path());
                key_b64 = b64(&std::fs::read(&key).unwrap());
                out.push_str(&format!(
                    "{indent}client-certificate-data: {}\n",
                    b64(&cert)
                ));
            } else if rest.starts_with("client-key-data: ") {
                out.push_str(&format!("{indent}client-key-data: {key_b64}\n"));
            } else if let Some(v) = rest.strip_prefix("certificate-authority-data: ") {
                let facts = facts_of(&unb64(v));
                out.push_str(&format!(
                    "{indent}certificate-authority-data: {}\n",
                    b64(&cas[&facts[0].subject.text].0)
                ));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        std::fs::write(dir.join(name), out).unwrap();
    }
    std::fs::write(dir.join("manifests-not-ours.yaml"), b"kind: Pod\n").unwrap();
    let under = ["pki"];
    let before = contents(&dir, &under);
    let conf_before = std::fs::read(dir.join("admin.conf")).unwrap();
    let out = rotor_ok(&dir, &[&["init", "--adopt"][..], &kubeadm].concat());
    assert!(out.contains("adopted"), "{out}");
    assert!(out.contains("K10"), "rotor's own token: {out}");
    assert_eq!(contents(&dir, &under), before, "every byte as it was");
    assert_eq!(std::fs::read(dir.join("admin.conf")).unwrap(), conf_before);
    rotor_ok(&dir, &["certificate", "check"]);
    rotor_ok(&dir, &["start", "--dry-run"]);
    rotor_ok(&dir, &["certs", "renew", "apiserver"]);
    assert_ne!(
        std::fs::read(dir.join("pki/apiserver.crt")).unwrap(),
        before[Path::new("pki/apiserver.crt")]
    );
}
