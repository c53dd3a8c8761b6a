//! Policy bundles: a directory with a `bundle.toml` manifest and the plugin files it pins.
//!
//! ```toml
//! [bundle]
//! name = "default"
//! description = "The documents' behaviour"
//!
//! [renewal]                               # one table per hook: renewal, san, csr (each optional)
//! plugin = "plugins/renewal-window.wasm"  # relative to the bundle directory, cannot leave it
//! sha256 = "…"                            # required; a plugin whose digest differs is refused
//! failure_mode = "fallback"               # what the host does when the plugin fails
//! timeout_ms = 100                        # evaluation deadline (default 100)
//! memory_limit_mib = 16                   # linear memory cap (default 16)
//! [renewal.settings]                      # handed to the plugin's `configure` as JSON
//! mode = "window"
//! ```
//!
//! A plugin is accepted by its pin, or, without one, by a vendor's signature from a key the
//! bundle trusts (see [`super::signing`] for the envelope):
//!
//! ```toml
//! [trust.keys]
//! acme = "keys/acme.pub"                  # Ed25519 public key (PEM), relative to the bundle
//! [trust.cosign_keys]
//! other = "keys/cosign.pub"               # a cosign public key: its `cosign sign-blob` signatures
//! [trust]
//! revoked_keys = ["<key id>"]             # signatures that never count (sha256 of the key)
//! revoked_sha256 = ["<digest>"]           # plugins never accepted, pinned or signed
//!
//! [renewal]
//! plugin = "plugins/acme-renewal.wasm"
//! signature = "plugins/acme-renewal.wasm.sig"  # default: the plugin's path + ".sig"
//! signed_by = "acme"                      # optional: only this trusted key (default: any)
//! version = ">=1.2, <2"                   # optional: the signed version must match
//! ```
//!
//! A pin takes precedence: a plugin with `sha256` is accepted by its digest alone. A revoked
//! digest is refused either way; a revoked key's signatures never count (a plugin it alone
//! signed is refused, one a trusted key co-signed is accepted by that key).
//!
//! Failure modes (a plugin that traps, times out, runs out of memory or answers garbage):
//! - `renewal`: `fallback` (default: the built-in rule, renew when expired or within
//!   `fallback_renew_before_days`, default 90) or `error` (the operation stops);
//! - `san`: `deny` (default) or `error`;
//! - `csr`: `abstain` (default: the request stays pending), `deny` or `error`.
//!
//! A failing plugin never approves a CSR and never allows a name. A plugin that is accepted but
//! cannot be loaded or configured (its `configure` loops or exhausts memory, it imports WASI,
//! it refuses its settings) is a failing plugin too: the bundle loads, its hook decides by the
//! failure mode on every decision, and [`Bundle::warnings`] says so ([`Bundle::ensure_loaded`]
//! is the strict check for `rotor policy check`). A plugin that is not accepted (no pin, a
//! digest that differs, an untrusted signature) refuses the whole bundle.
//!
//! The `[host]` section is the host's own: a plugin's settings cannot reach it. Its only
//! table, `[host.floor."SIGNER"]`, opens a door in the CSR floor for one signer (see
//! `csr::floor`): `allow_groups = ["system:masters"]`, `allow_users = ["system:kube-scheduler"]`,
//! `allow_node_identity_for = ["GROUP"]`.
//! Every load of a bundle with an open door warns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::hook::{load_hook, toml_to_json};
use super::source::installed_policies;
use super::source::{BUILTIN, BUILTIN_NAME, Files};
use super::trust::read_trust;
use crate::contract::Hook;
use crate::fs::{FsError, Root};
use crate::plugin::{ConfiguredPlugin, LoadedPlugin, PluginEngine, PluginError, SandboxLimits};

/// What the host does when a hook's plugin fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Renewal only: use the built-in rule and report the failure.
    Fallback,
    /// SAN and CSR: deny.
    Deny,
    /// CSR only: leave the request pending.
    Abstain,
    /// Stop the operation with the plugin's error.
    Error,
}

impl FailureMode {
    pub(super) fn parse(hook: Hook, s: &str) -> Result<FailureMode, String> {
        let allowed: &[(&str, FailureMode)] = match hook {
            Hook::Renewal => &[
                ("fallback", FailureMode::Fallback),
                ("error", FailureMode::Error),
            ],
            Hook::San => &[("deny", FailureMode::Deny), ("error", FailureMode::Error)],
            Hook::Csr => &[
                ("abstain", FailureMode::Abstain),
                ("deny", FailureMode::Deny),
                ("error", FailureMode::Error),
            ],
        };
        allowed
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                let names: Vec<_> = allowed.iter().map(|(n, _)| format!("'{n}'")).collect();
                format!(
                    "must be one of {} for the {} hook, got '{s}'",
                    names.join(", "),
                    hook.as_str()
                )
            })
    }

    /// As the manifest spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Fallback => "fallback",
            FailureMode::Deny => "deny",
            FailureMode::Abstain => "abstain",
            FailureMode::Error => "error",
        }
    }

    pub(super) fn default_for(hook: Hook) -> FailureMode {
        match hook {
            Hook::Renewal => FailureMode::Fallback,
            Hook::San => FailureMode::Deny,
            Hook::Csr => FailureMode::Abstain,
        }
    }
}

/// A bundle could not be loaded. Messages start with the file they concern.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file of the bundle could not be read.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The manifest is not a valid bundle.
    #[error("{}: {message}", .path.display())]
    Manifest {
        /// The file or directory concerned.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A field of a hook's section is not acceptable.
    #[error("{}: [{hook}] '{field}' {message}", .path.display(), hook = .hook.as_str())]
    Field {
        /// The file or directory concerned.
        path: PathBuf,
        /// The hook whose section holds the field.
        hook: Hook,
        /// The field concerned.
        field: &'static str,
        /// What went wrong.
        message: String,
    },
    // The plugin error is part of the message, not a `source`: error chains (anyhow's `{:#}`)
    // would print it a second time.
    /// A plugin is not accepted: no valid signature from a trusted key, a revoked key or
    /// digest, or a signed statement that does not match the component.
    #[error("{}: [{hook}] {plugin} is not trusted: {message}", .path.display(), hook = .hook.as_str())]
    Untrusted {
        /// The manifest.
        path: PathBuf,
        /// The hook whose plugin it is.
        hook: Hook,
        /// The plugin file, relative to the bundle.
        plugin: String,
        /// Why.
        message: String,
    },
    /// A plugin could not be loaded or refused its settings.
    #[error("{}: {error}", .path.display())]
    Plugin {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        error: PluginError,
    },
}

impl BundleError {
    /// The plugin error, when a plugin failed to load or refused its settings.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            BundleError::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    bundle: BundleMeta,
    #[serde(default)]
    trust: super::trust::TrustSection,
    #[serde(default)]
    host: HostSection,
    renewal: Option<HookEntry>,
    san: Option<HookEntry>,
    csr: Option<HookEntry>,
}

/// `[host]`: what the host itself does, which no plugin can change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    /// Doors in the CSR floor, per signer (`[host.floor."SIGNER"]`).
    #[serde(default)]
    floor: std::collections::BTreeMap<String, DoorEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DoorEntry {
    #[serde(default)]
    allow_groups: Vec<String>,
    #[serde(default)]
    allow_users: Vec<String>,
    #[serde(default)]
    allow_node_identity_for: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleMeta {
    name: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HookEntry {
    pub(super) plugin: String,
    #[serde(default)]
    pub(super) sha256: String,
    pub(super) name: Option<String>,
    pub(super) failure_mode: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) memory_limit_mib: Option<u64>,
    pub(super) fallback_renew_before_days: Option<u32>,
    pub(super) signature: Option<String>,
    pub(super) signed_by: Option<String>,
    pub(super) version: Option<String>,
    #[serde(default)]
    pub(super) settings: toml::Table,
}

/// Why a bundle accepted a plugin.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Acceptance {
    /// Its sha256 is pinned in the manifest.
    Pin,
    /// A valid signature from a trusted key.
    Signature {
        /// The key's name in the bundle's `[trust.keys]`.
        key: String,
        /// The key's id.
        keyid: String,
        /// The signed plugin name.
        name: String,
        /// The signed version.
        version: String,
        /// The signature file, relative to the bundle.
        file: String,
    },
    /// A valid cosign signature (`cosign sign-blob --key`) from a key of `[trust.cosign_keys]`:
    /// over the component's bytes only (no name, version or hooks are signed).
    Cosign {
        /// The key's name in the bundle's `[trust.cosign_keys]`.
        key: String,
        /// The key's id (hex sha256 of its DER public key).
        keyid: String,
        /// The signature file, relative to the bundle.
        file: String,
    },
}

/// A file of a bundle, relative to its directory, and its bytes.
pub(super) type BundleFile = (PathBuf, Vec<u8>);

/// One hook's plugin, loaded and configured.
#[derive(Clone, Debug)]
pub struct HookPlugin {
    /// The compiled plugin.
    pub plugin: LoadedPlugin,
    /// The plugin with these settings applied: every decision's sandbox is made from it.
    pub configured: ConfiguredPlugin,
    /// Plugin file, relative to the bundle directory.
    pub file: String,
    /// Settings as the JSON object handed to `configure`.
    pub settings: String,
    /// Its deadline and memory cap.
    pub limits: SandboxLimits,
    /// What a failure of the plugin means.
    pub failure_mode: FailureMode,
    /// Why the bundle accepted it: its pin or a trusted signature.
    pub accepted: Acceptance,
}

/// A hook whose plugin the bundle accepts (pinned or signed) but which could not be loaded or
/// configured: its `configure` ran past the deadline or the memory cap, it imports what plugins
/// may not, lacks the hook's export, or refused its settings. Every decision of the hook
/// follows the hook's failure mode, as if the plugin had failed then: the built-in rule for a
/// renewal hook in `fallback`, a denial or a pending CSR for the fail-closed modes, an error
/// for `error`.
#[derive(Clone, Debug)]
pub struct LoadFailure {
    /// The hook.
    pub hook: Hook,
    /// The plugin's name.
    pub plugin: String,
    /// Plugin file, relative to the bundle directory.
    pub file: String,
    /// The plugin's sha256.
    pub digest: String,
    /// What its failure means.
    pub failure_mode: FailureMode,
    /// Why the bundle accepted it (its pin or a trusted signature), before it failed.
    pub accepted: Acceptance,
    /// Why it could not be loaded.
    pub error: PluginError,
}

/// What answers a hook: nothing (the built-in rule), a plugin, or a plugin that could not be
/// loaded (its failure mode). One value per hook, so a failed plugin can never be mistaken for
/// an absent one (which, for the SAN hook, would allow every name).
#[derive(Clone, Debug)]
pub(crate) enum Slot {
    /// The bundle has no plugin for the hook.
    Absent,
    /// The plugin, loaded and configured.
    Ready(Box<HookPlugin>),
    /// The plugin could not be loaded or configured.
    Failed(Box<LoadFailure>),
}

/// A loaded bundle: the plugins of each hook, ready to evaluate.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The name given.
    pub name: String,
    /// What the bundle decides, in words.
    pub description: Option<String>,
    /// The manifest file.
    pub path: PathBuf,
    /// What answers each hook ([`Bundle::hook`], [`Bundle::load_failure`]).
    renewal: Slot,
    san: Slot,
    csr: Slot,
    /// Window of the built-in renewal rule, used without a renewal plugin or when it fails.
    pub fallback_window: Duration,
    /// The vendor keys the bundle trusts: name and key id.
    pub trusted_keys: Vec<(String, String)>,
    /// The cosign keys the bundle trusts (`[trust.cosign_keys]`): name and key id (hex sha256
    /// of the DER public key).
    pub trusted_cosign_keys: Vec<(String, String)>,
    /// The doors the bundle's `[host.floor]` opens in the host's CSR floor (none by default);
    /// only the manifest sets them ([`Bundle::floor`]).
    floor: crate::csr::FloorDoors,
    /// The manifest and every plugin file it pins, as read: what `rotor init` records in a
    /// data dir (paths relative to the bundle directory).
    files: Vec<(PathBuf, Vec<u8>)>,
    /// The directory's `.wasm` files that no hook uses.
    unused_plugins: Vec<String>,
}

/// Default window of the built-in renewal rule: the documents' 90 days.
pub(crate) const DEFAULT_FALLBACK_DAYS: u32 = 90;

impl Bundle {
    /// Load the bundle at `path`: a directory holding `bundle.toml`, or the manifest file
    /// itself. Every plugin is read through the bundle directory (paths cannot leave it),
    /// checked against its pin, compiled or taken from the cache, and configured once with its
    /// settings, which the plugin may refuse.
    pub fn load(engine: &PluginEngine, path: &Path) -> Result<Bundle, BundleError> {
        // A directory holding bundle.toml, else the manifest file in its directory.
        let (root, manifest_name) = match Root::open_ambient(path) {
            Ok(root) => (root, PathBuf::from("bundle.toml")),
            Err(e) if e.is_not_found() => {
                return Err(BundleError::Manifest {
                    path: path.to_path_buf(),
                    message: format!(
                        "no policy bundle here (give {})",
                        crate::input::Input::Bundle
                    ),
                });
            }
            Err(_) => {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let name = path
                    .file_name()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("bundle.toml"));
                (Root::open_ambient(dir)?, name)
            }
        };
        Bundle::load_dir(engine, root, &manifest_name)
    }

    /// Load the bundle whose directory is `root` (its manifest is `bundle.toml`): a data dir's
    /// recorded bundle, opened in its live generation, so every file comes from one generation.
    pub fn load_root(engine: &PluginEngine, root: Root) -> Result<Bundle, BundleError> {
        Bundle::load_dir(engine, root, Path::new("bundle.toml"))
    }

    /// The bundle of directory `root` whose manifest is `manifest_name`, named after the
    /// directory unless the manifest names it.
    fn load_dir(
        engine: &PluginEngine,
        root: Root,
        manifest_name: &Path,
    ) -> Result<Bundle, BundleError> {
        let manifest_path = root.display(manifest_name);
        let default_name = root
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle".into());
        Bundle::load_from(
            engine,
            &Files::Dir(root),
            manifest_name,
            manifest_path,
            default_name,
        )
    }

    /// The default bundle, for commands given no `--bundle` and no data dir that recorded one:
    /// the installed one when this rotor is installed with its policies
    /// (`<prefix>/share/rotor/policies/default` for `<prefix>/bin/rotor`, as the Debian package
    /// lays them out, so an extracted package finds its own too), else the one embedded in this
    /// build (`policies/default` when it was built). An installed bundle that does not load is
    /// an error, never silently replaced by the embedded one.
    pub fn builtin(engine: &PluginEngine) -> Result<Bundle, BundleError> {
        if let Some(dir) = installed_policies() {
            return Bundle::load(engine, &dir.join("default"));
        }
        Bundle::embedded(engine)
    }

    /// The default bundle embedded in this build of rotor.
    fn embedded(engine: &PluginEngine) -> Result<Bundle, BundleError> {
        let manifest_name = PathBuf::from("bundle.toml");
        let manifest_path = PathBuf::from(BUILTIN_NAME);
        if BUILTIN.is_empty() {
            return Err(BundleError::Manifest {
                path: manifest_path,
                message: format!(
                    "this rotor was built without its default plugins (run `make plugins`, then \
                     build rotor again), so give {}",
                    crate::input::Input::Bundle
                ),
            });
        }
        Bundle::load_from(
            engine,
            &Files::Builtin,
            &manifest_name,
            manifest_path,
            "default".into(),
        )
    }

    /// The manifest and plugin files this bundle was loaded from, relative to its directory.
    pub(crate) fn files(&self) -> &[(PathBuf, Vec<u8>)] {
        &self.files
    }

    fn load_from(
        engine: &PluginEngine,
        source: &Files,
        manifest_name: &Path,
        manifest_path: PathBuf,
        default_name: String,
    ) -> Result<Bundle, BundleError> {
        let manifest_bytes = source.read(manifest_name)?;
        let text = manifest_bytes.clone();
        let text = String::from_utf8(text).map_err(|_| BundleError::Manifest {
            path: manifest_path.clone(),
            message: "not UTF-8 text".into(),
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| BundleError::Manifest {
            path: manifest_path.clone(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;

        let mut loaded: HashMap<String, LoadedPlugin> = HashMap::new();
        // Recorded as `bundle.toml` whatever the manifest was called, where a data dir looks.
        let mut files = vec![(PathBuf::from("bundle.toml"), manifest_bytes)];
        let trust = read_trust(source, &manifest_path, &manifest.trust, &mut files)?;
        let mut load_hook = |hook: Hook, entry: &Option<HookEntry>| -> Result<Slot, BundleError> {
            let Some(entry) = entry else {
                return Ok(Slot::Absent);
            };
            let (slot, read) = load_hook(
                engine,
                source,
                &manifest_path,
                hook,
                entry,
                &trust,
                &mut loaded,
            )?;
            for (rel, bytes) in read {
                if !files.iter().any(|(p, _)| *p == rel) {
                    files.push((rel, bytes));
                }
            }
            Ok(slot)
        };
        let renewal = load_hook(Hook::Renewal, &manifest.renewal)?;
        let san = load_hook(Hook::San, &manifest.san)?;
        let csr = load_hook(Hook::Csr, &manifest.csr)?;

        let fallback_days = match manifest
            .renewal
            .as_ref()
            .and_then(|r| r.fallback_renew_before_days)
        {
            None => DEFAULT_FALLBACK_DAYS,
            Some(d) if (1..=3650).contains(&d) => d,
            Some(d) => {
                return Err(BundleError::Field {
                    path: manifest_path,
                    hook: Hook::Renewal,
                    field: "fallback_renew_before_days",
                    message: format!("must be between 1 and 3650, got {d}"),
                });
            }
        };
        for (hook, entry) in [(Hook::San, &manifest.san), (Hook::Csr, &manifest.csr)] {
            if entry
                .as_ref()
                .is_some_and(|e| e.fallback_renew_before_days.is_some())
            {
                return Err(BundleError::Field {
                    path: manifest_path,
                    hook,
                    field: "fallback_renew_before_days",
                    message: "only applies to the renewal hook".into(),
                });
            }
        }
        let floor = host_floor(&manifest.host).map_err(|message| BundleError::Manifest {
            path: manifest_path.clone(),
            message,
        })?;
        let name = manifest.bundle.name.clone().unwrap_or(default_name);
        let unused_plugins = source.unused_plugins(&files);
        Ok(Bundle {
            name,
            description: manifest.bundle.description,
            path: manifest_path,
            renewal,
            san,
            csr,
            fallback_window: Duration::from_secs(u64::from(fallback_days) * 86_400),
            trusted_keys: trust
                .keys
                .iter()
                .map(|(n, k)| (n.clone(), k.keyid().to_string()))
                .collect(),
            trusted_cosign_keys: trust
                .cosign_keys
                .iter()
                .map(|(n, k)| (n.clone(), k.keyid.clone()))
                .collect(),
            floor,
            files,
            unused_plugins,
        })
    }

    /// The bundle directory's `.wasm` files that no hook uses (relative to the directory):
    /// said at every load ([`Bundle::warnings`]) and listed by `rotor policy check`.
    pub fn unused_plugins(&self) -> &[String] {
        &self.unused_plugins
    }

    /// What answers `hook`.
    pub(crate) fn slot(&self, hook: Hook) -> &Slot {
        match hook {
            Hook::Renewal => &self.renewal,
            Hook::San => &self.san,
            Hook::Csr => &self.csr,
        }
    }

    /// The plugin that answers `hook`, if one is loaded (`None` too for a plugin that could
    /// not be loaded: see [`Bundle::load_failure`]; the bundle then decides by its failure mode,
    /// never as if it had no plugin).
    pub fn hook(&self, hook: Hook) -> Option<&HookPlugin> {
        match self.slot(hook) {
            Slot::Ready(hp) => Some(hp),
            Slot::Absent | Slot::Failed(_) => None,
        }
    }

    /// Why `hook`'s plugin could not be loaded, if it could not.
    pub fn load_failure(&self, hook: Hook) -> Option<&LoadFailure> {
        match self.slot(hook) {
            Slot::Failed(f) => Some(f),
            Slot::Absent | Slot::Ready(_) => None,
        }
    }

    /// Every plugin that could not be loaded, in hook order.
    pub fn load_failures(&self) -> Vec<&LoadFailure> {
        Hook::ALL
            .into_iter()
            .filter_map(|h| self.load_failure(h))
            .collect()
    }

    /// The doors this bundle's `[host.floor]` opens in the CSR floor.
    pub fn floor(&self) -> &crate::csr::FloorDoors {
        &self.floor
    }

    /// The name and sha256 of the plugin the bundle names for `hook`, loaded or not.
    pub fn plugin_identity(&self, hook: Hook) -> Option<(String, String)> {
        match (self.hook(hook), self.load_failure(hook)) {
            (Some(hp), _) => Some((hp.plugin.name().to_string(), hp.plugin.digest().to_string())),
            (None, Some(f)) => Some((f.plugin.clone(), f.digest.clone())),
            (None, None) => None,
        }
    }

    /// Why the bundle accepted the hook's plugin (loaded or not); `None` without a plugin.
    pub fn acceptance(&self, hook: Hook) -> Option<&Acceptance> {
        match (self.hook(hook), self.load_failure(hook)) {
            (Some(hp), _) => Some(&hp.accepted),
            (None, Some(f)) => Some(&f.accepted),
            (None, None) => None,
        }
    }

    /// What an operator must hear at every load of this bundle: each plugin that could not be
    /// loaded (and what decides instead) and each door opened in the host floor.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .load_failures()
            .into_iter()
            .map(|f| {
                let instead = match f.failure_mode {
                    FailureMode::Fallback => format!(
                        "the built-in rule decides instead (renew when expired or within {} days)",
                        self.fallback_window.as_secs() / 86_400
                    ),
                    FailureMode::Deny => "every request it is asked about is denied".into(),
                    FailureMode::Abstain => "every CSR it is asked about stays pending".into(),
                    FailureMode::Error => "every decision it is asked for is an error".into(),
                };
                format!(
                    "{}: [{}] {} could not be loaded ({}): failure_mode = \"{}\", so {instead}",
                    self.path.display(),
                    f.hook.as_str(),
                    f.file,
                    f.error,
                    f.failure_mode.as_str(),
                )
            })
            .collect();
        out.extend(
            self.floor
                .warnings()
                .into_iter()
                .map(|w| format!("{}: {w}", self.path.display())),
        );
        out.extend(self.unused_plugins.iter().map(|p| {
            format!(
                "{}: {p} is in the bundle but no hook uses it (pin it with `rotor policy pin \
                 --hook HOOK`, or remove it)",
                self.path.display()
            )
        }));
        out
    }

    /// `Err` naming the first plugin that could not be loaded, for what must never accept a
    /// broken bundle (`rotor policy check`, `policy pin`, a hot swap).
    pub fn ensure_loaded(&self) -> Result<(), BundleError> {
        match self.load_failures().first() {
            None => Ok(()),
            Some(f) => Err(BundleError::Plugin {
                path: self.path.clone(),
                error: f.error.clone(),
            }),
        }
    }
}

/// The doors of `[host.floor]`, checked.
fn host_floor(section: &HostSection) -> Result<crate::csr::FloorDoors, String> {
    crate::csr::FloorDoors::new(
        section
            .floor
            .iter()
            .map(|(signer, d)| {
                (
                    signer.clone(),
                    crate::csr::Door {
                        allow_groups: d.allow_groups.clone(),
                        allow_users: d.allow_users.clone(),
                        allow_node_identity_for: d.allow_node_identity_for.clone(),
                    },
                )
            })
            .collect(),
    )
}

/// Fuzzing entry: parse a manifest and check every hook's fields and settings as
/// [`Bundle::load`] does, without loading plugins. Never panics.
#[doc(hidden)]
pub(crate) fn fuzz_manifest(text: &str) {
    let Ok(manifest) = toml::from_str::<Manifest>(text) else {
        return;
    };
    let _ = host_floor(&manifest.host);
    for (hook, entry) in [
        (Hook::Renewal, &manifest.renewal),
        (Hook::San, &manifest.san),
        (Hook::Csr, &manifest.csr),
    ] {
        let Some(entry) = entry else { continue };
        if let Some(s) = &entry.failure_mode {
            let _ = FailureMode::parse(hook, s);
        }
        let limits = SandboxLimits {
            timeout: entry
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or_default(),
            memory: entry
                .memory_limit_mib
                .map(|m| m.saturating_mul(1024 * 1024))
                .unwrap_or_default(),
        };
        let _ = limits.validate();
        let _ = serde_json::to_string(&toml_to_json(&entry.settings));
        if let Some(v) = &entry.version {
            let _ = semver::VersionReq::parse(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_modes_are_per_hook() {
        assert_eq!(
            FailureMode::parse(Hook::Renewal, "fallback").unwrap(),
            FailureMode::Fallback
        );
        assert!(
            FailureMode::parse(Hook::San, "fallback")
                .unwrap_err()
                .contains("'deny', 'error'")
        );
        assert!(
            FailureMode::parse(Hook::Csr, "approve").is_err(),
            "no failure mode approves"
        );
        assert!(
            FailureMode::parse(Hook::San, "allow").is_err(),
            "no failure mode allows"
        );
    }

    #[test]
    fn toml_settings_become_json() {
        let t: toml::Table = toml::from_str("a = 1\nb = [\"x\", 2.5]\n[c]\nd = true").unwrap();
        assert_eq!(
            toml_to_json(&t).to_string(),
            r#"{"a":1,"b":["x",2.5],"c":{"d":true}}"#
        );
    }
}
