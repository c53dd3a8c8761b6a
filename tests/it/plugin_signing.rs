//! `rotor policy sign`'s flags, and what `rotor serve` says of a signed plugin.

use crate::common::default_plugin;
use crate::distribution::{ok, s, signed_bundle, vendor};

/// `policy sign` names the plugin's release `--plugin-version` (its `--version` read like
/// rotor's own); the old spelling still signs, the same statement byte for byte (Ed25519 is
/// deterministic), and rotor's own `--version` is untouched.
#[test]
fn sign_takes_plugin_version_and_still_the_old_version_spelling() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("acme.key");
    ok(&["policy", "keygen", "--out", s(&key)]);
    let plugin = tmp.path().join("renewal-window.wasm");
    std::fs::copy(default_plugin("renewal-window"), &plugin).unwrap();
    let help = ok(&["policy", "sign", "--help"]);
    assert!(help.contains("--plugin-version <SEMVER>"), "{help}");
    let mut envelopes = Vec::new();
    for flag in ["--plugin-version", "--version"] {
        let out = tmp.path().join(format!("sig{flag}"));
        ok(&[
            "policy",
            "sign",
            "--key",
            s(&key),
            flag,
            "2.0.1",
            "--out",
            s(&out),
            s(&plugin),
        ]);
        envelopes.push(std::fs::read(&out).unwrap());
    }
    assert_eq!(envelopes[0], envelopes[1]);
    assert!(
        String::from_utf8_lossy(&envelopes[0]).contains("eyJ"),
        "a DSSE envelope"
    );
    let version = ok(&["--version"]);
    assert!(
        version.contains("plugin contracts: rotor:policy"),
        "{version}"
    );
}

/// `rotor serve`'s rotor_policy_plugin_info says why each plugin is accepted: the renewal
/// plugin by the vendor's signature (with the key's name and the signed version), the others
/// by their pins.
#[test]
fn the_plugin_info_metric_says_which_key_accepted_a_signed_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let acme = vendor(&tmp.path().join("vendor"), "acme", "1.4.2");
    let bundle = tmp.path().join("bundle");
    signed_bundle(&bundle, &[("acme", &acme.public)], "", "");
    std::fs::copy(&acme.plugin, bundle.join("plugins/renewal-window.wasm")).unwrap();
    std::fs::copy(
        &acme.signature,
        bundle.join("plugins/renewal-window.wasm.sig"),
    )
    .unwrap();
    let check = ok(&["policy", "check", "--bundle", s(&bundle)]);
    assert!(check.contains("acme"), "{check}");

    let data = tmp.path().join("data");
    let now = time::OffsetDateTime::now_utc();
    ok(&[
        "--data-dir",
        s(&data),
        "--bundle",
        s(&bundle),
        "init",
        "--node-name",
        "server-1",
        "--node-ip",
        "10.0.0.1",
    ]);
    let serve = crate::serve::Serve::start(&data, now, &["--listen", "127.0.0.1:0"], &[]);
    let (status, page) = serve.get("/metrics");
    assert_eq!(status, 200, "{page}");
    let Some(samples) = crate::serve::parse_metrics(&page) else {
        return;
    };
    let info = |hook: &str| {
        crate::serve::sample(
            &samples,
            "rotor_policy_plugin_info",
            &[("role", "active"), ("hook", hook)],
        )
        .unwrap_or_else(|| panic!("no plugin_info for {hook}:\n{page}"))
        .labels
        .clone()
    };
    let renewal = info("renewal");
    assert_eq!(renewal["accepted_by"], "signature", "{renewal:?}");
    assert_eq!(renewal["key"], "acme", "{renewal:?}");
    assert_eq!(renewal["version"], "1.4.2", "{renewal:?}");
    let san = info("san");
    assert_eq!(san["accepted_by"], "pin", "{san:?}");
    assert_eq!(san["key"], "", "{san:?}");
    let (code, err) = serve.terminate();
    assert_eq!(code, 0, "{err}");
}
