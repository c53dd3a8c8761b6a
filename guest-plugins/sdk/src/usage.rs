//! Kubernetes usage names (`CertificateSigningRequest.spec.usages`: `"server auth"`,
//! `"digital signature"`, ...) to and from the WIT `usage` enum of the CSR world, so settings can
//! use the names operators know.

use crate::csr::rotor::policy::types::Usage;

/// Every usage with its Kubernetes name, in the WIT enum's order.
pub const ALL: [(Usage, &str); 23] = [
    (Usage::Signing, "signing"),
    (Usage::DigitalSignature, "digital signature"),
    (Usage::ContentCommitment, "content commitment"),
    (Usage::KeyEncipherment, "key encipherment"),
    (Usage::KeyAgreement, "key agreement"),
    (Usage::DataEncipherment, "data encipherment"),
    (Usage::CertSign, "cert sign"),
    (Usage::CrlSign, "crl sign"),
    (Usage::EncipherOnly, "encipher only"),
    (Usage::DecipherOnly, "decipher only"),
    (Usage::Any, "any"),
    (Usage::ServerAuth, "server auth"),
    (Usage::ClientAuth, "client auth"),
    (Usage::CodeSigning, "code signing"),
    (Usage::EmailProtection, "email protection"),
    (Usage::SMime, "s/mime"),
    (Usage::IpsecEndSystem, "ipsec end system"),
    (Usage::IpsecTunnel, "ipsec tunnel"),
    (Usage::IpsecUser, "ipsec user"),
    (Usage::Timestamping, "timestamping"),
    (Usage::OcspSigning, "ocsp signing"),
    (Usage::MicrosoftSgc, "microsoft sgc"),
    (Usage::NetscapeSgc, "netscape sgc"),
];

/// The Kubernetes name of `usage` (`Usage::ServerAuth` is `"server auth"`).
pub fn name(usage: Usage) -> &'static str {
    ALL[usage as usize].1
}

/// The usage Kubernetes calls `name`, if any.
pub fn from_name(name: &str) -> Option<Usage> {
    ALL.iter().find(|(_, n)| *n == name).map(|(u, _)| *u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_follow_the_enum() {
        for (i, (u, n)) in ALL.iter().enumerate() {
            assert_eq!(*u as usize, i, "{n}");
            assert_eq!(name(*u), *n);
            assert_eq!(from_name(n), Some(*u));
        }
        assert_eq!(from_name("server-auth"), None);
    }
}
