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
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use time::OffsetDateTime;

use super::authority::{Authority, SigningCa};
use super::nodes::{Binding, NodeError, Nodes, node_name};
use crate::contract::CsrContext;
use crate::csr::{CsrInput, FixedSubject, SignerLimits, Verdict};
use crate::facts::Usage;
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
        }
    }
}

/// A certificate endpoint: what the host fixes for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `serving-kubelet.crt`: `CN=system:node:<name>, O=system:nodes`, the node's name and
    /// addresses, server auth, from the server CA (kubelet-serving).
    ServingKubelet,
    /// `client-kubelet.crt`: `CN=system:node:<name>, O=system:nodes`, client auth, from the
    /// client CA (kube-apiserver-client-kubelet).
    ClientKubelet,
    /// `client-kube-proxy.crt`: `CN=system:kube-proxy`, client auth, from the client CA
    /// (signer `rotor.io/node-component`).
    ClientKubeProxy,
    /// `client-<program>-controller.crt`: `CN=system:<program>-controller`, client auth
    /// (signer `rotor.io/node-component`).
    ClientController,
}

impl Endpoint {
    /// The endpoint of a path's last part, for `program`.
    pub fn of(file: &str, program: &str) -> Option<Endpoint> {
        match file {
            "serving-kubelet.crt" => Some(Endpoint::ServingKubelet),
            "client-kubelet.crt" => Some(Endpoint::ClientKubelet),
            "client-kube-proxy.crt" => Some(Endpoint::ClientKubeProxy),
            f if f == format!("client-{program}-controller.crt") => {
                Some(Endpoint::ClientController)
            }
            _ => None,
        }
    }

    /// The file's name, as agents ask for it and keep it.
    pub fn file(self, program: &str) -> String {
        match self {
            Endpoint::ServingKubelet => "serving-kubelet.crt".into(),
            Endpoint::ClientKubelet => "client-kubelet.crt".into(),
            Endpoint::ClientKubeProxy => "client-kube-proxy.crt".into(),
            Endpoint::ClientController => format!("client-{program}-controller.crt"),
        }
    }

    fn signer(self) -> &'static str {
        match self {
            Endpoint::ServingKubelet => "kubernetes.io/kubelet-serving",
            Endpoint::ClientKubelet => "kubernetes.io/kube-apiserver-client-kubelet",
            Endpoint::ClientKubeProxy | Endpoint::ClientController => {
                crate::csr::NODE_COMPONENT_SIGNER
            }
        }
    }

    fn usages(self) -> Vec<Usage> {
        match self {
            Endpoint::ServingKubelet => vec![Usage::DigitalSignature, Usage::ServerAuth],
            _ => vec![Usage::DigitalSignature, Usage::ClientAuth],
        }
    }

    fn fixed(self, program: &str, node: &str, ips: &[IpAddr]) -> FixedSubject {
        let node_subject = |dns: Vec<String>, ips: Vec<IpAddr>| FixedSubject {
            common_name: format!("system:node:{node}"),
            organizations: vec!["system:nodes".into()],
            dns_names: dns,
            ip_addresses: ips,
        };
        let component = |cn: String| FixedSubject {
            common_name: cn,
            organizations: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        };
        match self {
            Endpoint::ServingKubelet => node_subject(vec![node.to_string()], ips.to_vec()),
            Endpoint::ClientKubelet => node_subject(Vec::new(), Vec::new()),
            Endpoint::ClientKubeProxy => component("system:kube-proxy".into()),
            Endpoint::ClientController => component(format!("system:{program}-controller")),
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
    bundle: Box<dyn Fn() -> Option<Arc<Bundle>> + Send + Sync>,
    nodes: Nodes,
    limits: Limits,
    signer_limits: SignerLimits,
    /// Token buckets of verified node names, and of addresses whose requests failed.
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    observer: Option<Box<dyn Observer>>,
    tls: Arc<Resolver>,
    /// When the endpoint's certificate is due for renewal.
    tls_renew_at: Mutex<Option<OffsetDateTime>>,
    decisions: tokio::sync::Semaphore,
    connections: Mutex<HashMap<IpAddr, usize>>,
}

/// The endpoint's serving certificate, replaced when the server CA changes.
#[derive(Debug, Default)]
pub struct Resolver {
    current: RwLock<Option<Arc<rustls::sign::CertifiedKey>>>,
}

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // Whatever name the client asks for: an unknown SNI never adds a name.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Answer {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    answer(status, "text/plain; charset=utf-8", body)
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

    fn authority(&self) -> Option<Arc<Authority>> {
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
    fn allowed(&self, key: &str) -> bool {
        self.take(key, true)
    }

    /// Whether `key`'s bucket has a token left; `spend` takes it.
    fn take(&self, key: &str, spend: bool) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        let now = Instant::now();
        if buckets.len() > 100_000 {
            // Full buckets are as good as none: forget them, keep those still refilling.
            let (burst, rate) = (self.limits.node_burst, self.limits.node_rate);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets
            .entry(key.to_string())
            .or_insert((self.limits.node_burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.limits.node_rate)
            .min(self.limits.node_burst);
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

/// The user of a basic-auth header whose password is the token's, in constant time.
fn authenticated(req: &Request<Incoming>, authority: &Authority) -> Option<String> {
    let value = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    let ok = aws_lc_rs::constant_time::verify_slices_are_equal(
        password.as_bytes(),
        authority.password.as_bytes(),
    )
    .is_ok();
    (ok && (user == "node" || user == "server")).then(|| user.to_string())
}

/// Header `name` exactly once and not empty, else why not.
fn one_header<'a>(req: &'a Request<Incoming>, name: &str) -> Result<&'a str, String> {
    let mut values = req.headers().get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => match v.to_str() {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim()),
            _ => Err(format!("header {name}: empty or not text")),
        },
        (None, _) => Err(format!("header {name} is missing")),
        (Some(_), Some(_)) => Err(format!("header {name} is given more than once")),
    }
}

/// The addresses of `<program>-Node-IP` (a comma list), if given.
fn node_ips(req: &Request<Incoming>, program: &str) -> Result<Vec<IpAddr>, String> {
    let name = format!("{program}-Node-IP");
    let mut ips = Vec::new();
    for v in req.headers().get_all(name.as_str()) {
        let s = v.to_str().map_err(|_| format!("header {name}: not text"))?;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ip: IpAddr = part
                .parse()
                .map_err(|_| format!("header {name}: {part:?} is not an IP address"))?;
            let ip = crate::facts::canonical_ip(ip);
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    if ips.len() > 16 {
        return Err(format!(
            "header {name}: {} addresses (at most 16)",
            ips.len()
        ));
    }
    Ok(ips)
}

/// The CSR of a body: DER, or PEM.
fn csr_der(body: &[u8]) -> Result<Vec<u8>, String> {
    if body.is_empty() {
        return Err(
            "body: empty; send a certificate signing request made with the node's key".into(),
        );
    }
    let trimmed = body.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let body = trimmed;
        let blocks = crate::facts::read_pem_blocks("body", body).map_err(|e| e.to_string())?;
        let mut csrs = blocks
            .into_iter()
            .filter(|b| b.kind == crate::facts::PemKind::CertificateRequest);
        return match (csrs.next(), csrs.next()) {
            (Some(b), None) => Ok(b.der),
            _ => Err("body: not exactly one PEM CERTIFICATE REQUEST".into()),
        };
    }
    crate::facts::parse_csr_der("body", body)
        .map(|_| body.to_vec())
        .map_err(|e| format!("body: not a certificate signing request (DER or PEM): {e}"))
}

impl Supervisor {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Answer {
        let path = req.uri().path().to_string();
        let Some(authority) = self.authority() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the cluster's CAs are not loaded yet",
            );
        };
        let prefix = format!("/v1-{}/", authority.program);
        match (req.method(), path.as_str()) {
            (&Method::GET, "/cacerts") => {
                return answer(StatusCode::OK, "text/plain", authority.cacerts.clone());
            }
            (&Method::GET, "/ping") => return text(StatusCode::OK, "pong"),
            _ => {}
        }
        let Some(rest) = path.strip_prefix(&prefix) else {
            return text(StatusCode::NOT_FOUND, format!("not found: {path}"));
        };
        // An address whose requests keep failing (bad credentials, passwords, bodies) waits;
        // it cannot use up anyone else's allowance.
        let from = format!("from:{}", crate::facts::canonical_ip(peer.ip()));
        if !self.take(&from, false) {
            return too_many(&format!("too many failed requests from {}", peer.ip()));
        }
        let Some(user) = authenticated(&req, &authority) else {
            self.allowed(&from);
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "unauthorized: basic auth node:<token password> or server:<token password>",
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"rotor\""),
            );
            return r;
        };
        match (req.method(), rest) {
            (&Method::GET, "readyz") => match self.not_ready() {
                None => text(StatusCode::OK, "ok"),
                Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
            },
            (&Method::GET, "server-bootstrap") if !self.limits.server_bootstrap => text(
                StatusCode::NOT_FOUND,
                "not served: server-bootstrap holds every CA key of the cluster, and rotor's \
                 one token is every agent's too (rotor serve --supervisor-server-bootstrap serves it)",
            ),
            (&Method::GET, "server-bootstrap") if user == "server" => answer(
                StatusCode::OK,
                "application/json",
                authority.bootstrap.clone(),
            ),
            (&Method::GET, "server-bootstrap") => text(
                StatusCode::FORBIDDEN,
                "forbidden: server-bootstrap needs the server token (user server)",
            ),
            (&Method::POST, file) => match Endpoint::of(file, authority.program) {
                Some(endpoint) => {
                    let answer = self
                        .clone()
                        .certificate(req, endpoint, authority, peer)
                        .await;
                    // Failures count against the address; an approved request does not.
                    if matches!(answer.status().as_u16(), 400 | 401 | 403 | 408 | 413) {
                        self.allowed(&from);
                    }
                    answer
                }
                None => text(StatusCode::NOT_FOUND, format!("not found: {path}")),
            },
            (_, file) if Endpoint::of(file, authority.program).is_some() => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: POST a certificate signing request",
            ),
            _ => text(StatusCode::NOT_FOUND, format!("not found: {path}")),
        }
    }

    async fn certificate(
        self: Arc<Self>,
        req: Request<Incoming>,
        endpoint: Endpoint,
        authority: Arc<Authority>,
        peer: SocketAddr,
    ) -> Answer {
        let program = authority.program;
        let node = match one_header(&req, &format!("{program}-Node-Name")) {
            Ok(n) => match node_name(n) {
                Ok(n) => n,
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("header {program}-Node-Name: {e}"),
                    );
                }
            },
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let password = match one_header(&req, &format!("{program}-Node-Password")) {
            Ok(p) if p.len() <= 1024 => p.to_string(),
            Ok(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("header {program}-Node-Password: longer than 1024 bytes"),
                );
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let ips = match node_ips(&req, program) {
            Ok(ips) => ips,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let limit = self.limits.body;
        let body = tokio::time::timeout(
            self.limits.client_timeout,
            Limited::new(req.into_body(), limit).collect(),
        )
        .await;
        let body = match body {
            Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body: not received in time"),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body: more than {limit} bytes"),
                );
            }
            Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("body: {e}")),
            Ok(Ok(b)) => b.to_bytes(),
        };
        let der = match csr_der(&body) {
            Ok(d) => d,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        // At most so many decisions at once (Argon2, plugins, signing): the rest wait a
        // little, then are told to come back.
        let permit = match tokio::time::timeout(
            self.limits.client_timeout,
            self.decisions.acquire(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => {
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy: too many requests being decided; try again",
                );
                r.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from_static("2"),
                );
                return r;
            }
        };
        let started = Instant::now();
        let this = Arc::clone(&self);
        let node_for_task = node.clone();
        let decided = tokio::task::spawn_blocking(move || {
            this.decide(
                endpoint,
                &authority,
                &node_for_task,
                &password,
                &ips,
                peer,
                der,
            )
        })
        .await;
        drop(permit);
        let (status, body, review, reviewed) = match decided {
            Ok(d) => d,
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the decision failed".to_string(),
                None,
                None,
            ),
        };
        if let Some(observer) = &self.observer {
            observer.decided(&Decided {
                endpoint,
                node: &node,
                review: review.as_ref(),
                reviewed: reviewed.as_ref(),
                status: status.as_u16(),
                latency: started.elapsed(),
            });
        }
        match status {
            StatusCode::OK => answer(status, "text/plain", body),
            StatusCode::TOO_MANY_REQUESTS => too_many(&body),
            _ => text(status, body),
        }
    }

    /// Check the password, the names, review, bind, sign: (status, body, the review when one
    /// was made). Blocking (Argon2, the datastore, plugins, signing). A name is bound only
    /// once its request is approved: a refused request takes nothing.
    #[allow(clippy::too_many_arguments, reason = "one request's parts")]
    fn decide(
        &self,
        endpoint: Endpoint,
        authority: &Authority,
        node: &str,
        password: &str,
        ips: &[IpAddr],
        peer: SocketAddr,
        der: Vec<u8>,
    ) -> Outcome {
        let now = crate::clock::system_now();
        let now = now.replace_nanosecond(0).unwrap_or(now);
        if let Some(why) = authority.reserved_name(node) {
            return (
                StatusCode::FORBIDDEN,
                format!("denied: node name {node}: {why}"),
                None,
                None,
            );
        }
        let bound = match self.nodes.check(node, password) {
            Ok(b) => b,
            Err(e @ NodeError::Mismatch(_)) => {
                return (StatusCode::FORBIDDEN, e.to_string(), None, None);
            }
            Err(e @ NodeError::BadName(_)) => {
                return (StatusCode::BAD_REQUEST, e.to_string(), None, None);
            }
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None, None),
        };
        // Only a node that proved its password spends its own allowance.
        if !self.allowed(&format!("node:{node}")) {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many requests for node {node}: try again later"),
                None,
                None,
            );
        }
        let from = crate::facts::canonical_ip(peer.ip());
        if endpoint == Endpoint::ServingKubelet
            && let Some(why) = ips.iter().find_map(|ip| authority.reserved_ip(*ip))
        {
            return (StatusCode::FORBIDDEN, format!("denied: {why}"), None, None);
        }
        // The node's addresses: those bound with its name (what it gave when it joined, and
        // where it came from), and where it connects from now. Addresses it names later are
        // requests, never their own evidence.
        let mut evidence = match &bound {
            Binding::Matches(addresses) => addresses.clone(),
            Binding::Free => ips.to_vec(),
        };
        if !evidence.contains(&from) {
            evidence.push(from);
        }
        let Some(bundle) = (self.bundle)() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no policy bundle decides".into(),
                None,
                None,
            );
        };
        let ctx = CsrContext {
            signer_name: endpoint.signer().into(),
            username: format!("system:node:{node}"),
            uid: String::new(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            usages: endpoint.usages(),
            expiration_seconds: None,
            node_addresses: evidence.clone(),
        };
        let ca: &SigningCa = match endpoint {
            Endpoint::ServingKubelet => &authority.server_ca,
            _ => &authority.client_ca,
        };
        let fixed = endpoint.fixed(authority.program, node, ips);
        let input = CsrInput { der, ctx };
        let reviewed = Reviewed {
            input,
            fixed,
            ca_not_after: ca.not_after,
        };
        let review = match crate::csr::review_fixed(
            &bundle,
            &reviewed.input,
            &reviewed.fixed,
            Some(ca.not_after),
            &self.signer_limits,
            now,
        ) {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the policy could not decide: {e}"),
                    None,
                    None,
                );
            }
        };
        match &review.verdict {
            Verdict::Approve { .. } => {}
            Verdict::Deny { .. } => {
                let body = format!("denied: {}", review.verdict.summary());
                return (StatusCode::FORBIDDEN, body, Some(review), Some(reviewed));
            }
            Verdict::Abstain { reason } => {
                let body = format!("not approved: pending ({reason})");
                return (StatusCode::FORBIDDEN, body, Some(review), Some(reviewed));
            }
        }
        // Approved: bind a free name now (of two servers binding it at once, one wins; the
        // other's request is refused, unsigned).
        if bound == Binding::Free {
            match self.nodes.bind(node, password, &evidence, now) {
                Ok(_) => {}
                Err(e @ NodeError::Mismatch(_)) => {
                    return (
                        StatusCode::FORBIDDEN,
                        e.to_string(),
                        Some(review),
                        Some(reviewed),
                    );
                }
                Err(e) => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        e.to_string(),
                        Some(review),
                        Some(reviewed),
                    );
                }
            }
        }
        let pem = match crate::csr::sign(&review, &ca.signer) {
            Ok(pem) => pem,
            Err(e) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("signing failed: {e}"),
                    Some(review),
                    Some(reviewed),
                );
            }
        };
        if let Some(t) = &review.template {
            let _ = self.nodes.issued(
                node,
                endpoint.file(authority.program).trim_end_matches(".crt"),
                t.not_after,
                now,
            );
        }
        let mut body = pem;
        if !body.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&String::from_utf8_lossy(&ca.pem));
        (StatusCode::OK, body, Some(review), Some(reviewed))
    }
}

/// A decision: the status and body to answer, the review when one was made, and what it
/// reviewed.
type Outcome = (
    StatusCode,
    String,
    Option<crate::csr::Review>,
    Option<Reviewed>,
);

/// 429 with a hint when to come back.
fn too_many(why: &str) -> Answer {
    let mut r = text(StatusCode::TOO_MANY_REQUESTS, why);
    r.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("5"),
    );
    r
}

/// Serve the supervisor API on `listener` (already bound) over TLS, on threads of its own,
/// until the process exits. Returns the address it listens on.
///
/// # Errors
/// The listener or the TLS configuration cannot be set up.
pub fn spawn(
    listener: std::net::TcpListener,
    supervisor: Arc<Supervisor>,
) -> std::io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(supervisor.limits.decisions.max(1) + 4)
        .thread_name("rotor-supervisor")
        .enable_io()
        .enable_time()
        .build()?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_cert_resolver(Arc::clone(&supervisor.tls) as Arc<dyn rustls::server::ResolvesServerCert>);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let slots = Arc::new(tokio::sync::Semaphore::new(supervisor.limits.connections));
    std::thread::Builder::new()
        .name("rotor-supervisor-accept".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        crate::say!("rotor serve: supervisor: {e}");
                        return;
                    }
                };
                loop {
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                        return;
                    };
                    let (stream, peer) = match listener.accept().await {
                        Ok(s) => s,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    // No address holds more than its share of the connections.
                    let Some(held) = Held::take(&supervisor, peer.ip()) else {
                        drop(stream);
                        continue;
                    };
                    let supervisor = Arc::clone(&supervisor);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let _held = held;
                        let timeout = supervisor.limits.client_timeout;
                        let lifetime = supervisor.limits.connection_lifetime;
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(timeout, acceptor.accept(stream)).await
                        else {
                            return;
                        };
                        let headers = supervisor.limits.headers;
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let supervisor = Arc::clone(&supervisor);
                            async move { Ok::<_, Infallible>(supervisor.handle(req, peer).await) }
                        });
                        let mut http = hyper::server::conn::http1::Builder::new();
                        http.timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(timeout)
                            .max_headers(headers)
                            .max_buf_size(64 * 1024);
                        // Whatever it does, a connection ends after its lifetime.
                        let _ = tokio::time::timeout(
                            lifetime,
                            http.serve_connection(hyper_util::rt::TokioIo::new(tls), service),
                        )
                        .await;
                    });
                }
            });
        })?;
    Ok(addr)
}

/// A connection counted against its address until dropped.
struct Held {
    supervisor: Arc<Supervisor>,
    ip: IpAddr,
}

impl Held {
    fn take(supervisor: &Arc<Supervisor>, ip: IpAddr) -> Option<Held> {
        let mut held = supervisor.connections.lock().ok()?;
        let n = held.entry(ip).or_insert(0);
        if *n >= supervisor.limits.connections_per_address {
            return None;
        }
        *n += 1;
        Some(Held {
            supervisor: Arc::clone(supervisor),
            ip,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut held) = self.supervisor.connections.lock()
            && let Some(n) = held.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

/// Raise the soft limit of open files to the hard one: every connection is a descriptor, and
/// so are the datastore's and the plugins' files.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}
