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

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod contract;
pub mod csr;
pub mod datadir;
pub mod datastore;
pub mod facts;
pub mod fs;
#[doc(hidden)]
pub mod fuzz;
pub mod input;
pub mod pki;
pub mod plugin;
pub mod policy;
pub mod serve;
