//! Request builders for unit tests of rules on the host target (`cargo test`): sensible
//! defaults, override what the test is about.
//!
//! ```ignore
//! // (feature `renewal`)
//! use rotor_policy_sdk::testing;
//! let request = testing::renewal()
//!     .validity(0, 365 * testing::DAY)
//!     .now(300 * testing::DAY)
//!     .build();
//! assert_eq!(request.not_after - request.now, 65 * testing::DAY);
//! ```
//!
//! A rule that needs the certificate's details (0.3: its name and serial too) takes them as
//! plain values (its `lib.rs` glue asks `facts::details()`, which only exists inside rotor), so
//! it is tested with values too.

/// Seconds in a day.
pub const DAY: i64 = 86_400;

#[cfg(feature = "csr")]
pub use self::csr_requests::*;
#[cfg(feature = "renewal")]
pub use self::renewal_requests::*;
#[cfg(feature = "san")]
pub use self::san_requests::*;

#[cfg(feature = "renewal")]
mod renewal_requests {
    use super::DAY;
    use crate::renewal::exports::rotor::policy::renewal::RenewalRequest;
    use crate::renewal::rotor::policy::types::KeyAlgorithm;

    /// A renewal request: a P-256 leaf valid for a year from 0, decided at day 100.
    pub fn renewal() -> RenewalBuilder {
        RenewalBuilder(RenewalRequest {
            not_before: 0,
            not_after: 365 * DAY,
            is_ca: false,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            key_bits: 256,
            dns_name_count: 1,
            ip_address_count: 0,
            other_name_count: 0,
            issuer_not_after: None,
            now: 100 * DAY,
        })
    }

    /// Builds a [`RenewalRequest`].
    #[derive(Clone, Debug)]
    pub struct RenewalBuilder(RenewalRequest);

    impl RenewalBuilder {
        /// notBefore and notAfter, in seconds since the epoch.
        pub fn validity(mut self, not_before: i64, not_after: i64) -> Self {
            self.0.not_before = not_before;
            self.0.not_after = not_after;
            self
        }
        /// The instant to decide at.
        pub fn now(mut self, now: i64) -> Self {
            self.0.now = now;
            self
        }
        /// A CA certificate.
        pub fn ca(mut self) -> Self {
            self.0.is_ca = true;
            self
        }
        /// The issuing CA's notAfter.
        pub fn issuer_not_after(mut self, t: i64) -> Self {
            self.0.issuer_not_after = Some(t);
            self
        }
        /// The key.
        pub fn key(mut self, algorithm: KeyAlgorithm, bits: u32) -> Self {
            self.0.key_algorithm = algorithm;
            self.0.key_bits = bits;
            self
        }
        /// The request.
        pub fn build(self) -> RenewalRequest {
            self.0
        }
    }
}

#[cfg(feature = "san")]
mod san_requests {
    use super::DAY;
    use crate::san::exports::rotor::policy::san_validation::{NodeIdentity, SanRequest, Stage};
    use crate::san::rotor::policy::types as san_types;

    /// A distinguished name with this CN (SAN world types).
    pub fn san_subject(common_name: &str) -> san_types::DistinguishedName {
        san_types::DistinguishedName {
            text: format!("CN={common_name}"),
            common_name: Some(common_name.into()),
            organizations: Vec::new(),
            organizational_units: Vec::new(),
            other_attributes: Vec::new(),
        }
    }

    /// A SAN request of `profile` at the `csr` stage for these DNS names, no node.
    pub fn san(profile: &str, dns_names: &[&str]) -> SanRequest {
        SanRequest {
            profile: profile.into(),
            stage: Stage::Csr,
            subject: san_subject(dns_names.first().copied().unwrap_or("")),
            sans: san_types::SubjectAltNames {
                dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
                ip_addresses: Vec::new(),
                uris: Vec::new(),
                emails: Vec::new(),
                others: Vec::new(),
            },
            node: None,
            now: 100 * DAY,
        }
    }

    /// The node a SAN request is bound to, with IPv4 evidence.
    pub fn node(name: &str, ipv4: &[[u8; 4]]) -> NodeIdentity {
        NodeIdentity {
            name: name.into(),
            addresses: ipv4
                .iter()
                .map(|[a, b, c, d]| san_types::IpAddress::Ipv4((*a, *b, *c, *d)))
                .collect(),
        }
    }
}

#[cfg(feature = "csr")]
mod csr_requests {
    use super::DAY;
    use crate::csr::exports::rotor::policy::csr_approval::CsrRequest;
    use crate::csr::rotor::policy::types as csr_types;

    /// A kubelet-serving CSR from `system:node:<node>`: P-256, `digital signature`,
    /// `server auth`, DNS name `<node>`.
    pub fn kubelet_serving_csr(node: &str) -> CsrRequest {
        let cn = format!("system:node:{node}");
        CsrRequest {
            signer_name: "kubernetes.io/kubelet-serving".into(),
            username: cn.clone(),
            uid: String::new(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            subject: csr_types::DistinguishedName {
                text: format!("CN={cn},O=system:nodes"),
                common_name: Some(cn),
                organizations: vec!["system:nodes".into()],
                organizational_units: Vec::new(),
                other_attributes: Vec::new(),
            },
            sans: csr_types::SubjectAltNames {
                dns_names: vec![node.into()],
                ip_addresses: Vec::new(),
                uris: Vec::new(),
                emails: Vec::new(),
                others: Vec::new(),
            },
            public_key: csr_types::PublicKey {
                algorithm: csr_types::KeyAlgorithm::EcdsaP256,
                bits: 256,
            },
            usages: vec![
                csr_types::Usage::DigitalSignature,
                csr_types::Usage::ServerAuth,
            ],
            expiration_seconds: None,
            requests_ca: false,
            other_extensions: Vec::new(),
            node_addresses: Vec::new(),
            now: 100 * DAY,
        }
    }
}
