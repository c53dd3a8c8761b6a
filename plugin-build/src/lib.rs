//! How a rotor policy plugin crate becomes a WebAssembly component, written once for
//! `cargo xtask build-plugins` (the default plugins) and `rotor policy build` (a vendor's).
//!
//! A guest is built as a core module for `wasm32-unknown-unknown` (a `cdylib`, release profile,
//! a 64 KiB shadow stack) and turned into a component with `wit-component`, which leaves only
//! the `rotor:policy` imports: built for `wasm32-wasip2` instead, a std guest would import
//! `wasi:cli/*` and `wasi:io/*` even when unused, and rotor refuses any import but its own.
//!
//! Absolute paths (which end up in panic messages) are remapped, so the bytes do not depend on
//! where the crate or the cargo registry lives: with a committed `Cargo.lock` and the same
//! toolchain, a build is reproducible and its sha256 can be pinned.

#![allow(
    clippy::disallowed_methods,
    reason = "a build tool: it runs cargo and reads the module cargo wrote"
)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target guests are built for.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// Shadow-stack size of a guest: 64 KiB instead of rustc's 1 MiB. The stack sits first in
/// linear memory (an overflow traps at address 0 rather than corrupting data), and a smaller
/// stack means fewer pages for the sandbox to map and reset per instance.
pub const GUEST_STACK_BYTES: u32 = 64 * 1024;

/// The linker flag that sets it (also what `rotor policy new` writes into `.cargo/config.toml`).
pub fn stack_flag() -> String {
    format!("-Clink-arg=-zstack-size={GUEST_STACK_BYTES}")
}

/// One guest crate to build.
#[derive(Clone, Debug)]
pub struct Guest {
    /// Directory cargo runs in (the crate, or its workspace).
    pub dir: PathBuf,
    /// The package to build (`-p`), when `dir` is a workspace.
    pub package: Option<String>,
    /// The library's name (the package name with `-` as `_`): names the module cargo writes.
    pub lib_name: String,
    /// Cargo's target directory.
    pub target_dir: PathBuf,
    /// `--locked`: refuse to change `Cargo.lock`.
    pub locked: bool,
    /// Path prefixes to remap, with what they become (`/rotor`, `/plugin`, `/cargo`).
    pub remap: Vec<(PathBuf, String)>,
}

/// Where cargo keeps its registry: `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/")))
                .join(".cargo")
        })
}

/// Fail with the command to run when the wasm target is not installed.
pub fn check_target_installed(target: &str) -> Result<(), String> {
    let out = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !Path::new(&dir).exists() {
        return Err(format!(
            "the {target} target is not installed: run `rustup target add {target}`"
        ));
    }
    Ok(())
}

/// Build `guest` into a core module and read it: [`build`], then the module's bytes.
pub fn build_core_module(guest: &Guest) -> Result<Vec<u8>, String> {
    let artifact = build(guest)?;
    std::fs::read(&artifact).map_err(|e| format!("{}: {e}", artifact.display()))
}

/// Build `guest` into a core module (`cargo rustc --release --target wasm32-unknown-unknown
/// --crate-type cdylib`, the stack flag, remapped paths) and return where cargo wrote it.
pub fn build(guest: &Guest) -> Result<PathBuf, String> {
    check_target_installed(TARGET)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut rustflags: Vec<String> = guest
        .remap
        .iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect();
    rustflags.push(stack_flag());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guest.dir)
        .args(["rustc", "--quiet", "--release"])
        .args(["--target", TARGET, "--crate-type", "cdylib", "--lib"])
        .arg("--target-dir")
        .arg(&guest.target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .env_remove("RUSTFLAGS");
    if guest.locked {
        cmd.arg("--locked");
    }
    if let Some(p) = &guest.package {
        cmd.args(["-p", p]);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("running cargo in {}: {e}", guest.dir.display()))?;
    if !status.success() {
        return Err(format!(
            "cargo could not build {} ({status}); its errors are above",
            guest.dir.display()
        ));
    }
    Ok(guest
        .target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", guest.lib_name)))
}

/// Turn a core module built with wit-bindgen into a component (its embedded WIT worlds say what
/// it imports and exports).
pub fn componentize(core: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .map_err(|e| format!("reading the core module: {e:#}"))?
        .validate(true)
        .encode()
        .map_err(|e| format!("encoding the component: {e:#}"))
}

/// [`build_core_module`] then [`componentize`].
pub fn build_component(guest: &Guest) -> Result<Vec<u8>, String> {
    componentize(&build_core_module(guest)?)
}
