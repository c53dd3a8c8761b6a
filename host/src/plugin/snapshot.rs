//! Settings parsed once per loaded plugin: a 0.2 plugin's `configure` runs in one instance,
//! which is then snapshotted into a new component (Wizer: the instance's linear memory and
//! globals become the new component's initial state). Every decision instantiates that
//! snapshot afresh, so it starts with the parsed settings and never with another decision's
//! state. The snapshot is cached like any compiled plugin, keyed by the plugin's digest and
//! the settings.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use wasmtime::Store;
use wasmtime::component::{Instance, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::error::{PluginError, PluginErrorKind};
use super::loaded::{Exports, Linked, LoadedPlugin, link};
use super::sandbox::{PluginLog, SandboxLimits, SandboxState, classify, new_store, sanitize};
use crate::contract::Hook;

/// The linked snapshot of `plugin` configured with `settings` (from the cache under `key` when
/// it is there), and what `configure` logged.
pub(crate) fn configured(
    plugin: &LoadedPlugin,
    hook: Hook,
    bytes: &[u8],
    key: &str,
    settings: &str,
    limits: &SandboxLimits,
) -> Result<(Arc<Linked>, Vec<PluginLog>), PluginError> {
    let err = |kind| PluginError {
        plugin: plugin.name.to_string(),
        hook,
        kind,
    };
    let engine = &plugin.engine;
    if let Some(component) = engine.cached(key) {
        return Ok((Arc::new(link(engine, &component).map_err(err)?), Vec::new()));
    }
    let invalid = |e: wasmtime::Error| {
        err(PluginErrorKind::Invalid {
            message: format!("preparing the settings snapshot: {e:#}"),
        })
    };
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer.instrument_component(bytes).map_err(invalid)?;
    let component = engine.compile_uncached(&instrumented).map_err(err)?;
    let linked = link(engine, &component).map_err(err)?;
    let mut store = new_store(engine, plugin.name.clone(), limits);
    let instance = linked
        .pre
        .instantiate(&mut store)
        .map_err(|e| err(classify(e, store.data(), limits)))?;
    // The hook's own `configure`: a plugin serving two hooks gets each hook's settings.
    macro_rules! configure {
        ($indices:expr) => {
            $indices
                .as_ref()
                .ok_or_else(|| plugin.missing_export(hook))?
                .load(&mut store, &instance)
                .and_then(|g| g.call_configure(&mut store, settings))
        };
    }
    let configured = match &linked.exports {
        Exports::V02 { renewal, san, csr } => match hook {
            Hook::Renewal => configure!(renewal),
            Hook::San => configure!(san),
            Hook::Csr => configure!(csr),
        },
        Exports::V03 { renewal, san, csr } => match hook {
            Hook::Renewal => configure!(renewal),
            Hook::San => configure!(san),
            Hook::Csr => configure!(csr),
        },
        Exports::V01 { .. } => return Err(plugin.missing_export(hook)),
    };
    match configured {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            return Err(err(PluginErrorKind::InvalidSettings {
                message: sanitize(&message, 2048),
            }));
        }
        Err(e) => return Err(err(classify(e, store.data(), limits))),
    }
    let logs = store.data_mut().take_logs();
    let mut state = Snapshotting {
        store: &mut store,
        instance,
        failed: None,
    };
    let snapshot = block_on(wizer.snapshot_component(&cx, &mut state));
    if let Some(e) = state.failed.take() {
        return Err(invalid(e));
    }
    let snapshot = snapshot
        .ok_or_else(|| invalid(wasmtime::format_err!("the snapshot did not complete")))?
        .map_err(invalid)?;
    let component = engine.compile_and_store(key, &snapshot).map_err(err)?;
    Ok((Arc::new(link(engine, &component).map_err(err)?), logs))
}

/// Wizer reads the instance's state through the functions its instrumentation exported.
struct Snapshotting<'a> {
    store: &'a mut Store<SandboxState>,
    instance: Instance,
    /// The first failure: Wizer's interface has no room for errors, so they are kept here and
    /// the snapshot is thrown away.
    failed: Option<wasmtime::Error>,
}

impl Snapshotting<'_> {
    fn call<R>(&mut self, instance: &str, func: &str) -> Option<R>
    where
        R: wasmtime::component::Lift + wasmtime::component::ComponentType + Send + Sync + 'static,
    {
        if self.failed.is_some() {
            return None;
        }
        let result = (|| {
            let (_, exported) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or_else(|| wasmtime::format_err!("no export {instance}"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&exported), func)
                .ok_or_else(|| wasmtime::format_err!("no export {instance}#{func}"))?;
            let typed = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)?;
            Ok(typed.call(&mut *self.store, ())?.0)
        })();
        match result {
            Ok(r) => Some(r),
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        match self.call::<WasmList<u8>>(instance, func) {
            Some(list) => contents(list.as_le_slice(&*self.store)),
            None => contents(&[]),
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func).unwrap_or_default()
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func).unwrap_or_default()
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call::<f32>(instance, func)
            .map(f32::to_bits)
            .unwrap_or_default()
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call::<f64>(instance, func)
            .map(f64::to_bits)
            .unwrap_or_default()
    }
}

/// Run a future that never waits: every call above completes synchronously, so it is ready at
/// the first poll. `None` if it is not (a future that would wait for something that never
/// comes: refused rather than spun on).
fn block_on<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..16 {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
    }
    None
}
