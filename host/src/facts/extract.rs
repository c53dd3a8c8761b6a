//! Conversions from x509-parser's structures into rotor's facts, shared by certificates and CSRs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use x509_parser::extensions::{GeneralName, KeyUsage};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED448, OID_SIG_ED25519, OID_X509_COMMON_NAME,
    OID_X509_ORGANIZATION_NAME, OID_X509_ORGANIZATIONAL_UNIT,
};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

use super::{DistinguishedName, KeyAlgorithm, KeyUsageBit, PublicKeyInfo, SubjectAltNames};

/// Convert a name. Fails (with the attribute's OID) on a value that is not a string.
pub(super) fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName {
        text: name.to_string(),
        ..Default::default()
    };
    for attr in name.iter_attributes() {
        let oid = attr.attr_type();
        let value = match attr.as_str() {
            Ok(v) => v.to_string(),
            Err(_) => match std::str::from_utf8(attr.as_slice()) {
                Ok(v)
                    if oid == &OID_X509_COMMON_NAME
                        || oid == &OID_X509_ORGANIZATION_NAME
                        || oid == &OID_X509_ORGANIZATIONAL_UNIT =>
                {
                    v.to_string()
                }
                Ok(_) => String::new(),
                Err(_) => return Err(format!("attribute {} is not a string", oid.to_id_string())),
            },
        };
        if oid == &OID_X509_COMMON_NAME && dn.common_name.is_none() {
            dn.common_name = Some(value);
        } else if oid == &OID_X509_ORGANIZATION_NAME {
            dn.organizations.push(value);
        } else if oid == &OID_X509_ORGANIZATIONAL_UNIT {
            dn.organizational_units.push(value);
        } else {
            dn.other_attributes.push(oid.to_id_string());
        }
    }
    Ok(dn)
}

/// Convert subject alternative names. Returns the names and a description of every
/// malformed entry (an IP that is neither 4 nor 16 octets, undecodable data).
pub(super) fn subject_alt_names(names: &[GeneralName<'_>]) -> (SubjectAltNames, Vec<String>) {
    let mut sans = SubjectAltNames::default();
    let mut malformed = Vec::new();
    for name in names {
        match name {
            GeneralName::DNSName(d) => sans.dns_names.push((*d).to_string()),
            GeneralName::RFC822Name(e) => sans.emails.push((*e).to_string()),
            GeneralName::URI(u) => sans.uris.push((*u).to_string()),
            GeneralName::IPAddress(bytes) => match ip_from_octets(bytes) {
                Some(ip) => sans.ip_addresses.push(ip),
                None => malformed.push(format!(
                    "iPAddress of {} octets (must be 4 or 16): {}",
                    bytes.len(),
                    hex::encode(bytes)
                )),
            },
            GeneralName::OtherName(oid, _) => sans
                .others
                .push(format!("otherName:{}", oid.to_id_string())),
            GeneralName::DirectoryName(dn) => sans.others.push(format!("directoryName:{dn}")),
            GeneralName::RegisteredID(oid) => sans
                .others
                .push(format!("registeredID:{}", oid.to_id_string())),
            GeneralName::X400Address(_) => sans.others.push("x400Address".into()),
            GeneralName::EDIPartyName(_) => sans.others.push("ediPartyName".into()),
            GeneralName::Invalid(tag, data) => malformed.push(format!(
                "undecodable GeneralName (tag {}): {}",
                tag.0,
                hex::encode(data)
            )),
        }
    }
    (sans, malformed)
}

/// An IP address from its SAN encoding, canonical (IPv4-mapped IPv6 becomes IPv4).
fn ip_from_octets(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => {
            let o: [u8; 4] = bytes.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        16 => {
            let o: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(o)).to_canonical())
        }
        _ => None,
    }
}

pub(super) fn public_key(spki: &SubjectPublicKeyInfo<'_>) -> PublicKeyInfo {
    let oid = &spki.algorithm.algorithm;
    if oid == &OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size() as u32,
            _ => 0,
        };
        return PublicKeyInfo {
            algorithm: KeyAlgorithm::Rsa,
            bits,
        };
    }
    if oid == &OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let (algorithm, bits) = match curve {
            Some(c) if c == OID_EC_P256 => (KeyAlgorithm::EcdsaP256, 256),
            Some(c) if c == OID_NIST_EC_P384 => (KeyAlgorithm::EcdsaP384, 384),
            Some(c) if c == OID_NIST_EC_P521 => (KeyAlgorithm::EcdsaP521, 521),
            _ => (KeyAlgorithm::Other, 0),
        };
        return PublicKeyInfo { algorithm, bits };
    }
    if oid == &OID_SIG_ED25519 {
        return PublicKeyInfo {
            algorithm: KeyAlgorithm::Ed25519,
            bits: 255,
        };
    }
    if oid == &OID_SIG_ED448 {
        return PublicKeyInfo {
            algorithm: KeyAlgorithm::Ed448,
            bits: 448,
        };
    }
    PublicKeyInfo {
        algorithm: KeyAlgorithm::Other,
        bits: 0,
    }
}

pub(super) fn key_usage_bits(ku: &KeyUsage) -> Vec<KeyUsageBit> {
    let table = [
        (ku.digital_signature(), KeyUsageBit::DigitalSignature),
        (ku.non_repudiation(), KeyUsageBit::ContentCommitment),
        (ku.key_encipherment(), KeyUsageBit::KeyEncipherment),
        (ku.data_encipherment(), KeyUsageBit::DataEncipherment),
        (ku.key_agreement(), KeyUsageBit::KeyAgreement),
        (ku.key_cert_sign(), KeyUsageBit::KeyCertSign),
        (ku.crl_sign(), KeyUsageBit::CrlSign),
        (ku.encipher_only(), KeyUsageBit::EncipherOnly),
        (ku.decipher_only(), KeyUsageBit::DecipherOnly),
    ];
    table
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, bit)| bit)
        .collect()
}

pub(super) fn extended_key_usages(
    eku: &x509_parser::extensions::ExtendedKeyUsage<'_>,
) -> Vec<super::ExtendedKeyUsage> {
    use super::ExtendedKeyUsage as E;
    let mut out = Vec::new();
    let flags = [
        (eku.server_auth, E::ServerAuth),
        (eku.client_auth, E::ClientAuth),
        (eku.code_signing, E::CodeSigning),
        (eku.email_protection, E::EmailProtection),
        (eku.time_stamping, E::TimeStamping),
        (eku.ocsp_signing, E::OcspSigning),
        (eku.any, E::Any),
    ];
    for (set, e) in flags {
        if set {
            out.push(e);
        }
    }
    out.extend(eku.other.iter().map(|oid| E::Other(oid.to_id_string())));
    out
}
