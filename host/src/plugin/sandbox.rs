//! One evaluation sandbox: a fresh [`Store`] and instance, a memory cap, a deadline.
//!
//! A sandbox is normally used for one evaluation and dropped. Batch callers may reuse one for
//! several calls of the same hook (the plugin then keeps its configured state between calls);
//! after any failure the sandbox refuses further calls, because a trapped instance is poisoned.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{ResourceLimiter, Store, Trap};

use super::bindings::exports::rotor::policy::{csr_approval, renewal, san_validation};
use super::bindings::rotor::policy::host::{self, LogLevel};
use super::bindings::rotor::policy::types;
use super::convert;
use super::engine::MAX_MEMORY_LIMIT;
use super::error::{PluginError, PluginErrorKind};
use super::loaded::LoadedPlugin;
use crate::contract::Hook;
use crate::contract::{CsrDecision, RenewalDecision, SanDecision};
use crate::contract::{CsrRequest, RenewalRequest, SanRequest};

/// Per-plugin limits, from the bundle (or the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Deadline for one evaluation (instantiation, configure and the hook call together).
    pub timeout: Duration,
    /// Cap on linear memory, in bytes.
    pub memory: u64,
}

impl Default for SandboxLimits {
    /// 100 ms and 16 MiB.
    fn default() -> Self {
        SandboxLimits {
            timeout: Duration::from_millis(100),
            memory: 16 * 1024 * 1024,
        }
    }
}

impl SandboxLimits {
    /// Check the limits are usable. The error names the bundle setting and says why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err((
                "timeout_ms",
                format!(
                    "must be between 1 and 60000, got {}",
                    self.timeout.as_millis()
                ),
            ));
        }
        if self.memory < 1024 * 1024 || self.memory > MAX_MEMORY_LIMIT {
            return Err((
                "memory_limit_mib",
                format!(
                    "must be between 1 and {}, got {}",
                    MAX_MEMORY_LIMIT / (1024 * 1024),
                    self.memory / (1024 * 1024)
                ),
            ));
        }
        Ok(())
    }
}

/// One message a plugin logged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PluginLog {
    /// `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// What went wrong.
    pub message: String,
}

/// Most log messages kept per sandbox, and longest message (characters).
const MAX_LOGS: usize = 64;
const MAX_LOG_CHARS: usize = 1024;

/// The store's data: limits, and what the plugin logged.
pub(crate) struct SandboxState {
    memory_limit: usize,
    memory_exceeded: bool,
    plugin: Arc<str>,
    logs: Vec<PluginLog>,
    dropped_logs: usize,
}

impl ResourceLimiter for SandboxState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }
}

impl host::Host for SandboxState {
    fn log(&mut self, level: LogLevel, message: String) {
        if self.logs.len() >= MAX_LOGS {
            self.dropped_logs += 1;
            return;
        }
        let message = sanitize(&message, MAX_LOG_CHARS);
        let level = match level {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        tracing::debug!(plugin = %self.plugin, level, "{message}");
        self.logs.push(PluginLog { level, message });
    }
}

impl types::Host for SandboxState {}

/// Replace control characters (including the escape that starts terminal sequences) and cap the
/// length: plugin strings are untrusted.
pub fn sanitize(s: &str, max_chars: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// The hook's typed exports, looked up (and type-checked) once per instance.
enum Guest {
    Renewal(renewal::Guest),
    San(san_validation::Guest),
    Csr(csr_approval::Guest),
}

/// A live instance of a plugin for one hook.
pub struct Sandbox {
    store: Store<SandboxState>,
    guest: Guest,
    plugin: LoadedPlugin,
    hook: Hook,
    limits: SandboxLimits,
    poisoned: bool,
}

impl Sandbox {
    pub(crate) fn new(
        plugin: &LoadedPlugin,
        hook: Hook,
        settings: &str,
        limits: &SandboxLimits,
    ) -> Result<Sandbox, PluginError> {
        plugin.require(hook)?;
        let state = SandboxState {
            memory_limit: usize::try_from(limits.memory).unwrap_or(usize::MAX),
            memory_exceeded: false,
            plugin: Arc::from(plugin.name.as_str()),
            logs: Vec::new(),
            dropped_logs: 0,
        };
        let mut store = Store::new(plugin.engine.engine(), state);
        store.limiter(|s| s);
        if plugin.engine.options().epoch_interruption {
            store.set_epoch_deadline(plugin.engine.deadline_ticks(limits.timeout));
            store.epoch_deadline_trap();
        }
        let err = |store: &Store<SandboxState>, e: wasmtime::Error| PluginError {
            plugin: plugin.name.clone(),
            hook,
            kind: classify(e, store.data(), limits),
        };
        let instance = match plugin.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(err(&store, e)),
        };
        let configured = plugin
            .config
            .load(&mut store, &instance)
            .and_then(|guest| guest.call_configure(&mut store, settings));
        match configured {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(PluginError {
                    plugin: plugin.name.clone(),
                    hook,
                    kind: PluginErrorKind::InvalidSettings {
                        message: sanitize(&message, 2048),
                    },
                });
            }
            Err(e) => return Err(err(&store, e)),
        }
        let missing = || PluginError {
            plugin: plugin.name.clone(),
            hook,
            kind: PluginErrorKind::MissingExport {
                interface: hook.interface().into(),
            },
        };
        let guest = match hook {
            Hook::Renewal => plugin
                .renewal
                .as_ref()
                .ok_or_else(missing)?
                .load(&mut store, &instance)
                .map(Guest::Renewal),
            Hook::San => plugin
                .san
                .as_ref()
                .ok_or_else(missing)?
                .load(&mut store, &instance)
                .map(Guest::San),
            Hook::Csr => plugin
                .csr
                .as_ref()
                .ok_or_else(missing)?
                .load(&mut store, &instance)
                .map(Guest::Csr),
        }
        .map_err(|e| err(&store, e))?;
        Ok(Sandbox {
            store,
            guest,
            plugin: plugin.clone(),
            hook,
            limits: *limits,
            poisoned: false,
        })
    }

    /// Messages the plugin logged so far (and forgets them).
    pub fn take_logs(&mut self) -> Vec<PluginLog> {
        let state = self.store.data_mut();
        let mut logs = std::mem::take(&mut state.logs);
        if state.dropped_logs > 0 {
            logs.push(PluginLog {
                level: "warn",
                message: format!("{} further log messages dropped", state.dropped_logs),
            });
            state.dropped_logs = 0;
        }
        logs
    }

    fn error(&self, kind: PluginErrorKind) -> PluginError {
        PluginError {
            plugin: self.plugin.name.clone(),
            hook: self.hook,
            kind,
        }
    }

    /// Before every call: refuse a poisoned sandbox, check the hook, re-arm the deadline.
    fn begin(&mut self, hook: Hook) -> Result<(), PluginError> {
        if self.poisoned {
            return Err(self.error(PluginErrorKind::Trap {
                message: "sandbox unusable after an earlier failure; use a fresh one".into(),
            }));
        }
        if hook != self.hook {
            return Err(self.error(PluginErrorKind::MissingExport {
                interface: hook.interface().into(),
            }));
        }
        if self.plugin.engine.options().epoch_interruption {
            let ticks = self.plugin.engine.deadline_ticks(self.limits.timeout);
            self.store.set_epoch_deadline(ticks);
        }
        Ok(())
    }

    fn failed(&mut self, e: wasmtime::Error) -> PluginError {
        self.poisoned = true;
        let kind = classify(e, self.store.data(), &self.limits);
        self.error(kind)
    }

    fn invalid(&mut self, message: String) -> PluginError {
        self.error(PluginErrorKind::InvalidAnswer { message })
    }

    /// Ask the renewal hook.
    pub fn renewal(&mut self, request: &RenewalRequest) -> Result<RenewalDecision, PluginError> {
        self.begin(Hook::Renewal)?;
        let Guest::Renewal(guest) = &self.guest else {
            return Err(self.missing());
        };
        let wit_request = convert::renewal_request(request);
        match guest.call_decide(&mut self.store, &wit_request) {
            Ok(answer) => convert::renewal_decision(answer).map_err(|m| self.invalid(m)),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Ask the SAN hook.
    pub fn validate_sans(&mut self, request: &SanRequest) -> Result<SanDecision, PluginError> {
        self.begin(Hook::San)?;
        let Guest::San(guest) = &self.guest else {
            return Err(self.missing());
        };
        let wit_request = convert::san_request(request);
        match guest.call_validate(&mut self.store, &wit_request) {
            Ok(answer) => convert::san_decision(answer).map_err(|m| self.invalid(m)),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Ask the CSR hook.
    pub fn review_csr(&mut self, request: &CsrRequest) -> Result<CsrDecision, PluginError> {
        self.begin(Hook::Csr)?;
        let Guest::Csr(guest) = &self.guest else {
            return Err(self.missing());
        };
        let wit_request = convert::csr_request(request);
        match guest.call_review(&mut self.store, &wit_request) {
            Ok(answer) => convert::csr_decision(answer).map_err(|m| self.invalid(m)),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn missing(&self) -> PluginError {
        self.error(PluginErrorKind::MissingExport {
            interface: self.hook.interface().into(),
        })
    }
}

/// Turn a wasmtime failure into the typed error. The wasm backtrace, useful to the plugin's
/// author, goes to the debug log (`-vv`) rather than into the message.
fn classify(e: wasmtime::Error, state: &SandboxState, limits: &SandboxLimits) -> PluginErrorKind {
    if let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
        tracing::debug!(plugin = %state.plugin, "wasm backtrace:\n{bt}");
    }
    if state.memory_exceeded {
        return PluginErrorKind::MemoryExhausted {
            limit: limits.memory,
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginErrorKind::Timeout(limits.timeout),
        Some(Trap::UnreachableCodeReached) => PluginErrorKind::Trap {
            message: "wasm `unreachable` executed (a Rust plugin aborts this way when it panics)"
                .into(),
        },
        Some(trap) => PluginErrorKind::Trap {
            message: sanitize(&trap.to_string(), 1024),
        },
        None => PluginErrorKind::Trap {
            message: sanitize(&e.root_cause().to_string(), 1024),
        },
    }
}
