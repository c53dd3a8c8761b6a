//! The plugin contract as the host sees it: what the host asks ([`RenewalRequest`],
//! [`SanRequest`], [`CsrRequest`]), what a plugin may answer ([`RenewalDecision`],
//! [`SanDecision`], [`CsrDecision`]), and which [`Hook`] a question belongs to.
//!
//! This module depends only on [`crate::facts`]: the plugin runtime ([`crate::plugin`]) converts
//! these types to and from WIT records, and [`crate::policy`] decides which plugin is asked and
//! applies the host's rules to the answer. Neither depends on the other through it.

mod decision;
mod hook;
mod reason;
mod request;

pub use decision::{CsrDecision, RenewalDecision, SanDecision};
pub use hook::Hook;
pub use reason::RenewalReason;
pub use request::{CsrContext, CsrRequest, NodeIdentity, RenewalRequest, SanRequest, SanStage};
