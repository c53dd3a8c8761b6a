//! Policy: what the host asks the plugins ([`request`]), what they answer ([`decision`]), the
//! bundles that say which plugin answers which hook ([`bundle`]), and how a bundle is asked
//! ([`evaluate`]), with the built-in rules ([`builtin`]) for missing or failed plugins.

pub mod builtin;
pub mod bundle;
pub mod decision;
pub mod evaluate;
pub mod fixtures;
pub mod input;
pub mod request;

pub use bundle::{Bundle, BundleError, FailureMode, HookPlugin};
pub use evaluate::{Outcome, Source};

/// RFC 3339 text of a time (UTC, as certificates carry it).
pub use crate::clock::rfc3339;
