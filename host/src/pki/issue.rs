//! Issuing certificates with rcgen: self-signed CAs, CAs signed by another CA, and leaves.
//!
//! What rotor puts in every certificate (RFC 5280 §4.2):
//! - a random positive 128-bit serial;
//! - SubjectKeyIdentifier, and AuthorityKeyIdentifier equal to the issuer's SKI (copied from the
//!   issuer certificate, so it matches CAs made by other tools);
//! - CAs: basicConstraints `cA=TRUE` (critical), keyUsage digitalSignature, keyEncipherment,
//!   keyCertSign (as k3s and kubeadm);
//! - leaves: basicConstraints `cA=FALSE`, keyUsage digitalSignature and keyEncipherment, and the
//!   extendedKeyUsage of their purpose (server, client or both), per the Kubernetes PKI table.
//!
//! Not checked here: whether the issuer's own key usage allows signing (callers load issuers
//! through [`CaSigner::load`], which checks that the certificate is a CA and matches its key).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::PkiError;
use super::key::{PrivateKey, SharedKey};
use crate::facts::{CertificateFacts, certificate_ders, parse_certificate_der};

/// What a leaf certificate authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// TLS server: serverAuth, and the key usages for it.
    Server,
    /// TLS client: clientAuth.
    Client,
    /// Both (etcd peers, k3s's supervisor).
    ServerAndClient,
}

/// The subject and names of a certificate to issue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    /// CN.
    pub common_name: String,
    /// O attributes (Kubernetes groups).
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
}

/// A validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of its validity.
    pub not_before: OffsetDateTime,
    /// End of its validity.
    pub not_after: OffsetDateTime,
}

/// Everything a leaf certificate says, but its key.
#[derive(Clone, Debug)]
pub struct LeafTemplate {
    /// Subject and names.
    pub subject: Subject,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// Email subject alternative names.
    pub emails: Vec<String>,
    /// keyUsage bits.
    pub key_usages: Vec<KeyUsagePurpose>,
    /// extendedKeyUsage purposes.
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    /// notBefore and notAfter.
    pub validity: Validity,
}

/// A certificate just issued.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate (DER).
    pub der: Vec<u8>,
    /// The certificate (PEM).
    pub pem: String,
}

/// A CA able to sign: its certificate (the first of its bundle), the bundle as stored, its key.
#[derive(Debug)]
pub struct CaSigner {
    /// The CA file as stored: the CA certificate, possibly followed by its own chain.
    pub bundle_pem: Vec<u8>,
    /// Every certificate of the bundle, DER, in file order.
    pub bundle_der: Vec<Vec<u8>>,
    /// The CA certificate's facts.
    pub facts: CertificateFacts,
    /// The CA's private key.
    pub key: PrivateKey,
    /// The issuer rcgen signs with (the CA's name, key identifier and key), parsed from the CA
    /// certificate once, not for every certificate it signs.
    issuer: Issuer<'static, SharedKey>,
}

fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::NoRandomness("a serial number"))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and never a leading zero byte
    Ok(SerialNumber::from_slice(&bytes))
}

fn params(subject: &Subject, validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in &subject.organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, subject.common_name.as_str());
    p.distinguished_name = dn;
    for d in &subject.dns_names {
        let name = d.as_str().try_into().map_err(|_| PkiError::Invalid {
            what: d.clone(),
            reason: "not an ASCII DNS name".into(),
        })?;
        p.subject_alt_names.push(SanType::DnsName(name));
    }
    for ip in &subject.ip_addresses {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(serial()?);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn ca_params(subject: &Subject, validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut p = params(subject, validity)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    Ok(p)
}

fn issued(cert: rcgen::Certificate) -> Issued {
    Issued {
        der: cert.der().to_vec(),
        pem: cert.pem(),
    }
}

/// A self-signed CA certificate.
pub fn self_signed_ca(
    subject: &Subject,
    key: &PrivateKey,
    validity: Validity,
) -> Result<Issued, PkiError> {
    let mut p = ca_params(subject, validity)?;
    // A self-signed certificate's AKI would equal its SKI; k3s and kubeadm roots carry none.
    p.use_authority_key_identifier_extension = false;
    let cert = p
        .self_signed(key.pair())
        .map_err(|error| PkiError::Crypto {
            doing: "signing a CA".into(),
            error,
        })?;
    Ok(issued(cert))
}

impl CaSigner {
    /// Load a CA from its certificate file (first certificate = the CA) and key file. Checks
    /// that the certificate is a CA and that the key is its key.
    pub fn load(what: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<CaSigner, PkiError> {
        let invalid = |reason: String| PkiError::Invalid {
            what: what.into(),
            reason,
        };
        let bundle_der = certificate_ders(what, cert_pem)?;
        let first = bundle_der
            .first()
            .ok_or_else(|| invalid("no CERTIFICATE block".into()))?;
        let facts = parse_certificate_der(what, first)?;
        if !facts.is_ca {
            return Err(invalid(
                "the certificate is not a CA (basicConstraints cA is not set)".into(),
            ));
        }
        let key = PrivateKey::from_pem(&format!("{what} (key)"), key_pem)?;
        if !key.matches_certificate(first) {
            return Err(invalid(
                "the private key does not belong to the certificate".into(),
            ));
        }
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(first.as_slice()), key.shared())
                .map_err(|error| PkiError::Crypto {
                    doing: format!("reading the CA certificate of {what}"),
                    error,
                })?;
        Ok(CaSigner {
            bundle_pem: cert_pem.to_vec(),
            bundle_der: bundle_der.clone(),
            facts,
            key,
            issuer,
        })
    }

    /// What a verifier that trusts only a root may need between a leaf of this CA and that root:
    /// every certificate of the bundle that is not self-issued (the CA itself when it is an
    /// intermediate, the intermediates above it, a new root cross-signed by the old one after a
    /// rotation), PEM, in file order. Empty for a self-signed root alone (kubeadm's default).
    pub fn chain_pem(&self) -> Vec<u8> {
        self.bundle_der
            .iter()
            .filter(|d| !super::is_self_signed(d))
            .map(|d| super::pem_encode("CERTIFICATE", d))
            .collect::<String>()
            .into_bytes()
    }

    /// The CA certificate itself (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.bundle_der[0]
    }

    /// Issue a leaf for `key`. The validity is clamped to the CA's: a leaf never outlives its CA.
    pub fn issue_leaf(
        &self,
        subject: &Subject,
        purpose: Purpose,
        key: &PrivateKey,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        let template = LeafTemplate {
            subject: subject.clone(),
            uris: Vec::new(),
            emails: Vec::new(),
            key_usages: vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
            extended_key_usages: match purpose {
                Purpose::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
                Purpose::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
                Purpose::ServerAndClient => {
                    vec![
                        ExtendedKeyUsagePurpose::ServerAuth,
                        ExtendedKeyUsagePurpose::ClientAuth,
                    ]
                }
            },
            validity,
        };
        self.sign_template(&template, key.pair())
    }

    /// Issue a leaf from a template for the public key of a CSR (`spki_der`, the CSR's
    /// SubjectPublicKeyInfo). Nothing is copied from the CSR but the key: the template says
    /// everything else.
    pub fn sign_for_public_key(
        &self,
        template: &LeafTemplate,
        spki_der: &[u8],
    ) -> Result<Issued, PkiError> {
        let spki =
            rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| PkiError::Invalid {
                what: "public key".into(),
                reason: e.to_string(),
            })?;
        self.sign_template(template, &spki)
    }

    fn sign_template(
        &self,
        template: &LeafTemplate,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<Issued, PkiError> {
        let validity = self.clamp(template.validity)?;
        let mut p = params(&template.subject, validity)?;
        for u in &template.uris {
            let v = u.as_str().try_into().map_err(|_| PkiError::Invalid {
                what: u.clone(),
                reason: "not an ASCII URI".into(),
            })?;
            p.subject_alt_names.push(SanType::URI(v));
        }
        for e in &template.emails {
            let v = e.as_str().try_into().map_err(|_| PkiError::Invalid {
                what: e.clone(),
                reason: "not an ASCII email".into(),
            })?;
            p.subject_alt_names.push(SanType::Rfc822Name(v));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = template.key_usages.clone();
        p.extended_key_usages = template.extended_key_usages.clone();
        let cert = p
            .signed_by(public_key, &self.issuer)
            .map_err(|e| PkiError::Crypto {
                doing: format!("signing '{}'", template.subject.common_name),
                error: e,
            })?;
        Ok(issued(cert))
    }

    /// Issue a CA certificate for `key`, signed by this CA (an intermediate, or a cross-signed
    /// root when `subject` is another root's subject). The validity is clamped to this CA's: a
    /// CA never outlives its issuer.
    pub fn issue_ca(
        &self,
        subject: &Subject,
        key: &PrivateKey,
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        let p = ca_params(subject, self.clamp(validity)?)?;
        let cert = p
            .signed_by(key.pair(), &self.issuer)
            .map_err(|error| PkiError::Crypto {
                doing: format!("signing CA '{}'", subject.common_name),
                error,
            })?;
        Ok(issued(cert))
    }

    /// Limit `v` to the CA's validity; an expired CA, or one not valid yet for the whole
    /// validity, cannot issue.
    fn clamp(&self, v: Validity) -> Result<Validity, PkiError> {
        let not_before = v.not_before.max(self.facts.not_before);
        let not_after = v.not_after.min(self.facts.not_after);
        if not_after <= not_before {
            let what = self
                .facts
                .subject
                .common_name
                .clone()
                .unwrap_or_else(|| self.facts.subject.text.clone());
            return Err(if v.not_after <= self.facts.not_before {
                PkiError::NotYetValid {
                    what,
                    not_before: self.facts.not_before,
                }
            } else {
                PkiError::Expired {
                    what,
                    not_after: self.facts.not_after,
                }
            });
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}
