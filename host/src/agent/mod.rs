//! `rotor agent`: the node side of the supervisor API. An agent trusts the servers by the join
//! token's CA hash (or the CA bundle it keeps), generates its keys itself (they never leave the
//! node), asks any live server for its kubelet, kube-proxy and controller certificates, checks
//! every answer, and writes k3s's agent layout through generations, so that a kill at any step
//! leaves the previous certificates or the new ones, never a mix. Then it keeps them fresh:
//! the renewal policy decides on the agent's own certificates, waits are jittered, failures
//! back off and move to the next server, a CA rotation on the servers is picked up by itself.
//!
//! - `client.rs`: HTTPS to the servers (trust, failover);
//! - `files.rs`: the agent's data dir (managed files, commit, recovery);
//! - `certs.rs`: the certificates an agent keeps and the CA bundles it checks them against;
//! - `pass.rs`: one pass over the certificates; `run.rs`: the loop, signals, the status endpoint;
//! - `metrics.rs`: what `/metrics` and `/readyz` say.

mod certs;
mod client;
mod files;
mod metrics;
mod pass;
mod run;

pub use client::{Answered, Call, ClientError, Servers, Trust};
pub use files::{AgentDir, DirError, PASSWORD_FILE, STATE_FILE, managed_files};
pub use metrics::AgentStatus;
pub use pass::{Agent, AgentError, AgentOptions, CertAction, CertReport, PassReport};
pub use run::{Said, Schedule, Stopped, jittered, run, serve_status};
