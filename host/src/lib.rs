//! rotor: a certificate rotation engine for k3s, RKE2 and kubeadm clusters.
//!
//! The host owns every dangerous act (key generation, signing, encrypted datastore writes) and
//! asks sandboxed WebAssembly policy plugins what to do:
//!
//! ```text
//!  certificate / CSR bytes
//!        │  facts::            parse with x509-parser (never trusted)
//!        ▼
//!  policy::request             the hook's input, with an explicit `now`
//!        │  policy::Bundle     which plugin answers which hook (pinned sha256, settings)
//!        ▼
//!  plugin::Sandbox             fresh store + instance, memory cap, deadline; WIT call
//!        │  plugin::convert    the answer is validated, strings sanitized
//!        ▼
//!  policy::decision            + host rules (clamps, CA protection, failure modes)
//!        │
//!        ▼
//!  native action → fs::Root    capability-limited, atomic writes
//! ```
//!
//! See `docs/ARCHITECTURE.md` for the module map.

#![warn(missing_docs)]

/// A line to standard error that never panics (`eprintln!` does when standard error is
/// gone): `rotor serve`, whose standard error may be a pipe or a journal that goes away, goes
/// on renewing.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

pub mod agent;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod contract;
pub mod controller;
pub mod csr;
pub mod datadir;
pub mod datastore;
pub mod distribution;
pub mod facts;
pub mod fs;
#[doc(hidden)]
pub mod fuzz;
pub mod input;
pub mod pki;
pub mod plugin;
pub mod policy;
pub mod serve;
pub mod supervisor;
