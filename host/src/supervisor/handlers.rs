//! Answering one supervisor API request: routing and auth, then a certificate request's
//! headers, body, the binding of its node name, its review and its signature.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::authority::{Authority, SigningCa};
use super::endpoint::Endpoint;
use super::nodes::{Binding, NodeError, node_name};
use super::request::{
    Answer, answer, authenticated, csr_der, node_ips, one_header, text, too_many,
};
use super::server::{Decided, Reviewed, Supervisor};
use crate::contract::CsrContext;
use crate::csr::{CsrInput, Verdict};

/// A decision: the status and body to answer, the review when one was made, and what it
/// reviewed.
type Outcome = (
    StatusCode,
    String,
    Option<crate::csr::Review>,
    Option<Reviewed>,
);

impl Supervisor {
    pub(super) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Answer {
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
            // The CA files an agent keeps (k3s's file handlers): the client CA its kubelet
            // trusts for client certificates, and the server CA again, authenticated.
            (&Method::GET, "client-ca.crt") => answer(
                StatusCode::OK,
                "text/plain",
                authority.client_ca.pem.clone(),
            ),
            (&Method::GET, "server-ca.crt") => {
                answer(StatusCode::OK, "text/plain", authority.cacerts.clone())
            }
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
        // A free name costs its address one of its new-name tokens (spent when it is bound).
        let new_names = format!("bind:{from}");
        let (burst, rate) = (self.limits.new_nodes_burst, self.limits.new_nodes_rate);
        if bound == Binding::Free && !self.take_from(&new_names, false, burst, rate) {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many new node names from {from}: try again later"),
                None,
                None,
            );
        }
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
        let input = CsrInput {
            der,
            ctx,
            disputed: Vec::new(),
        };
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
                Ok(_) => {
                    self.take_from(&new_names, true, burst, rate);
                }
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
        // Tests stop (or kill) a server here, mid-request: approved and bound, not yet signed.
        crate::fs::failpoint("supervisor:signing");
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
