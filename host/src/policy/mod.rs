//! Policy: a [`Bundle`] says which plugin answers which hook, with its pinned digest, settings,
//! limits and [`FailureMode`]; asking it applies the host's rules to every answer (clamps, CA
//! protection, usage grants) and falls back to the built-in rules for a missing or failed
//! plugin, and says where the answer came from ([`Source`]). What is asked and answered is
//! [`crate::contract`].

pub(crate) mod builtin;
pub(crate) mod bundle;
pub(crate) mod diff;
pub(crate) mod evaluate;
pub(crate) mod fixtures;
mod hook;
pub(crate) mod input;
pub(crate) mod rules;
pub(crate) mod scaffold;
pub(crate) mod signing;
mod source;
mod trust;

pub use bundle::{Acceptance, Bundle, BundleError, FailureMode, HookPlugin, LoadFailure};
pub use evaluate::{Outcome, Source};
pub use signing::{
    Envelope, EnvelopeSignature, PAYLOAD_TYPE, PublicKey, SigningError, SigningKey, Statement,
};
pub use source::installed_policies;
