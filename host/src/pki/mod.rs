//! Keys and certificates: generation, issuance, chain checks, and the join token.
//!
//! Issuing always goes through [`issue`] (rcgen on aws-lc-rs); reading always through
//! [`crate::facts`] (x509-parser). Signatures are checked with x509-parser's aws-lc-rs backend.

mod chain;
mod issue;
mod key;
mod token;

pub use chain::{ca_hash, is_self_issued, public_key_bits, signed_by, spki_of};
pub use issue::{CaSigner, Issued, LeafTemplate, Purpose, Subject, Validity, self_signed_ca};
pub use key::{KeyType, PrivateKey, pem_encode};
pub use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
pub use token::{Token, TokenError, generate_password};

use time::OffsetDateTime;

/// A key or certificate could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The input (named by `what`, usually a file) is not usable.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// The CA's validity starts after the certificate would end (a clock far behind it).
    #[error("CA '{what}' is not valid until {}: check the clock", crate::clock::rfc3339(*.not_before))]
    NotYetValid {
        what: String,
        not_before: OffsetDateTime,
    },
    /// The CA expired: it cannot issue any more.
    #[error("CA '{what}' expired on {}: rotate the CA first", crate::clock::rfc3339(*.not_after))]
    Expired {
        what: String,
        not_after: OffsetDateTime,
    },
    /// The cryptographic library failed.
    #[error("crypto: {0}")]
    Crypto(String),
}
