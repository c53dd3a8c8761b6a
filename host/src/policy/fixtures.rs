//! `rotor policy test`: run fixture cases (input + expected decision) against a bundle, so a
//! vendor can test a plugin before shipping it.
//!
//! A fixture directory holds `*.json` files, each one case or an array of cases:
//!
//! ```json
//! {
//!   "name": "a certificate expiring in 30 days is renewed",
//!   "hook": "renewal",
//!   "now": "2026-11-23T00:00:00Z",
//!   "input_file": "certs/expires-2026-12-23.pem",
//!   "context": { "name": "serving-kube-apiserver" },
//!   "expect": { "decision": "renew", "reason_contains": "renewal window" }
//! }
//! ```
//!
//! - `input` (a JSON fact record for the hook) or `input_file` (PEM, DER or JSON, relative to
//!   the case file; it cannot leave the fixture directory);
//! - `context`: what a certificate or CSR does not say ([`InputContext`]);
//! - `now` is required unless the JSON record carries it: fixtures never read the clock;
//! - `expect.decision`: `keep`/`renew`, `allow`/`deny`, `approve`/`deny`/`abstain`;
//!   `reason_contains`, `violations` (the exact set of reason codes), `lifetime_seconds`,
//!   `source` (`plugin`, `failure_mode`, `built_in`) are optional.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use time::OffsetDateTime;

use super::bundle::Bundle;
use super::diff::Verdict;
use super::evaluate::{Outcome, Source};
use super::input::{HookRequest, InputContext, build_request};
use crate::contract::Hook;
use crate::fs::{FsError, Root};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    hook: Hook,
    #[serde(default, with = "time::serde::rfc3339::option")]
    now: Option<OffsetDateTime>,
    input: Option<serde_json::Value>,
    input_file: Option<String>,
    #[serde(default)]
    context: InputContext,
    expect: Expectation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    decision: String,
    reason_contains: Option<String>,
    violations: Option<Vec<String>>,
    lifetime_seconds: Option<u64>,
    source: Option<Source>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CaseFile {
    One(Box<Case>),
    Many(Vec<Case>),
}

/// One case's result.
#[derive(Debug)]
pub(crate) struct CaseResult {
    /// `file.json: case name`.
    pub name: String,
    /// `None` when it passed, otherwise why it failed.
    pub failure: Option<String>,
    /// The decision as JSON (what `rotor policy eval` prints), when the case got one.
    pub outcome: Option<serde_json::Value>,
    /// The hook the case asks, when its file could be read.
    pub hook: Option<Hook>,
}

/// The fixture directory itself is unusable (not the cases: those fail one by one).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FixtureError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{}: no *.json fixture files", .0.display())]
    Empty(PathBuf),
}

/// A case's name and its question, or why it has none.
pub(crate) type CaseRequest = (String, Result<HookRequest, String>);

/// The question of every case of `dir` (`file.json: case name`), or why it has none.
pub(crate) fn requests(dir: &Path) -> Result<Vec<CaseRequest>, FixtureError> {
    let (root, files) = fixture_files(dir)?;
    let mut out = Vec::new();
    for file in files {
        match read_cases(&root, &file) {
            Err(message) => out.push((file.clone(), Err(message))),
            Ok(cases) => {
                for case in cases {
                    out.push((
                        format!("{file}: {}", case.name),
                        case_request(&root, &file, &case),
                    ));
                }
            }
        }
    }
    Ok(out)
}

fn fixture_files(dir: &Path) -> Result<(Root, Vec<String>), FixtureError> {
    let root = Root::open_ambient(dir)?;
    let mut files: Vec<String> = root
        .list_dir(Path::new("."))?
        .into_iter()
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(FixtureError::Empty(dir.to_path_buf()));
    }
    Ok((root, files))
}

/// Run every case of `dir` against `bundle`.
pub(crate) fn run(bundle: &Bundle, dir: &Path) -> Result<Vec<CaseResult>, FixtureError> {
    let (root, files) = fixture_files(dir)?;
    let mut results = Vec::new();
    for file in files {
        let cases = match read_cases(&root, &file) {
            Ok(cases) => cases,
            Err(message) => {
                results.push(CaseResult {
                    name: file.clone(),
                    failure: Some(message),
                    outcome: None,
                    hook: None,
                });
                continue;
            }
        };
        for case in cases {
            let mut outcome = None;
            let failure = run_case(bundle, &root, &file, &case, &mut outcome).err();
            results.push(CaseResult {
                name: format!("{file}: {}", case.name),
                failure,
                outcome,
                hook: Some(case.hook),
            });
        }
    }
    Ok(results)
}

fn read_cases(root: &Root, file: &str) -> Result<Vec<Case>, String> {
    let bytes = root.read(Path::new(file)).map_err(|e| e.to_string())?;
    match serde_json::from_slice::<CaseFile>(&bytes) {
        Ok(CaseFile::One(c)) => Ok(vec![*c]),
        Ok(CaseFile::Many(v)) => Ok(v),
        Err(_) => {
            // Re-parse as one case for a precise message.
            serde_json::from_slice::<Case>(&bytes)
                .map(|c| vec![c])
                .map_err(|e| format!("invalid fixture: {e}"))
        }
    }
}

/// Fuzzing entry: parse a fixture file and build the request of every inline case, as
/// [`run`] does before it asks a plugin. Never panics.
#[doc(hidden)]
pub(crate) fn fuzz_cases(bytes: &[u8]) {
    let cases = match serde_json::from_slice::<CaseFile>(bytes) {
        Ok(CaseFile::One(c)) => vec![*c],
        Ok(CaseFile::Many(v)) => v,
        Err(_) => return,
    };
    for case in cases {
        if let Some(input) = &case.input
            && let Ok(bytes) = serde_json::to_vec(input)
        {
            let now = case.now.unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let _ = build_request(case.hook, "fuzz", &bytes, &case.context, now);
        }
    }
}

fn run_case(
    bundle: &Bundle,
    root: &Root,
    file: &str,
    case: &Case,
    outcome: &mut Option<serde_json::Value>,
) -> Result<(), String> {
    let request = case_request(root, file, case)?;
    let (got, json) = evaluate(bundle, &request)?;
    *outcome = Some(json);
    check(&case.expect, &got)
}

/// The question a case asks: its input (inline or from its file) with its context and `now`.
fn case_request(root: &Root, file: &str, case: &Case) -> Result<HookRequest, String> {
    let (what, bytes) = match (&case.input, &case.input_file) {
        (Some(v), None) => (
            format!("{file}: input"),
            serde_json::to_vec(v).map_err(|e| e.to_string())?,
        ),
        (None, Some(f)) => {
            let rel = Path::new(file).parent().unwrap_or(Path::new("")).join(f);
            (
                root.display(&rel).display().to_string(),
                root.read(&rel).map_err(|e| e.to_string())?,
            )
        }
        _ => return Err("exactly one of 'input' and 'input_file' is required".into()),
    };
    let json_has_now = case.input.as_ref().is_some_and(|v| v.get("now").is_some());
    let now = match case.now {
        Some(now) => now,
        None if json_has_now => OffsetDateTime::UNIX_EPOCH,
        None => return Err("'now' is required (fixtures never read the clock)".into()),
    };
    build_request(case.hook, &what, &bytes, &case.context, now).map_err(|e| e.to_string())
}

/// What a case produced (flattened as `rotor policy diff` compares decisions), with the
/// decision as `rotor policy eval` prints it. A plugin failure the bundle does not answer for
/// fails the case.
fn evaluate(
    bundle: &Bundle,
    request: &HookRequest,
) -> Result<(Verdict, serde_json::Value), String> {
    fn both<D: serde::Serialize>(
        r: Result<Outcome<D>, crate::plugin::PluginError>,
        flat: fn(&Outcome<D>) -> Verdict,
    ) -> Result<(Verdict, serde_json::Value), String> {
        let o = r.map_err(|e| e.to_string())?;
        Ok((flat(&o), serde_json::to_value(&o).unwrap_or_default()))
    }
    match request {
        HookRequest::Renewal(r) => both(bundle.renewal(r), Verdict::renewal),
        HookRequest::San(r) => both(bundle.validate_sans(r), Verdict::san),
        HookRequest::Csr(r) => both(bundle.review_csr(r), Verdict::csr),
    }
}

fn check(expect: &Expectation, got: &Verdict) -> Result<(), String> {
    let mut problems = Vec::new();
    if expect.decision != got.decision {
        problems.push(format!(
            "expected decision '{}', got '{}' ({})",
            expect.decision, got.decision, got.reason
        ));
    }
    if let Some(s) = &expect.reason_contains
        && !got.reason.contains(s.as_str())
    {
        problems.push(format!("reason {:?} does not contain {:?}", got.reason, s));
    }
    if let Some(codes) = &expect.violations {
        let want: BTreeSet<String> = codes.iter().cloned().collect();
        if want != got.codes {
            problems.push(format!("expected violations {want:?}, got {:?}", got.codes));
        }
    }
    if let Some(l) = expect.lifetime_seconds
        && got.lifetime_seconds != Some(l)
    {
        problems.push(format!(
            "expected lifetime_seconds {l}, got {:?}",
            got.lifetime_seconds
        ));
    }
    if let Some(s) = expect.source
        && Verdict::source(s) != got.source
    {
        problems.push(format!(
            "expected source {:?}, got {:?}",
            Verdict::source(s),
            got.source
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
