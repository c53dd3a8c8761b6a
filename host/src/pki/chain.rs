//! Chain checks on DER certificates: who signed what, and the k3s join-token CA hash.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

/// The DER SubjectPublicKeyInfo of a certificate.
pub fn spki_of(cert_der: &[u8]) -> Option<Vec<u8>> {
    X509Certificate::from_der(cert_der)
        .ok()
        .map(|(_, c)| c.public_key().raw.to_vec())
}

/// The raw public key of a certificate (the SPKI's bit string).
pub fn public_key_bits(cert_der: &[u8]) -> Option<Vec<u8>> {
    X509Certificate::from_der(cert_der)
        .ok()
        .map(|(_, c)| c.public_key().subject_public_key.data.to_vec())
}

/// Whether `cert_der` names `issuer_der`'s subject as its issuer and carries a valid signature
/// by `issuer_der`'s key.
pub fn signed_by(cert_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(issuer_der),
    ) else {
        return false;
    };
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn key_ids(cert: &X509Certificate<'_>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut ski = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => {}
        }
    }
    (ski, aki)
}

/// Whether `cert_der` is self-signed: it names itself as its issuer and its own key verifies
/// its signature (stricter than [`is_self_issued`]: an intermediate without an
/// AuthorityKeyIdentifier, or a root cross-signed by another, is not).
pub fn is_self_signed(cert_der: &[u8]) -> bool {
    signed_by(cert_der, cert_der)
}

/// k3s's notion of a root in a bundle: no AuthorityKeyIdentifier, or AKI equal to SKI.
pub fn is_self_issued(cert_der: &[u8]) -> bool {
    match X509Certificate::from_der(cert_der) {
        Ok((_, c)) => {
            let (ski, aki) = key_ids(&c);
            aki.is_none() || aki == ski
        }
        Err(_) => false,
    }
}

fn valid_at(der: &[u8], now: OffsetDateTime) -> bool {
    X509Certificate::from_der(der).is_ok_and(|(_, c)| {
        let t = now.unix_timestamp();
        c.validity().not_before.timestamp() <= t && t <= c.validity().not_after.timestamp()
    })
}

/// The CA hash of a join token, computed as k3s computes it (`hashCA`):
/// - a bundle of one certificate: SHA-256 of the file's raw bytes (PEM text as stored);
/// - more than one: verify the first certificate against the others (self-issued ones as roots,
///   the rest as intermediates) and hash the DER of the chain's root; when no chain verifies,
///   fall back to the raw bytes.
///
/// Chains are searched as Go's `x509.Verify` does: a root that directly signed the certificate
/// wins over a path through intermediates. `bundle_der` is the bundle's certificates in order.
pub fn ca_hash(raw_file: &[u8], bundle_der: &[Vec<u8>], now: OffsetDateTime) -> String {
    if bundle_der.len() > 1 {
        let (roots, intermediates): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
            bundle_der[1..].iter().partition(|c| is_self_issued(c));
        if valid_at(&bundle_der[0], now)
            && let Some(root) = find_root(&bundle_der[0], &roots, &intermediates, now, 0)
        {
            return hex::encode(Sha256::digest(root));
        }
    }
    hex::encode(Sha256::digest(raw_file))
}

fn find_root<'a>(
    cert: &[u8],
    roots: &[&'a Vec<u8>],
    intermediates: &[&'a Vec<u8>],
    now: OffsetDateTime,
    depth: usize,
) -> Option<&'a Vec<u8>> {
    if depth > 8 {
        return None;
    }
    if let Some(root) = roots
        .iter()
        .find(|r| valid_at(r, now) && signed_by(cert, r))
    {
        return Some(root);
    }
    intermediates
        .iter()
        .filter(|i| i.as_slice() != cert && valid_at(i, now) && signed_by(cert, i))
        .find_map(|i| find_root(i, roots, intermediates, now, depth + 1))
}
