//! Kubernetes `CertificateSigningRequest` objects, as `kubectl get csr NAME -o json` prints them:
//! read the request and its context from `spec`, write the decision back as a status condition
//! and, once signed, `status.certificate`. The rest of the object is kept as it was, so the
//! result can go back to the API server:
//!
//! ```sh
//! kubectl get csr NAME -o json | rotor csr sign --csr - > out.json
//! kubectl replace --raw /apis/certificates.k8s.io/v1/certificatesigningrequests/NAME/approval -f out.json
//! kubectl replace --raw /apis/certificates.k8s.io/v1/certificatesigningrequests/NAME/status -f out.json
//! ```

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{CsrInput, Verdict};
use crate::contract::CsrContext;
use crate::facts::{PemKind, Usage, read_pem_blocks};

/// A parsed object.
#[derive(Clone, Debug)]
pub struct CsrObject {
    /// `metadata.name`.
    pub name: String,
    pub object: Value,
    pub input: CsrInput,
    /// Already Approved, Denied or Failed, or already carrying a certificate: left alone.
    pub decided: Option<String>,
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Whether `bytes` look like a JSON object rather than PEM.
pub(crate) fn is_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Parse a `CertificateSigningRequest` object. `what` names it in errors; `node_addresses` is
/// the evidence the host holds for the requesting node.
pub fn parse(what: &str, value: Value, node_addresses: &[IpAddr]) -> Result<CsrObject, String> {
    let kind = field(&value, &["kind"])
        .and_then(Value::as_str)
        .unwrap_or("");
    if kind != "CertificateSigningRequest" {
        return Err(format!(
            "{what}: 'kind' is '{kind}', not CertificateSigningRequest"
        ));
    }
    let name = field(&value, &["metadata", "name"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let what = if name.is_empty() {
        what.to_string()
    } else {
        format!("{what} ({name})")
    };
    let string = |path: &[&str]| {
        field(&value, path)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let request =
        string(&["spec", "request"]).ok_or_else(|| format!("{what}: 'spec.request' is missing"))?;
    let pem = B64
        .decode(request.trim())
        .map_err(|e| format!("{what}: 'spec.request' is not base64: {e}"))?;
    let der = read_pem_blocks("spec.request", &pem)
        .map_err(|e| format!("{what}: {e}"))?
        .into_iter()
        .find(|b| b.kind == PemKind::CertificateRequest)
        .map(|b| b.der)
        .ok_or_else(|| format!("{what}: 'spec.request' holds no CERTIFICATE REQUEST"))?;
    let signer_name = string(&["spec", "signerName"])
        .ok_or_else(|| format!("{what}: 'spec.signerName' is missing"))?;
    let username = string(&["spec", "username"]).unwrap_or_default();
    let uid = string(&["spec", "uid"]).unwrap_or_default();
    let groups = field(&value, &["spec", "groups"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let usages = field(&value, &["spec", "usages"])
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|u| {
                    u.as_str()
                        .unwrap_or("")
                        .parse::<Usage>()
                        .map_err(|e| format!("{what}: 'spec.usages': {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let expiration_seconds = field(&value, &["spec", "expirationSeconds"]).and_then(Value::as_u64);
    let decided = field(&value, &["status", "conditions"])
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .filter_map(|c| c.get("type").and_then(Value::as_str))
                .find(|t| matches!(*t, "Approved" | "Denied" | "Failed"))
                .map(|t| format!("already {t}"))
        })
        .or_else(|| {
            // An empty certificate is none (the API's "not issued yet").
            field(&value, &["status", "certificate"])
                .filter(|c| c.as_str().is_none_or(|s| !s.is_empty()))
                .map(|_| "already issued".to_string())
        });
    Ok(CsrObject {
        name,
        object: value,
        input: CsrInput {
            der,
            ctx: CsrContext {
                signer_name,
                username,
                uid,
                groups,
                usages,
                expiration_seconds,
                node_addresses: node_addresses.to_vec(),
            },
            disputed: Vec::new(),
        },
        decided,
    })
}

/// Record the verdict (and the certificate) in the object's status. An abstention adds nothing:
/// the request stays pending.
pub(crate) fn write_back(
    object: &mut Value,
    verdict: &Verdict,
    certificate_pem: Option<&str>,
    now: OffsetDateTime,
) {
    let (kind, reason) = match verdict {
        Verdict::Approve { .. } => ("Approved", "RotorPolicyApproved"),
        Verdict::Deny { .. } => ("Denied", "RotorPolicyDenied"),
        Verdict::Abstain { .. } => return,
    };
    let stamp = crate::clock::rfc3339(now.replace_nanosecond(0).unwrap_or(now));
    let condition = json!({
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": verdict.summary(),
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
    });
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    let status = obj.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    if let Some(status) = status.as_object_mut() {
        let conditions = status.entry("conditions").or_insert_with(|| json!([]));
        if !conditions.is_array() {
            *conditions = json!([]);
        }
        if let Some(list) = conditions.as_array_mut() {
            list.push(condition);
        }
        if let Some(pem) = certificate_pem {
            status.insert("certificate".into(), Value::String(B64.encode(pem)));
        }
    }
}

/// A `CertificateSigningRequest` object for a PEM CSR (for tests, benches and tools).
pub fn object_for(name: &str, csr_pem: &str, ctx: &CsrContext) -> Value {
    let mut spec = json!({
        "request": B64.encode(csr_pem),
        "signerName": ctx.signer_name,
        "username": ctx.username,
        "groups": ctx.groups,
        "usages": ctx.usages.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
    });
    if let Some(e) = ctx.expiration_seconds {
        spec["expirationSeconds"] = json!(e);
    }
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": { "name": name },
        "spec": spec,
        "status": {},
    })
}
