//! `rotor csr controller`: rotor as the cluster's CSR approver (and, for the signer names the
//! operator lists, its signer), through the Kubernetes API.
//!
//! One replica at a time leads, through a `coordination.k8s.io/v1` Lease ([`LeaseTimings`]);
//! the leader watches CertificateSigningRequests and Nodes, and decides every pending CSR of the
//! signers it is configured for by exactly the path `rotor csr review` takes (host checks, the
//! SAN hook, the CSR hook, each decision in a fresh plugin instance), with the requesting
//! node's live Node object as evidence. It approves or denies through the `/approval`
//! subresource (a condition carrying every reason), leaves an abstention pending with an Event
//! saying why, and signs approved CSRs of the signers it signs for through `/status`. Every
//! write is conditional on the object it decided on, so nothing is decided twice. Decisions
//! are counted and logged as `rotor serve` does (`serve::CsrRecorder`), and the shadow
//! bundle sees them too.

mod act;
mod evidence;
mod lease;
mod run;

pub use lease::LeaseTimings;
pub use run::{ControllerError, ControllerOptions, default_identity, run};
