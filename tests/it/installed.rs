//! An installed rotor: the binary copied out of the repository and run from directories that
//! hold no policy bundle. It decides with the default bundle built into it, `rotor init`
//! records the bundle it was given in the data dir, later commands from any directory use that
//! one, `--bundle` overrides it, and `rotor policy use` replaces it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{repo_root, rotor_bin, shared_cache};

struct Installed {
    bin: PathBuf,
    _tmp: tempfile::TempDir,
    work: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin").join("rotor");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::copy(rotor_bin(), &bin).unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        Installed {
            bin,
            _tmp: tmp,
            work,
        }
    }

    /// Run from `cwd`; (exit code, stdout, stderr).
    fn run(&self, cwd: &Path, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .env("ROTOR_PLUGIN_CACHE", shared_cache())
            .env_remove("ROTOR_BUNDLE")
            .env_remove("ROTOR_DATA_DIR")
            .current_dir(cwd)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let (code, out, err) = self.run(cwd, args);
        assert_eq!(
            code,
            0,
            "rotor {args:?} from {}:\n{out}\n{err}",
            cwd.display()
        );
        out
    }
}

#[test]
fn an_installed_rotor_decides_with_its_built_in_bundle_and_then_the_one_init_recorded() {
    let rotor = Installed::new();
    let work = rotor.work.clone();
    let elsewhere = rotor.bin.parent().unwrap().to_path_buf();
    let strict = repo_root().join("policies/strict");
    let default = repo_root().join("policies/default");

    // No bundle anywhere near: the one built into the binary.
    let out = rotor.ok(&work, &["policy", "check"]);
    assert!(
        out.starts_with("bundle default (built-in default bundle)"),
        "{out}"
    );
    let fixtures = repo_root().join("policies/default/fixtures");
    rotor.ok(&work, &["policy", "test", fixtures.to_str().unwrap()]);

    // init records the bundle it decided with, byte for byte.
    rotor.ok(
        &work,
        &[
            "--data-dir",
            "d",
            "--bundle",
            strict.to_str().unwrap(),
            "init",
            "--profile",
            "k3s",
            "--node-name",
            "s1",
            "--node-ip",
            "10.0.0.1",
        ],
    );
    let data_dir = work.join("d");
    let recorded = data_dir.join("rotor-policy");
    assert_eq!(
        std::fs::read(recorded.join("bundle.toml")).unwrap(),
        std::fs::read(strict.join("bundle.toml")).unwrap()
    );
    for plugin in ["renewal-window", "san-validation", "csr-approval"] {
        let rel = format!("plugins/{plugin}.wasm");
        assert_eq!(
            std::fs::read(recorded.join(&rel)).unwrap(),
            std::fs::read(strict.join(&rel)).unwrap(),
            "{rel}"
        );
    }

    // Later commands, from another directory, decide with the recorded bundle.
    let d = data_dir.to_str().unwrap();
    let out = rotor.ok(&elsewhere, &["--data-dir", d, "policy", "check"]);
    assert!(out.starts_with("bundle strict ("), "{out}");
    assert!(out.contains("rotor-policy/bundle.toml"), "{out}");
    rotor.ok(&elsewhere, &["--data-dir", d, "start"]);

    // --bundle overrides it for one command, and records nothing.
    let out = rotor.ok(
        &elsewhere,
        &[
            "--data-dir",
            d,
            "--bundle",
            default.to_str().unwrap(),
            "policy",
            "check",
        ],
    );
    assert!(out.starts_with("bundle default ("), "{out}");
    let out = rotor.ok(&elsewhere, &["--data-dir", d, "policy", "check"]);
    assert!(out.starts_with("bundle strict ("), "{out}");

    // policy use replaces it, as one change; a second time changes nothing.
    let (code, _, err) = rotor.run(&elsewhere, &["--data-dir", d, "policy", "use"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--bundle"), "{err}");
    let out = rotor.ok(
        &elsewhere,
        &[
            "--data-dir",
            d,
            "--bundle",
            default.to_str().unwrap(),
            "policy",
            "use",
        ],
    );
    assert!(out.contains("now decides with bundle default"), "{out}");
    assert!(!out.contains("recorded already"), "{out}");
    let out = rotor.ok(&elsewhere, &["--data-dir", d, "policy", "check"]);
    assert!(out.starts_with("bundle default ("), "{out}");
    assert_eq!(
        std::fs::read(recorded.join("bundle.toml")).unwrap(),
        std::fs::read(default.join("bundle.toml")).unwrap()
    );
    let out = rotor.ok(
        &elsewhere,
        &[
            "--data-dir",
            d,
            "--bundle",
            default.to_str().unwrap(),
            "policy",
            "use",
        ],
    );
    assert!(out.contains("recorded already"), "{out}");

    // A recorded bundle that was tampered with is refused by its pins, naming the file.
    let plugin = std::fs::canonicalize(recorded.join("plugins/renewal-window.wasm")).unwrap();
    let mut bytes = std::fs::read(&plugin).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&plugin, bytes).unwrap();
    let (code, _, err) = rotor.run(&elsewhere, &["--data-dir", d, "start"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rotor-policy/bundle.toml"), "{err}");
    assert!(err.contains("sha256"), "{err}");
}
