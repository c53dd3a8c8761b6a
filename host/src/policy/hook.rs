//! Loading one hook's plugin: accepted (pin or signature), compiled or taken from the cache,
//! checked against the hook's export and the signature's claims, and configured once with its
//! settings; a plugin that is accepted but cannot be loaded becomes the hook's failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::bundle::{
    BundleError, BundleFile, FailureMode, HookEntry, HookPlugin, LoadFailure, Slot,
};
use super::source::Files;
use super::trust::{Accepted, Trust, accept};
use crate::contract::Hook;
use crate::plugin::{LoadedPlugin, PluginEngine, PluginError, PluginErrorKind, SandboxLimits};

pub(super) fn load_hook(
    engine: &PluginEngine,
    source: &Files,
    manifest_path: &Path,
    hook: Hook,
    entry: &HookEntry,
    trust: &Trust,
    loaded: &mut HashMap<String, LoadedPlugin>,
) -> Result<(Slot, Vec<BundleFile>), BundleError> {
    let field = |field: &'static str, message: String| BundleError::Field {
        path: manifest_path.to_path_buf(),
        hook,
        field,
        message,
    };
    let failure_mode = match &entry.failure_mode {
        None => FailureMode::default_for(hook),
        Some(s) => FailureMode::parse(hook, s).map_err(|m| field("failure_mode", m))?,
    };
    let defaults = SandboxLimits::default();
    let limits = SandboxLimits {
        timeout: entry
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.timeout),
        memory: entry
            .memory_limit_mib
            .map(|m| m.saturating_mul(1024 * 1024))
            .unwrap_or(defaults.memory),
    };
    limits
        .validate()
        .map_err(|(name, message)| field(name, message))?;
    let pinned = entry.sha256.trim();
    if !pinned.is_empty() && (pinned.len() != 64 || !pinned.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(field(
            "sha256",
            "must be the plugin's 64-hex-digit sha256 (every plugin is pinned or signed; `sha256sum FILE` gives it)".into(),
        ));
    }
    let settings = serde_json::to_string(&toml_to_json(&entry.settings))
        .map_err(|e| field("settings", e.to_string()))?;
    let file_stem = Path::new(&entry.plugin)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| entry.plugin.clone());
    let plugin_error = |kind| BundleError::Plugin {
        path: manifest_path.to_path_buf(),
        error: PluginError {
            plugin: entry.name.clone().unwrap_or_else(|| file_stem.clone()),
            hook,
            kind,
        },
    };

    let bytes = source.read(Path::new(&entry.plugin)).map_err(|e| {
        let hint = if e.is_not_found() {
            " (build the default plugins with `make plugins`)"
        } else {
            ""
        };
        plugin_error(PluginErrorKind::Io {
            message: format!("{e}{hint}"),
        })
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    let Accepted {
        how: accepted,
        signature,
        statement,
    } = match accept(source, manifest_path, hook, entry, trust, &actual, &bytes) {
        Ok(a) => a,
        // Name the plugin as the operator named it.
        Err(BundleError::Plugin { path, mut error }) => {
            error.plugin = entry.name.clone().unwrap_or_else(|| file_stem.clone());
            return Err(BundleError::Plugin { path, error });
        }
        Err(e) => return Err(e),
    };
    // The operator's name, else the vendor's signed name, else the file's.
    let plugin_name = entry
        .name
        .clone()
        .or_else(|| statement.as_ref().map(|s| s.name.clone()))
        .unwrap_or(file_stem);
    let mut read = vec![(PathBuf::from(&entry.plugin), bytes)];
    read.extend(signature);
    // From here on the plugin is accepted: one that cannot be loaded or configured is a
    // failure of the hook's plugin (its failure mode decides), not of the bundle.
    let failed = |error: PluginError| LoadFailure {
        hook,
        plugin: plugin_name.clone(),
        file: entry.plugin.clone(),
        digest: actual.clone(),
        failure_mode,
        accepted: accepted.clone(),
        error,
    };
    let plugin = match loaded.get(&actual) {
        Some(p) => p.clone(),
        None => match engine.load(&plugin_name, hook, &read[0].1) {
            Ok(p) => {
                loaded.insert(actual.clone(), p.clone());
                p
            }
            Err(error) => return Ok((Slot::Failed(Box::new(failed(error))), read)),
        },
    };
    if let Err(error) = plugin.require(hook) {
        return Ok((Slot::Failed(Box::new(failed(error))), read));
    }
    // What the vendor signed must be what the host sees: the contract and every hook.
    if let Some(s) = &statement {
        let exports = plugin.hooks();
        let mut signed = s.hooks.clone();
        signed.sort_by_key(|h| h.as_str());
        let mut seen = exports.clone();
        seen.sort_by_key(|h| h.as_str());
        if s.contract != plugin.contract().package() || signed != seen {
            let names = |hs: &[Hook]| hs.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ");
            return Err(BundleError::Untrusted {
                path: manifest_path.to_path_buf(),
                hook,
                plugin: entry.plugin.clone(),
                message: format!(
                    "the signature says {} exporting {}, the component is {} exporting {}",
                    s.contract,
                    names(&signed),
                    plugin.contract().package(),
                    names(&seen)
                ),
            });
        }
    }
    // Apply the settings once, now, so a bad bundle is known at load and not mid-rotation (and
    // a 0.2 plugin parses them once, not in every decision).
    let configured = match plugin.configure(hook, &settings, &limits) {
        Ok(c) => c,
        Err(error) => return Ok((Slot::Failed(Box::new(failed(error))), read)),
    };
    Ok((
        Slot::Ready(Box::new(HookPlugin {
            plugin,
            configured,
            file: entry.plugin.clone(),
            settings,
            limits,
            failure_mode,
            accepted,
        })),
        read,
    ))
}

/// TOML settings as JSON. TOML dates have no JSON counterpart and become strings.
pub(crate) fn toml_to_json(table: &toml::Table) -> serde_json::Value {
    fn value(v: &toml::Value) -> serde_json::Value {
        match v {
            toml::Value::String(s) => serde_json::Value::String(s.clone()),
            toml::Value::Integer(i) => serde_json::Value::from(*i),
            toml::Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
            toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
            toml::Value::Array(a) => serde_json::Value::Array(a.iter().map(value).collect()),
            toml::Value::Table(t) => toml_to_json(t),
        }
    }
    serde_json::Value::Object(table.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}
