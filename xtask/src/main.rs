//! Build helper for rotor's WebAssembly plugins.
//!
//! ```text
//! cargo xtask build-plugins        build guest-plugins/* into components, copy them into the
//!                                  policy bundles and check every pinned sha256
//! cargo xtask build-test-plugins   build the hostile plugins of tests/plugins/*
//! cargo xtask pin                  rewrite the sha256 pins of policies/*/bundle.toml after a
//!                                  deliberate change to a default plugin
//! ```
//!
//! Guests are built by `rotor_plugin_build` (plugin-build/), the path `rotor policy build` takes
//! for a vendor's crate: core modules for `wasm32-unknown-unknown`, turned into components
//! with `wit-component`, which leaves only the `rotor:policy` imports.
//!
//! Builds are reproducible (paths are remapped, `Cargo.lock` is committed), so the sha256 pins
//! committed in the bundles match on any machine with the same toolchain.

#![allow(
    clippy::disallowed_methods,
    reason = "a build tool: it copies plugin files between the workspaces"
)]

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use sha2::{Digest, Sha256};

/// The default plugins shipped in the policy bundles.
const DEFAULT_PLUGINS: &[&str] = &["renewal-window", "san-validation", "csr-approval"];

/// Hostile plugins for the sandbox tests (and the policy bench's floor plugin), and the target
/// each is built for.
const TEST_PLUGINS: &[(&str, Target)] = &[
    ("hostile-loop", Target::Unknown),
    ("hostile-memory", Target::Unknown),
    ("hostile-trap", Target::Unknown),
    ("hostile-lifetime", Target::Unknown),
    ("hostile-answers", Target::Unknown),
    ("hostile-wasi", Target::Wasip2),
    ("hostile-stateful", Target::Unknown),
    ("hostile-approve-all", Target::Unknown),
    ("hostile-details", Target::Unknown),
    ("renewal-floor", Target::Unknown),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Core module, componentized here: imports only rotor's interfaces.
    Unknown,
    /// Component built by rustc's own linker: imports WASI.
    Wasip2,
}

impl Target {
    fn triple(self) -> &'static str {
        match self {
            Target::Unknown => "wasm32-unknown-unknown",
            Target::Wasip2 => "wasm32-wasip2",
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build-plugins") => build_plugins().and_then(|_| install_into_bundles(Check::Verify)),
        Some("build-test-plugins") => build_test_plugins(),
        Some("pin") => build_plugins().and_then(|_| install_into_bundles(Check::Rewrite)),
        _ => Err("usage: cargo xtask build-plugins | build-test-plugins | pin".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn repo_root() -> PathBuf {
    // xtask/ is one level below the repository root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where built components go: `target/plugins` (default) and `target/test-plugins`.
fn out_dir(kind: &str) -> PathBuf {
    repo_root().join("target").join(kind)
}

fn build_plugins() -> Result<()> {
    let root = repo_root();
    let out = out_dir("plugins");
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for name in DEFAULT_PLUGINS {
        let component = build_one(&root.join("guest-plugins"), name, Target::Unknown)?;
        write(&out.join(format!("{name}.wasm")), &component)?;
        println!(
            "built {name}: {} bytes, sha256 {}",
            component.len(),
            sha256_hex(&component)
        );
    }
    Ok(())
}

fn build_test_plugins() -> Result<()> {
    let root = repo_root();
    let out = out_dir("test-plugins");
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (name, target) in TEST_PLUGINS {
        let component = build_one(&root.join("tests/plugins"), name, *target)?;
        write(&out.join(format!("{name}.wasm")), &component)?;
        println!("built test plugin {name} ({})", target.triple());
    }
    Ok(())
}

/// Build one guest crate of the workspace at `workspace` and return the component bytes:
/// `rotor_plugin_build`, the same path as `rotor policy build`, for the wasm32-unknown-unknown
/// guests; a plain cargo build for the WASI one.
fn build_one(workspace: &Path, name: &str, target: Target) -> Result<Vec<u8>> {
    let root = repo_root();
    let target_dir = root.join("target/wasm");
    let remap = vec![
        (root.clone(), "/rotor".to_string()),
        (rotor_plugin_build::cargo_home(), "/cargo".to_string()),
    ];
    if target == Target::Unknown {
        return rotor_plugin_build::build_component(&rotor_plugin_build::Guest {
            dir: workspace.to_path_buf(),
            package: Some(name.to_string()),
            lib_name: name.replace('-', "_"),
            target_dir,
            locked: true,
            remap,
        })
        .map_err(|e| format!("plugin {name}: {e}"));
    }
    rotor_plugin_build::check_target_installed(target.triple())?;
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustflags: Vec<String> = remap
        .iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect();
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["rustc", "--quiet", "--locked", "--release", "-p", name])
        .args(["--target", target.triple(), "--crate-type", "cdylib"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env_remove("RUSTFLAGS")
        .status()
        .map_err(|e| format!("running cargo for {name}: {e}"))?;
    if !status.success() {
        return Err(format!("building plugin {name} failed ({status})"));
    }
    let artifact = target_dir
        .join(target.triple())
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    fs::read(&artifact).map_err(|e| format!("{}: {e}", artifact.display()))
}

#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// Fail when a pinned sha256 does not match the built plugin.
    Verify,
    /// Rewrite the pins to the built plugins.
    Rewrite,
}

/// Copy the built default plugins into every bundle that references them
/// (`plugin = "plugins/<name>.wasm"`), then verify or rewrite the pins.
fn install_into_bundles(check: Check) -> Result<()> {
    let policies = repo_root().join("policies");
    let mut entries: Vec<PathBuf> = fs::read_dir(&policies)
        .map_err(|e| format!("{}: {e}", policies.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("bundle.toml").is_file())
        .collect();
    entries.sort();
    let mut mismatches = Vec::new();
    for bundle_dir in entries {
        let manifest_path = bundle_dir.join("bundle.toml");
        let text = fs::read_to_string(&manifest_path)
            .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
        let mut changed = false;
        for hook in ["renewal", "san", "csr"] {
            let Some(table) = doc.get_mut(hook).and_then(|t| t.as_table_mut()) else {
                continue;
            };
            let Some(plugin) = table
                .get("plugin")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
            else {
                continue;
            };
            let Some(name) = plugin
                .strip_prefix("plugins/")
                .and_then(|f| f.strip_suffix(".wasm"))
                .filter(|n| DEFAULT_PLUGINS.contains(n))
            else {
                continue;
            };
            let built = out_dir("plugins").join(format!("{name}.wasm"));
            let bytes = fs::read(&built).map_err(|e| format!("{}: {e}", built.display()))?;
            let dest = bundle_dir.join(&plugin);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            write(&dest, &bytes)?;
            let digest = sha256_hex(&bytes);
            let pinned = table.get("sha256").and_then(|v| v.as_str()).unwrap_or("");
            if pinned != digest {
                match check {
                    Check::Verify => mismatches.push(format!(
                        "{}: [{hook}] pins {name} at sha256 {pinned}, the build gives {digest}",
                        manifest_path.display()
                    )),
                    Check::Rewrite => {
                        table["sha256"] = toml_edit::value(digest);
                        changed = true;
                    }
                }
            }
        }
        if changed {
            write(&manifest_path, doc.to_string().as_bytes())?;
            println!("re-pinned {}", manifest_path.display());
        }
    }
    if mismatches.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "plugin digests do not match their pins:\n  {}\n\
             The built plugins differ from the ones the bundles were pinned to. If you changed a \
             plugin on purpose, run `cargo xtask pin` and commit the new pins; otherwise check \
             the toolchain (rust-toolchain.toml) and Cargo.lock.",
            mismatches.join("\n  ")
        ))
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
