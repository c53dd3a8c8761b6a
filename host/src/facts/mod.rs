//! Facts about certificates and CSRs, parsed by the host with x509-parser.
//!
//! These are rotor's own types: plugins receive them converted to the WIT records of
//! `rotor:policy/types` (see [`crate::plugin`]), and `rotor policy eval` accepts them as JSON
//! fact records. Parsing is read-only and never trusts the input: anything malformed becomes a
//! [`FactsError`] naming the input, or, for CSRs, a [`Violation`] the host denies on before any
//! plugin runs.

mod certificate;
mod csr;
mod extract;
mod pem;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use certificate::{parse_certificate_der, parse_certificates_pem};
pub use csr::{CsrFacts, parse_csr_der, parse_csr_der_with_key, parse_csr_pem};
pub use pem::{PemBlock, PemKind, read_pem_blocks};

/// A problem with the bytes given as a certificate or CSR.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactsError {
    #[error("{what}: no PEM block found")]
    NoPem { what: String },
    #[error("{what}: expected a {expected} PEM block, found '{found}'")]
    WrongPemKind {
        what: String,
        expected: &'static str,
        found: String,
    },
    #[error("{what}: malformed PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what}: not a valid X.509 {kind}: {reason}")]
    BadDer {
        what: String,
        kind: &'static str,
        reason: String,
    },
    #[error("{what}: {field}: {reason}")]
    BadField {
        what: String,
        field: &'static str,
        reason: String,
    },
}

/// A subject or issuer name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistinguishedName {
    /// RFC 4514-style rendering.
    #[serde(default)]
    pub text: String,
    /// The first CN attribute. Further CNs are listed in `other_attributes` as `2.5.4.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default)]
    pub organizations: Vec<String>,
    #[serde(default)]
    pub organizational_units: Vec<String>,
    /// Dotted OIDs of any other attribute.
    #[serde(default)]
    pub other_attributes: Vec<String>,
}

/// Subject alternative names by type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectAltNames {
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Canonical: IPv4-mapped IPv6 addresses are stored as IPv4.
    #[serde(default)]
    pub ip_addresses: Vec<IpAddr>,
    #[serde(default)]
    pub uris: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
    /// Other GeneralName kinds as `kind:value`.
    #[serde(default)]
    pub others: Vec<String>,
}

impl SubjectAltNames {
    pub fn is_empty(&self) -> bool {
        self.dns_names.is_empty()
            && self.ip_addresses.is_empty()
            && self.uris.is_empty()
            && self.emails.is_empty()
            && self.others.is_empty()
    }

    /// Every name as text, in type order (DNS, IP, URI, email, other).
    pub fn all_names(&self) -> Vec<String> {
        self.dns_names
            .iter()
            .cloned()
            .chain(self.ip_addresses.iter().map(IpAddr::to_string))
            .chain(self.uris.iter().cloned())
            .chain(self.emails.iter().cloned())
            .chain(self.others.iter().cloned())
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    Rsa,
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Ed25519,
    Ed448,
    Other,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::Rsa => "RSA",
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256",
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384",
            KeyAlgorithm::EcdsaP521 => "ECDSA P-521",
            KeyAlgorithm::Ed25519 => "Ed25519",
            KeyAlgorithm::Ed448 => "Ed448",
            KeyAlgorithm::Other => "other",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyInfo {
    pub algorithm: KeyAlgorithm,
    /// RSA modulus length or curve size in bits.
    pub bits: u32,
}

/// X.509 keyUsage bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsageBit {
    DigitalSignature,
    ContentCommitment,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
    KeyCertSign,
    CrlSign,
    EncipherOnly,
    DecipherOnly,
}

/// X.509 extendedKeyUsage purposes. Serialized as `server_auth`, `client_auth`, ... or the
/// dotted OID of any other purpose.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ExtendedKeyUsage {
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    TimeStamping,
    OcspSigning,
    Any,
    Other(String),
}

const EKU_NAMES: &[(&str, ExtendedKeyUsage)] = &[
    ("server_auth", ExtendedKeyUsage::ServerAuth),
    ("client_auth", ExtendedKeyUsage::ClientAuth),
    ("code_signing", ExtendedKeyUsage::CodeSigning),
    ("email_protection", ExtendedKeyUsage::EmailProtection),
    ("time_stamping", ExtendedKeyUsage::TimeStamping),
    ("ocsp_signing", ExtendedKeyUsage::OcspSigning),
    ("any", ExtendedKeyUsage::Any),
];

impl From<ExtendedKeyUsage> for String {
    fn from(eku: ExtendedKeyUsage) -> String {
        match eku {
            ExtendedKeyUsage::Other(oid) => oid,
            known => EKU_NAMES
                .iter()
                .find(|(_, k)| *k == known)
                .map(|(n, _)| (*n).to_string())
                .unwrap_or_default(),
        }
    }
}

impl TryFrom<String> for ExtendedKeyUsage {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some((_, k)) = EKU_NAMES.iter().find(|(n, _)| *n == s) {
            return Ok(k.clone());
        }
        let is_oid = s.split('.').count() >= 2
            && s.split('.')
                .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
        if is_oid {
            Ok(ExtendedKeyUsage::Other(s))
        } else {
            Err(format!(
                "unknown extended key usage '{s}' (use server_auth, client_auth, ... or a dotted OID)"
            ))
        }
    }
}

/// Kubernetes certificate usages (`CertificateSigningRequest.spec.usages`), with their
/// Kubernetes spelling (`digital signature`, `server auth`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Usage {
    #[serde(rename = "signing")]
    Signing,
    #[serde(rename = "digital signature")]
    DigitalSignature,
    #[serde(rename = "content commitment")]
    ContentCommitment,
    #[serde(rename = "key encipherment")]
    KeyEncipherment,
    #[serde(rename = "key agreement")]
    KeyAgreement,
    #[serde(rename = "data encipherment")]
    DataEncipherment,
    #[serde(rename = "cert sign")]
    CertSign,
    #[serde(rename = "crl sign")]
    CrlSign,
    #[serde(rename = "encipher only")]
    EncipherOnly,
    #[serde(rename = "decipher only")]
    DecipherOnly,
    #[serde(rename = "any")]
    Any,
    #[serde(rename = "server auth")]
    ServerAuth,
    #[serde(rename = "client auth")]
    ClientAuth,
    #[serde(rename = "code signing")]
    CodeSigning,
    #[serde(rename = "email protection")]
    EmailProtection,
    #[serde(rename = "s/mime")]
    SMime,
    #[serde(rename = "ipsec end system")]
    IpsecEndSystem,
    #[serde(rename = "ipsec tunnel")]
    IpsecTunnel,
    #[serde(rename = "ipsec user")]
    IpsecUser,
    #[serde(rename = "timestamping")]
    Timestamping,
    #[serde(rename = "ocsp signing")]
    OcspSigning,
    #[serde(rename = "microsoft sgc")]
    MicrosoftSgc,
    #[serde(rename = "netscape sgc")]
    NetscapeSgc,
}

impl Usage {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Signing => "signing",
            Usage::DigitalSignature => "digital signature",
            Usage::ContentCommitment => "content commitment",
            Usage::KeyEncipherment => "key encipherment",
            Usage::KeyAgreement => "key agreement",
            Usage::DataEncipherment => "data encipherment",
            Usage::CertSign => "cert sign",
            Usage::CrlSign => "crl sign",
            Usage::EncipherOnly => "encipher only",
            Usage::DecipherOnly => "decipher only",
            Usage::Any => "any",
            Usage::ServerAuth => "server auth",
            Usage::ClientAuth => "client auth",
            Usage::CodeSigning => "code signing",
            Usage::EmailProtection => "email protection",
            Usage::SMime => "s/mime",
            Usage::IpsecEndSystem => "ipsec end system",
            Usage::IpsecTunnel => "ipsec tunnel",
            Usage::IpsecUser => "ipsec user",
            Usage::Timestamping => "timestamping",
            Usage::OcspSigning => "ocsp signing",
            Usage::MicrosoftSgc => "microsoft sgc",
            Usage::NetscapeSgc => "netscape sgc",
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Usage, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
            format!(
                "unknown usage '{s}' (Kubernetes spelling, e.g. 'digital signature', 'server auth')"
            )
        })
    }
}

/// A parsed certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFacts {
    pub subject: DistinguishedName,
    #[serde(default)]
    pub issuer: DistinguishedName,
    #[serde(default)]
    pub sans: SubjectAltNames,
    /// Lowercase hex of the serial's big-endian bytes.
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(default)]
    pub is_ca: bool,
    pub public_key: PublicKeyInfo,
    /// `None` when the certificate has no keyUsage extension.
    #[serde(default)]
    pub key_usage: Option<Vec<KeyUsageBit>>,
    #[serde(default)]
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
    #[serde(default)]
    pub subject_key_id: Option<String>,
    #[serde(default)]
    pub authority_key_id: Option<String>,
}

/// One reason for a denial, from a plugin or from the host's own checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// TitleCase reason code.
    pub code: String,
    /// What it is about: a name, a field, or empty.
    #[serde(default)]
    pub field: String,
    pub message: String,
}

impl Violation {
    pub fn new(code: &str, field: impl Into<String>, message: impl Into<String>) -> Violation {
        Violation {
            code: code.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.code, self.message)
        } else {
            write!(f, "{}: {}: {}", self.code, self.field, self.message)
        }
    }
}

/// IPv4-mapped IPv6 addresses become IPv4, so comparisons see one form.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}
