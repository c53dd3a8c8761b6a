//! What the host asks each hook: the inputs, built from parsed facts and explicit `now`.
//!
//! These are also the JSON "fact records" `rotor policy eval --input` and the fixtures of
//! `rotor policy test` accept (field names in snake_case, times in RFC 3339).

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::facts::{
    CertificateFacts, CsrFacts, DistinguishedName, PublicKeyInfo, SubjectAltNames, Usage,
};

/// Input of the renewal hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewalRequest {
    /// Name of the certificate in its layout (`serving-kube-apiserver`, `apiserver`, ...).
    #[serde(default = "default_name")]
    pub name: String,
    /// The certificate to decide about (shared: a 0.2 plugin reads it through a handle).
    pub certificate: Arc<CertificateFacts>,
    /// notAfter of the issuing CA, when known.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub issuer_not_after: Option<OffsetDateTime>,
    /// The time to decide at (`--now`, else the clock).
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
}

fn default_name() -> String {
    "certificate".into()
}

/// Where SAN names come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SanStage {
    /// Names configured by the operator for a cluster certificate.
    Configuration,
    /// Names requested in a CSR.
    Csr,
    /// The final template, just before signing.
    Template,
}

/// What the host knows about the node a certificate is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    /// The node's name.
    pub name: String,
    /// Evidence held by the host (never taken from the request itself).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// Input of the SAN validation hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanRequest {
    /// Rule profile (`kubelet-serving`, a certificate name, ...).
    pub profile: String,
    /// Which names are asked about.
    pub stage: SanStage,
    /// The subject of the certificate or CSR.
    #[serde(default)]
    pub subject: DistinguishedName,
    /// The names to validate.
    pub sans: SubjectAltNames,
    /// The node the names should belong to, when known.
    #[serde(default)]
    pub node: Option<NodeIdentity>,
    /// The time to decide at.
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
}

/// Input of the CSR approval hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    /// The Kubernetes signer asked to sign (`kubernetes.io/kubelet-serving`, ...).
    pub signer_name: String,
    /// The requesting user (`system:node:<name>`, ...).
    pub username: String,
    /// The requesting user's UID.
    #[serde(default)]
    pub uid: String,
    /// The requesting user's groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The CSR's subject.
    #[serde(default)]
    pub subject: DistinguishedName,
    /// The CSR's subject alternative names.
    #[serde(default)]
    pub sans: SubjectAltNames,
    /// The CSR's public key.
    pub public_key: PublicKeyInfo,
    /// The usages requested (`spec.usages`).
    #[serde(default)]
    pub usages: Vec<Usage>,
    /// The lifetime requested (`spec.expirationSeconds`).
    #[serde(default)]
    pub expiration_seconds: Option<u64>,
    /// Whether the CSR asks for a CA certificate (basicConstraints cA).
    #[serde(default)]
    pub requests_ca: bool,
    /// OIDs of any other extension the CSR requests.
    #[serde(default)]
    pub other_extensions: Vec<String>,
    /// Evidence the host holds about the requesting node (`--node-ip`).
    #[serde(default)]
    pub node_addresses: Vec<IpAddr>,
    /// The time to decide at.
    #[serde(with = "time::serde::rfc3339")]
    pub now: OffsetDateTime,
}

/// The Kubernetes side of a CSR: who asks, with which signer and usages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsrContext {
    /// The Kubernetes signer (`spec.signerName`).
    pub signer_name: String,
    /// The requesting user (`spec.username`).
    pub username: String,
    /// The requesting user's UID (`spec.uid`).
    pub uid: String,
    /// The requesting user's groups (`spec.groups`).
    pub groups: Vec<String>,
    /// The usages requested (`spec.usages`).
    pub usages: Vec<Usage>,
    /// The lifetime requested (`spec.expirationSeconds`).
    pub expiration_seconds: Option<u64>,
    /// Addresses the host knows for the requesting node (node evidence).
    pub node_addresses: Vec<IpAddr>,
}

impl CsrRequest {
    /// Combine a parsed CSR with its Kubernetes context.
    pub fn new(csr: &CsrFacts, ctx: CsrContext, now: OffsetDateTime) -> CsrRequest {
        CsrRequest {
            signer_name: ctx.signer_name,
            username: ctx.username,
            uid: ctx.uid,
            groups: ctx.groups,
            subject: csr.subject.clone(),
            sans: csr.sans.clone(),
            public_key: csr.public_key,
            usages: ctx.usages,
            expiration_seconds: ctx.expiration_seconds,
            requests_ca: csr.requests_ca,
            other_extensions: csr.other_extensions.clone(),
            node_addresses: ctx.node_addresses,
            now,
        }
    }

    /// The SAN hook request for this CSR's names, bound to the requesting node when the
    /// username is `system:node:<name>`.
    pub fn san_request(&self, profile: &str, stage: SanStage) -> SanRequest {
        let node = self
            .username
            .strip_prefix("system:node:")
            .map(|name| NodeIdentity {
                name: name.to_string(),
                addresses: self.node_addresses.clone(),
            });
        SanRequest {
            profile: profile.to_string(),
            stage,
            subject: self.subject.clone(),
            sans: self.sans.clone(),
            node,
            now: self.now,
        }
    }
}
