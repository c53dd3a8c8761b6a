//! Private keys: generation (aws-lc-rs: ECDSA directly, RSA through rcgen) and PEM reading.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use super::PkiError;
use crate::facts::{KeyAlgorithm, PemKind, read_pem_blocks};

/// Key algorithms rotor generates. k3s and RKE2 use ECDSA P-256 for every CA and leaf; kubeadm
/// defaults to RSA-2048 and offers the others (`encryptionAlgorithm`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256 (k3s, RKE2).
    #[value(name = "ecdsa-p256")]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    #[value(name = "ecdsa-p384")]
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    /// RSA-2048 with SHA-256 (kubeadm's default).
    #[value(name = "rsa-2048")]
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA-3072 with SHA-256.
    #[value(name = "rsa-3072")]
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    /// RSA-4096 with SHA-256.
    #[value(name = "rsa-4096")]
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        })
    }
}

impl KeyType {
    /// Generate a fresh key of this type.
    pub fn generate(self) -> Result<PrivateKey, PkiError> {
        let crypto = |error| PkiError::Crypto {
            doing: format!("generating a {self} key"),
            error,
        };
        // ECDSA: aws-lc's key object is used as generated; its PKCS#8 form is only written out
        // (rcgen's `generate_for` would serialize it and parse it back, which recomputes the
        // public point: a second scalar multiplication per key).
        let ecdsa = |alg: &'static EcdsaSigningAlgorithm,
                     sig: &'static rcgen::SignatureAlgorithm| {
            let key =
                EcdsaKeyPair::generate(alg).map_err(|_| crypto(rcgen::Error::RingUnspecified))?;
            let der = key
                .to_pkcs8v1()
                .map_err(|_| crypto(rcgen::Error::RingUnspecified))?;
            Ok::<_, PkiError>(PrivateKey {
                pem: pem_encode("PRIVATE KEY", der.as_ref()),
                pair: Arc::new(Signer::Ecdsa { key, alg: sig }),
            })
        };
        let pair = match self {
            KeyType::EcdsaP256 => {
                return ecdsa(
                    &ECDSA_P256_SHA256_ASN1_SIGNING,
                    &rcgen::PKCS_ECDSA_P256_SHA256,
                );
            }
            KeyType::EcdsaP384 => {
                return ecdsa(
                    &ECDSA_P384_SHA384_ASN1_SIGNING,
                    &rcgen::PKCS_ECDSA_P384_SHA384,
                );
            }
            KeyType::Rsa2048 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyType::Rsa3072 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
            KeyType::Rsa4096 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            }
        }
        .map_err(crypto)?;
        let pem = pair.serialize_pem();
        Ok(PrivateKey {
            pair: Arc::new(Signer::Rcgen(pair)),
            pem,
        })
    }
}

/// What signs: a key rcgen parsed (any file), or an ECDSA key generated here.
pub(crate) enum Signer {
    Rcgen(rcgen::KeyPair),
    Ecdsa {
        key: EcdsaKeyPair,
        alg: &'static rcgen::SignatureAlgorithm,
    },
}

impl rcgen::PublicKeyData for Signer {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Signer::Rcgen(pair) => pair.der_bytes(),
            Signer::Ecdsa { key, .. } => key.public_key().as_ref(),
        }
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Signer::Rcgen(pair) => rcgen::PublicKeyData::algorithm(pair),
            Signer::Ecdsa { alg, .. } => alg,
        }
    }
}

impl rcgen::SigningKey for Signer {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Signer::Rcgen(pair) => pair.sign(msg),
            // ASN.1 (DER) signatures, as X.509 carries them and rcgen makes them.
            Signer::Ecdsa { key, .. } => key
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| rcgen::Error::RingUnspecified),
        }
    }
}

/// A private key and the PEM text it is stored as.
pub struct PrivateKey {
    pair: Arc<Signer>,
    pem: String,
}

/// A key pair shared with a cached issuer (rcgen's signing traits, by delegation).
#[derive(Clone)]
pub(crate) struct SharedKey(Arc<Signer>);

impl rcgen::PublicKeyData for SharedKey {
    fn der_bytes(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&*self.0)
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(&*self.0)
    }
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey")
    }
}

impl rcgen::SigningKey for SharedKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        rcgen::SigningKey::sign(&*self.0, msg)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC). `what` names the
    /// file in errors.
    pub fn from_pem(what: &str, pem: &[u8]) -> Result<PrivateKey, PkiError> {
        Self::all_from_pem(what, pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Invalid {
                what: what.into(),
                reason: "no private key PEM block".into(),
            })
    }

    /// Every private key of a PEM file, in order (k3s's `service.key` may hold several).
    pub fn all_from_pem(what: &str, pem: &[u8]) -> Result<Vec<PrivateKey>, PkiError> {
        let blocks = read_pem_blocks(what, pem)?;
        blocks
            .into_iter()
            .filter(|b| b.kind.is_private_key())
            .map(|b| {
                let der: PrivateKeyDer<'static> = match b.kind {
                    PemKind::PrivateKey => PrivatePkcs8KeyDer::from(b.der.clone()).into(),
                    PemKind::RsaPrivateKey => PrivatePkcs1KeyDer::from(b.der.clone()).into(),
                    _ => PrivateSec1KeyDer::from(b.der.clone()).into(),
                };
                let pair = rcgen::KeyPair::try_from(&der).map_err(|e| PkiError::Invalid {
                    what: what.into(),
                    reason: format!("unsupported or malformed private key: {e}"),
                })?;
                let pem = pem_encode(b.kind.label(), &b.der);
                Ok(PrivateKey {
                    pair: Arc::new(Signer::Rcgen(pair)),
                    pem,
                })
            })
            .collect()
    }

    /// PEM text of this key, as stored.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// An ECDSA key rotor generated, as SEC1 (`EC PRIVATE KEY`), the form Kubernetes writes
    /// and the only form of an EC key its service-account public-key reader
    /// (`--service-account-key-file`) accepts; `None` for any other key (kept as stored).
    pub fn sec1_pem(&self) -> Option<String> {
        match &*self.pair {
            Signer::Ecdsa { key, .. } => {
                let der: EcPrivateKeyRfc5915Der<'_> = key.private_key().as_der().ok()?;
                Some(pem_encode("EC PRIVATE KEY", der.as_ref()))
            }
            Signer::Rcgen(_) => None,
        }
    }

    /// DER SubjectPublicKeyInfo of the public half.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&*self.pair)
    }

    /// The raw public key (the SPKI's bit string: an EC point, or an RSAPublicKey), which is
    /// what identifies the key whatever encoder wrote the certificate.
    pub fn public_key_raw(&self) -> &[u8] {
        rcgen::PublicKeyData::der_bytes(&*self.pair)
    }

    /// Whether `cert_der` is a certificate for this key.
    pub fn matches_certificate(&self, cert_der: &[u8]) -> bool {
        super::chain::public_key_bits(cert_der).as_deref() == Some(self.public_key_raw())
    }

    /// The key's algorithm, as certificates report it.
    pub fn algorithm(&self) -> KeyAlgorithm {
        let alg = rcgen::PublicKeyData::algorithm(&*self.pair);
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            KeyAlgorithm::EcdsaP256
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            KeyAlgorithm::EcdsaP384
        } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
            KeyAlgorithm::EcdsaP521
        } else if alg == &rcgen::PKCS_ED25519 {
            KeyAlgorithm::Ed25519
        } else if alg == &rcgen::PKCS_RSA_SHA256 {
            KeyAlgorithm::Rsa
        } else {
            KeyAlgorithm::Other
        }
    }

    pub(crate) fn pair(&self) -> &Signer {
        &self.pair
    }

    /// The key pair, shareable (a CA's cached issuer holds it).
    pub(crate) fn shared(&self) -> SharedKey {
        SharedKey(self.pair.clone())
    }

    /// A certificate signing request for this key that asks for nothing but the key (an empty
    /// subject, no extensions), as k3s agents send it: the server fixes the rest. PEM.
    ///
    /// # Errors
    /// The key cannot sign.
    pub fn empty_csr_pem(&self) -> Result<String, PkiError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&self.shared())
            .map_err(|e| PkiError::Invalid {
                what: "certificate signing request".into(),
                reason: e.to_string(),
            })?;
        Ok(pem_encode("CERTIFICATE REQUEST", csr.der()))
    }
}

/// PEM-encode DER with a label (RFC 7468, LF line endings).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pem() {
        for kt in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let k = kt.generate().unwrap();
            let back = PrivateKey::from_pem("k", k.pem().as_bytes()).unwrap();
            assert_eq!(back.public_key_der(), k.public_key_der(), "{kt}");
            let expected = if kt == KeyType::Rsa2048 {
                KeyAlgorithm::Rsa
            } else {
                k.algorithm()
            };
            assert_eq!(back.algorithm(), expected);
        }
    }

    #[test]
    fn several_keys_in_one_file_are_read_in_order() {
        let a = KeyType::EcdsaP256.generate().unwrap();
        let b = KeyType::EcdsaP256.generate().unwrap();
        let both = format!("{}{}", a.pem(), b.pem());
        let keys = PrivateKey::all_from_pem("service.key", both.as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].public_key_der(), b.public_key_der());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = PrivateKey::from_pem(
            "x.key",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("x.key: unsupported or malformed private key"),
            "{err}"
        );
        let err = PrivateKey::from_pem("y.key", b"nothing").unwrap_err();
        assert_eq!(err.to_string(), "y.key: no private key PEM block");
    }
}
