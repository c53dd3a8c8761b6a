//! The supervisor API: the node-facing HTTPS endpoint of k3s and RKE2 servers (`rotor serve
//! --supervisor-listen ADDR`), through which agents fetch the cluster CA and get their kubelet,
//! kube-proxy and controller certificates signed, each request decided by the same path as
//! `rotor csr sign` ([`crate::csr::review_fixed`]), with node names bound to node passwords in
//! the datastore.
//!
//! - `authority.rs`: the CAs, token and bootstrap data it serves with, read from the cluster;
//! - `nodes.rs`: node password bindings (Argon2id, created with a compare-and-swap);
//! - `server.rs`: the shared state (authority, limits, rate buckets, the endpoint's certificate);
//! - `listener.rs`: TLS, connections; `handlers.rs`: routing, auth and each certificate
//!   request's decision; `request.rs`: reading requests and writing answers; `endpoint.rs`:
//!   what each certificate endpoint issues.

mod authority;
mod endpoint;
mod handlers;
mod listener;
mod nodes;
mod request;
mod server;

pub use authority::{Authority, SigningCa};
pub use endpoint::Endpoint;
pub use listener::{Resolver, spawn};
pub use nodes::{
    Binding, Bound, NODES_PREFIX, NodeError, NodeRecord, Nodes, hash_password, node_key, node_name,
};
pub use server::{Decided, Limits, Observer, Reviewed, Supervisor};
