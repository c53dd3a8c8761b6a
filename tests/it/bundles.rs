//! Bundle loading: pins, confinement to the bundle directory, settings and manifest errors.

use rotor::plugin::PluginErrorKind;
use rotor::policy::{Bundle, BundleError};

use crate::common::*;

/// Why the bundle at `dir` is refused by the strict check (`rotor policy check`, `policy use`):
/// a refused manifest, pin or signature, or a plugin that cannot be loaded or configured (which
/// the lenient load keeps as a `LoadFailure`: checked here too).
fn load_err(dir: &std::path::Path) -> BundleError {
    let cache = tempfile::tempdir().unwrap();
    match Bundle::load(&engine(cache.path()), dir) {
        Err(e) => e,
        Ok(bundle) => {
            let err = bundle.ensure_loaded().unwrap_err();
            let failure = bundle.load_failures()[0];
            assert_eq!(
                bundle
                    .load_failure(failure.hook)
                    .map(|f| f.error.to_string()),
                Some(failure.error.to_string())
            );
            assert!(
                bundle.hook(failure.hook).is_none(),
                "a plugin that cannot load never decides"
            );
            err
        }
    }
}

#[test]
fn a_plugin_whose_digest_differs_from_its_pin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = default_plugin("renewal-window");
    write_bundle(
        dir.path(),
        &[HookSpec {
            hook: "renewal",
            plugin: &plugin,
            extra: "",
            settings: "",
        }],
    );
    // Swap the file for another valid plugin after pinning.
    std::fs::copy(
        test_plugin("hostile-lifetime"),
        dir.path().join("plugins/renewal-window.wasm"),
    )
    .unwrap();
    let err = load_err(dir.path());
    let source = err.plugin_error().expect("a plugin error");
    assert!(
        matches!(source.kind, PluginErrorKind::DigestMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("does not match the pinned"),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&dir.path().join("bundle.toml").display().to_string()),
        "{err}"
    );
}

fn manifest(dir: &std::path::Path, body: &str) {
    std::fs::write(dir.join("bundle.toml"), body).unwrap();
}

#[test]
fn a_missing_pin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(
        default_plugin("renewal-window"),
        dir.path().join("plugins/r.wasm"),
    )
    .unwrap();
    manifest(dir.path(), "[renewal]\nplugin = \"plugins/r.wasm\"\n");
    let err = load_err(dir.path());
    assert!(
        err.to_string().contains(
            "[renewal] 'sha256' is missing: pin the plugin by its sha256 (`rotor policy pin`), \
             or trust its vendor's key in [trust.keys] (or its cosign key in \
             [trust.cosign_keys]) and ship its signature"
        ),
        "{err}"
    );
}

#[test]
fn plugin_paths_cannot_leave_the_bundle_directory() {
    let outer = tempfile::tempdir().unwrap();
    let bundle = outer.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::copy(
        default_plugin("renewal-window"),
        outer.path().join("outside.wasm"),
    )
    .unwrap();
    let pin = "0".repeat(64);

    manifest(
        &bundle,
        &format!("[renewal]\nplugin = \"../outside.wasm\"\nsha256 = \"{pin}\"\n"),
    );
    let err = load_err(&bundle);
    assert!(err.to_string().contains("'..' is not allowed"), "{err}");

    manifest(
        &bundle,
        &format!(
            "[renewal]\nplugin = \"{}\"\nsha256 = \"{pin}\"\n",
            outer.path().join("outside.wasm").display()
        ),
    );
    let err = load_err(&bundle);
    assert!(
        err.to_string().contains("must be a path relative to"),
        "{err}"
    );

    std::os::unix::fs::symlink(outer.path().join("outside.wasm"), bundle.join("link.wasm"))
        .unwrap();
    manifest(
        &bundle,
        &format!("[renewal]\nplugin = \"link.wasm\"\nsha256 = \"{pin}\"\n"),
    );
    let err = load_err(&bundle);
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn manifest_mistakes_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    manifest(
        dir.path(),
        "[renewal]\nplugin = \"p.wasm\"\nsha256 = \"x\"\ntimeout = 5\n",
    );
    let err = load_err(dir.path());
    assert!(err.to_string().contains("unknown field `timeout`"), "{err}");

    let plugin = default_plugin("renewal-window");
    write_bundle(
        dir.path(),
        &[HookSpec {
            hook: "renewal",
            plugin: &plugin,
            extra: "failure_mode = \"allow\"",
            settings: "",
        }],
    );
    let err = load_err(dir.path());
    assert!(
        err.to_string()
            .contains("[renewal] 'failure_mode' must be one of 'fallback', 'error'"),
        "{err}"
    );

    write_bundle(
        dir.path(),
        &[HookSpec {
            hook: "renewal",
            plugin: &plugin,
            extra: "memory_limit_mib = 100000",
            settings: "",
        }],
    );
    let err = load_err(dir.path());
    assert!(
        err.to_string()
            .contains("[renewal] 'memory_limit_mib' must be between 1 and 512"),
        "{err}"
    );

    write_bundle(
        dir.path(),
        &[HookSpec {
            hook: "renewal",
            plugin: &plugin,
            extra: "",
            settings: "renew_before_days = 0",
        }],
    );
    let err = load_err(dir.path());
    assert!(
        err.to_string().contains(
            "rejected its settings: 'renew_before_days' must be between 1 and 36500, got 0"
        ),
        "{err}"
    );
}

#[test]
fn a_plugin_must_export_the_hook_it_is_used_for() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = default_plugin("renewal-window");
    write_bundle(
        dir.path(),
        &[HookSpec {
            hook: "csr",
            plugin: &plugin,
            extra: "",
            settings: "",
        }],
    );
    let err = load_err(dir.path());
    assert!(
        err.to_string()
            .contains("does not export rotor:policy/csr-approval@0.3.0"),
        "{err}"
    );
}

#[test]
fn a_core_module_is_not_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    // The smallest valid core module: magic and version 1.
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let sub = dir.path().join("b");
    write_bundle(
        &sub,
        &[HookSpec {
            hook: "renewal",
            plugin: &core,
            extra: "",
            settings: "",
        }],
    );
    let err = load_err(&sub);
    assert!(
        err.to_string().contains("not a WebAssembly component"),
        "{err}"
    );
}

#[test]
fn the_shipped_bundles_load() {
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    for name in ["default", "strict"] {
        let b = Bundle::load(&engine, &repo_root().join("policies").join(name))
            .unwrap_or_else(|e| panic!("policies/{name}: {e} (run `make plugins`)"));
        assert_eq!(b.name, name);
        assert!(
            rotor::contract::Hook::ALL
                .iter()
                .all(|h| b.hook(*h).is_some())
        );
    }
}

/// A `.wasm` in the bundle that no hook uses (a plugin meant to be pinned, or left behind) is
/// said at every load and listed by `rotor policy check`; signatures and the used plugins are
/// not, and the shipped bundle has none.
#[test]
fn wasm_files_no_hook_uses_are_warned_about_and_listed_by_check() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    copy_dir(&repo_root().join("policies/default"), &dir);
    let (code, out, err) = rotor(
        &["--bundle", dir.to_str().unwrap(), "policy", "check"],
        &shared_cache(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("unused") && !err.contains("no hook uses"),
        "{out}{err}"
    );

    std::fs::copy(
        test_plugin("renewal-floor"),
        dir.join("plugins/acme-renewal.wasm"),
    )
    .unwrap();
    std::fs::write(dir.join("plugins/csr-approval.wasm.sig"), "{}").unwrap();
    let (code, out, err) = rotor(
        &["--bundle", dir.to_str().unwrap(), "policy", "check"],
        &shared_cache(),
    );
    assert_eq!(
        code, 0,
        "an unused file is a warning, not a refusal: {out}{err}"
    );
    assert!(
        out.lines()
            .any(|l| l == "unused   plugins/acme-renewal.wasm: no hook uses it"),
        "{out}"
    );
    assert_eq!(out.matches("unused ").count(), 1, "{out}");
    assert!(
        err.contains("rotor: warning: ")
            && err.contains("plugins/acme-renewal.wasm is in the bundle but no hook uses it"),
        "{err}"
    );
    // Every command that loads it says so, not only check.
    let (_, _, err) = rotor(
        &[
            "--bundle",
            dir.to_str().unwrap(),
            "policy",
            "test",
            dir.join("fixtures").to_str().unwrap(),
        ],
        &shared_cache(),
    );
    assert!(err.contains("no hook uses it"), "{err}");
    // The library says it too.
    let cache = tempfile::tempdir().unwrap();
    let bundle = Bundle::load(&engine(cache.path()), &dir).unwrap();
    assert_eq!(bundle.unused_plugins(), ["plugins/acme-renewal.wasm"]);
}
