//! PEM reading (rustls-pki-types' parser: no hand-rolled base64 or armor parsing here).

use std::io::Cursor;

use rustls_pki_types::pem::{self, SectionKind};

use super::FactsError;

/// The kinds of PEM block rotor reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKind {
    /// `CERTIFICATE`.
    Certificate,
    /// `CERTIFICATE REQUEST` (or `NEW CERTIFICATE REQUEST`).
    CertificateRequest,
    /// PKCS#8 `PRIVATE KEY`.
    PrivateKey,
    /// PKCS#1 `RSA PRIVATE KEY`.
    RsaPrivateKey,
    /// SEC1 `EC PRIVATE KEY`.
    EcPrivateKey,
    /// `PUBLIC KEY`.
    PublicKey,
    /// Any other label.
    Other,
}

impl PemKind {
    /// The PEM label.
    pub fn label(self) -> &'static str {
        match self {
            PemKind::Certificate => "CERTIFICATE",
            PemKind::CertificateRequest => "CERTIFICATE REQUEST",
            PemKind::PrivateKey => "PRIVATE KEY",
            PemKind::RsaPrivateKey => "RSA PRIVATE KEY",
            PemKind::EcPrivateKey => "EC PRIVATE KEY",
            PemKind::PublicKey => "PUBLIC KEY",
            PemKind::Other => "other",
        }
    }

    /// Whether the block holds a private key (PKCS#8, PKCS#1 or SEC1).
    pub fn is_private_key(self) -> bool {
        matches!(
            self,
            PemKind::PrivateKey | PemKind::RsaPrivateKey | PemKind::EcPrivateKey
        )
    }
}

/// One decoded PEM block.
#[derive(Clone, Debug)]
pub struct PemBlock {
    /// What the PEM label says the block holds.
    pub kind: PemKind,
    /// The decoded bytes.
    pub der: Vec<u8>,
}

/// Every PEM block of `bytes`, in order. `what` names the input in errors (a file path).
/// Blocks of kinds rotor does not know are skipped; a malformed block is an error.
pub fn read_pem_blocks(what: &str, bytes: &[u8]) -> Result<Vec<PemBlock>, FactsError> {
    let mut cursor = Cursor::new(bytes);
    let mut blocks = Vec::new();
    loop {
        match pem::from_buf(&mut cursor) {
            Ok(Some((kind, der))) => {
                let kind = match kind {
                    SectionKind::Certificate => PemKind::Certificate,
                    SectionKind::Csr => PemKind::CertificateRequest,
                    SectionKind::PrivateKey => PemKind::PrivateKey,
                    SectionKind::RsaPrivateKey => PemKind::RsaPrivateKey,
                    SectionKind::EcPrivateKey => PemKind::EcPrivateKey,
                    SectionKind::PublicKey => PemKind::PublicKey,
                    _ => PemKind::Other,
                };
                blocks.push(PemBlock { kind, der });
            }
            Ok(None) => break,
            Err(e) => {
                return Err(FactsError::BadPem {
                    what: what.to_string(),
                    reason: pem_error_text(&e),
                });
            }
        }
    }
    Ok(blocks)
}

fn pem_error_text(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!(
                "missing the END line for '{}'",
                String::from_utf8_lossy(end_marker)
            )
        }
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "invalid base64 content".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_pem_is_an_error_naming_the_input() {
        let err = read_pem_blocks("x.pem", b"-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.pem: malformed PEM: missing the END line for 'CERTIFICATE'"
        );
    }

    #[test]
    fn unknown_blocks_are_skipped_and_no_blocks_is_empty() {
        assert!(read_pem_blocks("x", b"hello").unwrap().is_empty());
        let blocks =
            read_pem_blocks("x", b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n").unwrap();
        assert!(blocks.is_empty());
    }
}
