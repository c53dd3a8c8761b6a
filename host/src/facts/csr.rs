//! Certificate signing requests: PEM or DER bytes to [`CsrFacts`].
//!
//! Parsing records every structural defect the host denies on before any plugin runs
//! (multiple SAN extensions, malformed or unsupported SAN types, CA requests, several CNs, a
//! signature that does not verify), instead of silently dropping it.

use serde::{Deserialize, Serialize};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::OID_X509_COMMON_NAME;
use x509_parser::prelude::FromDer;

use super::extract;
use super::pem::{PemKind, read_pem_blocks};
use super::{
    DistinguishedName, ExtendedKeyUsage, FactsError, KeyUsageBit, PublicKeyInfo, SubjectAltNames,
    Violation,
};

/// A parsed CSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrFacts {
    /// The requested subject.
    pub subject: DistinguishedName,
    /// The requested subject alternative names.
    #[serde(default)]
    pub sans: SubjectAltNames,
    /// The public key.
    pub public_key: PublicKeyInfo,
    /// basicConstraints cA = true was requested.
    #[serde(default)]
    pub requests_ca: bool,
    /// Requested keyUsage, if the CSR carries the extension.
    #[serde(default)]
    pub key_usage: Option<Vec<KeyUsageBit>>,
    /// The extended key usages requested in its extensions.
    #[serde(default)]
    pub extended_key_usages: Vec<ExtendedKeyUsage>,
    /// Dotted OIDs of the other requested extensions.
    #[serde(default)]
    pub other_extensions: Vec<String>,
    /// Structural problems found while parsing; the host denies a CSR that has any.
    #[serde(default)]
    pub defects: Vec<Violation>,
}

/// The one CSR of a PEM input.
pub fn parse_csr_pem(what: &str, bytes: &[u8]) -> Result<CsrFacts, FactsError> {
    let blocks = read_pem_blocks(what, bytes)?;
    let mut csrs = blocks
        .iter()
        .filter(|b| b.kind == PemKind::CertificateRequest);
    match (csrs.next(), csrs.next()) {
        (Some(b), None) => parse_csr_der(what, &b.der),
        (Some(_), Some(_)) => Err(FactsError::BadPem {
            what: what.into(),
            reason: "more than one CERTIFICATE REQUEST block".into(),
        }),
        (None, _) => match blocks.first() {
            Some(b) => Err(FactsError::WrongPemKind {
                what: what.into(),
                expected: "CERTIFICATE REQUEST",
                found: b.kind.label().into(),
            }),
            None => Err(FactsError::NoPem { what: what.into() }),
        },
    }
}

/// One DER CSR. Verifies its signature (proof of possession); a bad signature is a defect.
pub fn parse_csr_der(what: &str, der: &[u8]) -> Result<CsrFacts, FactsError> {
    parse_csr_der_with_key(what, der).map(|(facts, _)| facts)
}

/// [`parse_csr_der`], also returning the CSR's SubjectPublicKeyInfo (DER): what a signer needs,
/// without parsing the request a second time.
pub fn parse_csr_der_with_key(what: &str, der: &[u8]) -> Result<(CsrFacts, Vec<u8>), FactsError> {
    let bad = |reason: String| FactsError::BadDer {
        what: what.into(),
        kind: "certificate request",
        reason,
    };
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    let mut defects = Vec::new();

    let subject = match extract::distinguished_name(&info.subject) {
        Ok(dn) => dn,
        Err(reason) => {
            defects.push(Violation::new("MalformedSubject", "subject", reason));
            DistinguishedName {
                text: info.subject.to_string(),
                ..Default::default()
            }
        }
    };
    if info.subject.iter_by_oid(&OID_X509_COMMON_NAME).count() > 1 {
        defects.push(Violation::new(
            "MultipleCommonNames",
            "subject",
            "the subject has more than one CN",
        ));
    }

    let mut facts = CsrFacts {
        subject,
        sans: SubjectAltNames::default(),
        public_key: extract::public_key(&info.subject_pki),
        requests_ca: false,
        key_usage: None,
        extended_key_usages: Vec::new(),
        other_extensions: Vec::new(),
        defects: Vec::new(),
    };

    let mut san_extensions = 0;
    let mut extension_requests = 0;
    for attr in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attr.parsed_attribute() else {
            continue;
        };
        extension_requests += 1;
        for ext in &request.extensions {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    san_extensions += 1;
                    let (sans, malformed) = extract::subject_alt_names(&san.general_names);
                    for m in malformed {
                        defects.push(Violation::new("MalformedSan", "subjectAltName", m));
                    }
                    for other in &sans.others {
                        defects.push(Violation::new(
                            "UnsupportedSanType",
                            other.clone(),
                            "only DNS, IP, URI and email SANs are accepted",
                        ));
                    }
                    facts.sans = sans;
                }
                ParsedExtension::BasicConstraints(bc) => facts.requests_ca |= bc.ca,
                ParsedExtension::KeyUsage(ku) => {
                    facts.key_usage = Some(extract::key_usage_bits(ku))
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    facts.extended_key_usages = extract::extended_key_usages(eku)
                }
                ParsedExtension::ParseError { error } => defects.push(Violation::new(
                    "MalformedExtension",
                    ext.oid.to_id_string(),
                    format!("cannot decode the extension: {error}"),
                )),
                _ => facts.other_extensions.push(ext.oid.to_id_string()),
            }
        }
    }
    if san_extensions > 1 {
        defects.push(Violation::new(
            "MultipleSanExtensions",
            "subjectAltName",
            format!("{san_extensions} subjectAltName extensions; exactly one is allowed"),
        ));
    }
    if extension_requests > 1 {
        defects.push(Violation::new(
            "MultipleExtensionRequests",
            "attributes",
            "more than one extensionRequest attribute",
        ));
    }
    // A CA request is a fact, not a defect: the host floor (`csr::floor`) refuses it.
    if let Err(e) = csr.verify_signature() {
        defects.push(Violation::new(
            "InvalidSignature",
            "signature",
            format!("the CSR signature does not verify with its own public key (no proof of possession): {e}"),
        ));
    }
    facts.defects = defects;
    Ok((facts, info.subject_pki.raw.to_vec()))
}
