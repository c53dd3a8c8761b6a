//! The vendor's path, from an empty directory: `rotor policy new` for each hook, the crate's own
//! unit tests, `rotor policy build`, `rotor policy pin` into a new bundle, `rotor policy eval`
//! and `rotor policy test` on the crate's fixtures: real cargo builds of crates outside the
//! repository, real components in rotor's sandbox.
//!
//! Cargo runs offline (the registry cache `make test` filled is enough: the SDK's dependencies
//! are the default plugins'), with a target directory under `target/` shared by the three
//! crates, so the dependencies compile once.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{copy_dir, repo_root, rotor_bin, shared_cache, tree};

fn target_dir() -> PathBuf {
    repo_root().join("target/vendor-path")
}

/// Run rotor in `cwd` as a vendor would: offline cargo, the shared target directory.
fn rotor_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(rotor_bin())
        .args(args)
        .current_dir(cwd)
        .env("ROTOR_PLUGIN_CACHE", shared_cache())
        .env("CARGO_TARGET_DIR", target_dir())
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("ROTOR_BUNDLE")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let (code, out, err) = rotor_in(cwd, args);
    assert_eq!(code, 0, "rotor {args:?}:\n{out}\n{err}");
    out
}

#[test]
fn a_vendor_goes_from_an_empty_directory_to_a_pinned_tested_plugin_for_every_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let sdk = repo_root().join("guest-plugins/sdk");
    let bundle = work.join("acme-bundle");
    for hook in ["renewal", "san", "csr"] {
        let name = format!("acme-{hook}");
        let dir = work.join(&name);
        // The renewal crate takes the SDK of the checkout rotor was built from (the default);
        // the others name it.
        let mut args = vec!["policy", "new", name.as_str(), "--hook", hook];
        if hook != "renewal" {
            args.extend(["--sdk", sdk.to_str().unwrap()]);
        }
        let out = ok(work, &args);
        assert!(
            out.contains(&format!("created {name} ({hook} hook)")),
            "{out}"
        );
        for file in [
            "Cargo.toml",
            ".cargo/config.toml",
            "rust-toolchain.toml",
            "src/lib.rs",
            "src/rules.rs",
            "wit/worlds.wit",
        ] {
            assert!(dir.join(file).is_file(), "{file}");
        }
        assert!(
            std::fs::read_to_string(dir.join(".cargo/config.toml"))
                .unwrap()
                .contains("-zstack-size=65536")
        );

        // The rules' own tests, on this machine, with the SDK's builders.
        let test = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "--quiet"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", target_dir())
            .env("CARGO_NET_OFFLINE", "true")
            .env_remove("RUSTFLAGS")
            .output()
            .unwrap();
        let test_out = String::from_utf8_lossy(&test.stdout);
        assert!(
            test.status.success(),
            "{name}: cargo test\n{test_out}\n{}",
            String::from_utf8_lossy(&test.stderr)
        );
        assert!(test_out.contains("2 passed"), "{test_out}");

        // The component: built, loaded, nothing but rotor:policy imported.
        let out = ok(work, &["policy", "build", &name]);
        assert!(
            out.contains(&format!(
                "contract rotor:policy@0.3.0, exports {hook}; imports nothing but rotor:policy"
            )),
            "{out}"
        );
        let component = dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&component).unwrap();
        assert_eq!(&bytes[..4], b"\0asm");
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert!(out.contains(&digest), "{out}");

        // Pinned into the bundle (created by the first pin, extended by the next).
        let out = ok(
            work,
            &[
                "policy",
                "pin",
                "--bundle",
                bundle.to_str().unwrap(),
                "--hook",
                hook,
                component.to_str().unwrap(),
            ],
        );
        assert!(
            out.contains(&format!("[{hook}] runs plugins/{name}.wasm")),
            "{out}"
        );
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(bundle.join("bundle.toml")).unwrap()).unwrap();
        assert_eq!(manifest[hook]["sha256"].as_str(), Some(digest.as_str()));
        assert_eq!(
            std::fs::read(bundle.join(format!("plugins/{name}.wasm"))).unwrap(),
            bytes
        );

        // Its fixtures pass against the pinned component.
        let out = ok(
            work,
            &[
                "policy",
                "test",
                "--bundle",
                bundle.to_str().unwrap(),
                dir.join("fixtures").to_str().unwrap(),
            ],
        );
        assert!(out.contains(" 0 failed"), "{out}");
        assert!(!out.contains("FAIL"), "{out}");
    }

    // Every hook is now the vendor's, and each decides.
    let out = ok(
        work,
        &["policy", "check", "--bundle", bundle.to_str().unwrap()],
    );
    assert_eq!(
        out.matches("contract  rotor:policy@0.3.0").count(),
        3,
        "{out}"
    );
    let eval = |now: &str| -> Value {
        let out = ok(
            work,
            &[
                "policy",
                "eval",
                "--bundle",
                bundle.to_str().unwrap(),
                "--hook",
                "renewal",
                "--input",
                "acme-renewal/fixtures/inputs/leaf.pem",
                "--name",
                "serving",
                "--now",
                now,
            ],
        );
        serde_json::from_str(&out).unwrap()
    };
    let late = eval("2026-12-20T00:00:00Z");
    assert_eq!(late["decision"], "renew", "{late}");
    assert_eq!(late["plugin"], "acme-renewal", "{late}");
    assert_eq!(late["source"], "plugin", "{late}");
    let early = eval("2026-03-01T00:00:00Z");
    assert_eq!(early["decision"], "keep", "{early}");

    // Settings the plugin refuses: the pin fails naming the field, and changes nothing.
    let manifest_path = bundle.join("bundle.toml");
    let mut text = std::fs::read_to_string(&manifest_path).unwrap();
    text.push_str("\n[renewal.settings]\nrenew_before_days = 0\n");
    std::fs::write(&manifest_path, &text).unwrap();
    let before = tree(&bundle);
    let pin = |hook: &str, file: &str| {
        rotor_in(
            work,
            &[
                "policy",
                "pin",
                "--bundle",
                bundle.to_str().unwrap(),
                "--hook",
                hook,
                file,
            ],
        )
    };
    let (code, out, err) = pin("renewal", "acme-renewal/acme-renewal.wasm");
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("settings.renew_before_days"), "{err}");
    assert!(
        err.contains("the section pins this very component already"),
        "{err}"
    );
    assert_eq!(tree(&bundle), before, "a refused pin changed the bundle");

    // The whole bundle must load before anything is written: pinning the SAN hook into a
    // bundle whose renewal section is now broken is refused, naming it, and changes nothing.
    let (code, out, err) = pin("san", "acme-san/acme-san.wasm");
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("would not load"), "{err}");
    assert!(err.contains(bundle.to_str().unwrap()), "{err}");
    assert!(
        !err.contains("rotor-pin-"),
        "the staging copy is not named: {err}"
    );
    assert_eq!(tree(&bundle), before, "a refused pin changed the bundle");

    // A new component into a section holding the previous plugin's settings (the default
    // bundle's renewal-window: `mode`, `renew_before_days`): refused, saying whose settings they
    // are and what to do, with nothing changed; then each way forward.
    let default = work.join("from-default");
    copy_dir(&repo_root().join("policies/default"), &default);
    let before = tree(&default);
    let pin_default = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "pin",
            "--bundle",
            default.to_str().unwrap(),
            "--hook",
            "renewal",
            "acme-renewal/acme-renewal.wasm",
        ];
        args.extend_from_slice(extra);
        rotor_in(work, &args)
    };
    // A pin that must succeed: its standard output.
    let pinned = |extra: &[&str]| {
        let (code, out, err) = pin_default(extra);
        assert_eq!(code, 0, "pin {extra:?}: {out}{err}");
        out
    };
    let (code, out, err) = pin_default(&[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("settings.mode"), "{err}");
    assert!(err.contains("[renewal.settings]"), "{err}");
    assert!(
        err.contains("written for the plugin pinned there before"),
        "{err}"
    );
    assert!(
        err.contains("--settings FILE") && err.contains("--no-settings"),
        "{err}"
    );
    assert_eq!(tree(&default), before, "a refused pin changed the bundle");

    // --settings FILE (TOML) replaces them; the plugin decides with them.
    std::fs::write(work.join("acme.toml"), "renew_before_days = 45\n").unwrap();
    let out = pinned(&["--settings", "acme.toml"]);
    assert!(
        out.contains("[renewal] runs plugins/acme-renewal.wasm"),
        "{out}"
    );
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(default.join("bundle.toml")).unwrap()).unwrap();
    assert_eq!(
        manifest["renewal"]["settings"],
        toml::Value::Table(toml::from_str("renew_before_days = 45").unwrap()),
        "{manifest:?}"
    );
    // The other sections and their settings are untouched.
    let original: toml::Table = toml::from_str(
        &std::fs::read_to_string(repo_root().join("policies/default/bundle.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["san"], original["san"]);
    assert_eq!(manifest["csr"], original["csr"]);
    let check = ok(
        work,
        &["policy", "check", "--bundle", default.to_str().unwrap()],
    );
    assert!(
        check.contains(r#"{"renew_before_days":45} (accepted"#),
        "{check}"
    );

    // A JSON object works too; settings it refuses are refused naming --settings.
    std::fs::write(work.join("bad.json"), r#"{"renew_before_days": 0}"#).unwrap();
    let before = tree(&default);
    let (code, out, err) = pin_default(&["--settings", "bad.json"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--settings bad.json") && err.contains("at least 1"),
        "{err}"
    );
    assert_eq!(tree(&default), before, "a refused pin changed the bundle");
    std::fs::write(work.join("good.json"), r#"{"renew_before_days": 20}"#).unwrap();
    pinned(&["--settings", "good.json"]);
    let check = ok(
        work,
        &["policy", "check", "--bundle", default.to_str().unwrap()],
    );
    assert!(
        check.contains(r#"{"renew_before_days":20} (accepted"#),
        "{check}"
    );

    // --no-settings: the plugin's own defaults; settings it accepts are kept by a later pin.
    let (code, out, err) = pin_default(&["--no-settings"]);
    assert_eq!(code, 0, "{out}{err}");
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(default.join("bundle.toml")).unwrap()).unwrap();
    assert!(
        manifest["renewal"].get("settings").is_none(),
        "{manifest:?}"
    );
    pinned(&["--settings", "acme.toml"]);
    let (code, out, err) = pin_default(&[]);
    assert_eq!(code, 0, "kept settings the plugin accepts: {out}{err}");
    let check = ok(
        work,
        &["policy", "check", "--bundle", default.to_str().unwrap()],
    );
    assert!(
        check.contains(r#"{"renew_before_days":45} (accepted"#),
        "{check}"
    );
    let (code, _, err) = pin_default(&["--settings", "acme.toml", "--no-settings"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");

    // `new` never overwrites: a second crate into the same directory is refused.
    let before = tree(&work.join("acme-san"));
    let (code, _, err) = rotor_in(work, &["policy", "new", "acme-san", "--hook", "san"]);
    assert_ne!(code, 0);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(tree(&work.join("acme-san")), before);
}
