//! One evaluation sandbox: a fresh [`Store`] and instance, a memory cap, a deadline.
//!
//! A sandbox is normally used for one evaluation and dropped. Batch callers may reuse one for
//! several calls of the same hook (the plugin then keeps its configured state between calls);
//! after any failure the sandbox refuses further calls, because a trapped instance is poisoned.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable, TypedFunc};
use wasmtime::{ResourceLimiter, Store, Trap};

use super::answer::{self, SanAnswer, TooManyViolations};
use super::bindings::v01::exports::rotor::policy::{
    csr_approval as v01csr, san_validation as v01san,
};
use super::bindings::v02::exports::rotor::policy::{
    csr_approval as v02csr, san_validation as v02san,
};
use super::bindings::v03::exports::rotor::policy::{
    csr_approval as v03csr, san_validation as v03san,
};
use super::bindings::{v01, v02, v03};
use super::convert;
use super::engine::{MAX_MEMORY_LIMIT, PluginEngine};
use super::error::{PluginError, PluginErrorKind};
use super::loaded::{ConfiguredPlugin, Exports, LoadedPlugin};
use crate::contract::Hook;
use crate::contract::{CsrDecision, RenewalDecision, SanDecision};
use crate::contract::{CsrRequest, RenewalRequest, SanRequest};
use crate::facts::CertificateFacts;

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

/// Most `facts.details()` handles one decision may make (0.3).
const MAX_DETAILS_PER_CALL: usize = 16;

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
    /// Host handles lent to the plugin for the current call (0.2 `facts`).
    table: ResourceTable,
    /// The certificate of the 0.3 renewal call in progress (`facts.details()`), and its name
    /// (a buffer kept between calls); `None` outside a call.
    current: Option<Arc<CertificateFacts>>,
    current_name: String,
    /// The handles `facts.details()` made during the call in progress: expired when it ends, so
    /// a plugin that kept one cannot read any certificate through it in a later call (its entry
    /// is not reused for another until the plugin drops it).
    made: Vec<u32>,
}

impl SandboxState {
    /// Messages the plugin logged so far (and forgets them).
    pub(crate) fn take_logs(&mut self) -> Vec<PluginLog> {
        let mut logs = std::mem::take(&mut self.logs);
        if self.dropped_logs > 0 {
            logs.push(PluginLog {
                level: "warn",
                message: format!("{} further log messages dropped", self.dropped_logs),
            });
            self.dropped_logs = 0;
        }
        logs
    }

    fn log(&mut self, level: &'static str, message: &str) {
        if self.logs.len() >= MAX_LOGS {
            self.dropped_logs += 1;
            return;
        }
        let message = sanitize(message, MAX_LOG_CHARS);
        tracing::debug!(plugin = %self.plugin, level, "{message}");
        self.logs.push(PluginLog { level, message });
    }
}

/// A store for one instance of `plugin`: memory cap and deadline armed.
pub(crate) fn new_store(
    engine: &PluginEngine,
    plugin: Arc<str>,
    limits: &SandboxLimits,
) -> Store<SandboxState> {
    let state = SandboxState {
        memory_limit: usize::try_from(limits.memory).unwrap_or(usize::MAX),
        memory_exceeded: false,
        plugin,
        logs: Vec::new(),
        dropped_logs: 0,
        table: ResourceTable::new(),
        current: None,
        current_name: String::new(),
        made: Vec::new(),
    };
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|s| s);
    if engine.options().epoch_interruption {
        store.set_epoch_deadline(engine.deadline_ticks(limits.timeout));
        store.epoch_deadline_trap();
    }
    store
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

/// `log` and the types interface, the same in every contract version.
macro_rules! host_impl {
    ($v:ident) => {
        impl $v::rotor::policy::host::Host for SandboxState {
            fn log(&mut self, level: $v::rotor::policy::host::LogLevel, message: String) {
                use $v::rotor::policy::host::LogLevel as L;
                let level = match level {
                    L::Debug => "debug",
                    L::Info => "info",
                    L::Warn => "warn",
                    L::Error => "error",
                };
                SandboxState::log(self, level, &message);
            }
        }

        impl $v::rotor::policy::types::Host for SandboxState {}
    };
}

host_impl!(v01);
host_impl!(v02);
host_impl!(v03);

/// The certificate behind a renewal request's `details` handle (0.2 and later), and (0.3) the
/// certificate's name in its layout.
#[allow(
    unreachable_pub,
    reason = "named in the generated bindings, which re-export it; reachable only in the crate"
)]
pub struct CertificateDetails {
    facts: Arc<CertificateFacts>,
    name: String,
    /// Its decision is over (0.3): a plugin that kept the handle gets a trap, not a certificate.
    expired: bool,
}

impl SandboxState {
    fn details(
        &self,
        handle: &Resource<CertificateDetails>,
    ) -> wasmtime::Result<&CertificateDetails> {
        let details = self.table.get(handle)?;
        if details.expired {
            wasmtime::bail!("a certificate-details handle used after the decision it was made for");
        }
        Ok(details)
    }
}

/// The `certificate-details` methods of a contract version, and any it adds.
macro_rules! facts_impl {
    ($module:ident, $v:ident, { $($functions:item)* }, { $($extra:item)* }) => {
        mod $module {
            use wasmtime::component::Resource;

            use super::super::bindings::$v::rotor::policy::facts::{self, HostCertificateDetails};
            use super::super::bindings::$v::rotor::policy::types as wit;
            use super::super::convert::$v as convert;
            use super::{CertificateDetails, SandboxState};

            type R = Resource<CertificateDetails>;

            impl facts::Host for SandboxState {
                $($functions)*
            }

            impl HostCertificateDetails for SandboxState {
                fn subject(&mut self, h: R) -> wasmtime::Result<wit::DistinguishedName> {
                    Ok(convert::dn(&self.details(&h)?.facts.subject))
                }
                fn issuer(&mut self, h: R) -> wasmtime::Result<wit::DistinguishedName> {
                    Ok(convert::dn(&self.details(&h)?.facts.issuer))
                }
                fn sans(&mut self, h: R) -> wasmtime::Result<wit::SubjectAltNames> {
                    Ok(convert::sans(&self.details(&h)?.facts.sans))
                }
                fn key_usage(&mut self, h: R) -> wasmtime::Result<Option<wit::KeyUsage>> {
                    Ok(self
                        .details(&h)?
                        .facts
                        .key_usage
                        .as_deref()
                        .map(convert::key_usage))
                }
                fn extended_key_usages(
                    &mut self,
                    h: R,
                ) -> wasmtime::Result<Vec<wit::ExtendedKeyUsage>> {
                    Ok(self
                        .details(&h)?
                        .facts
                        .extended_key_usages
                        .iter()
                        .map(convert::eku)
                        .collect())
                }
                fn subject_key_id(&mut self, h: R) -> wasmtime::Result<Option<String>> {
                    Ok(self.details(&h)?.facts.subject_key_id.clone())
                }
                fn authority_key_id(&mut self, h: R) -> wasmtime::Result<Option<String>> {
                    Ok(self.details(&h)?.facts.authority_key_id.clone())
                }
                fn certificate(&mut self, h: R) -> wasmtime::Result<wit::Certificate> {
                    Ok(convert::certificate(&self.details(&h)?.facts))
                }
                $($extra)*
                fn drop(&mut self, h: R) -> wasmtime::Result<()> {
                    self.table.delete(h)?;
                    Ok(())
                }
            }
        }
    };
}

facts_impl!(facts_v02, v02, {}, {});
facts_impl!(
    facts_v03,
    v03,
    {
        fn details(&mut self) -> wasmtime::Result<R> {
            let Some(facts) = self.current.clone() else {
                wasmtime::bail!("facts.details() called outside renewal.decide");
            };
            // Each handle is host memory the guest's cap does not count: a rule needs one.
            if self.made.len() >= super::MAX_DETAILS_PER_CALL {
                wasmtime::bail!(
                    "facts.details() called more than {} times in one decision",
                    super::MAX_DETAILS_PER_CALL
                );
            }
            let name = self.current_name.clone();
            let handle = self.table.push(CertificateDetails {
                facts,
                name,
                expired: false,
            })?;
            self.made.push(handle.rep());
            Ok(handle)
        }
    },
    {
        fn name(&mut self, h: R) -> wasmtime::Result<String> {
            Ok(self.details(&h)?.name.clone())
        }
        fn serial(&mut self, h: R) -> wasmtime::Result<String> {
            Ok(self.details(&h)?.facts.serial.clone())
        }
    }
);

/// Replace control characters (including the escape that starts terminal sequences) and cap the
/// length: plugin strings are untrusted.
pub fn sanitize(s: &str, max_chars: usize) -> String {
    // The usual case, checked byte-wise: short enough (bytes bound chars) and printable ASCII.
    if s.len() <= max_chars && s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return s.to_owned();
    }
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
    V01Renewal(v01::exports::rotor::policy::renewal::Guest),
    /// SAN and CSR: typed with the bounded answer types of `answer.rs`.
    V01San(TypedFunc<(v01san::SanRequest,), (SanAnswer,)>),
    V01Csr(TypedFunc<(v01csr::CsrRequest,), (answer::v01::CsrAnswer,)>),
    V02Renewal(v02::exports::rotor::policy::renewal::Guest),
    V02San(TypedFunc<(v02san::SanRequest,), (SanAnswer,)>),
    V02Csr(TypedFunc<(v02csr::CsrRequest,), (answer::v02::CsrAnswer,)>),
    V03Renewal(v03::exports::rotor::policy::renewal::Guest),
    V03San(TypedFunc<(v03san::SanRequest,), (SanAnswer,)>),
    V03Csr(TypedFunc<(v03csr::CsrRequest,), (answer::v03::CsrAnswer,)>),
}

/// A live instance of a plugin for one hook.
pub struct Sandbox {
    store: Store<SandboxState>,
    guest: Guest,
    plugin: LoadedPlugin,
    hook: Hook,
    limits: SandboxLimits,
    /// Epoch ticks each call may run (`None`: no deadline, benchmarks only).
    deadline: Option<u64>,
    /// The host's entry behind a 0.2 renewal request's `details` handle, made at the first
    /// renewal call and refilled for each (the plugin only ever holds a borrow for one call).
    details: Option<Resource<CertificateDetails>>,
    poisoned: bool,
}

impl Sandbox {
    pub(crate) fn new(configured: &ConfiguredPlugin) -> Result<Sandbox, PluginError> {
        let plugin = &configured.plugin;
        let hook = configured.hook;
        let limits = &configured.limits;
        let mut store = new_store(&plugin.engine, plugin.name.clone(), limits);
        let err = |store: &Store<SandboxState>, e: wasmtime::Error| PluginError {
            plugin: plugin.name.to_string(),
            hook,
            kind: classify(e, store.data(), limits),
        };
        let linked = &configured.linked;
        let instance = match linked.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(err(&store, e)),
        };
        // The SAN and CSR functions, typed (and type-checked) with the bounded answers.
        macro_rules! answer {
            ($index:expr, $guest:path) => {
                $index
                    .as_ref()
                    .ok_or_else(|| plugin.missing_export(hook))
                    .map(|i| instance.get_typed_func(&mut store, i).map($guest))?
            };
        }
        // The hook's typed exports, type-checked against this instance.
        macro_rules! load {
            ($indices:expr, $guest:path) => {
                $indices
                    .as_ref()
                    .ok_or_else(|| plugin.missing_export(hook))?
                    .load(&mut store, &instance)
                    .map($guest)
            };
        }
        let guest = match &linked.exports {
            Exports::V01 {
                config, renewal, ..
            } => {
                // 0.1: `configure` runs in every fresh instance.
                let configured_now = config
                    .load(&mut store, &instance)
                    .and_then(|guest| guest.call_configure(&mut store, &configured.settings));
                match configured_now {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => {
                        return Err(PluginError {
                            plugin: plugin.name.to_string(),
                            hook,
                            kind: PluginErrorKind::InvalidSettings {
                                message: sanitize(&message, 2048),
                            },
                        });
                    }
                    Err(e) => return Err(err(&store, e)),
                }
                match hook {
                    Hook::Renewal => load!(renewal, Guest::V01Renewal),
                    Hook::San => answer!(linked.answers.san, Guest::V01San),
                    Hook::Csr => answer!(linked.answers.csr, Guest::V01Csr),
                }
            }
            // 0.2 and later: the instance is the snapshot taken after `configure`.
            Exports::V02 { renewal, .. } => match hook {
                Hook::Renewal => load!(renewal, Guest::V02Renewal),
                Hook::San => answer!(linked.answers.san, Guest::V02San),
                Hook::Csr => answer!(linked.answers.csr, Guest::V02Csr),
            },
            Exports::V03 { renewal, .. } => match hook {
                Hook::Renewal => load!(renewal, Guest::V03Renewal),
                Hook::San => answer!(linked.answers.san, Guest::V03San),
                Hook::Csr => answer!(linked.answers.csr, Guest::V03Csr),
            },
        }
        .map_err(|e| err(&store, e))?;
        Ok(Sandbox {
            store,
            guest,
            plugin: plugin.clone(),
            hook,
            limits: *limits,
            deadline: plugin
                .engine
                .options()
                .epoch_interruption
                .then(|| plugin.engine.deadline_ticks(limits.timeout)),
            details: None,
            poisoned: false,
        })
    }

    /// Messages the plugin logged so far (and forgets them).
    pub fn take_logs(&mut self) -> Vec<PluginLog> {
        self.store.data_mut().take_logs()
    }

    fn error(&self, kind: PluginErrorKind) -> PluginError {
        PluginError {
            plugin: self.plugin.name.to_string(),
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
            return Err(self.missing_for(hook));
        }
        if let Some(ticks) = self.deadline {
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
        let answer = match &self.guest {
            Guest::V01Renewal(guest) => {
                let wit_request = convert::v01::renewal_request(request);
                guest
                    .call_decide(&mut self.store, &wit_request)
                    .map(convert::v01::renewal_decision)
            }
            Guest::V02Renewal(guest) => {
                // Lent as a borrow for this call only: the plugin cannot keep it.
                match lend_details(&mut self.store, &mut self.details, request) {
                    Ok(lent) => guest
                        .call_decide(
                            &mut self.store,
                            &convert::v02::renewal_request(request),
                            lent,
                        )
                        .map(convert::v02::renewal_decision),
                    Err(e) => Err(e),
                }
            }
            Guest::V03Renewal(guest) => {
                // The certificate `facts.details()` gives, for this call only.
                let state = self.store.data_mut();
                state.current = Some(request.certificate.clone());
                state.current_name.clear();
                state.current_name.push_str(&request.name);
                let answer =
                    guest.call_decide(&mut self.store, convert::v03::renewal_request(request));
                let state = self.store.data_mut();
                state.current = None;
                for rep in std::mem::take(&mut state.made) {
                    // Already gone when the plugin dropped it, as it should.
                    let kept = Resource::<CertificateDetails>::new_own(rep);
                    if let Ok(details) = state.table.get_mut(&kept) {
                        details.expired = true;
                    }
                }
                answer.map(|d| convert::v03::renewal_decision(d, request))
            }
            _ => return Err(self.missing()),
        };
        match answer {
            Ok(decision) => decision.map_err(|m| self.invalid(m)),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Ask the SAN hook.
    pub fn validate_sans(&mut self, request: &SanRequest) -> Result<SanDecision, PluginError> {
        self.begin(Hook::San)?;
        let answer = match &self.guest {
            Guest::V01San(f) => f
                .call(&mut self.store, (convert::v01::san_request(request),))
                .map(|(a,)| convert::v01::san_decision(answer::v01::san(a))),
            Guest::V02San(f) => f
                .call(&mut self.store, (convert::v02::san_request(request),))
                .map(|(a,)| convert::v02::san_decision(answer::v02::san(a))),
            Guest::V03San(f) => f
                .call(&mut self.store, (convert::v03::san_request(request),))
                .map(|(a,)| convert::v03::san_decision(answer::v03::san(a))),
            _ => return Err(self.missing()),
        };
        self.answered(answer)
    }

    /// Ask the CSR hook.
    pub fn review_csr(&mut self, request: &CsrRequest) -> Result<CsrDecision, PluginError> {
        self.begin(Hook::Csr)?;
        let answer = match &self.guest {
            Guest::V01Csr(f) => f
                .call(&mut self.store, (convert::v01::csr_request(request),))
                .map(|(a,)| convert::v01::csr_decision(answer::v01::csr(a))),
            Guest::V02Csr(f) => f
                .call(&mut self.store, (convert::v02::csr_request(request),))
                .map(|(a,)| convert::v02::csr_decision(answer::v02::csr(a))),
            Guest::V03Csr(f) => f
                .call(&mut self.store, (convert::v03::csr_request(request),))
                .map(|(a,)| convert::v03::csr_decision(answer::v03::csr(a))),
            _ => return Err(self.missing()),
        };
        self.answered(answer)
    }

    /// A bounded answer, converted: a list refused by its length is a malformed answer (the
    /// sandbox is poisoned all the same: the call did not finish), any other error a failure.
    fn answered<D>(
        &mut self,
        answer: wasmtime::Result<Result<D, String>>,
    ) -> Result<D, PluginError> {
        match answer {
            Ok(decision) => decision.map_err(|m| self.invalid(m)),
            Err(e) => match e.downcast_ref::<TooManyViolations>() {
                Some(too_many) => {
                    self.poisoned = true;
                    Err(self.invalid(too_many.to_string()))
                }
                None => Err(self.failed(e)),
            },
        }
    }

    fn missing(&self) -> PluginError {
        self.missing_for(self.hook)
    }

    fn missing_for(&self, hook: Hook) -> PluginError {
        self.plugin.missing_export(hook)
    }
}

/// The `details` handle of a 0.2 renewal request: the host's entry, filled with `request`,
/// lent as a borrow for one call. Nothing of an earlier request stays in it.
fn lend_details(
    store: &mut Store<SandboxState>,
    details: &mut Option<Resource<CertificateDetails>>,
    request: &RenewalRequest,
) -> wasmtime::Result<Resource<CertificateDetails>> {
    let table = &mut store.data_mut().table;
    let rep = match details {
        Some(entry) => {
            table.get_mut(entry)?.facts = request.certificate.clone();
            entry.rep()
        }
        None => {
            let entry = table.push(CertificateDetails {
                facts: request.certificate.clone(),
                name: String::new(),
                expired: false,
            })?;
            let rep = entry.rep();
            *details = Some(entry);
            rep
        }
    };
    Ok(Resource::new_borrow(rep))
}

/// Turn a wasmtime failure into the typed error. The wasm backtrace, useful to the plugin's
/// author, goes to the debug log (`-vv`) rather than into the message.
pub(crate) fn classify(
    e: wasmtime::Error,
    state: &SandboxState,
    limits: &SandboxLimits,
) -> PluginErrorKind {
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
