//! `rotor policy new | build | pin`: the vendor's path from an empty directory to a pinned
//! component in a bundle.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Exit;
use super::args::{BuildArgs, GlobalArgs, NewArgs, PinArgs};
use super::output::outln;
use crate::contract::Hook;
use crate::fs::Root;
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
    // A path is made absolute: cargo reads it from the new crate's directory, not from here.
    let sdk = match sdk {
        SdkSource::Path(p) => SdkSource::Path(
            Root::open_ambient(&p)
                .ok()
                .filter(|r| r.exists(Path::new("Cargo.toml")))
                .map(|r| r.absolute_path())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "policy new: {} is not rotor-policy-sdk (no Cargo.toml there)",
                        p.display()
                    )
                })?,
        ),
        git => git,
    };
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
    // Absolute: cargo runs in the crate's directory, rotor reads the module from here.
    let target_dir = args
        .target_dir
        .clone()
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from))
        .map(|d| std::path::absolute(&d).unwrap_or(d))
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
    let module_path =
        rotor_plugin_build::build(&guest).map_err(|e| anyhow::anyhow!("policy build: {e}"))?;
    let module = Root::read_ambient_file(&module_path)?;
    let component = rotor_plugin_build::componentize(&module)
        .map_err(|e| anyhow::anyhow!("policy build: {name}: {e}"))?;
    // What an operator's rotor will do with it: load it (imports checked, exports found).
    let engine = super::engine(global)?;
    let plugin = engine
        .load(&name, Hook::Renewal, &component)
        .map_err(|e| anyhow::anyhow!("policy build: {name} does not load in rotor: {}", e.kind))?;
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
pub(super) fn split_file(path: &Path) -> anyhow::Result<(PathBuf, String)> {
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
///
/// Everything is decided before the bundle changes: the new manifest is written with the
/// bundle's plugins into a staging directory (outside the bundle) and loaded there as every
/// command will load it (every hook, its pins, limits and settings). Only then is the component
/// copied into the bundle (under a name no pinned file uses) and the manifest replaced last, so
/// an interruption leaves at worst an unused file.
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
    let manifest_path = bundle_dir.join(&manifest_name);
    let bytes = Root::read_ambient_file(&args.file)?;
    let digest = sha256_hex(&bytes);
    let (_, file_name) = split_file(&args.file)?;

    // The bundle as it is: a missing directory or manifest is a new bundle; any other error is
    // an error.
    let bundle_root = match Root::open_ambient(&bundle_dir) {
        Ok(root) => Some(root),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let existing = match &bundle_root {
        Some(root) => match root.read(Path::new(&manifest_name)) {
            Ok(b) => Some(b),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let created = existing.is_none();
    let text = match existing {
        Some(b) => String::from_utf8(b)
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", manifest_path.display()))?,
        None => new_manifest(&bundle_dir),
    };
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", manifest_path.display()))?;

    // The file the component goes to: its own name, unless a different file has it.
    let stem = Path::new(&file_name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let mut plugin_rel = format!("plugins/{file_name}");
    if let Some(root) = &bundle_root
        && let Ok(present) = root.read(Path::new(&plugin_rel))
        && present != bytes
    {
        plugin_rel = format!("plugins/{stem}-{}.wasm", &digest[..12]);
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
    let same_plugin = table.get("sha256").and_then(|v| v.as_str()) == Some(digest.as_str());
    table.insert("plugin", toml_edit::value(plugin_rel.clone()));
    table.insert("sha256", toml_edit::value(digest.clone()));
    // The settings: replaced (--settings), dropped (--no-settings), or kept as they are, which
    // holds only if the new component accepts them (checked by the load below).
    let settings_source = if let Some(file) = &args.settings {
        table.insert("settings", settings_table(file)?);
        SettingsSource::File(file.clone())
    } else if args.no_settings {
        table.remove("settings");
        SettingsSource::None
    } else if table.contains_key("settings") {
        SettingsSource::Kept { same_plugin }
    } else {
        SettingsSource::None
    };
    let new_text = doc.to_string();

    // Stage and load the whole bundle outside it.
    let staging_path = std::env::temp_dir().join(format!(
        "rotor-pin-{}-{}",
        std::process::id(),
        &digest[..12]
    ));
    let others: Vec<String> = Hook::ALL
        .into_iter()
        .filter(|h| *h != hook)
        .filter_map(|h| {
            doc.get(h.as_str())?
                .get("plugin")?
                .as_str()
                .map(String::from)
        })
        .collect();
    let staged = stage(
        bundle_root.as_ref(),
        &staging_path,
        &manifest_name,
        &new_text,
        (&plugin_rel, &bytes),
        &others,
    );
    let engine = super::engine(global)?;
    let loaded = staged.and_then(|()| {
        Bundle::load(&engine, &staging_path.join(&manifest_name))
            .and_then(|b| b.ensure_loaded().map(|()| b))
            .map_err(|e| {
                let refused = e.plugin_error().and_then(|pe| match &pe.kind {
                    crate::plugin::PluginErrorKind::InvalidSettings { message }
                        if pe.hook == hook =>
                    {
                        Some((pe.plugin.clone(), message.clone()))
                    }
                    _ => None,
                });
                if let Some((plugin, message)) = refused {
                    return settings_refused(
                        &plugin,
                        &message,
                        hook,
                        &manifest_path,
                        &settings_source,
                    );
                }
                // Name the bundle the operator gave, not the staging copy.
                anyhow::anyhow!(
                    "policy pin: the bundle would not load: {}",
                    e.to_string().replace(
                        &staging_path.display().to_string(),
                        &bundle_dir.display().to_string()
                    )
                )
            })
    });
    if let Ok(tmp) = Root::open_ambient(&std::env::temp_dir()) {
        let _ = tmp.remove_dir_all(Path::new(staging_path.file_name().unwrap_or_default()));
    }
    let staged_bundle = loaded?;
    let contract = staged_bundle
        .hook(hook)
        .map(|hp| hp.plugin.contract().to_string())
        .unwrap_or_default();

    // Decided: write the component, then the manifest.
    let root = Root::create_ambient(&bundle_dir)?;
    root.create_dir_all(Path::new("plugins"))?;
    root.write_atomic(Path::new(&plugin_rel), &bytes, 0o644)?;
    root.write_atomic(Path::new(&manifest_name), new_text.as_bytes(), 0o644)?;
    outln!(
        "{} {}: [{}] runs {plugin_rel} (sha256 {digest}, {contract})",
        if created { "created" } else { "updated" },
        manifest_path.display(),
        hook.as_str(),
    );
    outln!(
        "bundle {} loads: renewal {}, san {}, csr {}",
        staged_bundle.name,
        describe(&staged_bundle, Hook::Renewal),
        describe(&staged_bundle, Hook::San),
        describe(&staged_bundle, Hook::Csr)
    );
    Ok(Exit::Success)
}

/// Where the settings pinned with a component come from.
enum SettingsSource {
    /// The section's, as they were; `same_plugin` when the section pinned this very component
    /// already (else they were written for another).
    Kept { same_plugin: bool },
    /// `--settings FILE`.
    File(PathBuf),
    /// None (`--no-settings`, or the section had none).
    None,
}

/// `--settings FILE` as the `settings` table of a hook section: a TOML table, or a JSON object
/// when FILE ends in `.json`.
fn settings_table(file: &Path) -> anyhow::Result<toml_edit::Item> {
    let bytes = Root::read_ambient_file(file)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("--settings {}: not UTF-8 text", file.display()))?;
    let table: toml::Table = if file.extension().is_some_and(|e| e == "json") {
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("--settings {}: {e}", file.display()))?;
        if !json.is_object() {
            anyhow::bail!("--settings {}: not a JSON object", file.display());
        }
        toml::Table::try_from(json).map_err(|e| {
            anyhow::anyhow!(
                "--settings {}: has no TOML form (a null?): {e}",
                file.display()
            )
        })?
    } else {
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "--settings {}: {}",
                file.display(),
                e.to_string().trim_end().replace('\n', "\n  ")
            )
        })?
    };
    // Through text, so the manifest gets ordinary TOML tables (`[renewal.settings]`).
    let doc: toml_edit::DocumentMut = toml::to_string(&table)
        .map_err(|e| anyhow::anyhow!("--settings {}: {e}", file.display()))?
        .parse()
        .map_err(|e| anyhow::anyhow!("--settings {}: {e}", file.display()))?;
    let mut table = doc.as_table().clone();
    table.set_implicit(false);
    Ok(toml_edit::Item::Table(table))
}

/// The component refused the settings it would be pinned with: say whose settings they are and
/// what to do instead; nothing was changed.
fn settings_refused(
    plugin: &str,
    message: &str,
    hook: Hook,
    manifest: &Path,
    source: &SettingsSource,
) -> anyhow::Error {
    let section = format!("[{}.settings]", hook.as_str());
    match source {
        SettingsSource::Kept { same_plugin } => anyhow::anyhow!(
            "policy pin: plugin '{plugin}' rejected the settings in {section} of {}: {message}\n  \
             {}; nothing was changed.\n  \
             give the settings this plugin takes with --settings FILE (a TOML table, or a JSON \
             object in FILE.json), or pin it with its own defaults with --no-settings",
            manifest.display(),
            if *same_plugin {
                "the section pins this very component already, with settings it refuses"
            } else {
                "they were written for the plugin pinned there before"
            }
        ),
        SettingsSource::File(file) => anyhow::anyhow!(
            "policy pin: plugin '{plugin}' rejected the settings of --settings {}: {message}\n  \
             nothing was changed; its documentation says which settings it takes",
            file.display()
        ),
        SettingsSource::None => anyhow::anyhow!(
            "policy pin: plugin '{plugin}' refuses to run without settings: {message}\n  \
             nothing was changed; give them with --settings FILE (a TOML table, or a JSON object \
             in FILE.json)"
        ),
    }
}

/// A copy of the bundle with the new manifest and component, for loading before any change.
/// The other hooks' plugin files are copied as they are (a missing one fails the load, as it
/// would in the bundle).
fn stage(
    bundle: Option<&Root>,
    staging: &Path,
    manifest_name: &str,
    manifest: &str,
    (plugin_rel, plugin): (&str, &[u8]),
    others: &[String],
) -> anyhow::Result<()> {
    let root = Root::create_ambient(staging)?;
    let put = |rel: &Path, bytes: &[u8]| -> anyhow::Result<()> {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent)?;
        }
        root.write_atomic(rel, bytes, 0o644)?;
        Ok(())
    };
    if let Some(bundle) = bundle {
        for rel in others {
            match bundle.read(Path::new(rel)) {
                Ok(bytes) => put(Path::new(rel), &bytes)?,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    put(Path::new(plugin_rel), plugin)?;
    put(Path::new(manifest_name), manifest.as_bytes())?;
    Ok(())
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
