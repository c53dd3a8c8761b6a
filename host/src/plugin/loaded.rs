//! A compiled, linked plugin: checked imports, the contract version it was built against, its
//! `InstancePre`, and the export indices of each hook it implements. [`LoadedPlugin::configure`]
//! applies a bundle's settings, giving the [`ConfiguredPlugin`] every decision's sandbox is made
//! from.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};

use super::bindings::{v01, v02, v03};
use super::engine::PluginEngine;
use super::error::{PluginError, PluginErrorKind};
use super::sandbox::{PluginLog, Sandbox, SandboxLimits, SandboxState};
use super::snapshot;
use crate::contract::Hook;

/// Import names a plugin may have. `types` carries only type definitions (it appears as an
/// import when a hook interface uses shared types); `host` is the logging function; `facts`
/// (0.2 and later) the handles through which a plugin asks for what a request does not carry.
const ALLOWED_IMPORT_PREFIXES: &[&str] = &[
    "rotor:policy/host@0.1.",
    "rotor:policy/types@0.1.",
    "rotor:policy/host@0.2.",
    "rotor:policy/types@0.2.",
    "rotor:policy/facts@0.2.",
    "rotor:policy/host@0.3.",
    "rotor:policy/types@0.3.",
    "rotor:policy/facts@0.3.",
];

/// The version of the `rotor:policy` contract a plugin was built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum ContractVersion {
    /// `rotor:policy@0.1.0`: full requests; `configure` runs again in every fresh instance.
    #[serde(rename = "0.1")]
    V0_1,
    /// `rotor:policy@0.2.0`: lean renewal requests with a details handle; each hook's
    /// `configure` runs once per loaded plugin and every decision starts from the snapshot
    /// taken after it.
    #[serde(rename = "0.2")]
    V0_2,
    /// `rotor:policy@0.3.0`: renewal requests of scalars only (the rest, name and serial
    /// included, from `facts.details()` when asked), renewal reasons as codes the host words
    /// or as text; otherwise as 0.2.
    #[serde(rename = "0.3")]
    V0_3,
}

impl ContractVersion {
    /// Every version the host loads, oldest first.
    pub const ALL: [ContractVersion; 3] = [
        ContractVersion::V0_1,
        ContractVersion::V0_2,
        ContractVersion::V0_3,
    ];

    /// The version the SDK, `rotor policy new` and the default plugins build against.
    pub const CURRENT: ContractVersion = ContractVersion::V0_3;

    /// `0.1.0`, `0.2.0` or `0.3.0`.
    pub fn version(self) -> &'static str {
        match self {
            ContractVersion::V0_1 => "0.1.0",
            ContractVersion::V0_2 => "0.2.0",
            ContractVersion::V0_3 => "0.3.0",
        }
    }

    /// `rotor:policy@0.1.0`, `rotor:policy@0.2.0` or `rotor:policy@0.3.0`.
    pub fn package(self) -> &'static str {
        match self {
            ContractVersion::V0_1 => "rotor:policy@0.1.0",
            ContractVersion::V0_2 => "rotor:policy@0.2.0",
            ContractVersion::V0_3 => "rotor:policy@0.3.0",
        }
    }
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.package())
    }
}

/// The export indices of one contract version, looked up once per linked component.
pub(crate) enum Exports {
    V01 {
        config: v01::exports::rotor::policy::config::GuestIndices,
        renewal: Option<v01::exports::rotor::policy::renewal::GuestIndices>,
        san: Option<v01::exports::rotor::policy::san_validation::GuestIndices>,
        csr: Option<v01::exports::rotor::policy::csr_approval::GuestIndices>,
    },
    /// (Each hook interface has its own `configure`, called only on the instance that is
    /// snapshotted: see `snapshot.rs`.)
    V02 {
        renewal: Option<v02::exports::rotor::policy::renewal::GuestIndices>,
        san: Option<v02::exports::rotor::policy::san_validation::GuestIndices>,
        csr: Option<v02::exports::rotor::policy::csr_approval::GuestIndices>,
    },
    /// (As 0.2.)
    V03 {
        renewal: Option<v03::exports::rotor::policy::renewal::GuestIndices>,
        san: Option<v03::exports::rotor::policy::san_validation::GuestIndices>,
        csr: Option<v03::exports::rotor::policy::csr_approval::GuestIndices>,
    },
}

impl Exports {
    fn of(pre: &InstancePre<SandboxState>) -> Option<Exports> {
        use v03::exports::rotor::policy as p3;
        let renewal = p3::renewal::GuestIndices::new(pre).ok();
        let san = p3::san_validation::GuestIndices::new(pre).ok();
        let csr = p3::csr_approval::GuestIndices::new(pre).ok();
        if renewal.is_some() || san.is_some() || csr.is_some() {
            return Some(Exports::V03 { renewal, san, csr });
        }
        use v02::exports::rotor::policy as p2;
        let renewal = p2::renewal::GuestIndices::new(pre).ok();
        let san = p2::san_validation::GuestIndices::new(pre).ok();
        let csr = p2::csr_approval::GuestIndices::new(pre).ok();
        if renewal.is_some() || san.is_some() || csr.is_some() {
            return Some(Exports::V02 { renewal, san, csr });
        }
        use v01::exports::rotor::policy as p1;
        let config = p1::config::GuestIndices::new(pre).ok()?;
        Some(Exports::V01 {
            config,
            renewal: p1::renewal::GuestIndices::new(pre).ok(),
            san: p1::san_validation::GuestIndices::new(pre).ok(),
            csr: p1::csr_approval::GuestIndices::new(pre).ok(),
        })
    }

    fn version(&self) -> ContractVersion {
        match self {
            Exports::V01 { .. } => ContractVersion::V0_1,
            Exports::V02 { .. } => ContractVersion::V0_2,
            Exports::V03 { .. } => ContractVersion::V0_3,
        }
    }

    fn has(&self, hook: Hook) -> bool {
        match (self, hook) {
            (Exports::V01 { renewal, .. }, Hook::Renewal) => renewal.is_some(),
            (Exports::V01 { san, .. }, Hook::San) => san.is_some(),
            (Exports::V01 { csr, .. }, Hook::Csr) => csr.is_some(),
            (Exports::V02 { renewal, .. }, Hook::Renewal) => renewal.is_some(),
            (Exports::V02 { san, .. }, Hook::San) => san.is_some(),
            (Exports::V02 { csr, .. }, Hook::Csr) => csr.is_some(),
            (Exports::V03 { renewal, .. }, Hook::Renewal) => renewal.is_some(),
            (Exports::V03 { san, .. }, Hook::San) => san.is_some(),
            (Exports::V03 { csr, .. }, Hook::Csr) => csr.is_some(),
        }
    }
}

/// A component linked against the host: what every instance is made from.
pub(crate) struct Linked {
    pub(crate) pre: InstancePre<SandboxState>,
    pub(crate) exports: Exports,
    /// The SAN hook's `validate` and the CSR hook's `review`, called with the bounded answer
    /// types of `answer.rs` rather than the bindings'.
    pub(crate) answers: AnswerFuncs,
}

/// The export indices of the functions whose answers are lifted with a bound.
#[derive(Default)]
pub(crate) struct AnswerFuncs {
    pub(crate) san: Option<ComponentExportIndex>,
    pub(crate) csr: Option<ComponentExportIndex>,
}

impl AnswerFuncs {
    fn of(pre: &InstancePre<SandboxState>, version: ContractVersion) -> AnswerFuncs {
        let component = pre.component();
        let func = |interface: &str, name: &str| {
            let (_, iface) =
                component.get_export(None, format!("{interface}@{}", version.version()))?;
            let (_, func) = component.get_export(Some(&iface), name)?;
            Some(func)
        };
        AnswerFuncs {
            san: func("rotor:policy/san-validation", "validate"),
            csr: func("rotor:policy/csr-approval", "review"),
        }
    }
}

/// A plugin ready to be configured. Cheap to share.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub(crate) engine: PluginEngine,
    /// Shared, not copied, by every sandbox made from it (a fresh one per decision).
    pub(crate) name: Arc<str>,
    digest: Arc<str>,
    /// The component file, kept for 0.2 plugins: the snapshot is made from it.
    bytes: Option<Arc<[u8]>>,
    pub(crate) linked: Arc<Linked>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("contract", &self.contract())
            .field("hooks", &self.hooks())
            .finish()
    }
}

/// Refuse any import but rotor's own, and link `component`.
pub(crate) fn link(
    engine: &PluginEngine,
    component: &Component,
) -> Result<Linked, PluginErrorKind> {
    let ty = component.component_type();
    let forbidden: Vec<String> = ty
        .imports(engine.engine())
        .filter(|(name, _)| !ALLOWED_IMPORT_PREFIXES.iter().any(|p| name.starts_with(p)))
        .map(|(name, item)| match item.ty {
            ComponentItem::ComponentInstance(_) => name.to_string(),
            _ => format!("{name} (not an interface)"),
        })
        .collect();
    if !forbidden.is_empty() {
        return Err(PluginErrorKind::ForbiddenImport { imports: forbidden });
    }
    let pre = engine
        .linker()
        .instantiate_pre(component)
        .map_err(|e| PluginErrorKind::Invalid {
            message: format!("{e:#}"),
        })?;
    let exports = Exports::of(&pre).ok_or_else(|| PluginErrorKind::MissingExport {
        interface: "a hook interface of rotor:policy@0.3.0 or 0.2.0 (renewal, san-validation, \
                    csr-approval), or rotor:policy/config@0.1.0 with one of 0.1"
            .into(),
    })?;
    let answers = AnswerFuncs::of(&pre, exports.version());
    Ok(Linked {
        pre,
        exports,
        answers,
    })
}

impl LoadedPlugin {
    pub(crate) fn new(
        engine: PluginEngine,
        name: &str,
        hook: Hook,
        digest: String,
        component: Component,
        bytes: &[u8],
    ) -> Result<LoadedPlugin, PluginError> {
        let linked = link(&engine, &component).map_err(|kind| PluginError {
            plugin: name.to_string(),
            hook,
            kind,
        })?;
        let bytes = match linked.exports.version() {
            ContractVersion::V0_1 => None,
            ContractVersion::V0_2 | ContractVersion::V0_3 => Some(Arc::from(bytes)),
        };
        Ok(LoadedPlugin {
            engine,
            name: Arc::from(name),
            digest: Arc::from(digest),
            bytes,
            linked: Arc::new(linked),
        })
    }

    /// The plugin's name (from the bundle, else the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lowercase hex sha256 of the component file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The contract version it was built against.
    pub fn contract(&self) -> ContractVersion {
        self.linked.exports.version()
    }

    /// The hooks this plugin exports.
    pub fn hooks(&self) -> Vec<Hook> {
        Hook::ALL
            .into_iter()
            .filter(|h| self.linked.exports.has(*h))
            .collect()
    }

    /// Fail unless the plugin exports `hook`.
    pub fn require(&self, hook: Hook) -> Result<(), PluginError> {
        if self.linked.exports.has(hook) {
            Ok(())
        } else {
            Err(self.missing_export(hook))
        }
    }

    /// The error for a hook this plugin does not export, named in its contract version.
    pub(crate) fn missing_export(&self, hook: Hook) -> PluginError {
        PluginError {
            plugin: self.name.to_string(),
            hook,
            kind: PluginErrorKind::MissingExport {
                interface: format!("{}@{}", hook.interface(), self.contract().version()),
            },
        }
    }

    /// Apply `settings` for `hook`: the plugin's `configure` runs now, and a refusal is an
    /// error. A 0.2 or 0.3 plugin is then snapshotted (see [`ConfiguredPlugin`]); a 0.1 plugin is
    /// configured again in every sandbox, as its contract says.
    pub fn configure(
        &self,
        hook: Hook,
        settings: &str,
        limits: &SandboxLimits,
    ) -> Result<ConfiguredPlugin, PluginError> {
        self.require(hook)?;
        match (&self.linked.exports, &self.bytes) {
            (Exports::V02 { .. } | Exports::V03 { .. }, Some(bytes)) => {
                let key = snapshot_key(&self.digest, hook, settings, limits);
                let (linked, logs) =
                    snapshot::configured(self, hook, bytes, &key, settings, limits)?;
                Ok(ConfiguredPlugin {
                    plugin: self.clone(),
                    hook,
                    limits: *limits,
                    settings: Arc::from(settings),
                    linked,
                    configure_logs: logs,
                })
            }
            _ => {
                let mut validated = ConfiguredPlugin {
                    plugin: self.clone(),
                    hook,
                    limits: *limits,
                    settings: Arc::from(settings),
                    linked: self.linked.clone(),
                    configure_logs: Vec::new(),
                };
                let mut sandbox = validated.sandbox()?;
                validated.configure_logs = sandbox.take_logs();
                Ok(validated)
            }
        }
    }

    /// A fresh sandbox for `hook` configured with `settings`: [`LoadedPlugin::configure`] then
    /// [`ConfiguredPlugin::sandbox`]. To decide many times with the same settings, configure
    /// once and take a sandbox per decision.
    pub fn sandbox(
        &self,
        hook: Hook,
        settings: &str,
        limits: &SandboxLimits,
    ) -> Result<Sandbox, PluginError> {
        self.configure(hook, settings, limits)?.sandbox()
    }
}

/// The precompiled-cache key of a 0.2 plugin's snapshot: everything that made it. The hook
/// (each hook has its own `configure`: a plugin serving two hooks with the same settings text
/// has two snapshots), the settings, and the memory cap (a snapshot made under a larger cap
/// could not be instantiated under a smaller one: with the cap in the key, that bundle makes
/// its own snapshot and fails at load, not in every decision).
fn snapshot_key(digest: &str, hook: Hook, settings: &str, limits: &SandboxLimits) -> String {
    let mut h = Sha256::new();
    h.update(b"rotor-snapshot-v2\0wasmtime-wizer-48\0");
    h.update(digest.as_bytes());
    h.update(b"\0");
    h.update(hook.interface().as_bytes());
    h.update(b"\0");
    h.update(limits.memory.to_le_bytes());
    h.update(settings.as_bytes());
    format!("snapshot-{}", hex::encode(h.finalize()))
}

/// A plugin with its settings applied, for one hook: what each decision's sandbox is made
/// from. Cheap to share.
///
/// For a 0.2 plugin, `configure` ran once, when this was made, in an instance that was then
/// snapshotted (linear memory and globals, with Wizer) into a new component: every sandbox is a
/// fresh instance of that snapshot, so it starts with the parsed settings and nothing else. For
/// a 0.1 plugin, every sandbox is a fresh instance whose `configure` runs first.
#[derive(Clone)]
pub struct ConfiguredPlugin {
    pub(crate) plugin: LoadedPlugin,
    pub(crate) hook: Hook,
    pub(crate) limits: SandboxLimits,
    /// Handed to `configure` in every sandbox of a 0.1 plugin.
    pub(crate) settings: Arc<str>,
    /// The snapshot (0.2) or the plugin itself (0.1).
    pub(crate) linked: Arc<Linked>,
    configure_logs: Vec<PluginLog>,
}

impl std::fmt::Debug for ConfiguredPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredPlugin")
            .field("plugin", &self.plugin)
            .field("hook", &self.hook)
            .field("limits", &self.limits)
            .finish()
    }
}

impl ConfiguredPlugin {
    /// The plugin.
    pub fn plugin(&self) -> &LoadedPlugin {
        &self.plugin
    }

    /// What the plugin logged while it was configured.
    pub fn configure_logs(&self) -> &[PluginLog] {
        &self.configure_logs
    }

    /// A fresh sandbox: a new store and instance, for one decision.
    pub fn sandbox(&self) -> Result<Sandbox, PluginError> {
        Sandbox::new(self)
    }
}
