//! Keys and certificates: generation, issuance, chain checks, and the join token.
//!
//! Issuing always goes through [`CaSigner`] and [`self_signed_ca`] (rcgen on aws-lc-rs); reading always through
//! [`crate::facts`] (x509-parser). Signatures are checked with x509-parser's aws-lc-rs backend.

mod chain;
mod issue;
mod key;
mod token;

pub use chain::{ca_hash, is_self_issued, is_self_signed, public_key_bits, signed_by, spki_of};
pub use issue::{CaSigner, Issued, LeafTemplate, Purpose, Subject, Validity, self_signed_ca};
pub use key::{KeyType, PrivateKey, pem_encode};
pub use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
pub use token::{Token, TokenError, generate_password};

use time::OffsetDateTime;

use crate::facts::FactsError;

/// A leaf's lifetime when nothing else says: the documents' 365 days, which is also the
/// Kubernetes signer's `--cluster-signing-duration` default.
pub const LEAF_LIFETIME: time::Duration = time::Duration::days(365);

/// How long before a CA expires rotor starts warning: a year (k3s certmonitor: 365 days),
/// enough to plan a rotation, and as long as a leaf lives.
pub const CA_WARNING: time::Duration = time::Duration::days(365);

/// A key or certificate could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The input (named by `what`, usually a file) is not usable.
    #[error("{what}: {reason}")]
    Invalid {
        /// The input, usually a file.
        what: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The input could not be parsed (the error names it).
    #[error(transparent)]
    Facts(#[from] FactsError),
    /// The CA's validity starts after the certificate would end (a clock far behind it).
    #[error("CA '{what}' is not valid until {}: check the clock", crate::clock::rfc3339(*.not_before))]
    NotYetValid {
        /// The CA's common name.
        what: String,
        /// When its validity starts.
        not_before: OffsetDateTime,
    },
    /// The CA expired: it cannot issue any more.
    #[error("CA '{what}' expired on {}: rotate the CA first", crate::clock::rfc3339(*.not_after))]
    Expired {
        /// The CA's common name.
        what: String,
        /// When it expired.
        not_after: OffsetDateTime,
    },
    /// rcgen (on aws-lc-rs) could not generate, sign or read key material.
    #[error("{doing}: {error}")]
    Crypto {
        /// What rotor was doing (`signing 'kube-apiserver'`, ...).
        doing: String,
        /// What the library said (in the message: it is the whole explanation).
        error: rcgen::Error,
    },
    /// The system's random number generator failed.
    #[error("no randomness for {0}")]
    NoRandomness(&'static str),
}
