//! What a CSR input is, and the evidence the host holds about nodes: a Kubernetes
//! `CertificateSigningRequest` object (JSON, which carries its own context) or a PEM CSR (whose
//! context — signer, user, usages — the caller gives), each becoming an [`Item`] to review.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::batch::{Item, ItemInput};
use super::{CsrInput, default_usages, k8s};
use crate::contract::CsrContext;
use crate::facts::{PemKind, Usage, read_pem_blocks};
use crate::input::Input;

/// Addresses the host holds as evidence for nodes: some for whoever asks (`--node-ip`), and a
/// map by node name (`--node-evidence`: `{"node-name": ["10.0.0.5", ...]}`).
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    for_anyone: Vec<IpAddr>,
    by_node: BTreeMap<String, Vec<IpAddr>>,
}

impl Evidence {
    /// Evidence from addresses for any requester and, optionally, the JSON map by node name.
    ///
    /// # Errors
    /// The map is not `{"node": ["ip", ...]}`.
    pub fn new(for_anyone: Vec<IpAddr>, by_node_json: Option<&[u8]>) -> Result<Evidence, String> {
        let by_node = match by_node_json {
            None => BTreeMap::new(),
            Some(json) => serde_json::from_slice(json)
                .map_err(|e| format!("expected {{\"node\": [\"ip\", ...]}}: {e}"))?,
        };
        Ok(Evidence {
            for_anyone,
            by_node,
        })
    }

    /// The addresses held for `username` (`system:node:<name>` names its node).
    pub fn for_user(&self, username: &str) -> Vec<IpAddr> {
        let node = username.strip_prefix("system:node:").unwrap_or("");
        let mut ips = self.for_anyone.clone();
        if let Some(more) = self.by_node.get(node) {
            ips.extend(more.iter().copied());
        }
        ips
    }
}

/// The Kubernetes context of PEM CSRs, which carry none of their own: every field a
/// `CertificateSigningRequest` object's `spec` would hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PemContext {
    /// `spec.signerName` (required).
    pub signer: Option<String>,
    /// `spec.username` (required).
    pub username: Option<String>,
    /// `spec.uid`.
    pub uid: Option<String>,
    /// `spec.groups`.
    pub groups: Vec<String>,
    /// `spec.usages`; empty: the usages the CSR requests, else the signer's standard ones.
    pub usages: Vec<Usage>,
    /// `spec.expirationSeconds`.
    pub expiration_seconds: Option<u64>,
}

/// What a PEM CSR's context lacks (named as the front end names [`Input`]s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingContext {
    /// The signer name.
    Signer,
    /// The requesting user.
    Username,
}

impl std::fmt::Display for MissingContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&match self {
            MissingContext::Signer => format!(
                "a PEM CSR needs {} (a CertificateSigningRequest object carries it)",
                Input::Signer
            ),
            MissingContext::Username => format!("a PEM CSR needs {} (who asks)", Input::Username),
        })
    }
}

impl PemContext {
    /// The context of one PEM CSR: these values, and the evidence held for its requester.
    ///
    /// # Errors
    /// No signer or no user was given.
    pub fn context(&self, evidence: &Evidence) -> Result<CsrContext, MissingContext> {
        let signer_name = self.signer.clone().ok_or(MissingContext::Signer)?;
        let username = self.username.clone().ok_or(MissingContext::Username)?;
        Ok(CsrContext {
            node_addresses: evidence.for_user(&username),
            signer_name,
            username,
            uid: self.uid.clone().unwrap_or_default(),
            groups: self.groups.clone(),
            usages: self.usages.clone(),
            expiration_seconds: self.expiration_seconds,
        })
    }
}

/// Classify one input named `name`: a Kubernetes object (JSON) or a PEM CSR with `pem`'s
/// context, either with the evidence held for its requester. An input that is neither, or a
/// PEM CSR whose context lacks something, is an [`ItemInput::Invalid`] naming it, so one bad
/// file never stops a batch.
pub fn classify(name: &str, bytes: &[u8], pem: &PemContext, evidence: &Evidence) -> Item {
    let input = if k8s::is_json(bytes) {
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => {
                let user = v
                    .pointer("/spec/username")
                    .and_then(|u| u.as_str())
                    .unwrap_or("")
                    .to_string();
                match k8s::parse(name, v, &evidence.for_user(&user)) {
                    Ok(o) => ItemInput::Object(Box::new(o)),
                    Err(e) => ItemInput::Invalid(e),
                }
            }
            Err(e) => ItemInput::Invalid(format!("{name}: not JSON: {e}")),
        }
    } else {
        match read_pem_blocks(name, bytes) {
            Ok(blocks) => match (
                blocks
                    .into_iter()
                    .find(|b| b.kind == PemKind::CertificateRequest),
                pem.context(evidence),
            ) {
                (Some(b), Ok(mut ctx)) => {
                    if ctx.usages.is_empty()
                        && let Some((usages, _)) = default_usages(&ctx.signer_name, &b.der)
                    {
                        ctx.usages = usages;
                    }
                    ItemInput::Pem(CsrInput {
                        der: b.der,
                        ctx,
                        disputed: Vec::new(),
                    })
                }
                (None, _) => ItemInput::Invalid(format!("{name}: no CERTIFICATE REQUEST block")),
                (_, Err(m)) => ItemInput::Invalid(format!("{name}: {m}")),
            },
            Err(e) => ItemInput::Invalid(e.to_string()),
        }
    };
    Item {
        name: name.to_string(),
        input,
    }
}

/// [`classify`] every `(name, bytes)` input on `threads` threads, in order: parsing (JSON,
/// base64, PEM, the CSR's DER) is a fair share of a batch's work. `None` if a thread panicked.
pub fn classify_all(
    inputs: &[(&str, &[u8])],
    pem: &PemContext,
    evidence: &Evidence,
    threads: usize,
) -> Option<Vec<Item>> {
    let chunk = inputs.len().div_ceil(threads.max(1)).max(1);
    let items: Vec<Item> = std::thread::scope(|scope| {
        let parsers: Vec<_> = inputs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(name, bytes)| classify(name, bytes, pem, evidence))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parsers
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_default())
            .collect()
    });
    (items.len() == inputs.len()).then_some(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_is_held_per_node_and_for_anyone() {
        let e = Evidence::new(
            vec!["10.0.0.9".parse().unwrap()],
            Some(br#"{"a": ["10.0.0.5"]}"#),
        )
        .unwrap();
        assert_eq!(e.for_user("system:node:a").len(), 2);
        assert_eq!(e.for_user("system:node:b").len(), 1);
        assert!(
            Evidence::new(vec![], Some(b"[1]"))
                .unwrap_err()
                .contains("expected")
        );
    }

    #[test]
    fn inputs_that_are_neither_are_named_and_never_stop_a_batch() {
        let pem = PemContext::default();
        let e = Evidence::default();
        let item = classify("x.json", b"{not json", &pem, &e);
        assert!(matches!(&item.input, ItemInput::Invalid(m) if m.starts_with("x.json: not JSON")));
        let item = classify(
            "x.pem",
            b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
            &pem,
            &e,
        );
        assert!(
            matches!(&item.input, ItemInput::Invalid(m) if m.contains("no CERTIFICATE REQUEST")),
            "{:?}",
            item.input
        );
        assert_eq!(pem.context(&e).unwrap_err(), MissingContext::Signer);
    }
}
