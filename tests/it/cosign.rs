//! Plugins signed with cosign's key-based flow (the real cosign, offline), accepted by a
//! bundle's `[trust.cosign_keys]`.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::common::{default_plugin, repo_root, require};
use crate::distribution::{ok, refused, s};

/// Vendors already on cosign: a plugin signed with `cosign sign-blob --key` (the real cosign,
/// offline: no transparency log) is accepted by the bundle's `[trust.cosign_keys]`, verified
/// with the sigstore crate; a changed component, another key, a revoked key and a `version`
/// requirement (cosign signs no version) are refused, each saying why.
#[test]
fn a_plugin_signed_with_cosign_is_accepted_by_the_bundles_cosign_key() {
    let cosign = crate::kine::tools_dir().join("bin/cosign");
    if !require(
        &format!("{} (scripts/install-deps.sh)", cosign.display()),
        cosign.is_file(),
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cosign_run = |dir: &Path, args: &[&str]| {
        let out = Command::new(&cosign)
            .args(args)
            .current_dir(dir)
            .env("COSIGN_PASSWORD", "vendor-secret")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cosign {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Two vendors' cosign key pairs.
    for who in ["acme", "other"] {
        let dir = tmp.path().join(who);
        std::fs::create_dir_all(&dir).unwrap();
        cosign_run(&dir, &["generate-key-pair"]);
    }
    let plugin = tmp.path().join("acme/renewal-window.wasm");
    std::fs::copy(default_plugin("renewal-window"), &plugin).unwrap();
    cosign_run(
        &tmp.path().join("acme"),
        &[
            "sign-blob",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--yes",
            "--output-signature",
            "renewal-window.wasm.sig",
            "renewal-window.wasm",
        ],
    );

    // The default bundle with its renewal pin replaced by the cosign key.
    let bundle = |name: &str, key: &str, renewal_extra: &str, trust_extra: &str| -> PathBuf {
        let dir = tmp.path().join(name);
        let default = repo_root().join("policies/default");
        std::fs::create_dir_all(dir.join("plugins")).unwrap();
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        for p in ["san-validation.wasm", "csr-approval.wasm"] {
            std::fs::copy(default.join("plugins").join(p), dir.join("plugins").join(p)).unwrap();
        }
        std::fs::copy(&plugin, dir.join("plugins/renewal-window.wasm")).unwrap();
        std::fs::copy(
            tmp.path().join("acme/renewal-window.wasm.sig"),
            dir.join("plugins/renewal-window.wasm.sig"),
        )
        .unwrap();
        std::fs::copy(
            tmp.path().join(key).join("cosign.pub"),
            dir.join("keys/vendor.pub"),
        )
        .unwrap();
        let manifest = std::fs::read_to_string(default.join("bundle.toml")).unwrap();
        let pin = manifest
            .lines()
            .skip_while(|l| *l != "[renewal]")
            .find(|l| l.starts_with("sha256 = "))
            .unwrap()
            .to_string();
        let manifest = manifest
            .replacen(&format!("{pin}\n"), renewal_extra, 1)
            .replacen(
                "[bundle]",
                &format!(
                    "[trust.cosign_keys]\nacme = \"keys/vendor.pub\"\n{trust_extra}\n[bundle]"
                ),
                1,
            );
        std::fs::write(dir.join("bundle.toml"), manifest).unwrap();
        dir
    };

    // The key id is the sha256 of the key's DER, as openssl computes it.
    let der = pem::parse(std::fs::read(tmp.path().join("acme/cosign.pub")).unwrap()).unwrap();
    let keyid = hex::encode(Sha256::digest(der.contents()));

    let good = bundle("good", "acme", "", "");
    let check = ok(&["policy", "check", "--bundle", s(&good)]);
    assert!(
        check.contains(&format!("trusts   cosign key 'acme' ({keyid})")),
        "{check}"
    );
    assert!(
        check.contains("signed    by trusted cosign key 'acme'"),
        "{check}"
    );
    // It decides, and a data dir records the key and the signature with the bundle.
    let fixtures = repo_root().join("policies/default/fixtures");
    ok(&["policy", "test", "--bundle", s(&good), s(&fixtures)]);
    let data = tmp.path().join("data");
    ok(&[
        "--data-dir",
        s(&data),
        "--bundle",
        s(&good),
        "init",
        "--node-name",
        "server-1",
        "--node-ip",
        "10.0.0.1",
    ]);
    let check = ok(&["--data-dir", s(&data), "policy", "check"]);
    assert!(check.contains("trusted cosign key 'acme'"), "{check}");
    // signed_by may name it.
    let named = bundle("named", "acme", "signed_by = \"acme\"\n", "");
    ok(&["policy", "check", "--bundle", s(&named)]);

    // A component changed after signing.
    let changed = bundle("changed", "acme", "", "");
    let mut bytes = std::fs::read(changed.join("plugins/renewal-window.wasm")).unwrap();
    bytes.extend_from_slice(b"\0\0");
    std::fs::write(changed.join("plugins/renewal-window.wasm"), bytes).unwrap();
    let err = refused(&["policy", "check", "--bundle", s(&changed)]);
    assert!(
        err.contains("no trusted cosign key verifies it over plugins/renewal-window.wasm"),
        "{err}"
    );
    // Another vendor's key.
    let other = bundle("other", "other", "", "");
    let err = refused(&["policy", "check", "--bundle", s(&other)]);
    assert!(err.contains("no trusted cosign key verifies it"), "{err}");
    // A revoked key.
    let revoked = bundle(
        "revoked",
        "acme",
        "",
        &format!("[trust]\nrevoked_keys = [\"{keyid}\"]\n"),
    );
    let err = refused(&["policy", "check", "--bundle", s(&revoked)]);
    assert!(
        err.contains("by key 'acme'") && err.contains("which is revoked"),
        "{err}"
    );
    // rotor's own envelope where the bundle trusts only cosign keys: said as such.
    let acme_rotor = crate::distribution::vendor(&tmp.path().join("rotor-vendor"), "acme", "1.0.0");
    let envelope_only = bundle("envelope", "acme", "", "");
    std::fs::copy(
        &acme_rotor.signature,
        envelope_only.join("plugins/renewal-window.wasm.sig"),
    )
    .unwrap();
    let err = refused(&["policy", "check", "--bundle", s(&envelope_only)]);
    assert!(
        err.contains("is rotor's signature envelope, but the bundle trusts no rotor key"),
        "{err}"
    );
    // A version requirement cannot hold for what cosign signs.
    let versioned = bundle("versioned", "acme", "version = \">=1\"\n", "");
    let err = refused(&["policy", "check", "--bundle", s(&versioned)]);
    assert!(
        err.contains("signs the component's bytes and no version"),
        "{err}"
    );
}
