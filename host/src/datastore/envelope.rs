//! Encrypted bootstrap records: the k3s format, byte-compatible, and rotor's stronger `v1`.
//!
//! **k3s** (`pkg/cluster/encrypt.go`): `<salt>:<base64(nonce | ciphertext | tag)>`, where the
//! salt is 8 random bytes written as 16 hex characters and used *as those ASCII characters*,
//! the key is PBKDF2-HMAC-SHA1(password, salt, 4096 iterations, 32 bytes), and the cipher is
//! AES-256-GCM with a 12-byte random nonce and no associated data.
//!
//! **rotor v1**: `rotor-v1$pbkdf2-sha256$<iterations>$<salt hex>$<base64(nonce | ciphertext | tag)>`
//! with PBKDF2-HMAC-SHA256 (600,000 iterations, the OWASP 2023 floor), a 16-byte salt, and the
//! header plus the datastore key bound as AES-GCM associated data, so a record cannot be moved to
//! another key or have its parameters altered without failing authentication.

use std::num::NonZeroU32;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::pbkdf2;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Which format to write. Reading detects the format.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum RecordFormat {
    /// k3s's format (PBKDF2-HMAC-SHA1, 4096 iterations): readable by k3s and RKE2.
    K3s,
    /// rotor's versioned format (PBKDF2-HMAC-SHA256, 600,000 iterations, authenticated header).
    #[value(name = "rotor-v1")]
    #[serde(rename = "rotor-v1")]
    RotorV1,
}

const K3S_ITERATIONS: u32 = 4096;
/// Iterations of rotor v1 records.
pub const V1_ITERATIONS: u32 = 600_000;
const V1_PREFIX: &str = "rotor-v1$pbkdf2-sha256$";
/// How every rotor-v1 record starts.
pub(crate) const V1_MAGIC: &[u8] = b"rotor-v1$";
const TAG_LEN: usize = 16;

/// Why a record could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The envelope is not in the expected format.
    #[error("malformed bootstrap record ({0}): truncated or corrupted")]
    Malformed(&'static str),
    #[error(
        "the token does not decrypt the bootstrap data (wrong token, or a tampered or truncated record)"
    )]
    /// The key does not open it, or it was changed.
    WrongKeyOrTampered,
    /// The system's random number generator failed.
    #[error("no randomness available")]
    Random,
}

fn random<const N: usize>() -> Result<[u8; N], EnvelopeError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| EnvelopeError::Random)?;
    Ok(b)
}

fn derive(
    alg: pbkdf2::Algorithm,
    iterations: u32,
    salt: &[u8],
    password: &str,
) -> Result<LessSafeKey, EnvelopeError> {
    let iterations =
        NonZeroU32::new(iterations).ok_or(EnvelopeError::Malformed("zero iterations"))?;
    let mut key = [0u8; 32];
    pbkdf2::derive(alg, iterations, salt, password.as_bytes(), &mut key);
    let unbound =
        UnboundKey::new(&AES_256_GCM, &key).map_err(|_| EnvelopeError::Malformed("key"))?;
    Ok(LessSafeKey::new(unbound))
}

fn seal(key: &LessSafeKey, aad: &[u8], plaintext: &[u8]) -> Result<String, EnvelopeError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let mut buf = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| EnvelopeError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(B64.encode(out))
}

fn open(key: &LessSafeKey, aad: &[u8], b64: &str) -> Result<Vec<u8>, EnvelopeError> {
    let mut data = B64
        .decode(b64.trim())
        .map_err(|_| EnvelopeError::Malformed("invalid base64"))?;
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(EnvelopeError::Malformed("too short"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&data[..NONCE_LEN]);
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data[NONCE_LEN..],
        )
        .map_err(|_| EnvelopeError::WrongKeyOrTampered)?;
    Ok(plain.to_vec())
}

/// Encrypt `plaintext` for the datastore key `key_name` under `password`.
pub fn seal_record(
    format: RecordFormat,
    password: &str,
    key_name: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    match format {
        RecordFormat::K3s => {
            let salt = hex::encode(random::<8>()?);
            let key = derive(
                pbkdf2::PBKDF2_HMAC_SHA1,
                K3S_ITERATIONS,
                salt.as_bytes(),
                password,
            )?;
            Ok(format!("{salt}:{}", seal(&key, b"", plaintext)?).into_bytes())
        }
        RecordFormat::RotorV1 => {
            let salt = hex::encode(random::<16>()?);
            let header = format!("{V1_PREFIX}{V1_ITERATIONS}${salt}$");
            let key = derive(
                pbkdf2::PBKDF2_HMAC_SHA256,
                V1_ITERATIONS,
                salt.as_bytes(),
                password,
            )?;
            let aad = format!("{header}{key_name}");
            Ok(format!("{header}{}", seal(&key, aad.as_bytes(), plaintext)?).into_bytes())
        }
    }
}

/// The format a stored record is in.
pub fn record_format(record: &[u8]) -> Option<RecordFormat> {
    if record.starts_with(V1_PREFIX.as_bytes()) {
        Some(RecordFormat::RotorV1)
    } else if record.len() > 17
        && record[16] == b':'
        && record[..16].iter().all(u8::is_ascii_hexdigit)
    {
        Some(RecordFormat::K3s)
    } else {
        None
    }
}

/// A record's envelope, parsed but not decrypted.
struct Parsed<'a> {
    format: RecordFormat,
    iterations: u32,
    salt: &'a str,
    /// Authenticated data: the rotor-v1 header and the key name (empty for k3s).
    aad: String,
    body: &'a str,
}

fn parse_record<'a>(key_name: &str, record: &'a [u8]) -> Result<Parsed<'a>, EnvelopeError> {
    let text = std::str::from_utf8(record).map_err(|_| EnvelopeError::Malformed("not ASCII"))?;
    match record_format(record) {
        Some(RecordFormat::K3s) => {
            let (salt, body) = text.split_at(16);
            Ok(Parsed {
                format: RecordFormat::K3s,
                iterations: K3S_ITERATIONS,
                salt,
                aad: String::new(),
                body: &body[1..],
            })
        }
        Some(RecordFormat::RotorV1) => {
            let rest = &text[V1_PREFIX.len()..];
            let mut parts = rest.splitn(3, '$');
            let (Some(iter), Some(salt), Some(body)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(EnvelopeError::Malformed("truncated rotor-v1 header"));
            };
            let iterations: u32 = iter
                .parse()
                .map_err(|_| EnvelopeError::Malformed("iterations"))?;
            if !(100_000..=10_000_000).contains(&iterations) {
                return Err(EnvelopeError::Malformed("iterations out of range"));
            }
            if salt.len() != 32 || !salt.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(EnvelopeError::Malformed("salt"));
            }
            let header = &text[..text.len() - body.len()];
            Ok(Parsed {
                format: RecordFormat::RotorV1,
                iterations,
                salt,
                aad: format!("{header}{key_name}"),
                body,
            })
        }
        None => Err(EnvelopeError::Malformed(
            "neither a k3s nor a rotor-v1 record",
        )),
    }
}

/// Decrypt a record read from the datastore key `key_name`.
pub fn open_record(
    password: &str,
    key_name: &str,
    record: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let p = parse_record(key_name, record)?;
    let alg = match p.format {
        RecordFormat::K3s => pbkdf2::PBKDF2_HMAC_SHA1,
        RecordFormat::RotorV1 => pbkdf2::PBKDF2_HMAC_SHA256,
    };
    let key = derive(alg, p.iterations, p.salt.as_bytes(), password)?;
    open(&key, p.aad.as_bytes(), p.body)
}

/// Fuzzing entry: parse the envelope and open its body with a fixed key, everything
/// [`open_record`] does but the key derivation (up to 10 million PBKDF2 iterations a record
/// may ask for; a library's code, not ours).
pub(super) fn fuzz_open(key_name: &str, record: &[u8]) -> Option<Vec<u8>> {
    let p = parse_record(key_name, record).ok()?;
    let unbound = UnboundKey::new(&AES_256_GCM, &[7u8; 32]).ok()?;
    open(&LessSafeKey::new(unbound), p.aad.as_bytes(), p.body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_round_trip_and_refuse_the_wrong_password() {
        for format in [RecordFormat::K3s, RecordFormat::RotorV1] {
            let rec = seal_record(format, "pw", "/bootstrap/abc", b"{\"a\":1}").unwrap();
            assert_eq!(record_format(&rec), Some(format));
            assert_eq!(
                open_record("pw", "/bootstrap/abc", &rec).unwrap(),
                b"{\"a\":1}"
            );
            assert_eq!(
                open_record("other", "/bootstrap/abc", &rec),
                Err(EnvelopeError::WrongKeyOrTampered)
            );
        }
    }

    #[test]
    fn k3s_layout_is_salt_colon_base64_of_nonce_ciphertext_tag() {
        let rec = seal_record(RecordFormat::K3s, "pw", "k", b"hello").unwrap();
        let text = String::from_utf8(rec).unwrap();
        let (salt, body) = text.split_once(':').unwrap();
        assert_eq!(salt.len(), 16);
        assert!(
            salt.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(B64.decode(body).unwrap().len(), 12 + 5 + 16);
    }

    #[test]
    fn k3s_records_decrypt_with_independently_derived_keys() {
        // Build a record by hand following k3s's encrypt.go step by step (fixed salt and nonce),
        // and check rotor opens it. The integration tests also check against Python's
        // `cryptography` where it is installed.
        let salt = "0123456789abcdef";
        let mut key = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA1,
            NonZeroU32::new(4096).unwrap(),
            salt.as_bytes(),
            b"tok",
            &mut key,
        );
        let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
        let nonce = [7u8; 12];
        let mut buf = b"{}".to_vec();
        sealing
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .unwrap();
        let mut raw = nonce.to_vec();
        raw.extend(buf);
        let record = format!("{salt}:{}", B64.encode(raw));
        assert_eq!(open_record("tok", "any", record.as_bytes()).unwrap(), b"{}");
    }

    #[test]
    fn v1_records_are_bound_to_their_key_and_header() {
        let rec = seal_record(RecordFormat::RotorV1, "pw", "/bootstrap/a", b"x").unwrap();
        assert_eq!(
            open_record("pw", "/bootstrap/b", &rec),
            Err(EnvelopeError::WrongKeyOrTampered)
        );
        let text = String::from_utf8(rec.clone()).unwrap();
        let tampered = text.replace("$600000$", "$600001$");
        assert_eq!(
            open_record("pw", "/bootstrap/a", tampered.as_bytes()),
            Err(EnvelopeError::WrongKeyOrTampered)
        );
        let truncated = &rec[..rec.len() - 10];
        assert!(open_record("pw", "/bootstrap/a", truncated).is_err());
        assert!(open_record("pw", "/bootstrap/a", b"garbage").is_err());
    }
}
