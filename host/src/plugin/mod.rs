//! The WebAssembly plugin runtime: one engine, compiled plugins, and sandboxes per evaluation.
//!
//! Data flow: [`PluginEngine::load`] compiles a component (or takes it from the precompiled
//! cache), refuses forbidden imports and links it into a [`LoadedPlugin`], built against
//! `rotor:policy` 0.1 or 0.2 ([`ContractVersion`]); [`LoadedPlugin::configure`] applies a
//! bundle's settings once (for 0.2, a snapshot of the configured instance: see `snapshot.rs`),
//! giving a [`ConfiguredPlugin`]; each evaluation then runs in a fresh [`Sandbox`] made from it
//! (new store, memory cap, deadline) that converts the host's request into WIT records, calls
//! the hook, and validates the answer.

mod answer;
pub(crate) mod bindings;
mod cache;
mod convert;
mod engine;
mod error;
mod loaded;
mod sandbox;
mod snapshot;

pub use convert::MIN_LIFETIME_SECONDS;
pub use engine::{EngineError, EngineOptions, MAX_MEMORY_LIMIT, PluginEngine};
pub use error::{PluginError, PluginErrorKind};
pub use loaded::{ConfiguredPlugin, ContractVersion, LoadedPlugin};
pub use sandbox::{PluginLog, Sandbox, SandboxLimits, sanitize};
