//! Embeds the default policy bundle (`policies/default`: `bundle.toml` and the plugins it pins)
//! into the library, so an installed `rotor` decides with it from any directory. When the
//! plugins are not built yet (`make plugins`), the embedded bundle is empty and rotor says so.

#![allow(
    clippy::disallowed_methods,
    reason = "the build script reads the default bundle to embed it"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    toolchain_channel(&manifest_dir);
    git_commit(&manifest_dir);
    let bundle = manifest_dir.join("../policies/default");
    let manifest = bundle.join("bundle.toml");
    let plugins = bundle.join("plugins");
    println!("cargo:rerun-if-changed={}", manifest.display());
    println!("cargo:rerun-if-changed={}", plugins.display());

    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&plugins) {
        let mut wasm: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        wasm.sort();
        for p in wasm {
            println!("cargo:rerun-if-changed={}", p.display());
            let name = format!(
                "plugins/{}",
                p.file_name().expect("a file").to_string_lossy()
            );
            files.push((name, p));
        }
    }
    // Without plugins the manifest alone would fail to load: embed nothing then.
    if !files.is_empty() && manifest.is_file() {
        files.insert(0, ("bundle.toml".into(), manifest));
    } else {
        files.clear();
    }

    let mut out = String::from("&[\n");
    for (name, path) in &files {
        let path = canonical(path);
        writeln!(
            out,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    out.push(']');
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(dest.join("builtin_bundle.rs"), out).expect("OUT_DIR is writable");
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The pinned toolchain (rust-toolchain.toml), for the crates `rotor policy new` writes: a
/// component's pinned sha256 holds for the toolchain that built it.
fn toolchain_channel(manifest_dir: &Path) {
    let file = manifest_dir.join("../rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", file.display());
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let channel = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .unwrap_or_else(|| "stable".to_string());
    println!("cargo:rustc-env=ROTOR_RUSTC_CHANNEL={channel}");
}

/// The commit this rotor is built from, for `rotor --version`: `ROTOR_GIT_COMMIT` when set (a
/// build from a source tarball, or a packager's), else `git rev-parse HEAD` of the checkout
/// (the commit checked out; changes not committed are not told), else `unknown`. Rebuilt when
/// HEAD moves, in a plain checkout or a worktree (whose `.git` is a file).
fn git_commit(manifest_dir: &Path) {
    println!("cargo:rerun-if-env-changed=ROTOR_GIT_COMMIT");
    let repo = manifest_dir.join("..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let path = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { repo.join(p) }
    };
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(path) {
        let common = git(&["rev-parse", "--git-common-dir"])
            .map(path)
            .unwrap_or_else(|| git_dir.clone());
        let head = git_dir.join("HEAD");
        let mut watched = vec![head.clone(), common.join("packed-refs")];
        if let Ok(text) = std::fs::read_to_string(&head)
            && let Some(reference) = text.trim().strip_prefix("ref: ")
        {
            watched.push(common.join(reference));
        }
        // Only files that exist: a missing one would rerun this script (and rebuild rotor) on
        // every build.
        for f in watched.iter().filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", f.display());
        }
    }
    let commit = std::env::var("ROTOR_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ROTOR_GIT_COMMIT={commit}");
}
