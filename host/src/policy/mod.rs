//! Policy: the bundles that say which plugin answers which hook ([`bundle`]), and how a bundle is
//! asked ([`evaluate`]), with the host's rules applied to every answer and the built-in rules
//! ([`builtin`]) for missing or failed plugins. What is asked and answered is
//! [`crate::contract`].

pub(crate) mod builtin;
pub(crate) mod bundle;
pub(crate) mod evaluate;
pub(crate) mod fixtures;
pub(crate) mod input;

pub use bundle::{Bundle, BundleError, FailureMode, HookPlugin};
pub use evaluate::{Outcome, Source};
