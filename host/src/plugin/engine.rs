//! The one wasmtime [`Engine`] of the process, its [`Linker`] and the epoch ticker.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

use super::bindings::{v01, v02, v03};
use super::cache::ArtifactCache;
use super::error::{PluginError, PluginErrorKind};
use super::loaded::LoadedPlugin;
use super::sandbox::SandboxState;
use crate::contract::Hook;

/// Upper bound for any plugin's memory cap: the pooling allocator reserves slots of this size.
pub const MAX_MEMORY_LIMIT: u64 = 512 * 1024 * 1024;

/// How the engine is built. [`EngineOptions::default`] is what rotor runs with; the other
/// settings exist so benchmarks can show what each choice costs.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Pooling instance allocator (fast instantiation). Falls back to on-demand allocation when
    /// the machine cannot reserve the pool's address space.
    pub pooling: bool,
    /// Epoch interruption, needed for evaluation deadlines. Turning it off removes the
    /// deadline entirely: only for benchmarks.
    pub epoch_interruption: bool,
    /// Period of the epoch ticker; deadlines are rounded up to whole ticks.
    pub epoch_tick: Duration,
    /// Concurrent sandboxes the pool can hold.
    pub pool_instances: u32,
    /// Bytes of linear memory kept resident (reset with memset instead of madvise) when a pool
    /// slot is reused.
    pub keep_resident: usize,
    /// Find the pages an instance dirtied with Linux's `PAGEMAP_SCAN` (kernel 6.7+; ignored
    /// elsewhere) and reset only those, instead of the whole `keep_resident` span.
    pub pagemap_scan: bool,
    /// Directory for precompiled plugins (`None`: compile in memory every time).
    pub cache_dir: Option<PathBuf>,
    /// Bytes of each table kept resident when a pool slot is reused.
    pub table_keep_resident: usize,
    /// Freed pool slots kept warm for the module that used them (wasmtime's default: 100).
    pub max_unused_warm_slots: Option<u32>,
    /// Freed pool slots decommitted together (1: each at once).
    pub decommit_batch_size: usize,
    /// Map a plugin's initial memory copy-on-write from its image (rather than copying it in).
    pub memory_init_cow: bool,
    /// Address space reserved per linear memory and its guard (`None`: wasmtime's defaults, a
    /// reservation large enough that the guest's bounds checks are elided).
    pub memory_reservation: Option<(u64, u64)>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            pooling: true,
            epoch_interruption: true,
            epoch_tick: Duration::from_millis(10),
            pool_instances: 128,
            keep_resident: 1024 * 1024,
            pagemap_scan: true,
            cache_dir: None,
            table_keep_resident: 64 * 1024,
            max_unused_warm_slots: None,
            decommit_batch_size: 1,
            memory_init_cow: true,
            memory_reservation: None,
        }
    }
}

/// Shared by every plugin: one engine, one linker, one precompiled-artifact cache.
///
/// # Sandbox defaults
/// - no WASI: plugins may import only `rotor:policy/host` (logging); anything else is refused
///   at load with the import named;
/// - no files, network, clock, environment or randomness: `now` is an input;
/// - a fresh store and instance per evaluation;
/// - a deadline per evaluation (default 100 ms, via epoch interruption; 1 tick = `epoch_tick`);
/// - linear memory capped per plugin (default 16 MiB, at most [`MAX_MEMORY_LIMIT`]);
/// - wasm stack capped at 512 KiB;
/// - every answer validated by the host before use.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<SandboxState>,
    options: EngineOptions,
    pooling_active: bool,
    cache: Option<ArtifactCache>,
    /// Hash of everything that makes a precompiled artifact valid for this engine.
    compat_hash: String,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("options", &self.inner.options)
            .field("pooling_active", &self.inner.pooling_active)
            .finish()
    }
}

/// The engine could not be created at all (not even with on-demand allocation).
#[derive(Debug, thiserror::Error)]
#[error("cannot create the WebAssembly engine: {0}")]
pub struct EngineError(String);

impl PluginEngine {
    /// An engine with `options`: pooling allocator, epoch interruption, the precompiled cache.
    pub fn new(options: EngineOptions) -> Result<PluginEngine, EngineError> {
        let (engine, pooling_active) = match build_engine(&options, options.pooling) {
            Ok(engine) => (engine, options.pooling),
            Err(e) if options.pooling => {
                tracing::warn!("pooling allocator unavailable ({e}); using on-demand allocation");
                (
                    build_engine(&options, false).map_err(|e| EngineError(e.to_string()))?,
                    false,
                )
            }
            Err(e) => return Err(EngineError(e.to_string())),
        };
        let mut linker = Linker::new(&engine);
        v01::Policy::add_to_linker::<SandboxState, HasSelf<SandboxState>>(&mut linker, |s| s)
            .map_err(|e| EngineError(format!("linking the 0.1 host interfaces: {e}")))?;
        v02::Policy::add_to_linker::<SandboxState, HasSelf<SandboxState>>(&mut linker, |s| s)
            .map_err(|e| EngineError(format!("linking the 0.2 host interfaces: {e}")))?;
        v03::Policy::add_to_linker::<SandboxState, HasSelf<SandboxState>>(&mut linker, |s| s)
            .map_err(|e| EngineError(format!("linking the 0.3 host interfaces: {e}")))?;

        let mut hasher = HashWriter(Sha256::new());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        let compat_hash = hex::encode(&hasher.0.finalize()[..8]);

        let cache = match &options.cache_dir {
            Some(dir) => match ArtifactCache::open(dir) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!("not caching compiled plugins: {e}");
                    None
                }
            },
            None => None,
        };
        if options.epoch_interruption {
            spawn_ticker(&engine, options.epoch_tick)
                .map_err(|e| EngineError(format!("cannot start the epoch ticker: {e}")))?;
        }
        Ok(PluginEngine {
            inner: Arc::new(Inner {
                engine,
                linker,
                options,
                pooling_active,
                cache,
                compat_hash,
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<SandboxState> {
        &self.inner.linker
    }

    /// The options it was made with.
    pub fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// Whether the pooling allocator is in use (it may have fallen back to on-demand).
    pub fn pooling_active(&self) -> bool {
        self.inner.pooling_active
    }

    /// Number of epoch ticks for a deadline (rounded up, plus one because the first tick may
    /// come at any moment).
    pub(crate) fn deadline_ticks(&self, timeout: Duration) -> u64 {
        let tick = self.inner.options.epoch_tick.as_nanos().max(1);
        (timeout.as_nanos().div_ceil(tick) as u64).saturating_add(1)
    }

    /// Compile (or fetch from the cache) and link a plugin. `name` is how errors refer to it;
    /// `hook` is the hook it is being loaded for.
    pub fn load(&self, name: &str, hook: Hook, bytes: &[u8]) -> Result<LoadedPlugin, PluginError> {
        let err = |kind| PluginError {
            plugin: name.to_string(),
            hook,
            kind,
        };
        let digest = hex::encode(Sha256::digest(bytes));
        let component = self.compile_cached(&digest, bytes).map_err(err)?;
        LoadedPlugin::new(self.clone(), name, hook, digest, component, bytes)
    }

    /// The component precompiled under `key`, when the cache has it.
    pub(crate) fn cached(&self, key: &str) -> Option<Component> {
        let cache = self.inner.cache.as_ref()?;
        cache.load(&self.inner.engine, key, &self.inner.compat_hash)
    }

    /// Compile `bytes` (or take them from the cache under `key`), caching the result.
    pub(crate) fn compile_cached(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<Component, PluginErrorKind> {
        if let Some(component) = self.cached(key) {
            return Ok(component);
        }
        self.compile_and_store(key, bytes)
    }

    /// Compile `bytes` and cache the result under `key` (the caller looked there already).
    pub(crate) fn compile_and_store(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<Component, PluginErrorKind> {
        let compiled = self.precompile(bytes)?;
        if let Some(cache) = &self.inner.cache
            && let Err(e) = cache.store(key, &self.inner.compat_hash, &compiled)
        {
            tracing::warn!("cannot cache the compiled plugin: {e}");
        }
        self.deserialize(&compiled)
    }

    /// Compile `bytes` without caching them (a component used once).
    pub(crate) fn compile_uncached(&self, bytes: &[u8]) -> Result<Component, PluginErrorKind> {
        let compiled = self.precompile(bytes)?;
        self.deserialize(&compiled)
    }

    fn deserialize(&self, compiled: &[u8]) -> Result<Component, PluginErrorKind> {
        ArtifactCache::deserialize_own(&self.inner.engine, compiled).map_err(|e| {
            PluginErrorKind::Invalid {
                message: format!("{e:#}"),
            }
        })
    }

    fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, PluginErrorKind> {
        if !wasmparser_is_component(bytes) {
            return Err(PluginErrorKind::Invalid {
                message:
                    "not a WebAssembly component (a core module or another file?); build it with \
                     `rotor policy build` or `wasm-tools component new`"
                        .into(),
            });
        }
        self.inner
            .engine
            .precompile_component(bytes)
            .map_err(|e| PluginErrorKind::Invalid {
                message: format!("{e:#}"),
            })
    }
}

/// Components start with the component-model preamble (`\0asm`, version 0x0d, layer 1).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

fn build_engine(options: &EngineOptions, pooling: bool) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .concurrency_support(false)
        .epoch_interruption(options.epoch_interruption)
        .memory_init_cow(options.memory_init_cow)
        .max_wasm_stack(512 * 1024)
        .parallel_compilation(true)
        .cranelift_opt_level(OptLevel::Speed);
    if let Some((reservation, guard)) = options.memory_reservation {
        config
            .memory_reservation(reservation)
            .memory_guard_size(guard);
    }
    if pooling {
        let n = options.pool_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(4))
            .total_memories(n)
            .total_tables(n.saturating_mul(2))
            .max_memory_size(MAX_MEMORY_LIMIT as usize)
            .linear_memory_keep_resident(options.keep_resident)
            .table_keep_resident(options.table_keep_resident)
            .decommit_batch_size(options.decommit_batch_size.max(1))
            .pagemap_scan(if options.pagemap_scan {
                Enabled::Auto
            } else {
                Enabled::No
            });
        if let Some(slots) = options.max_unused_warm_slots {
            pool.max_unused_warm_slots(slots);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config)
}

/// Advance the epoch every `tick` while the engine lives. Holds only a weak reference, so the
/// thread ends with the engine.
fn spawn_ticker(engine: &Engine, tick: Duration) -> std::io::Result<()> {
    let weak = engine.weak();
    thread::Builder::new()
        .name("rotor-epoch".into())
        .spawn(move || {
            loop {
                thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })?;
    Ok(())
}

/// Feed `Hash` output into SHA-256, for a cache key that is stable across runs.
struct HashWriter(Sha256);

impl std::hash::Hasher for HashWriter {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
