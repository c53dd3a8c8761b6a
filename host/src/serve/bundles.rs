//! The bundles `rotor serve` decides with: where the active one comes from, loading and
//! validating a bundle (pins, settings, fixtures), switching it in or refusing it, the shadow
//! bundle, what is said and counted about them, and the fingerprint the watcher compares.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::log::Role;
use super::metrics::{BundleInfoLabels, PluginErrorLabels, PluginLabels, ReloadLabels};
use super::{ServeOptions, Shared};
use crate::cluster::Cluster;
use crate::contract::Hook;
use crate::fs::Root;
use crate::plugin::PluginEngine;
use crate::policy::{Acceptance, Bundle};

/// Where the active bundle comes from, and how to tell that it changed.
#[derive(Clone, Debug)]
pub(super) enum BundleSource {
    /// `--bundle`: a directory (or its manifest), watched.
    Path(PathBuf),
    /// The bundle the data dir records (`rotor policy use`), else the built-in one: resolved
    /// at every load, so a bundle recorded while the server runs is picked up.
    DataDir,
}

/// The info metric: the plugins of the active and the shadow bundles, with their digests.
pub(super) fn export_bundle_info(shared: &Shared) {
    let m = &shared.metrics;
    m.bundle_info.clear();
    let active = shared.bundle();
    let shadow = shared.shadow();
    for (role, b) in [("active", active.as_deref()), ("shadow", shadow.as_deref())] {
        let Some(b) = b else { continue };
        for hook in [Hook::Renewal, Hook::San, Hook::Csr] {
            let (plugin, digest) = b
                .plugin_identity(hook)
                .unwrap_or_else(|| ("built-in".to_string(), String::new()));
            let (accepted_by, key, version) = match b.acceptance(hook) {
                None => ("built-in", String::new(), String::new()),
                Some(Acceptance::Pin) => ("pin", String::new(), String::new()),
                Some(Acceptance::Signature { key, version, .. }) => {
                    ("signature", key.clone(), version.clone())
                }
                Some(Acceptance::Cosign { key, .. }) => ("cosign", key.clone(), String::new()),
            };
            m.bundle_info
                .get_or_create(&BundleInfoLabels {
                    role: role.into(),
                    bundle: b.name.clone(),
                    hook: hook.as_str().into(),
                    plugin,
                    digest,
                    accepted_by: accepted_by.into(),
                    key,
                    version,
                })
                .set(1);
        }
    }
}

/// Load the new bundle, validate it and switch it in; `false` (and the refusal logged and
/// exported) when it fails: the old bundle keeps deciding.
pub(super) fn swap(
    engine: &PluginEngine,
    source: &BundleSource,
    options: &ServeOptions,
    shared: &Shared,
) -> bool {
    let m = &shared.metrics;
    let loaded = if matches!(source, BundleSource::DataDir) {
        let _guard = shared.datadir.lock().unwrap_or_else(|e| e.into_inner());
        load_bundle(engine, source, options)
    } else {
        load_bundle(engine, source, options)
    };
    // A candidate with a plugin that cannot be loaded is taken only where nothing decides yet,
    // or where the active bundle is at least as broken: every hook it fails, the active one
    // fails too, with the same failure mode (a whole bundle is never replaced by a broken one,
    // and `fallback` never by `error`).
    let loaded = loaded.and_then(|bundle| {
        let acceptable = match shared.bundle() {
            None => true,
            Some(active) => bundle.load_failures().iter().all(|f| {
                active
                    .load_failure(f.hook)
                    .is_some_and(|a| a.failure_mode == f.failure_mode)
            }),
        };
        if acceptable {
            Ok(bundle)
        } else {
            report_load_failures(shared, &bundle, "candidate");
            Err(bundle
                .ensure_loaded()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default())
        }
    });
    match loaded {
        Ok(bundle) => {
            report_load_failures(shared, &bundle, "active");
            let name = bundle.name.clone();
            *shared.active.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(bundle));
            Shared::set_problem(&shared.bundle_problem, None);
            m.bundle_reloads
                .get_or_create(&ReloadLabels {
                    role: "active".into(),
                    outcome: "accepted".into(),
                })
                .inc();
            m.bundle_refused.set(0);
            export_bundle_info(shared);
            crate::say!("rotor serve: policy bundle '{name}' loaded, validated and switched in");
            true
        }
        Err(e) => {
            m.bundle_reloads
                .get_or_create(&ReloadLabels {
                    role: "active".into(),
                    outcome: "refused".into(),
                })
                .inc();
            m.bundle_refused.set(1);
            if shared.bundle().is_none() {
                Shared::set_problem(&shared.bundle_problem, Some(e.clone()));
            }
            crate::say!(
                "rotor serve: new policy bundle REFUSED, the previous one keeps deciding: {e}"
            );
            false
        }
    }
}

/// Say and count each plugin of `bundle` that could not be loaded (`role`: `active` or
/// `shadow` for a bundle that decides from now on, `candidate` for one refused).
pub(super) fn report_load_failures(shared: &Shared, bundle: &Bundle, role: &str) {
    for f in bundle.load_failures() {
        shared
            .metrics
            .plugin_load_failures
            .get_or_create(&PluginErrorLabels {
                hook: f.hook.as_str().into(),
                plugin: f.plugin.clone(),
                kind: f.error.kind.code().into(),
                role: role.into(),
            })
            .inc();
    }
    if role != "candidate" {
        for w in bundle.warnings() {
            crate::say!("rotor serve: warning ({role} bundle): {w}");
        }
    }
}

/// The shadow bundle's disagreement counter, at 0 until it disagrees.
pub(super) fn zero_disagreements(shared: &Shared, shadow: &Bundle) {
    let plugin = shadow
        .plugin_identity(Hook::Renewal)
        .map_or_else(|| "built-in".to_string(), |(name, _)| name);
    shared
        .metrics
        .shadow_disagreements
        .get_or_create(&PluginLabels {
            hook: Hook::Renewal.as_str().into(),
            plugin,
            role: Role::Shadow.as_str().into(),
        })
        .inc_by(0);
}

/// Reload the shadow bundle (SIGHUP); a refused one leaves the previous one shadowing.
pub(super) fn swap_shadow(
    engine: &PluginEngine,
    path: &Path,
    options: &ServeOptions,
    shared: &Shared,
) {
    let loaded = load_bundle(engine, &BundleSource::Path(path.to_path_buf()), options);
    if let Ok(bundle) = &loaded {
        report_load_failures(shared, bundle, "shadow");
    }
    let outcome = match loaded {
        Ok(bundle) => {
            let name = bundle.name.clone();
            zero_disagreements(shared, &bundle);
            *shared.shadow.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(bundle));
            export_bundle_info(shared);
            crate::say!("rotor serve: shadow bundle '{name}' loaded, validated and switched in");
            "accepted"
        }
        Err(e) => {
            crate::say!(
                "rotor serve: new shadow bundle REFUSED, the previous one keeps shadowing: {e}"
            );
            "refused"
        }
    };
    shared
        .metrics
        .bundle_reloads
        .get_or_create(&ReloadLabels {
            role: "shadow".into(),
            outcome: outcome.into(),
        })
        .inc();
}

/// Load and validate the bundle of `source`: its pins and settings (`Bundle::load`), and its
/// fixtures (a `fixtures` directory beside `bundle.toml`), every case of which must pass.
pub(super) fn load_bundle(
    engine: &PluginEngine,
    source: &BundleSource,
    options: &ServeOptions,
) -> Result<Bundle, String> {
    match source {
        BundleSource::DataDir => {
            let cluster = Cluster::open_read_local(&options.data_dir, &options.datadir)
                .map_err(|e| e.to_string())?;
            match cluster.recorded_bundle().map_err(|e| e.to_string())? {
                Some(root) => Bundle::load_root(engine, root).map_err(|e| e.to_string()),
                None => Bundle::builtin(engine).map_err(|e| e.to_string()),
            }
        }
        BundleSource::Path(path) => {
            let dir = bundle_dir(path)?;
            let bundle = Bundle::load(engine, path).map_err(|e| e.to_string())?;
            let fixtures = dir.join("fixtures");
            // Followed if it is a symlink, as the operator's shell would. The cases of a hook
            // whose plugin could not be loaded are not run (its failure mode answers them, which
            // says nothing of the plugin); every other case must pass, the caller decides
            // whether a bundle with such a plugin may decide at all.
            if Root::open_ambient(&fixtures).is_ok() {
                let results: Vec<_> = crate::policy::fixtures::run(&bundle, &fixtures)
                    .map_err(|e| format!("fixtures: {e}"))?
                    .into_iter()
                    .filter(|r| r.hook.is_none_or(|h| bundle.load_failure(h).is_none()))
                    .collect();
                let failed: Vec<String> = results
                    .iter()
                    .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
                    .collect();
                if !failed.is_empty() {
                    return Err(format!(
                        "{} of {} fixture cases of {} fail: {}",
                        failed.len(),
                        results.len(),
                        fixtures.display(),
                        failed.join("; ")
                    ));
                }
            }
            Ok(bundle)
        }
    }
}

/// The directory of a bundle given as a directory or as its manifest file.
pub(super) fn bundle_dir(path: &Path) -> Result<PathBuf, String> {
    if let Ok(root) = Root::open_ambient(path) {
        return match root.kind(Path::new("bundle.toml")) {
            Ok(Some(crate::fs::Kind::File)) => Ok(path.to_path_buf()),
            _ => Err(format!(
                "{}: no bundle.toml here: not a policy bundle",
                path.display()
            )),
        };
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: no policy bundle here", path.display()))?;
    let root = Root::open_ambient(parent).map_err(|e| e.to_string())?;
    match root.kind(Path::new(name)).map_err(|e| e.to_string())? {
        Some(crate::fs::Kind::File) => Ok(parent.to_path_buf()),
        _ => Err(format!(
            "{}: no policy bundle here (a directory holding bundle.toml, or the manifest)",
            path.display()
        )),
    }
}

/// Where the data dir's live generation link points (`None` for a `--bundle` directory).
pub(super) fn live_link(source: &BundleSource, options: &ServeOptions) -> Option<PathBuf> {
    match source {
        BundleSource::Path(_) => None,
        BundleSource::DataDir => Root::open_ambient(&options.data_dir)
            .and_then(|r| r.read_link(&Path::new(crate::datadir::META).join("current")))
            .ok(),
    }
}

/// A digest of every entry of the bundle's directory (files by content, links by target,
/// directories by name): a change of any is a new bundle. For the data dir's bundle, the
/// recorded bundle's files, or "built-in".
pub(super) fn fingerprint(source: &BundleSource, options: &ServeOptions) -> Result<String, String> {
    let root = match source {
        BundleSource::DataDir => {
            let cluster = Cluster::open_read_local(&options.data_dir, &options.datadir)
                .map_err(|e| e.to_string())?;
            match cluster.recorded_bundle().map_err(|e| e.to_string())? {
                Some(root) => root,
                None => return Ok("built-in".into()),
            }
        }
        BundleSource::Path(p) => Root::open_ambient(&bundle_dir(p)?).map_err(|e| e.to_string())?,
    };
    let mut hash = Sha256::new();
    let mut entries = root.walk(Path::new(".")).map_err(|e| e.to_string())?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, kind) in entries {
        hash.update(path.to_string_lossy().as_bytes());
        match kind {
            crate::fs::Kind::File => {
                hash.update(b"\x00f");
                let bytes = root.read(&path).map_err(|e| e.to_string())?;
                hash.update(Sha256::digest(&bytes));
            }
            crate::fs::Kind::Symlink => {
                hash.update(b"\x00l");
                let target = root.read_link(&path).map_err(|e| e.to_string())?;
                hash.update(target.to_string_lossy().as_bytes());
                // What it points at, when that is a file of the bundle.
                if let Ok(bytes) = root.read(&path) {
                    hash.update(Sha256::digest(&bytes));
                }
            }
            _ => hash.update(b"\x00d"),
        }
    }
    Ok(hex::encode(hash.finalize()))
}
