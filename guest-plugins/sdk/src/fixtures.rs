//! The fixture format of `rotor policy test`, as types: read, write or generate fixture files
//! with serde. The host runs them (`rotor policy test --bundle B DIR`): it parses the
//! certificates and CSRs they name, asks the bundle, and compares the decision.
//!
//! A fixture directory holds `*.json` files, each one [`Case`] or an array of cases:
//!
//! ```json
//! {
//!   "name": "a certificate expiring in 30 days is renewed",
//!   "hook": "renewal",
//!   "now": "2026-11-23T00:00:00Z",
//!   "input_file": "inputs/leaf.pem",
//!   "context": { "name": "serving-kube-apiserver" },
//!   "expect": { "decision": "renew", "reason_contains": "renewal window" }
//! }
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The hook a case asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Keep or renew.
    Renewal,
    /// Are these names acceptable.
    San,
    /// Approve, deny or abstain on a CSR.
    Csr,
}

/// One case: an input, its context, and the decision expected.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows, in words.
    pub name: String,
    /// The hook asked.
    pub hook: Hook,
    /// The instant to decide at (RFC 3339); required unless `input` carries `now`: fixtures
    /// never read the clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// A JSON fact record in the shape of the hook's request (exclusive with `input_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// A PEM or DER certificate or CSR, or a JSON record, relative to the case file; it cannot
    /// leave the fixture directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_file: Option<String>,
    /// What a certificate or CSR does not say by itself.
    #[serde(default, skip_serializing_if = "Context::is_empty")]
    pub context: Context,
    /// The decision expected.
    pub expect: Expect,
}

/// Context of a case: every field optional; the CSR hook needs `signer_name` and `username`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Renewal: the certificate's name in its layout (default: its CN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Renewal: the issuing CA's notAfter, RFC 3339 (default: the next certificate of the PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_not_after: Option<String>,
    /// SAN: the rule profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// SAN: `configuration`, `csr` or `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// SAN: the node the names must belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// SAN and CSR: addresses the host holds as evidence for the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_addresses: Vec<String>,
    /// CSR: `spec.signerName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_name: Option<String>,
    /// CSR: `spec.username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// CSR: `spec.uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// CSR: `spec.groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// CSR: `spec.usages`, Kubernetes spelling (see [`crate::usage`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    /// CSR: `spec.expirationSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<u64>,
}

impl Context {
    /// No field set.
    pub fn is_empty(&self) -> bool {
        *self == Context::default()
    }
}

/// The decision a case expects; every field but `decision` is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `keep`/`renew`, `allow`/`deny`, `approve`/`deny`/`abstain`.
    pub decision: String,
    /// Text the reason must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_contains: Option<String>,
    /// The exact set of violation codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<String>>,
    /// The lifetime the decision must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<u64>,
    /// `plugin`, `failure_mode` or `built_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A fixture file: one case or several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CaseFile {
    /// A file holding one case.
    One(Box<Case>),
    /// A file holding an array of cases.
    Many(Vec<Case>),
}

impl CaseFile {
    /// The cases of the file.
    pub fn into_cases(self) -> Vec<Case> {
        match self {
            CaseFile::One(c) => vec![*c],
            CaseFile::Many(v) => v,
        }
    }
}

/// Read every `*.json` file of a fixture directory, in name order: `(file name, its cases)`.
/// An error names the file.
#[allow(
    clippy::disallowed_methods,
    reason = "a vendor's test helper on the host target, not rotor's core (which reads through fs::Root)"
)]
pub fn load_dir(dir: &Path) -> Result<Vec<(String, Vec<Case>)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let file: CaseFile =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((name, file.into_cases()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bundles_fixtures_parse_and_round_trip() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/default/fixtures");
        let files = load_dir(&dir).unwrap();
        assert!(files.len() >= 3, "{files:?}");
        for (name, cases) in files {
            assert!(!cases.is_empty(), "{name}");
            for case in cases {
                let json = serde_json::to_value(&case).unwrap();
                let back: Case = serde_json::from_value(json).unwrap();
                assert_eq!(back, case, "{name}: {}", case.name);
            }
        }
    }
}
