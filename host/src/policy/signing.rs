//! Signed plugins: a vendor's Ed25519 signature over a component's digest and what it claims to
//! be, in a DSSE envelope (<https://github.com/secure-systems-lab/dsse>).
//!
//! The envelope (`PLUGIN.wasm.sig`, JSON):
//!
//! ```json
//! {
//!   "payloadType": "application/vnd.rotor.plugin.statement.v1+json",
//!   "payload": "<base64 of the statement>",
//!   "signatures": [{"keyid": "<sha256 of the public key>", "sig": "<base64 Ed25519 signature>"}]
//! }
//! ```
//!
//! The signature is over DSSE's pre-authentication encoding,
//! `"DSSEv1" SP LEN(payloadType) SP payloadType SP LEN(payload) SP payload`, of the statement:
//!
//! ```json
//! {"name": "acme-renewal", "version": "1.2.0", "contract": "rotor:policy@0.3.0",
//!  "hooks": ["renewal"], "sha256": "<the component's digest>", "size": 123456}
//! ```
//!
//! A key id is the hex sha256 of the public key's DER `SubjectPublicKeyInfo`. Like DSSE says,
//! it only picks the key to try; it is not trusted. The statement is parsed only after its
//! signature verified.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contract::Hook;

/// The DSSE payload type of a rotor plugin statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.rotor.plugin.statement.v1+json";

/// The Ed25519 algorithm identifier (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// How every Ed25519 SubjectPublicKeyInfo starts (RFC 8410, section 10.1): SEQUENCE, the
/// AlgorithmIdentifier with the OID and no parameters, a 33-byte BIT STRING (no unused bits)
/// holding the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A signature, key or statement is not acceptable. Messages say which and why; the caller
/// names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// A key file is not an Ed25519 key of the expected kind.
    #[error("{0}")]
    Key(String),
    /// The envelope is malformed.
    #[error("not a DSSE envelope of a rotor plugin: {0}")]
    Envelope(String),
    /// No signature of the envelope verifies with the key.
    #[error(
        "no signature by key {keyid} verifies (the envelope was signed by {signers}): a wrong key, or a changed envelope"
    )]
    BadSignature {
        /// The key tried.
        keyid: String,
        /// The key ids the envelope names.
        signers: String,
    },
    /// The statement verified but is not a valid statement.
    #[error("the signed statement is invalid: {0}")]
    Statement(String),
}

/// What a vendor's signature says about a component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// The plugin's name.
    pub name: String,
    /// Its version (semver).
    pub version: String,
    /// The WIT package it is built against (`rotor:policy@0.3.0`).
    pub contract: String,
    /// The hooks it exports.
    pub hooks: Vec<Hook>,
    /// The component's sha256 (hex).
    pub sha256: String,
    /// The component's size in bytes.
    pub size: u64,
}

impl Statement {
    /// Check the fields: a semver version, a 64-hex digest, at least one hook, a name.
    pub fn validate(&self) -> Result<semver::Version, SigningError> {
        if self.name.trim().is_empty() {
            return Err(SigningError::Statement("'name' is empty".into()));
        }
        if self.hooks.is_empty() {
            return Err(SigningError::Statement("'hooks' is empty".into()));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SigningError::Statement(
                "'sha256' is not a 64-hex-digit digest".into(),
            ));
        }
        semver::Version::parse(&self.version).map_err(|e| {
            SigningError::Statement(format!(
                "'version' {:?} is not a semantic version: {e}",
                self.version
            ))
        })
    }
}

/// A DSSE envelope.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Base64 of the statement.
    pub payload: String,
    /// [`PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// One or more signatures over the pre-authentication encoding.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One signature of an envelope.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signing key's id (a hint, not authenticated).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
    /// Base64 of the Ed25519 signature.
    pub sig: String,
}

impl Envelope {
    /// Parse an envelope file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, SigningError> {
        let env: Envelope =
            serde_json::from_slice(bytes).map_err(|e| SigningError::Envelope(e.to_string()))?;
        if env.payload_type != PAYLOAD_TYPE {
            return Err(SigningError::Envelope(format!(
                "payloadType is {:?}, not {PAYLOAD_TYPE:?}",
                env.payload_type
            )));
        }
        if env.signatures.is_empty() {
            return Err(SigningError::Envelope("it holds no signature".into()));
        }
        Ok(env)
    }

    /// The envelope as pretty JSON, with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The statement, NOT verified: for tools that only look (push checks that the envelope is
    /// for the component it ships with). Never trust it without [`PublicKey::verify`].
    pub fn unverified_statement(&self) -> Result<Statement, SigningError> {
        let payload = decode_b64(&self.payload)
            .ok_or_else(|| SigningError::Envelope("payload is not base64".into()))?;
        serde_json::from_slice(&payload).map_err(|e| SigningError::Statement(e.to_string()))
    }

    /// The key ids the envelope names.
    pub fn keyids(&self) -> Vec<String> {
        self.signatures
            .iter()
            .map(|s| {
                if s.keyid.is_empty() {
                    "(no key id)".to_string()
                } else {
                    s.keyid.clone()
                }
            })
            .collect()
    }
}

/// DSSE's pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Standard or URL-safe base64, padded or not (DSSE verifiers accept both alphabets).
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, config);
    let url = GeneralPurpose::new(&base64::alphabet::URL_SAFE, config);
    standard
        .decode(s.trim())
        .ok()
        .or_else(|| url.decode(s.trim()).ok())
}

fn key_id(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// A vendor's signing key (Ed25519, PKCS#8).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("keyid", &self.public.keyid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key: `(private PEM (PKCS#8), public PEM (SubjectPublicKeyInfo), key)`.
    pub fn generate() -> Result<(String, String, SigningKey), SigningError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| SigningError::Key("could not generate an Ed25519 key".into()))?;
        let private_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        let key = SigningKey::from_pkcs8(pkcs8.as_ref())?;
        let public_pem = key.public.to_pem();
        Ok((private_pem, public_pem, key))
    }

    /// A key from its PEM file (`PRIVATE KEY`, PKCS#8 Ed25519).
    pub fn from_pem(bytes: &[u8]) -> Result<SigningKey, SigningError> {
        let p = pem::parse(bytes)
            .map_err(|e| SigningError::Key(format!("not a PEM private key ({e})")))?;
        if p.tag() != "PRIVATE KEY" {
            return Err(SigningError::Key(format!(
                "a PEM '{}' block, not an Ed25519 'PRIVATE KEY' (rotor policy keygen makes one)",
                p.tag()
            )));
        }
        SigningKey::from_pkcs8(p.contents())
    }

    fn from_pkcs8(der: &[u8]) -> Result<SigningKey, SigningError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| SigningError::Key(format!("not an Ed25519 private key ({e})")))?;
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| SigningError::Key("cannot encode the public key".into()))?;
        let public = PublicKey::from_der(spki.as_ref())?;
        Ok(SigningKey { pair, public })
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Sign `statement` into a new envelope.
    pub fn sign(&self, statement: &Statement) -> Result<Envelope, SigningError> {
        statement.validate()?;
        let payload =
            serde_json::to_vec(statement).map_err(|e| SigningError::Statement(e.to_string()))?;
        let sig = self.pair.sign(&pae(PAYLOAD_TYPE, &payload));
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Envelope {
            payload: b64.encode(&payload),
            payload_type: PAYLOAD_TYPE.to_string(),
            signatures: vec![EnvelopeSignature {
                keyid: self.public.keyid.clone(),
                sig: b64.encode(sig.as_ref()),
            }],
        })
    }
}

/// A public key that verifies plugin signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    spki_der: Vec<u8>,
    raw: Vec<u8>,
    keyid: String,
}

impl PublicKey {
    /// A key from its PEM file (`PUBLIC KEY`, an Ed25519 SubjectPublicKeyInfo).
    pub fn from_pem(bytes: &[u8]) -> Result<PublicKey, SigningError> {
        let p = pem::parse(bytes)
            .map_err(|e| SigningError::Key(format!("not a PEM public key ({e})")))?;
        if p.tag() != "PUBLIC KEY" {
            return Err(SigningError::Key(format!(
                "a PEM '{}' block, not an Ed25519 'PUBLIC KEY' (the .pub file rotor policy keygen writes)",
                p.tag()
            )));
        }
        PublicKey::from_der(p.contents())
    }

    fn from_der(der: &[u8]) -> Result<PublicKey, SigningError> {
        use x509_parser::prelude::FromDer;
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| SigningError::Key(format!("not a SubjectPublicKeyInfo ({e})")))?;
        if !rest.is_empty() {
            return Err(SigningError::Key(
                "trailing bytes after the public key".into(),
            ));
        }
        let oid = spki.algorithm.algorithm.to_id_string();
        if oid != ED25519_OID {
            return Err(SigningError::Key(format!(
                "an {oid} key, not Ed25519 ({ED25519_OID})"
            )));
        }
        let raw = spki.subject_public_key.data.to_vec();
        if raw.len() != 32 {
            return Err(SigningError::Key(format!(
                "an Ed25519 key is 32 bytes, this one {}",
                raw.len()
            )));
        }
        // One encoding per key (RFC 8410: no parameters), so one key id per key: a key cannot
        // dodge a revocation by its id through another encoding.
        let mut canonical = ED25519_SPKI_PREFIX.to_vec();
        canonical.extend_from_slice(&raw);
        if spki.algorithm.parameters.is_some() || der != canonical.as_slice() {
            return Err(SigningError::Key(
                "not the DER encoding of an Ed25519 key RFC 8410 prescribes (no algorithm \
                 parameters)"
                    .into(),
            ));
        }
        Ok(PublicKey {
            spki_der: der.to_vec(),
            raw,
            keyid: key_id(der),
        })
    }

    /// The key id: hex sha256 of the DER SubjectPublicKeyInfo.
    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    /// The key as a PEM `PUBLIC KEY` block.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki_der.clone()))
    }

    /// Verify the envelope with this key and return its statement (validated). A signature
    /// whose key id names another key is not tried; one without a key id is.
    pub fn verify(&self, envelope: &Envelope) -> Result<Statement, SigningError> {
        let payload = decode_b64(&envelope.payload)
            .ok_or_else(|| SigningError::Envelope("payload is not base64".into()))?;
        let message = pae(&envelope.payload_type, &payload);
        let key = UnparsedPublicKey::new(&ED25519, &self.raw);
        let verified = envelope
            .signatures
            .iter()
            .filter(|s| s.keyid.is_empty() || s.keyid.eq_ignore_ascii_case(&self.keyid))
            .filter_map(|s| decode_b64(&s.sig))
            .any(|sig| key.verify(&message, &sig).is_ok());
        if !verified {
            return Err(SigningError::BadSignature {
                keyid: self.keyid.clone(),
                signers: envelope.keyids().join(", "),
            });
        }
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(SigningError::Envelope(format!(
                "payloadType is {:?}, not {PAYLOAD_TYPE:?}",
                envelope.payload_type
            )));
        }
        let statement: Statement =
            serde_json::from_slice(&payload).map_err(|e| SigningError::Statement(e.to_string()))?;
        statement.validate()?;
        Ok(statement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> Statement {
        Statement {
            name: "acme-renewal".into(),
            version: "1.2.0".into(),
            contract: "rotor:policy@0.3.0".into(),
            hooks: vec![Hook::Renewal],
            sha256: "ab".repeat(32),
            size: 10,
        }
    }

    #[test]
    fn pae_matches_the_dsse_test_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let (private, public, key) = SigningKey::generate().unwrap();
        let env = key.sign(&statement()).unwrap();
        let env = Envelope::parse(&env.to_json()).unwrap();
        let public = PublicKey::from_pem(public.as_bytes()).unwrap();
        assert_eq!(public.verify(&env).unwrap(), statement());
        assert_eq!(
            SigningKey::from_pem(private.as_bytes())
                .unwrap()
                .public()
                .keyid(),
            public.keyid()
        );
        let (_, other, _) = SigningKey::generate().unwrap();
        let other = PublicKey::from_pem(other.as_bytes()).unwrap();
        assert!(matches!(
            other.verify(&env),
            Err(SigningError::BadSignature { .. })
        ));
        // A changed payload (a different digest) no longer verifies, even with its key id gone.
        let mut forged = env.clone();
        let mut s = statement();
        s.sha256 = "cd".repeat(32);
        forged.payload =
            base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&s).unwrap());
        forged.signatures[0].keyid.clear();
        assert!(public.verify(&forged).is_err());
    }

    #[test]
    fn url_safe_base64_is_accepted() {
        let (_, public, key) = SigningKey::generate().unwrap();
        let mut env = key.sign(&statement()).unwrap();
        let raw = decode_b64(&env.signatures[0].sig).unwrap();
        env.signatures[0].sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let public = PublicKey::from_pem(public.as_bytes()).unwrap();
        assert!(public.verify(&env).is_ok());
    }

    #[test]
    fn a_key_has_one_encoding_and_one_id() {
        let (_, public, _) = SigningKey::generate().unwrap();
        let der = pem::parse(public.as_bytes()).unwrap().contents().to_vec();
        assert_eq!(der[..12], ED25519_SPKI_PREFIX);
        // The same key with NULL parameters: refused, not given another id.
        let mut with_null = vec![
            0x30, 0x2c, 0x30, 0x07, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x05, 0x00,
        ];
        with_null.extend_from_slice(&der[9..]);
        assert!(PublicKey::from_der(&with_null).is_err());
        assert!(PublicKey::from_der(&der).is_ok());
    }

    #[test]
    fn a_private_key_is_not_a_public_key() {
        let (private, _, _) = SigningKey::generate().unwrap();
        let e = PublicKey::from_pem(private.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("PRIVATE KEY"), "{e}");
    }
}
