//! A compiled, linked plugin: checked imports, `InstancePre`, and the export indices of each hook
//! it implements.

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, InstancePre};

use super::bindings::exports::rotor::policy::{config, csr_approval, renewal, san_validation};
use super::engine::PluginEngine;
use super::error::{PluginError, PluginErrorKind};
use super::sandbox::{Sandbox, SandboxLimits, SandboxState};
use crate::contract::Hook;

/// Import names a plugin may have. `types` carries only type definitions (it appears as an
/// import when a hook interface uses shared types); `host` is the logging function.
const ALLOWED_IMPORT_PREFIXES: &[&str] = &["rotor:policy/host@0.1.", "rotor:policy/types@0.1."];

/// A plugin ready to be instantiated. Cheap to share: evaluations create their own sandboxes.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub(crate) engine: PluginEngine,
    pub(crate) name: String,
    digest: String,
    pub(crate) pre: InstancePre<SandboxState>,
    pub(crate) config: config::GuestIndices,
    pub(crate) renewal: Option<renewal::GuestIndices>,
    pub(crate) san: Option<san_validation::GuestIndices>,
    pub(crate) csr: Option<csr_approval::GuestIndices>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("hooks", &self.hooks())
            .finish()
    }
}

impl LoadedPlugin {
    pub(crate) fn new(
        engine: PluginEngine,
        name: &str,
        hook: Hook,
        digest: String,
        component: Component,
    ) -> Result<LoadedPlugin, PluginError> {
        let err = |kind| PluginError {
            plugin: name.to_string(),
            hook,
            kind,
        };
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
            return Err(err(PluginErrorKind::ForbiddenImport { imports: forbidden }));
        }
        let pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            err(PluginErrorKind::Invalid {
                message: format!("{e:#}"),
            })
        })?;
        let config = config::GuestIndices::new(&pre).map_err(|_| {
            err(PluginErrorKind::MissingExport {
                interface: "rotor:policy/config@0.1.0".into(),
            })
        })?;
        Ok(LoadedPlugin {
            renewal: renewal::GuestIndices::new(&pre).ok(),
            san: san_validation::GuestIndices::new(&pre).ok(),
            csr: csr_approval::GuestIndices::new(&pre).ok(),
            engine,
            name: name.to_string(),
            digest,
            pre,
            config,
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

    /// The hooks this plugin exports.
    pub fn hooks(&self) -> Vec<Hook> {
        let mut hooks = Vec::new();
        if self.renewal.is_some() {
            hooks.push(Hook::Renewal);
        }
        if self.san.is_some() {
            hooks.push(Hook::San);
        }
        if self.csr.is_some() {
            hooks.push(Hook::Csr);
        }
        hooks
    }

    /// Fail unless the plugin exports `hook`.
    pub fn require(&self, hook: Hook) -> Result<(), PluginError> {
        if self.hooks().contains(&hook) {
            Ok(())
        } else {
            Err(PluginError {
                plugin: self.name.clone(),
                hook,
                kind: PluginErrorKind::MissingExport {
                    interface: hook.interface().into(),
                },
            })
        }
    }

    /// A fresh sandbox for `hook`: a new store and instance, configured with `settings`.
    pub fn sandbox(
        &self,
        hook: Hook,
        settings: &str,
        limits: &SandboxLimits,
    ) -> Result<Sandbox, PluginError> {
        Sandbox::new(self, hook, settings, limits)
    }
}
