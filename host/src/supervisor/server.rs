//! The supervisor API over HTTPS (hyper, tokio-rustls), with k3s's paths, auth and headers:
//!
//! | request | auth | answer |
//! | ------- | ---- | ------ |
//! | `GET /cacerts` | none | the server CA file, exactly as stored (a token pins its hash) |
//! | `GET /ping` | none | `pong` |
//! | `GET /v1-<program>/readyz` | `node` or `server` | `ok`, or 503 with why |
//! | `GET /v1-<program>/server-bootstrap` | `server` | the bootstrap record's JSON |
//! | `POST /v1-<program>/serving-kubelet.crt`, `client-kubelet.crt`, `client-kube-proxy.crt`, `client-<program>-controller.crt` | `node` or `server`, and `<program>-Node-Name`, `<program>-Node-Password` | the certificate, then its CA's file |
//!
//! Basic auth is `node:<token password>` or `server:<token password>`. A certificate request's
//! body is a CSR (DER, as k3s agents send, or PEM) made with the node's own key; the host fixes
//! the subject, names and usages per endpoint ([`Endpoint`]), binds the node name to its
//! password ([`super::Nodes`]), and decides through [`crate::csr::review_fixed`] (proof of
//! possession, host rules and floor, the SAN and CSR policies, each in a fresh plugin instance).
//! Status: 400 malformed input (the field named), 401 bad credentials, 403 a denial or a
//! password that does not match (every reason as text), 413 a body over the limit, 429 a node
//! asking too often, 503 not ready.
//!
//! Limits ([`Limits`]): connections at once, header count, body size, time to send headers and
//! body, requests per node name; none of them blocks other nodes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::authority::Authority;
use super::endpoint::Endpoint;
use super::listener::Resolver;
use super::nodes::Nodes;
use crate::csr::{CsrInput, FixedSubject, SignerLimits};
use crate::policy::Bundle;

/// The endpoint's limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once (more wait in the kernel's backlog).
    pub connections: usize,
    /// Request headers at most.
    pub headers: usize,
    /// Request body bytes at most.
    pub body: usize,
    /// Time to finish the TLS handshake, then to send the headers, then the body.
    pub client_timeout: Duration,
    /// Requests a node name may make in a burst, and per second after it.
    pub node_burst: f64,
    /// Requests per second a node name is given back after its burst.
    pub node_rate: f64,
    /// Connections one address may hold at once.
    pub connections_per_address: usize,
    /// How long one connection may stay open, whatever it does.
    pub connection_lifetime: Duration,
    /// Decisions (binding, plugins, signing) running at once; more wait, then get 503.
    pub decisions: usize,
    /// Serve `/v1-<program>/server-bootstrap` (every CA key of the cluster) to the server
    /// token. Off by default: rotor has one token, which agents hold too.
    pub server_bootstrap: bool,
    /// New node names one address may bind in a burst (a machine claiming names by the
    /// thousand waits; nodes behind one NAT share it).
    pub new_nodes_burst: f64,
    /// New node names per second an address gets back after its burst.
    pub new_nodes_rate: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 2048,
            headers: 64,
            body: 64 * 1024,
            client_timeout: Duration::from_secs(10),
            node_burst: 20.0,
            node_rate: 2.0,
            connections_per_address: 1024,
            connection_lifetime: Duration::from_secs(120),
            decisions: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            server_bootstrap: false,
            new_nodes_burst: 1000.0,
            new_nodes_rate: 10.0,
        }
    }
}

/// What a certificate request came to, for the server's log and metrics.
#[derive(Debug)]
pub struct Decided<'a> {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The node name asked for.
    pub node: &'a str,
    /// The review, when one was made.
    pub review: Option<&'a crate::csr::Review>,
    /// What was reviewed, for a shadow bundle to review it too: the request, the subject the
    /// host fixed, and the issuing CA's notAfter.
    pub reviewed: Option<&'a Reviewed>,
    /// The status answered.
    pub status: u16,
    /// How long the decision took (binding, review and signing).
    pub latency: Duration,
}

/// What a request's review was given.
#[derive(Debug)]
pub struct Reviewed {
    /// The CSR and its context.
    pub input: CsrInput,
    /// The subject and names the host fixed.
    pub fixed: FixedSubject,
    /// The issuing CA's notAfter.
    pub ca_not_after: OffsetDateTime,
}

/// Who hears about every decision (`rotor serve`: its decision log and metrics).
pub trait Observer: Send + Sync {
    /// A certificate request was answered.
    fn decided(&self, decided: &Decided<'_>);
}

/// The state every request shares.
pub struct Supervisor {
    authority: RwLock<Option<Arc<Authority>>>,
    pub(super) bundle: Box<dyn Fn() -> Option<Arc<Bundle>> + Send + Sync>,
    pub(super) nodes: Nodes,
    pub(super) limits: Limits,
    pub(super) signer_limits: SignerLimits,
    /// Token buckets of verified node names, of addresses whose requests failed, and of
    /// addresses binding new node names: tokens, when last filled, burst, rate.
    buckets: Mutex<HashMap<String, (f64, Instant, f64, f64)>>,
    pub(super) observer: Option<Box<dyn Observer>>,
    pub(super) tls: Arc<Resolver>,
    /// When the endpoint's certificate is due for renewal.
    tls_renew_at: Mutex<Option<OffsetDateTime>>,
    pub(super) decisions: tokio::sync::Semaphore,
    pub(super) connections: Mutex<HashMap<IpAddr, usize>>,
}

impl Supervisor {
    /// A supervisor deciding with whatever bundle `bundle` returns at each request, keeping
    /// node bindings in `nodes`.
    pub fn new(
        bundle: Box<dyn Fn() -> Option<Arc<Bundle>> + Send + Sync>,
        nodes: Nodes,
        limits: Limits,
        observer: Option<Box<dyn Observer>>,
    ) -> Supervisor {
        Supervisor {
            authority: RwLock::new(None),
            bundle,
            nodes,
            signer_limits: SignerLimits::default(),
            buckets: Mutex::new(HashMap::new()),
            observer,
            tls: Arc::new(Resolver::default()),
            tls_renew_at: Mutex::new(None),
            decisions: tokio::sync::Semaphore::new(limits.decisions.max(1)),
            connections: Mutex::new(HashMap::new()),
            limits,
        }
    }

    /// The node bindings.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// Take `authority` from now on, and issue the endpoint's certificate from its server CA
    /// for its names (and `listen`'s address). Called at start and after every cycle.
    ///
    /// # Errors
    /// The endpoint's certificate cannot be issued.
    pub fn set_authority(&self, authority: Authority, listen: SocketAddr) -> Result<(), String> {
        let same = self.authority().is_some_and(|a| {
            a.server_ca.pem == authority.server_ca.pem
                && a.tls_sans == authority.tls_sans
                && a.node_ips == authority.node_ips
                && a.node_name == authority.node_name
        });
        let now = crate::clock::system_now();
        let due = self
            .tls_renew_at
            .lock()
            .map(|at| at.is_none_or(|at| now >= at))
            .unwrap_or(true);
        if !same || due {
            let (key, renew_at) = self.endpoint_key(&authority, listen)?;
            *self.tls.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
            if let Ok(mut at) = self.tls_renew_at.lock() {
                *at = Some(renew_at);
            }
        }
        *self.authority.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(authority));
        Ok(())
    }

    /// Serve no certificate until an authority is set again (the cluster's CAs or token could
    /// not be read: what was read before may be revoked).
    pub fn clear_authority(&self) {
        *self.authority.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(super) fn authority(&self) -> Option<Arc<Authority>> {
        self.authority
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why the endpoint cannot serve certificates, if it cannot.
    pub fn not_ready(&self) -> Option<String> {
        if self.authority().is_none() {
            return Some("the cluster's CAs are not loaded yet".into());
        }
        if (self.bundle)().is_none() {
            return Some("no policy bundle decides".into());
        }
        None
    }

    fn endpoint_key(
        &self,
        authority: &Authority,
        listen: SocketAddr,
    ) -> Result<(Arc<rustls::sign::CertifiedKey>, OffsetDateTime), String> {
        let mut dns = vec!["localhost".to_string(), authority.node_name.clone()];
        let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
        for san in &authority.tls_sans {
            match san.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(san.clone()),
            }
        }
        ips.extend(authority.node_ips.iter().copied());
        if !listen.ip().is_unspecified() {
            ips.push(listen.ip());
        }
        dns.sort();
        dns.dedup();
        ips.sort();
        ips.dedup();
        let subject = crate::pki::Subject {
            common_name: format!("{}-supervisor", authority.program),
            organizations: Vec::new(),
            dns_names: dns,
            ip_addresses: ips,
        };
        let key = crate::pki::KeyType::EcdsaP256
            .generate()
            .map_err(|e| e.to_string())?;
        let now = crate::clock::system_now();
        let not_after = (now + time::Duration::days(365)).min(authority.server_ca.not_after);
        let validity = crate::pki::Validity {
            not_before: now - time::Duration::minutes(5),
            not_after,
        };
        let issued = authority
            .server_ca
            .signer
            .issue_leaf(&subject, crate::pki::Purpose::Server, &key, validity)
            .map_err(|e| e.to_string())?;
        use rustls_pki_types::pem::PemObject;
        let key_der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.pem().as_bytes())
            .map_err(|e| e.to_string())?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
            .map_err(|e| e.to_string())?;
        let mut chain = vec![rustls_pki_types::CertificateDer::from(issued.der)];
        for der in crate::facts::certificate_ders("server CA", &authority.server_ca.pem)
            .map_err(|e| e.to_string())?
        {
            chain.push(rustls_pki_types::CertificateDer::from(der));
        }
        Ok((
            Arc::new(rustls::sign::CertifiedKey::new(chain, signing)),
            now + (not_after - now) * 2 / 3,
        ))
    }

    /// Whether `key` (`node:<name>` once its password is verified, `from:<address>` for
    /// failed requests) may have one more request now: a token bucket each.
    pub(super) fn allowed(&self, key: &str) -> bool {
        self.take(key, true)
    }

    /// Whether `key`'s bucket has a token left; `spend` takes it.
    pub(super) fn take(&self, key: &str, spend: bool) -> bool {
        self.take_from(key, spend, self.limits.node_burst, self.limits.node_rate)
    }

    /// [`Supervisor::take`] from a bucket of `burst` tokens refilled at `rate` per second.
    pub(super) fn take_from(&self, key: &str, spend: bool, burst: f64, rate: f64) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let now = Instant::now();
        if buckets.len() > 100_000 {
            // Full buckets are as good as none: forget them, keep those still refilling.
            buckets.retain(|_, (tokens, at, burst, rate)| {
                *tokens + now.duration_since(*at).as_secs_f64() * *rate < *burst
            });
        }
        let (tokens, at, _, _) = buckets
            .entry(key.to_string())
            .or_insert((burst, now, burst, rate));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            if spend {
                *tokens -= 1.0;
            }
            true
        } else {
            false
        }
    }
}
