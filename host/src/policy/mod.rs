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
pub use evaluate::{Evaluator, Outcome, Source};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 text of a time (UTC, as certificates carry it).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
