//! Signed plugins through a real OCI registry (Debian's `docker-registry`, the CNCF
//! distribution registry, started here on loopback) and OCI image layouts: a vendor signs and
//! pushes, an operator pulls by tag and by digest and loads the plugin through a bundle that
//! trusts the vendor's key; tampered layers, wrong keys, revoked keys and digests, digest
//! mismatches are each refused. The signature is checked independently with openssl.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use rotor::contract::Hook;
use rotor::policy::{SigningKey, Statement};

use crate::common::{default_plugin, repo_root, require_command, rotor, shared_cache};

/// A registry on 127.0.0.1, stopped when dropped.
pub(crate) struct Registry {
    child: Child,
    pub(crate) port: u16,
    storage: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// A registry storing under `dir`, with TLS when `tls` gives (cert, key) files; `None`
    /// when docker-registry is not installed (a failure under CI).
    pub(crate) fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Option<Registry> {
        Registry::start_with(dir, tls, None)
    }

    /// [`Registry::start`], with HTTP basic auth from an htpasswd file when given.
    pub(crate) fn start_with(
        dir: &Path,
        tls: Option<(&Path, &Path)>,
        htpasswd: Option<&Path>,
    ) -> Option<Registry> {
        if !require_command("docker-registry") {
            return None;
        }
        let auth = htpasswd
            .map(|p| {
                format!(
                    "auth:\n  htpasswd:\n    realm: rotor-test\n    path: {}\n",
                    p.display()
                )
            })
            .unwrap_or_default();
        let port = free_port();
        let storage = dir.join("registry-storage");
        let tls = tls
            .map(|(c, k)| {
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.display(),
                    k.display()
                )
            })
            .unwrap_or_default();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n{auth}storage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}",
                storage.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry {
            child,
            port,
            storage,
        };
        // Up when it accepts connections (a TLS registry answers a plain request with 400).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read(&mut buf).is_ok_and(|n| n > 0) {
                    return Some(registry);
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn url(&self, repo_tag: &str) -> String {
        format!("oci://127.0.0.1:{}/{repo_tag}", self.port)
    }

    /// The file the registry keeps a blob in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

pub(crate) fn run(args: &[&str]) -> (i32, String, String) {
    rotor(args, &shared_cache())
}

pub(crate) fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "rotor {args:?}:\n{out}\n{err}");
    out
}

pub(crate) fn refused(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 2, "rotor {args:?} should fail:\n{out}\n{err}");
    err
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The digest `rotor policy push` printed.
fn pushed_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("digest "))
        .unwrap_or_else(|| panic!("no digest in:\n{out}"))
        .to_string()
}

/// A vendor key, and the default renewal plugin signed with it as version `version`.
pub(crate) struct Vendor {
    pub(crate) key: PathBuf,
    pub(crate) public: PathBuf,
    pub(crate) plugin: PathBuf,
    pub(crate) signature: PathBuf,
}

pub(crate) fn vendor(dir: &Path, name: &str, version: &str) -> Vendor {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join(format!("{name}.key"));
    let out = ok(&["policy", "keygen", "--out", s(&key)]);
    assert!(out.contains("key id "), "{out}");
    let plugin = dir.join("renewal-window.wasm");
    std::fs::copy(default_plugin("renewal-window"), &plugin).unwrap();
    let out = ok(&[
        "policy",
        "sign",
        "--key",
        s(&key),
        "--plugin-version",
        version,
        s(&plugin),
    ]);
    assert!(
        out.contains(&format!(
            "signed renewal-window {version} (rotor:policy@0.3.0, renewal"
        )),
        "{out}"
    );
    Vendor {
        public: dir.join(format!("{name}.key.pub")),
        signature: dir.join("renewal-window.wasm.sig"),
        key,
        plugin,
    }
}

/// The default bundle, its renewal plugin accepted by a signature from `keys` instead of a pin.
pub(crate) fn signed_bundle(
    dir: &Path,
    keys: &[(&str, &Path)],
    renewal_extra: &str,
    trust_extra: &str,
) {
    let default = repo_root().join("policies/default");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    for p in ["san-validation.wasm", "csr-approval.wasm"] {
        std::fs::copy(default.join("plugins").join(p), dir.join("plugins").join(p)).unwrap();
    }
    let manifest = std::fs::read_to_string(default.join("bundle.toml")).unwrap();
    let pin = manifest
        .lines()
        .skip_while(|l| *l != "[renewal]")
        .find(|l| l.starts_with("sha256 = "))
        .unwrap()
        .to_string();
    let mut trust = String::from("[trust.keys]\n");
    for (name, public) in keys {
        std::fs::copy(public, dir.join("keys").join(format!("{name}.pub"))).unwrap();
        trust.push_str(&format!("{name} = \"keys/{name}.pub\"\n"));
    }
    let manifest = manifest
        .replacen(&format!("{pin}\n"), renewal_extra, 1)
        .replacen("[bundle]", &format!("{trust}{trust_extra}\n[bundle]"), 1);
    std::fs::write(dir.join("bundle.toml"), manifest).unwrap();
}

#[test]
fn a_signed_plugin_goes_through_a_registry_and_a_layout_into_a_bundle_that_trusts_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(registry) = Registry::start(tmp.path(), None) else {
        return;
    };
    let acme = vendor(&tmp.path().join("vendor"), "acme", "1.2.0");

    // The signature checks out with an independent Ed25519 implementation (openssl), over
    // DSSE's pre-authentication encoding of the payload.
    if require_command("openssl") {
        let env: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&acme.signature).unwrap()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let payload = b64.decode(env["payload"].as_str().unwrap()).unwrap();
        let ptype = env["payloadType"].as_str().unwrap();
        let mut pae = format!("DSSEv1 {} {ptype} {} ", ptype.len(), payload.len()).into_bytes();
        pae.extend_from_slice(&payload);
        let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            statement["sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(std::fs::read(&acme.plugin).unwrap()))
        );
        let sig = b64
            .decode(env["signatures"][0]["sig"].as_str().unwrap())
            .unwrap();
        std::fs::write(tmp.path().join("pae.bin"), &pae).unwrap();
        std::fs::write(tmp.path().join("sig.bin"), &sig).unwrap();
        let verify = |data: &str| {
            Command::new("openssl")
                .args([
                    "pkeyutl",
                    "-verify",
                    "-pubin",
                    "-inkey",
                    s(&acme.public),
                    "-rawin",
                ])
                .args(["-in", data, "-sigfile", s(&tmp.path().join("sig.bin"))])
                .output()
                .unwrap()
        };
        let good = verify(s(&tmp.path().join("pae.bin")));
        assert!(
            good.status.success(),
            "openssl refused rotor's signature: {}",
            String::from_utf8_lossy(&good.stderr)
        );
        pae.push(b'x');
        std::fs::write(tmp.path().join("pae2.bin"), &pae).unwrap();
        assert!(!verify(s(&tmp.path().join("pae2.bin"))).status.success());
    }

    // Push with the fixtures that ship with it.
    let fixtures = repo_root().join("policies/default/fixtures");
    let url = registry.url("acme/renewal-window:1.2.0");
    let out = ok(&[
        "policy",
        "push",
        s(&acme.plugin),
        &url,
        "--fixtures",
        s(&fixtures),
    ]);
    let digest = pushed_digest(&out);
    assert!(out.contains("pushed renewal-window 1.2.0"), "{out}");

    // Pull by tag, verifying the key; then by digest: the same bytes.
    let by_tag = tmp.path().join("by-tag");
    let out = ok(&[
        "policy",
        "pull",
        &url,
        "--out",
        s(&by_tag),
        "--key",
        s(&acme.public),
    ]);
    assert!(out.contains("signature verified"), "{out}");
    assert!(out.contains(&digest), "{out}");
    let by_digest = tmp.path().join("by-digest");
    let pinned = registry.url(&format!("acme/renewal-window@{digest}"));
    ok(&["policy", "pull", &pinned, "--out", s(&by_digest)]);
    for f in [
        "renewal-window.wasm",
        "renewal-window.wasm.sig",
        "renewal-window-fixtures/csr.json",
    ] {
        let a = std::fs::read(by_tag.join(f)).unwrap();
        assert_eq!(a, std::fs::read(by_digest.join(f)).unwrap(), "{f}");
    }
    assert_eq!(
        std::fs::read(by_tag.join("renewal-window.wasm")).unwrap(),
        std::fs::read(&acme.plugin).unwrap()
    );

    // Air-gapped: into an OCI image layout, and from it into files.
    let layout = tmp.path().join("layout");
    let out = ok(&[
        "policy",
        "pull",
        &pinned,
        "--out",
        &format!("oci-layout:{}", s(&layout)),
    ]);
    assert!(out.contains("renewal-window-1.2.0"), "{out}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert!(layout.join("oci-layout").is_file());
    let from_layout = tmp.path().join("from-layout");
    ok(&[
        "policy",
        "pull",
        &format!("oci-layout:{}:renewal-window-1.2.0", s(&layout)),
        "--out",
        s(&from_layout),
        "--key",
        s(&acme.public),
    ]);
    assert_eq!(
        std::fs::read(from_layout.join("renewal-window.wasm")).unwrap(),
        std::fs::read(&acme.plugin).unwrap()
    );

    // A vendor's push into a layout makes the same artifact, byte for byte: the same digest.
    let pushed_layout = tmp.path().join("pushed-layout");
    let out = ok(&[
        "policy",
        "push",
        s(&acme.plugin),
        &format!("oci-layout:{}", s(&pushed_layout)),
        "--fixtures",
        s(&fixtures),
    ]);
    assert_eq!(pushed_digest(&out), digest, "{out}");

    // A bundle that trusts acme's key (version ^1.2) accepts the pulled plugin without a pin.
    let bundle = tmp.path().join("bundle");
    signed_bundle(
        &bundle,
        &[("acme", &acme.public)],
        "signed_by = \"acme\"\nversion = \"^1.2\"\n",
        "",
    );
    for f in ["renewal-window.wasm", "renewal-window.wasm.sig"] {
        std::fs::copy(by_digest.join(f), bundle.join("plugins").join(f)).unwrap();
    }
    let out = ok(&["policy", "check", "--bundle", s(&bundle)]);
    assert!(
        out.contains("signed    renewal-window 1.2.0 by trusted key 'acme'"),
        "{out}"
    );
    // The fixtures that came with it pass against it.
    let out = ok(&[
        "policy",
        "test",
        "--bundle",
        s(&bundle),
        s(&by_digest.join("renewal-window-fixtures")),
    ]);
    assert!(out.contains(" 0 failed"), "{out}");
    // It decides: the renewal hook answers from the signed plugin.
    let out = ok(&[
        "policy",
        "eval",
        "--bundle",
        s(&bundle),
        "--hook",
        "renewal",
        "--input",
        s(&fixtures.join("inputs/serving-kube-apiserver.crt")),
        "--now",
        "2026-12-01T00:00:00Z",
    ]);
    assert!(out.contains("\"source\": \"plugin\""), "{out}");

    // A version outside the bundle's constraint is refused.
    let newer = tmp.path().join("bundle-v2");
    signed_bundle(&newer, &[("acme", &acme.public)], "version = \">=2\"\n", "");
    for f in ["renewal-window.wasm", "renewal-window.wasm.sig"] {
        std::fs::copy(by_digest.join(f), newer.join("plugins").join(f)).unwrap();
    }
    let err = refused(&["policy", "check", "--bundle", s(&newer)]);
    assert!(
        err.contains("renewal-window 1.2.0 is signed, but the bundle asks for version >=2"),
        "{err}"
    );
}

#[test]
fn tampered_layers_wrong_and_revoked_keys_and_digest_mismatches_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(registry) = Registry::start(tmp.path(), None) else {
        return;
    };
    let acme = vendor(&tmp.path().join("acme"), "acme", "1.0.0");
    let other = vendor(&tmp.path().join("other"), "other", "1.0.0");
    let url = registry.url("acme/renewal-window:1.0.0");
    let digest = pushed_digest(&ok(&["policy", "push", s(&acme.plugin), &url]));
    let pulled = tmp.path().join("pulled");
    ok(&["policy", "pull", &url, "--out", s(&pulled)]);
    let install = |bundle: &Path| {
        for f in ["renewal-window.wasm", "renewal-window.wasm.sig"] {
            std::fs::copy(pulled.join(f), bundle.join("plugins").join(f)).unwrap();
        }
    };

    // A wrong key: the bundle trusts another vendor.
    let wrong = tmp.path().join("wrong-key");
    signed_bundle(&wrong, &[("other", &other.public)], "", "");
    install(&wrong);
    let err = refused(&["policy", "check", "--bundle", s(&wrong)]);
    assert!(
        err.contains("[renewal] plugins/renewal-window.wasm is not trusted")
            && err.contains("no trusted key verifies it"),
        "{err}"
    );
    // The same at pull time, with nothing written.
    let nothing = tmp.path().join("nothing");
    let err = refused(&[
        "policy",
        "pull",
        &url,
        "--out",
        s(&nothing),
        "--key",
        s(&other.public),
    ]);
    assert!(err.contains("signature refused, nothing written"), "{err}");
    assert!(!nothing.exists());

    // A revoked key, even though the bundle still lists it.
    let keyid = |public: &Path| {
        let der = pem::parse(std::fs::read(public).unwrap()).unwrap();
        hex::encode(Sha256::digest(der.contents()))
    };
    let revoked = tmp.path().join("revoked-key");
    signed_bundle(
        &revoked,
        &[("acme", &acme.public)],
        "",
        &format!("[trust]\nrevoked_keys = [\"{}\"]\n", keyid(&acme.public)),
    );
    install(&revoked);
    let err = refused(&["policy", "check", "--bundle", s(&revoked)]);
    assert!(
        err.contains("which is revoked ([trust] revoked_keys)"),
        "{err}"
    );

    // A revoked digest is refused even when pinned.
    let plugin_digest = hex::encode(Sha256::digest(std::fs::read(&acme.plugin).unwrap()));
    let pinned = tmp.path().join("revoked-digest");
    signed_bundle(
        &pinned,
        &[("acme", &acme.public)],
        &format!("sha256 = \"{plugin_digest}\"\n"),
        &format!("[trust]\nrevoked_sha256 = [\"{plugin_digest}\"]\n"),
    );
    install(&pinned);
    let err = refused(&["policy", "check", "--bundle", s(&pinned)]);
    assert!(
        err.contains(&format!("its sha256 {plugin_digest} is revoked")),
        "{err}"
    );

    // A component swapped under a valid signature: its digest is not the signed one.
    let swapped = tmp.path().join("swapped");
    signed_bundle(&swapped, &[("acme", &acme.public)], "", "");
    install(&swapped);
    std::fs::copy(
        default_plugin("san-validation"),
        swapped.join("plugins/renewal-window.wasm"),
    )
    .unwrap();
    let err = refused(&["policy", "check", "--bundle", s(&swapped)]);
    assert!(
        err.contains("the component was changed or replaced after signing"),
        "{err}"
    );

    // A pin takes precedence over signatures: the bundle trusts only a key that did not sign
    // (the signature beside it would be refused), and the pinned file is accepted.
    let by_pin = tmp.path().join("by-pin");
    signed_bundle(
        &by_pin,
        &[("other", &other.public)],
        &format!("sha256 = \"{plugin_digest}\"\n"),
        "",
    );
    install(&by_pin);
    assert!(ok(&["policy", "check", "--bundle", s(&by_pin)]).contains("(matches the pin)"));

    // A pull pinned to a digest the repository does not hold.
    let absent = format!("sha256:{}", "0".repeat(64));
    let err = refused(&[
        "policy",
        "pull",
        &registry.url(&format!("acme/renewal-window@{absent}")),
        "--out",
        s(&nothing),
    ]);
    assert!(err.contains("manifest unknown"), "{err}");

    // Fixtures with identical contents (one blob, two layers) and a hidden file (not shipped).
    let dups = tmp.path().join("dups");
    std::fs::create_dir_all(dups.join("inputs")).unwrap();
    std::fs::write(dups.join("a.json"), "[]").unwrap();
    std::fs::write(dups.join("inputs/b.json"), "[]").unwrap();
    std::fs::write(dups.join(".gitkeep"), "").unwrap();
    let dup_url = registry.url("acme/dups:1.0.0");
    let out = ok(&[
        "policy",
        "push",
        s(&acme.plugin),
        &dup_url,
        "--fixtures",
        s(&dups),
    ]);
    assert!(out.contains("(2 fixture files)"), "{out}");
    let dup_out = tmp.path().join("dup-out");
    ok(&["policy", "pull", &dup_url, "--out", s(&dup_out)]);
    assert_eq!(
        std::fs::read(dup_out.join("renewal-window-fixtures/inputs/b.json")).unwrap(),
        b"[]"
    );
    assert!(!dup_out.join("renewal-window-fixtures/.gitkeep").exists());

    // A release's fixtures replace the previous release's: a stale case does not survive.
    std::fs::write(dup_out.join("renewal-window-fixtures/stale.json"), "[]").unwrap();
    ok(&["policy", "pull", &dup_url, "--out", s(&dup_out)]);
    assert!(!dup_out.join("renewal-window-fixtures/stale.json").exists());
    ok(&["policy", "pull", &url, "--out", s(&dup_out)]);
    assert!(
        !dup_out.join("renewal-window-fixtures").exists(),
        "a release without fixtures leaves none"
    );

    // Mistakes refused before anything is sent or written: no tag (no implicit latest), a
    // private key among the fixtures, a file as --out.
    let err = refused(&[
        "policy",
        "push",
        s(&acme.plugin),
        &registry.url("acme/untagged"),
    ]);
    assert!(err.contains("name a tag (REPO:TAG) or a digest"), "{err}");
    std::fs::copy(&acme.key, dups.join("vendor.key")).unwrap();
    let err = refused(&[
        "policy",
        "push",
        s(&acme.plugin),
        &dup_url,
        "--fixtures",
        s(&dups),
    ]);
    assert!(
        err.contains("fixture vendor.key holds a private key"),
        "{err}"
    );
    let a_file = tmp.path().join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let err = refused(&["policy", "pull", &url, "--out", s(&a_file)]);
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(std::fs::read(&a_file).unwrap(), b"x");

    // A layout copy, for the layout cases below (before the registry's blobs are tampered with).
    let layout = tmp.path().join("layout");
    ok(&[
        "policy",
        "pull",
        &url,
        "--out",
        &format!("oci-layout:{}", s(&layout)),
    ]);

    // The registry serves a manifest that is not the one its digest names.
    let manifest_file = registry.blob_file(&digest);
    let manifest = std::fs::read_to_string(&manifest_file).unwrap();
    let tampered = manifest.replacen("\"1.0.0\"", "\"9.9.9\"", 1);
    assert_ne!(manifest, tampered);
    std::fs::write(&manifest_file, &tampered).unwrap();
    for reference in [
        url.clone(),
        registry.url(&format!("acme/renewal-window@{digest}")),
    ] {
        let err = refused(&["policy", "pull", &reference, "--out", s(&nothing)]);
        assert!(err.contains("Invalid digest"), "{reference}: {err}");
        assert!(!nothing.exists());
    }
    std::fs::write(&manifest_file, &manifest).unwrap();

    // A tampered wasm layer: its bytes no longer match the manifest's digest.
    let m: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let layer = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.wasm.content.layer.v1+wasm")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer_file = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&layer_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer_file, &bytes).unwrap();
    let err = refused(&["policy", "pull", &url, "--out", s(&nothing)]);
    assert!(
        err.contains(&format!("layer {layer}")) && err.contains("refused"),
        "{err}"
    );
    assert!(!nothing.exists());

    // The same in an image layout.
    let layout_blob = layout
        .join("blobs/sha256")
        .join(layer.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&layout_blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&layout_blob, &bytes).unwrap();
    let err = refused(&[
        "policy",
        "pull",
        &format!("oci-layout:{}", s(&layout)),
        "--out",
        s(&nothing),
    ]);
    assert!(
        err.contains("it was changed (tampered or corrupt)"),
        "{err}"
    );
    assert!(!nothing.exists());
}

/// A CA and a serving certificate for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "registry test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let cert = leaf.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

#[test]
fn a_registry_is_reached_over_tls_with_its_ca_and_refused_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(tmp.path());
    let Some(registry) = Registry::start(tmp.path(), Some((&cert, &key))) else {
        return;
    };
    let acme = vendor(&tmp.path().join("acme"), "acme", "2.0.0");
    let url = registry.url("acme/renewal-window:2.0.0");
    // Loopback without a CA is plain HTTP, which a TLS registry does not speak.
    let err = refused(&["policy", "push", s(&acme.plugin), &url]);
    assert!(
        err.contains("400 Bad Request") && err.contains("plain HTTP to a loopback registry"),
        "{err}"
    );
    let out = ok(&[
        "policy",
        "push",
        s(&acme.plugin),
        &url,
        "--registry-ca",
        s(&ca),
    ]);
    let digest = pushed_digest(&out);
    let pulled = tmp.path().join("pulled");
    let out = ok(&[
        "policy",
        "pull",
        &url,
        "--out",
        s(&pulled),
        "--registry-ca",
        s(&ca),
        "--key",
        s(&acme.public),
    ]);
    assert!(out.contains(&digest), "{out}");
    // A CA that did not issue the registry's certificate: the handshake fails.
    let (other_ca, _, _) = tls_files(&{
        let d = tmp.path().join("other");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let err = refused(&[
        "policy",
        "pull",
        &url,
        "--out",
        s(&tmp.path().join("x")),
        "--registry-ca",
        s(&other_ca),
    ]);
    assert!(err.contains("invalid peer certificate"), "{err}");
    // Unsigned plugins are not pushed.
    std::fs::remove_file(&acme.signature).unwrap();
    let err = refused(&[
        "policy",
        "push",
        s(&acme.plugin),
        &url,
        "--registry-ca",
        s(&ca),
    ]);
    assert!(err.contains("only signed plugins are pushed"), "{err}");
    let _ = acme.key;
}

/// An envelope over `statement` signed by each of `keys`, with or without key ids.
fn envelope(statement: &Statement, keys: &[&Path], keyids: bool) -> Vec<u8> {
    let mut signatures = Vec::new();
    let mut env = None;
    for key in keys {
        let key = SigningKey::from_pem(&std::fs::read(key).unwrap()).unwrap();
        let mut e = key.sign(statement).unwrap();
        if !keyids {
            e.signatures[0].keyid.clear();
        }
        signatures.extend(e.signatures.clone());
        env = Some(e);
    }
    let mut env = env.unwrap();
    env.signatures = signatures;
    env.to_json()
}

#[test]
fn a_signature_counts_only_for_what_and_by_whom_it_was_made() {
    let tmp = tempfile::tempdir().unwrap();
    let acme = vendor(&tmp.path().join("acme"), "acme", "1.0.0");
    let other = vendor(&tmp.path().join("other"), "other", "1.0.0");
    let component = std::fs::read(&acme.plugin).unwrap();
    let statement = Statement {
        name: "renewal-window".into(),
        version: "1.0.0".into(),
        contract: "rotor:policy@0.3.0".into(),
        hooks: vec![Hook::Renewal],
        sha256: hex::encode(Sha256::digest(&component)),
        size: component.len() as u64,
    };
    let keyid = |public: &Path| {
        let der = pem::parse(std::fs::read(public).unwrap()).unwrap();
        hex::encode(Sha256::digest(der.contents()))
    };
    let case = |name: &str, sig: &[u8], renewal_extra: &str, trust_extra: &str| -> (i32, String) {
        let b = tmp.path().join(name);
        signed_bundle(
            &b,
            &[("acme", &acme.public), ("other", &other.public)],
            renewal_extra,
            trust_extra,
        );
        std::fs::copy(&acme.plugin, b.join("plugins/renewal-window.wasm")).unwrap();
        std::fs::write(b.join("plugins/renewal-window.wasm.sig"), sig).unwrap();
        let (code, out, err) = run(&["policy", "check", "--bundle", s(&b)]);
        (code, format!("{out}{err}"))
    };

    // A signature without key ids: the key id only picks the key to try.
    let (code, out) = case(
        "no-keyid",
        &envelope(&statement, &[&acme.key], false),
        "",
        "",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("by trusted key 'acme'"), "{out}");

    // Co-signed by a revoked key and a good one: the good one counts, the revoked one never,
    // whichever is named first.
    for (name, keys) in [
        ("cosigned-ab", [acme.key.as_path(), other.key.as_path()]),
        ("cosigned-ba", [other.key.as_path(), acme.key.as_path()]),
    ] {
        let (code, out) = case(
            name,
            &envelope(&statement, &keys, true),
            "",
            &format!("[trust]\nrevoked_keys = [\"{}\"]\n", keyid(&acme.public)),
        );
        assert_eq!(code, 0, "{name}: {out}");
        assert!(out.contains("by trusted key 'other'"), "{name}: {out}");
    }
    // Signed only by the revoked key, even with signed_by naming it: refused.
    let (code, out) = case(
        "revoked-named",
        &envelope(&statement, &[&acme.key], true),
        "signed_by = \"acme\"\n",
        &format!("[trust]\nrevoked_keys = [\"{}\"]\n", keyid(&acme.public)),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("which is revoked"), "{out}");

    // signed_by restricts the keys: a valid signature by another trusted key is not enough.
    let (code, out) = case(
        "signed-by-other",
        &envelope(&statement, &[&acme.key], true),
        "signed_by = \"other\"\n",
        "",
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no trusted key verifies it"), "{out}");
    let (code, out) = case(
        "signed-by-unknown",
        &envelope(&statement, &[&acme.key], true),
        "signed_by = \"nobody\"\n",
        "",
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "'signed_by' is 'nobody', which names no key of [trust.keys] or [trust.cosign_keys] \
             (acme, other)"
        ),
        "{out}"
    );

    // Signed for another hook: not accepted for this one.
    let mut san = statement.clone();
    san.hooks = vec![Hook::San];
    let (code, out) = case("other-hook", &envelope(&san, &[&acme.key], true), "", "");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("signs it for the san hook(s), not renewal"),
        "{out}"
    );

    // Signed as another contract than the component's.
    let mut old = statement.clone();
    old.contract = "rotor:policy@0.1.0".into();
    let (code, out) = case(
        "other-contract",
        &envelope(&old, &[&acme.key], true),
        "",
        "",
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("the signature says rotor:policy@0.1.0 exporting renewal, the component is rotor:policy@0.3.0"),
        "{out}"
    );

    // A signature file that is not an envelope.
    let (code, out) = case("garbage", b"{\"payload\": 1}", "", "");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("not a DSSE envelope of a rotor plugin"),
        "{out}"
    );
}
