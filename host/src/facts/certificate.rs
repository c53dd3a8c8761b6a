//! Certificates: PEM or DER bytes to [`CertificateFacts`].

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use super::extract;
use super::pem::{PemKind, read_pem_blocks};
use super::{CertificateFacts, FactsError};

/// Every certificate of a PEM bundle (a leaf followed by its CA bundle, as k3s writes them).
/// `what` names the input in errors. Other PEM blocks are ignored; no certificate is an error.
pub fn parse_certificates_pem(
    what: &str,
    bytes: &[u8],
) -> Result<Vec<CertificateFacts>, FactsError> {
    certificate_ders(what, bytes)?
        .iter()
        .map(|der| parse_certificate_der(what, der))
        .collect()
}

/// The DER of every CERTIFICATE block of a PEM file, in order (a leaf and its CA bundle, a CA
/// and its chain); an error when there is none. Other blocks (keys) are skipped.
pub fn certificate_ders(what: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, FactsError> {
    let blocks = read_pem_blocks(what, bytes)?;
    let first = blocks.first().map(|b| b.kind);
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.kind == PemKind::Certificate)
        .map(|b| b.der)
        .collect();
    if ders.is_empty() {
        return match first {
            Some(kind) => Err(FactsError::WrongPemKind {
                what: what.into(),
                expected: "CERTIFICATE",
                found: kind.label().into(),
            }),
            None => Err(FactsError::NoPem { what: what.into() }),
        };
    }
    Ok(ders)
}

/// One DER certificate.
pub fn parse_certificate_der(what: &str, der: &[u8]) -> Result<CertificateFacts, FactsError> {
    let bad = |reason: String| FactsError::BadDer {
        what: what.into(),
        kind: "certificate",
        reason,
    };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let field = |field: &'static str, reason: String| FactsError::BadField {
        what: what.into(),
        field,
        reason,
    };

    let subject = extract::distinguished_name(cert.subject()).map_err(|r| field("subject", r))?;
    let issuer = extract::distinguished_name(cert.issuer()).map_err(|r| field("issuer", r))?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => {
            let (sans, malformed) = extract::subject_alt_names(&ext.value.general_names);
            if let Some(m) = malformed.first() {
                return Err(field("subjectAltName", m.clone()));
            }
            sans
        }
        Ok(None) => Default::default(),
        Err(e) => return Err(field("subjectAltName", e.to_string())),
    };
    let not_before =
        timestamp(cert.validity().not_before.timestamp()).map_err(|r| field("notBefore", r))?;
    let not_after =
        timestamp(cert.validity().not_after.timestamp()).map_err(|r| field("notAfter", r))?;
    let key_usage = match cert.key_usage() {
        Ok(Some(ku)) => Some(extract::key_usage_bits(ku.value)),
        Ok(None) => None,
        Err(e) => return Err(field("keyUsage", e.to_string())),
    };
    let extended_key_usages = match cert.extended_key_usage() {
        Ok(Some(eku)) => extract::extended_key_usages(eku.value),
        Ok(None) => Vec::new(),
        Err(e) => return Err(field("extendedKeyUsage", e.to_string())),
    };
    let is_ca = match cert.basic_constraints() {
        Ok(bc) => bc.is_some_and(|bc| bc.value.ca),
        Err(e) => return Err(field("basicConstraints", e.to_string())),
    };
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(hex::encode(id.0)),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| hex::encode(id.0));
            }
            _ => {}
        }
    }
    Ok(CertificateFacts {
        subject,
        issuer,
        sans,
        serial: serial_hex(cert.raw_serial()),
        not_before,
        not_after,
        is_ca,
        public_key: extract::public_key(cert.public_key()),
        key_usage,
        extended_key_usages,
        subject_key_id,
        authority_key_id,
    })
}

fn timestamp(unix: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| e.to_string())
}

/// Lowercase hex of the serial without leading zero bytes (at least one byte is kept).
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}
