//! Typed plugin failures. Every error names the plugin and the hook; a policy *denial* is never
//! an error (it is a decision), only a plugin that could not answer is.

use std::time::Duration;

use crate::contract::Hook;

/// A plugin failed to load or to answer.
#[derive(Clone, Debug, thiserror::Error)]
#[error("plugin '{plugin}' ({hook}): {kind}")]
pub struct PluginError {
    /// The plugin's name.
    pub plugin: String,
    /// The hook it was serving.
    pub hook: Hook,
    /// What went wrong.
    pub kind: PluginErrorKind,
}

/// What went wrong.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginErrorKind {
    /// The epoch deadline interrupted it.
    #[error("timed out: still running after its {}-ms deadline", .0.as_millis())]
    Timeout(Duration),
    /// It tried to grow its memory beyond the cap.
    #[error("exceeded its memory limit of {} MiB", .limit / (1024 * 1024))]
    MemoryExhausted {
        /// The cap, in bytes.
        limit: u64,
    },
    /// It trapped (a panic, an `unreachable`, an out-of-bounds access, ...).
    #[error("trapped: {message}")]
    Trap {
        /// What went wrong.
        message: String,
    },
    /// `configure` refused the operator's settings.
    #[error("rejected its settings: {message}")]
    InvalidSettings {
        /// What went wrong.
        message: String,
    },
    /// The answer broke the contract (e.g. a denial without any violation).
    #[error("returned a malformed answer: {message}")]
    InvalidAnswer {
        /// What went wrong.
        message: String,
    },
    /// It imports something other than `rotor:policy/host`.
    #[error(
        "imports {}: plugins may import only rotor:policy/host (no WASI, files, network, clock or environment)",
        .imports.join(", ")
    )]
    ForbiddenImport {
        /// The imports that are not allowed.
        imports: Vec<String>,
    },
    /// It does not export an interface the bundle needs.
    #[error("does not export {interface}")]
    MissingExport {
        /// The WIT interface it lacks.
        interface: String,
    },
    /// Its sha256 differs from the one pinned in the bundle.
    #[error("sha256 {actual} does not match the pinned {expected}; refusing to load it")]
    DigestMismatch {
        /// The sha256 pinned in the bundle.
        expected: String,
        /// The file's sha256.
        actual: String,
    },
    /// It is not a valid component for this engine.
    #[error("is not a loadable WebAssembly component: {message}")]
    Invalid {
        /// What went wrong.
        message: String,
    },
    /// It could not be read.
    #[error("{message}")]
    Io {
        /// What went wrong.
        message: String,
    },
}

impl PluginErrorKind {
    /// Short machine-readable name, for JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            PluginErrorKind::Timeout(_) => "timeout",
            PluginErrorKind::MemoryExhausted { .. } => "memory_exhausted",
            PluginErrorKind::Trap { .. } => "trap",
            PluginErrorKind::InvalidSettings { .. } => "invalid_settings",
            PluginErrorKind::InvalidAnswer { .. } => "invalid_answer",
            PluginErrorKind::ForbiddenImport { .. } => "forbidden_import",
            PluginErrorKind::MissingExport { .. } => "missing_export",
            PluginErrorKind::DigestMismatch { .. } => "digest_mismatch",
            PluginErrorKind::Invalid { .. } => "invalid_component",
            PluginErrorKind::Io { .. } => "io",
        }
    }
}
