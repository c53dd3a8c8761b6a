//! Asking a bundle: run the hook's plugin in a fresh sandbox, apply the failure mode when it
//! fails, and apply the host's own rules to the answer (clamps, CA protection).
//!
//! A plugin failure never approves a CSR and never allows a name; a renewal failure falls back
//! to the built-in rule unless the bundle says `failure_mode = "error"`.

use serde::Serialize;

use super::bundle::{Bundle, FailureMode, HookPlugin, Slot};
use super::{builtin, rules};
use crate::contract::Hook;
use crate::contract::{CsrDecision, RenewalDecision, SanDecision};
use crate::contract::{CsrRequest, RenewalRequest, SanRequest};
use crate::facts::Violation;
use crate::plugin::{PluginError, PluginLog, Sandbox};

/// Who made the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The hook's plugin answered.
    Plugin,
    /// The plugin failed and the bundle's failure mode decided.
    FailureMode,
    /// The bundle has no plugin for this hook: the host's built-in rule decided.
    BuiltIn,
}

/// A decision with everything the operator should know about how it was reached.
#[derive(Debug, Serialize)]
pub struct Outcome<D> {
    /// The hook asked.
    pub hook: Hook,
    /// The decision, after the host's rules.
    #[serde(flatten)]
    pub decision: D,
    /// Who decided: the plugin, the failure mode, or the built-in rule.
    pub source: Source,
    /// The plugin asked, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Adjustments the host made to the plugin's answer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The plugin failure that made the failure mode decide.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "error_json")]
    pub error: Option<PluginError>,
    /// What the plugin logged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<PluginLog>,
}

fn error_json<S: serde::Serializer>(e: &Option<PluginError>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => {
            serde_json::json!({ "code": e.kind.code(), "message": e.to_string() }).serialize(s)
        }
        None => s.serialize_none(),
    }
}

/// What a hook's plugin answered, and what its failure would mean.
struct Asked<D> {
    result: Result<D, PluginError>,
    logs: Vec<PluginLog>,
    failure_mode: FailureMode,
    plugin: String,
    /// `false` for a plugin that could not be loaded.
    loaded: bool,
}

impl<D> Asked<D> {
    /// How the plugin failed, in words: at decision time, or before (at load).
    fn failed(&self) -> &'static str {
        if self.loaded {
            "failed"
        } else {
            "could not be loaded"
        }
    }
}

impl<D> Outcome<D> {
    fn new(hook: Hook, decision: D, source: Source, plugin: Option<String>) -> Outcome<D> {
        Outcome {
            hook,
            decision,
            source,
            plugin,
            notes: Vec::new(),
            error: None,
            logs: Vec::new(),
        }
    }
}

// Every call runs in a fresh sandbox (a new instance: of the configured snapshot for a 0.2
// plugin, configured anew for a 0.1 plugin): no state passes from one decision to the next, so a plugin that keeps a counter in a static sees 1 every time,
// and one that fails on one subject cannot affect another's.
impl Bundle {
    /// Run `call` in a fresh sandbox of `hp`, collecting its logs.
    fn run<D>(
        hp: &HookPlugin,
        call: impl FnOnce(&mut Sandbox) -> Result<D, PluginError>,
    ) -> (Result<D, PluginError>, Vec<PluginLog>) {
        match hp.configured.sandbox() {
            Ok(mut sandbox) => {
                let result = call(&mut sandbox);
                (result, sandbox.take_logs())
            }
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// The hook's plugin run in a fresh sandbox, with its failure mode and name; `None` when the
    /// bundle has no plugin for the hook. A plugin that could not be loaded answers every call
    /// with its load error, so its failure mode decides as it would at decision time.
    fn ask<D>(
        &self,
        hook: Hook,
        call: impl FnOnce(&mut Sandbox) -> Result<D, PluginError>,
    ) -> Option<Asked<D>> {
        match self.slot(hook) {
            Slot::Absent => None,
            Slot::Failed(f) => Some(Asked {
                result: Err(f.error.clone()),
                logs: Vec::new(),
                failure_mode: f.failure_mode,
                plugin: f.plugin.clone(),
                loaded: false,
            }),
            Slot::Ready(hp) => {
                let (result, logs) = Self::run(hp, call);
                Some(Asked {
                    result,
                    logs,
                    failure_mode: hp.failure_mode,
                    plugin: hp.plugin.name().to_string(),
                    loaded: true,
                })
            }
        }
    }

    /// Ask the renewal hook whether to renew `request.certificate`.
    ///
    /// The host's own rules, applied whatever the plugin says: a CA certificate is never
    /// renewed automatically, and a requested lifetime is clamped to the issuing CA's notAfter.
    ///
    /// # Errors
    /// Only when the plugin fails and the bundle's failure mode is `error`.
    pub fn renewal(
        &self,
        request: &RenewalRequest,
    ) -> Result<Outcome<RenewalDecision>, PluginError> {
        let hook = Hook::Renewal;
        let mut outcome = match self.ask(hook, |s| s.renewal(request)) {
            None => {
                let d = builtin::renewal(request, self.fallback_window);
                let mut o = Outcome::new(hook, d, Source::BuiltIn, None);
                o.notes
                    .push("no renewal plugin in the bundle: built-in rule".into());
                o
            }
            Some(asked) => {
                let failed = asked.failed();
                let mut o = match asked.result {
                    Ok(d) => Outcome::new(hook, d, Source::Plugin, Some(asked.plugin)),
                    Err(e) if asked.failure_mode == FailureMode::Error => return Err(e),
                    Err(e) => {
                        let d = builtin::renewal(request, self.fallback_window);
                        let mut o = Outcome::new(hook, d, Source::FailureMode, Some(asked.plugin));
                        o.notes.push(format!(
                            "the plugin {failed}; used the built-in rule (renew when expired or within {} days)",
                            self.fallback_window.as_secs() / 86_400
                        ));
                        o.error = Some(e);
                        o
                    }
                };
                o.logs = asked.logs;
                o
            }
        };
        let (decision, notes) = rules::renewal(request, outcome.decision);
        outcome.decision = decision;
        outcome.notes.extend(notes);
        Ok(outcome)
    }

    /// Ask the SAN hook whether `request`'s names are acceptable.
    ///
    /// # Errors
    /// Only when the plugin fails and the bundle's failure mode is `error`.
    pub fn validate_sans(&self, request: &SanRequest) -> Result<Outcome<SanDecision>, PluginError> {
        let hook = Hook::San;
        let Some(asked) = self.ask(hook, |s| s.validate_sans(request)) else {
            let mut o = Outcome::new(hook, SanDecision::Allow, Source::BuiltIn, None);
            o.notes
                .push("no SAN plugin in the bundle: names are not validated by policy".into());
            return Ok(o);
        };
        let failed = asked.failed();
        let mut o = match asked.result {
            Ok(d) => Outcome::new(hook, d, Source::Plugin, Some(asked.plugin)),
            Err(e) if asked.failure_mode == FailureMode::Error => return Err(e),
            Err(e) => {
                let d = SanDecision::Deny {
                    violations: vec![Violation::new(
                        "PolicyPluginFailed",
                        "",
                        format!("fail closed: the plugin {failed}: {e}"),
                    )],
                };
                let mut o = Outcome::new(hook, d, Source::FailureMode, Some(asked.plugin));
                o.error = Some(e);
                o
            }
        };
        o.logs = asked.logs;
        Ok(o)
    }

    /// Ask the CSR hook about `request`. The host refuses an approval that grants a usage nobody
    /// requested, and clamps an approved lifetime to the requested `expirationSeconds`.
    ///
    /// # Errors
    /// Only when the plugin fails and the bundle's failure mode is `error`.
    pub fn review_csr(&self, request: &CsrRequest) -> Result<Outcome<CsrDecision>, PluginError> {
        let hook = Hook::Csr;
        let Some(asked) = self.ask(hook, |s| s.review_csr(request)) else {
            let d = CsrDecision::Abstain {
                reason: "no CSR plugin in the bundle: manual approval required".into(),
            };
            return Ok(Outcome::new(hook, d, Source::BuiltIn, None));
        };
        let failed = asked.failed();
        let plugin = asked.plugin;
        let result = asked.result.and_then(|d| {
            rules::csr_answer(request, d).map_err(|message| PluginError {
                plugin: plugin.clone(),
                hook,
                kind: crate::plugin::PluginErrorKind::InvalidAnswer { message },
            })
        });
        let mut o = match result {
            Ok((d, notes)) => {
                let mut o = Outcome::new(hook, d, Source::Plugin, Some(plugin));
                o.notes = notes;
                o
            }
            Err(e) if asked.failure_mode == FailureMode::Error => return Err(e),
            Err(e) => {
                let d = match asked.failure_mode {
                    FailureMode::Deny => CsrDecision::Deny {
                        violations: vec![Violation::new(
                            "PolicyPluginFailed",
                            "",
                            format!("fail closed: the plugin {failed}: {e}"),
                        )],
                    },
                    _ => CsrDecision::Abstain {
                        reason: format!("left pending because the policy plugin {failed}: {e}"),
                    },
                };
                let mut o = Outcome::new(hook, d, Source::FailureMode, Some(plugin));
                o.error = Some(e);
                o
            }
        };
        o.logs = asked.logs;
        Ok(o)
    }
}
