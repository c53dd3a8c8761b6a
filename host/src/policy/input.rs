//! Hook requests from what an operator or vendor hands `rotor policy eval` and
//! `rotor policy test`: a PEM certificate or CSR (plus context flags), a DER file, or a JSON
//! fact record in the shape of the hook's request.

use std::net::IpAddr;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::contract::Hook;
use crate::contract::{CsrContext, CsrRequest, NodeIdentity, RenewalRequest, SanRequest, SanStage};
use crate::facts::{self, CertificateFacts, CsrFacts, FactsError, PemKind, Usage};

/// Context that a certificate or CSR does not carry by itself. Every field is optional; the
/// CSR hook needs at least `signer_name` and `username`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputContext {
    /// Renewal: the certificate's name in its layout (default: its CN).
    pub name: Option<String>,
    /// Renewal: the issuing CA's notAfter (default: the next certificate of the PEM bundle).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub issuer_not_after: Option<OffsetDateTime>,
    /// SAN: the rule profile (default `default`).
    pub profile: Option<String>,
    /// SAN: where the names come from (default: `configuration` for a certificate, `csr` for
    /// a CSR).
    pub stage: Option<SanStage>,
    /// SAN: the node the names must belong to.
    pub node_name: Option<String>,
    /// SAN and CSR: addresses the host holds as evidence for the node.
    #[serde(default)]
    pub node_addresses: Vec<IpAddr>,
    /// CSR: `spec.signerName`.
    pub signer_name: Option<String>,
    /// CSR: `spec.username`, `spec.uid`, `spec.groups`.
    pub username: Option<String>,
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// CSR: `spec.usages` (Kubernetes spelling).
    #[serde(default)]
    pub usages: Vec<Usage>,
    /// CSR: `spec.expirationSeconds`.
    pub expiration_seconds: Option<u64>,
}

/// A request for one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HookRequest {
    Renewal(RenewalRequest),
    San(SanRequest),
    Csr(CsrRequest),
}

impl HookRequest {
    /// The hook it asks.
    pub(crate) fn hook(&self) -> Hook {
        match self {
            HookRequest::Renewal(_) => Hook::Renewal,
            HookRequest::San(_) => Hook::San,
            HookRequest::Csr(_) => Hook::Csr,
        }
    }
}

/// The input cannot become a request for the hook.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum InputError {
    #[error(transparent)]
    Facts(#[from] FactsError),
    #[error("{what}: not a JSON {hook} request: {message}")]
    Json {
        what: String,
        hook: &'static str,
        message: String,
    },
    #[error("{what}: the {hook} hook needs {needs}")]
    WrongKind {
        what: String,
        hook: &'static str,
        needs: &'static str,
    },
    #[error("{what}: the csr hook needs {input} (the CSR does not say it)")]
    MissingContext {
        what: String,
        input: crate::input::Input,
    },
    #[error("{what}: neither PEM, JSON, nor a DER certificate or CSR")]
    Unrecognized { what: String },
}

enum Parsed {
    Certificates(Vec<CertificateFacts>),
    Csr(Box<CsrFacts>),
    Json(serde_json::Value),
}

fn parse(what: &str, bytes: &[u8]) -> Result<Parsed, InputError> {
    let text = std::str::from_utf8(bytes).ok();
    if text.is_some_and(|t| t.contains("-----BEGIN ")) {
        let blocks = facts::read_pem_blocks(what, bytes)?;
        if blocks.iter().any(|b| b.kind == PemKind::CertificateRequest) {
            return Ok(Parsed::Csr(Box::new(facts::parse_csr_pem(what, bytes)?)));
        }
        return Ok(Parsed::Certificates(facts::parse_certificates_pem(
            what, bytes,
        )?));
    }
    if let Some(t) = text
        && t.trim_start().starts_with('{')
    {
        return serde_json::from_str(t)
            .map(Parsed::Json)
            .map_err(|e| InputError::Json {
                what: what.into(),
                hook: "any",
                message: e.to_string(),
            });
    }
    if let Ok(cert) = facts::parse_certificate_der(what, bytes) {
        return Ok(Parsed::Certificates(vec![cert]));
    }
    if let Ok(csr) = facts::parse_csr_der(what, bytes) {
        return Ok(Parsed::Csr(Box::new(csr)));
    }
    Err(InputError::Unrecognized { what: what.into() })
}

/// Build the request for `hook` from the bytes of `what`. `now` is used unless a JSON record
/// carries its own.
pub(crate) fn build_request(
    hook: Hook,
    what: &str,
    bytes: &[u8],
    ctx: &InputContext,
    now: OffsetDateTime,
) -> Result<HookRequest, InputError> {
    match parse(what, bytes)? {
        Parsed::Json(mut value) => {
            if let Some(obj) = value.as_object_mut() {
                obj.entry("now")
                    .or_insert_with(|| serde_json::Value::String(crate::clock::rfc3339(now)));
            }
            let json_err = |e: serde_json::Error| InputError::Json {
                what: what.into(),
                hook: hook.as_str(),
                message: e.to_string(),
            };
            Ok(match hook {
                Hook::Renewal => {
                    HookRequest::Renewal(serde_json::from_value(value).map_err(json_err)?)
                }
                Hook::San => HookRequest::San(serde_json::from_value(value).map_err(json_err)?),
                Hook::Csr => HookRequest::Csr(serde_json::from_value(value).map_err(json_err)?),
            })
        }
        Parsed::Certificates(certs) => {
            let cert = certs
                .first()
                .cloned()
                .ok_or_else(|| InputError::Unrecognized { what: what.into() })?;
            match hook {
                Hook::Renewal => Ok(HookRequest::Renewal(RenewalRequest {
                    name: ctx
                        .name
                        .clone()
                        .or_else(|| cert.subject.common_name.clone())
                        .unwrap_or_else(|| "certificate".into()),
                    issuer_not_after: ctx
                        .issuer_not_after
                        .or_else(|| certs.get(1).map(|ca| ca.not_after)),
                    certificate: std::sync::Arc::new(cert),
                    now,
                })),
                Hook::San => Ok(HookRequest::San(SanRequest {
                    profile: ctx.profile.clone().unwrap_or_else(|| "default".into()),
                    stage: ctx.stage.unwrap_or(SanStage::Configuration),
                    subject: cert.subject,
                    sans: cert.sans,
                    node: node(ctx),
                    now,
                })),
                Hook::Csr => Err(InputError::WrongKind {
                    what: what.into(),
                    hook: "csr",
                    needs: "a CERTIFICATE REQUEST, not a certificate",
                }),
            }
        }
        Parsed::Csr(csr) => match hook {
            Hook::Renewal => Err(InputError::WrongKind {
                what: what.into(),
                hook: "renewal",
                needs: "a certificate, not a certificate request",
            }),
            Hook::San => Ok(HookRequest::San(SanRequest {
                profile: ctx.profile.clone().unwrap_or_else(|| "default".into()),
                stage: ctx.stage.unwrap_or(SanStage::Csr),
                subject: csr.subject.clone(),
                sans: csr.sans.clone(),
                node: node(ctx),
                now,
            })),
            Hook::Csr => {
                let signer_name = ctx.signer_name.clone().ok_or(InputError::MissingContext {
                    what: what.into(),
                    input: crate::input::Input::Signer,
                })?;
                let username = ctx.username.clone().ok_or(InputError::MissingContext {
                    what: what.into(),
                    input: crate::input::Input::Username,
                })?;
                let context = CsrContext {
                    signer_name,
                    username,
                    uid: ctx.uid.clone().unwrap_or_default(),
                    groups: ctx.groups.clone(),
                    usages: ctx.usages.clone(),
                    expiration_seconds: ctx.expiration_seconds,
                    node_addresses: ctx.node_addresses.clone(),
                };
                Ok(HookRequest::Csr(CsrRequest::new(&csr, context, now)))
            }
        },
    }
}

fn node(ctx: &InputContext) -> Option<NodeIdentity> {
    ctx.node_name.as_ref().map(|name| NodeIdentity {
        name: name.clone(),
        addresses: ctx.node_addresses.clone(),
    })
}
