//! `rotor policy new | build | pin`: the vendor's path from an empty directory to a pinned
//! component in a bundle.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Exit;
use super::args::{BuildArgs, GlobalArgs, NewArgs, PinArgs};
use super::output::outln;
use crate::contract::Hook;
use crate::fs::Root;
use crate::plugin::SandboxLimits;
use crate::policy::Bundle;
use crate::policy::scaffold::{self, SdkSource};

/// `rotor policy new DIR --hook H`.
pub(super) fn new(args: NewArgs) -> anyhow::Result<Exit> {
    let hook: Hook = args.hook.into();
    let name = scaffold::crate_name(&args.dir, args.name.as_deref())?;
    let sdk = match &args.sdk {
        Some(s) => SdkSource::parse(s),
        None => SdkSource::built_from().ok_or_else(|| {
            anyhow::anyhow!(
                "policy new: where is rotor-policy-sdk? This rotor was not built from a checkout \
                 that is still here: give --sdk with the path of rotor's guest-plugins/sdk, or \
                 a git URL (URL#REV)"
            )
        })?,
    };
    if let SdkSource::Path(p) = &sdk {
        Root::open_ambient(p)
            .ok()
            .filter(|r| r.exists(Path::new("Cargo.toml")))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "policy new: {} is not rotor-policy-sdk (no Cargo.toml there)",
                    p.display()
                )
            })?;
    }
    let files = scaffold::files(&name, hook, &sdk)?;
    scaffold::write(&args.dir, &files)?;
    let d = args.dir.display();
    outln!(
        "created {name} ({} hook) in {d}: {} files",
        hook.as_str(),
        files.len()
    );
    outln!("next:");
    outln!("  (cd {d} && cargo test)          the rules, on this machine");
    outln!("  rotor policy build {d}");
    outln!(
        "  rotor policy pin --bundle BUNDLE --hook {} {d}/{name}.wasm",
        hook.as_str()
    );
    outln!("  rotor policy test --bundle BUNDLE {d}/fixtures");
    Ok(Exit::Success)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `rotor policy build DIR`.
pub(super) fn build(global: &GlobalArgs, args: BuildArgs) -> anyhow::Result<Exit> {
    let root = Root::open_ambient(&args.dir)?;
    let manifest_text = root.read(Path::new("Cargo.toml"))?;
    let manifest: toml::Table = toml::from_str(&String::from_utf8_lossy(&manifest_text))
        .map_err(|e| anyhow::anyhow!("{}: {e}", root.display(Path::new("Cargo.toml")).display()))?;
    let name = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no [package] name: not a plugin crate",
                root.display(Path::new("Cargo.toml")).display()
            )
        })?
        .to_string();
    let dir = root.absolute_path();
    let target_dir = args
        .target_dir
        .clone()
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .unwrap_or_else(|| dir.join("target"));
    let guest = rotor_plugin_build::Guest {
        dir: dir.clone(),
        package: None,
        lib_name: name.replace('-', "_"),
        target_dir,
        locked: args.locked,
        remap: vec![
            (dir.clone(), "/plugin".to_string()),
            (rotor_plugin_build::cargo_home(), "/cargo".to_string()),
        ],
    };
    let component = rotor_plugin_build::build_component(&guest)
        .map_err(|e| anyhow::anyhow!("policy build: {e}"))?;
    // What an operator's rotor will do with it: load it (imports checked, exports found).
    let engine = super::engine(global)?;
    let plugin = engine.load(&name, Hook::Renewal, &component)?;
    let hooks = plugin.hooks();
    if hooks.is_empty() {
        anyhow::bail!("policy build: {name} exports no hook of rotor:policy");
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.dir.join(format!("{name}.wasm")));
    let (parent, file) = split_file(&out)?;
    Root::create_ambient(&parent)?.write_atomic(Path::new(&file), &component, 0o644)?;
    let hook_names: Vec<&str> = hooks.iter().map(|h| h.as_str()).collect();
    outln!(
        "built {name}: {} bytes, sha256 {}",
        component.len(),
        sha256_hex(&component)
    );
    outln!(
        "  contract {}, exports {}; imports nothing but rotor:policy",
        plugin.contract(),
        hook_names.join(", ")
    );
    outln!("  wrote {}", out.display());
    outln!(
        "next: rotor policy pin --bundle BUNDLE --hook {} {}",
        hook_names[0],
        out.display()
    );
    Ok(Exit::Success)
}

/// `(directory, file name)` of a path the user gave for a file.
fn split_file(path: &Path) -> anyhow::Result<(PathBuf, String)> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, file))
}

/// `rotor policy pin --bundle B --hook H FILE`.
pub(super) fn pin(global: &GlobalArgs, args: PinArgs) -> anyhow::Result<Exit> {
    let hook: Hook = args.hook.into();
    let Some(bundle_arg) = &global.bundle else {
        anyhow::bail!("policy pin: give the bundle to pin into with --bundle DIR");
    };
    let (bundle_dir, manifest_name) = if bundle_arg.extension().is_some_and(|e| e == "toml") {
        split_file(bundle_arg)?
    } else {
        (bundle_arg.clone(), "bundle.toml".to_string())
    };
    let bytes = Root::read_ambient_file(&args.file)?;
    let digest = sha256_hex(&bytes);
    let (_, file_name) = split_file(&args.file)?;
    let plugin_rel = format!("plugins/{file_name}");

    // Decide everything before writing: the new manifest, and that the plugin loads, serves
    // the hook and accepts the hook's settings.
    let existing = Root::open_ambient(&bundle_dir)
        .ok()
        .and_then(|r| r.read(Path::new(&manifest_name)).ok());
    let created = existing.is_none();
    let text = match &existing {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => new_manifest(&bundle_dir),
    };
    let manifest_path = bundle_dir.join(&manifest_name);
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;
    for other in Hook::ALL.into_iter().filter(|h| *h != hook) {
        let same_file = doc
            .get(other.as_str())
            .and_then(|t| t.get("plugin"))
            .and_then(|p| p.as_str())
            .is_some_and(|p| p == plugin_rel);
        let same_digest = doc
            .get(other.as_str())
            .and_then(|t| t.get("sha256"))
            .and_then(|p| p.as_str())
            .is_some_and(|d| d.eq_ignore_ascii_case(&digest));
        if same_file && !same_digest {
            anyhow::bail!(
                "policy pin: [{}] of {} pins another build of {plugin_rel}; rename the file \
                 (or pin that hook too)",
                other.as_str(),
                manifest_path.display()
            );
        }
    }
    let section = doc
        .entry(hook.as_str())
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(table) = section.as_table_mut() else {
        anyhow::bail!(
            "{}: `{}` is not a table",
            manifest_path.display(),
            hook.as_str()
        );
    };
    table.insert("plugin", toml_edit::value(plugin_rel.clone()));
    table.insert("sha256", toml_edit::value(digest.clone()));
    let settings: toml::Table = table
        .get("settings")
        .map(|s| {
            toml::from_str(
                &toml_edit::DocumentMut::from(s.as_table().cloned().unwrap_or_default())
                    .to_string(),
            )
        })
        .transpose()
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: [{}.settings]: {e}",
                manifest_path.display(),
                hook.as_str()
            )
        })?
        .unwrap_or_default();
    let settings = serde_json::to_string(&crate::policy::bundle::toml_to_json(&settings))?;
    let engine = super::engine(global)?;
    let name = Path::new(&file_name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| file_name.clone());
    let plugin = engine.load(&name, hook, &bytes)?;
    plugin.configure(hook, &settings, &SandboxLimits::default())?;

    let root = Root::create_ambient(&bundle_dir)?;
    root.create_dir_all(Path::new("plugins"))?;
    root.write_atomic(Path::new(&plugin_rel), &bytes, 0o644)?;
    root.write_atomic(Path::new(&manifest_name), doc.to_string().as_bytes(), 0o644)?;
    // The whole bundle, as every command will load it.
    let bundle = Bundle::load(&engine, &manifest_path)?;
    outln!(
        "{} {}: [{}] runs {plugin_rel} (sha256 {digest}, {})",
        if created { "created" } else { "updated" },
        manifest_path.display(),
        hook.as_str(),
        plugin.contract()
    );
    outln!(
        "bundle {} loads: renewal {}, san {}, csr {}",
        bundle.name,
        describe(&bundle, Hook::Renewal),
        describe(&bundle, Hook::San),
        describe(&bundle, Hook::Csr)
    );
    Ok(Exit::Success)
}

fn describe(bundle: &Bundle, hook: Hook) -> String {
    match bundle.hook(hook) {
        Some(hp) => hp.file.clone(),
        None => "built-in".into(),
    }
}

fn new_manifest(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let name = toml_edit::value(name).to_string();
    format!(
        "# A rotor policy bundle, made by `rotor policy pin`. Every plugin is pinned by sha256;\n\
         # `[HOOK.settings]` is what the plugin's `configure` receives, as JSON.\n\n\
         [bundle]\nname = {}\n",
        name.trim()
    )
}
