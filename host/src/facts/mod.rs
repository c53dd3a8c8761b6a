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

pub use certificate::{certificate_ders, parse_certificate_der, parse_certificates_pem};
pub use csr::{CsrFacts, parse_csr_der, parse_csr_der_with_key, parse_csr_pem};
pub use pem::{PemBlock, PemKind, read_pem_blocks};

/// A problem with the bytes given as a certificate or CSR.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactsError {
    /// No PEM block at all.
    #[error("{what}: no PEM block found")]
    NoPem {
        /// What was being read or used (usually a file name).
        what: String,
    },
    /// PEM, but not the kind expected.
    #[error("{what}: expected a {expected} PEM block, found '{found}'")]
    WrongPemKind {
        /// What was being read or used (usually a file name).
        what: String,
        /// The PEM label expected.
        expected: &'static str,
        /// The label found.
        found: String,
    },
    /// The PEM armor is malformed.
    #[error("{what}: malformed PEM: {reason}")]
    BadPem {
        /// What was being read or used (usually a file name).
        what: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The DER inside is not a valid X.509 structure.
    #[error("{what}: not a valid X.509 {kind}: {reason}")]
    BadDer {
        /// What was being read or used (usually a file name).
        what: String,
        /// What kind of object it should be.
        kind: &'static str,
        /// Why it is not usable.
        reason: String,
    },
    /// A field has a value rotor cannot use.
    #[error("{what}: {field}: {reason}")]
    BadField {
        /// What was being read or used (usually a file name).
        what: String,
        /// The field concerned.
        field: &'static str,
        /// Why it is not usable.
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
    /// O attributes.
    #[serde(default)]
    pub organizations: Vec<String>,
    /// OU attributes.
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
    /// DNS names.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Canonical: IPv4-mapped IPv6 addresses are stored as IPv4.
    #[serde(default)]
    pub ip_addresses: Vec<IpAddr>,
    /// URIs.
    #[serde(default)]
    pub uris: Vec<String>,
    /// Email addresses (rfc822Name).
    #[serde(default)]
    pub emails: Vec<String>,
    /// Other GeneralName kinds as `kind:value`.
    #[serde(default)]
    pub others: Vec<String>,
}

impl SubjectAltNames {
    /// Whether there is no name at all.
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

/// The algorithm of a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// RSA.
    Rsa,
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// ECDSA on NIST P-521.
    EcdsaP521,
    /// Ed25519.
    Ed25519,
    /// Ed448.
    Ed448,
    /// Anything else.
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

/// What a public key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyInfo {
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// RSA modulus length or curve size in bits.
    pub bits: u32,
}

/// X.509 keyUsage bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsageBit {
    /// digitalSignature.
    DigitalSignature,
    /// contentCommitment (nonRepudiation).
    ContentCommitment,
    /// keyEncipherment.
    KeyEncipherment,
    /// dataEncipherment.
    DataEncipherment,
    /// keyAgreement.
    KeyAgreement,
    /// keyCertSign.
    KeyCertSign,
    /// cRLSign.
    CrlSign,
    /// encipherOnly.
    EncipherOnly,
    /// decipherOnly.
    DecipherOnly,
}

/// X.509 extendedKeyUsage purposes. Serialized as `server_auth`, `client_auth`, ... or the
/// dotted OID of any other purpose.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ExtendedKeyUsage {
    /// id-kp-serverAuth (TLS server).
    ServerAuth,
    /// id-kp-clientAuth (TLS client).
    ClientAuth,
    /// id-kp-codeSigning.
    CodeSigning,
    /// id-kp-emailProtection.
    EmailProtection,
    /// id-kp-timeStamping.
    TimeStamping,
    /// id-kp-OCSPSigning.
    OcspSigning,
    /// anyExtendedKeyUsage.
    Any,
    /// Any other purpose, by dotted OID.
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

/// Declares [`Usage`] from one list: each variant with its Kubernetes spelling, which is its
/// documentation, its `Display`, its serde form and what `FromStr` accepts.
macro_rules! usages {
    ($($variant:ident = $name:literal,)*) => {
        /// Kubernetes certificate usages (`CertificateSigningRequest.spec.usages`), with their
        /// Kubernetes spelling (`digital signature`, `server auth`, ...).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Usage {
            $(#[doc = concat!("`", $name, "`")] $variant,)*
        }

        impl Usage {
            /// Every usage, in the order of the Kubernetes API reference.
            pub const ALL: &'static [Usage] = &[$(Usage::$variant,)*];

            /// The Kubernetes spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Usage::$variant => $name,)*
                }
            }
        }
    };
}

usages! {
    Signing = "signing",
    DigitalSignature = "digital signature",
    ContentCommitment = "content commitment",
    KeyEncipherment = "key encipherment",
    KeyAgreement = "key agreement",
    DataEncipherment = "data encipherment",
    CertSign = "cert sign",
    CrlSign = "crl sign",
    EncipherOnly = "encipher only",
    DecipherOnly = "decipher only",
    Any = "any",
    ServerAuth = "server auth",
    ClientAuth = "client auth",
    CodeSigning = "code signing",
    EmailProtection = "email protection",
    SMime = "s/mime",
    IpsecEndSystem = "ipsec end system",
    IpsecTunnel = "ipsec tunnel",
    IpsecUser = "ipsec user",
    Timestamping = "timestamping",
    OcspSigning = "ocsp signing",
    MicrosoftSgc = "microsoft sgc",
    NetscapeSgc = "netscape sgc",
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Usage {
    type Err = String;
    fn from_str(s: &str) -> Result<Usage, String> {
        Usage::ALL
            .iter()
            .copied()
            .find(|u| u.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown usage '{s}' (Kubernetes spelling, e.g. 'digital signature', 'server auth')"
                )
            })
    }
}

impl Serialize for Usage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Usage, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A parsed certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFacts {
    /// Subject.
    pub subject: DistinguishedName,
    /// Issuer.
    #[serde(default)]
    pub issuer: DistinguishedName,
    /// Subject alternative names.
    #[serde(default)]
    pub sans: SubjectAltNames,
    /// Lowercase hex of the serial's big-endian bytes.
    pub serial: String,
    /// Start of its validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// End of its validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// basicConstraints cA.
    #[serde(default)]
    pub is_ca: bool,
    /// The public key.
    pub public_key: PublicKeyInfo,
    /// `None` when the certificate has no keyUsage extension.
    #[serde(default)]
    pub key_usage: Option<Vec<KeyUsageBit>>,
    /// extendedKeyUsage purposes (empty when absent).
    #[serde(default)]
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
    /// subjectKeyIdentifier, lowercase hex.
    #[serde(default)]
    pub subject_key_id: Option<String>,
    /// authorityKeyIdentifier's key identifier, lowercase hex.
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
    /// What went wrong.
    pub message: String,
}

impl Violation {
    /// A violation with a TitleCase `code`, the `field` it concerns and a message.
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
