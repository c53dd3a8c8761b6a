//! `rotor serve`'s HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, over plain HTTP or TLS
//! with a certificate rotor issues from the cluster's CA and renews in place.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// What the endpoint reports: the metrics page and readiness (a server's, an agent's).
pub(crate) trait Probe: Send + Sync + 'static {
    /// The OpenMetrics text of `/metrics`.
    fn metrics(&self) -> String;
    /// Why `/readyz` says not ready, if it does.
    fn not_ready(&self) -> Option<String>;
}

impl Probe for super::Shared {
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
    fn not_ready(&self) -> Option<String> {
        super::Shared::not_ready(self)
    }
}

/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// How long a client has to finish its TLS handshake, and then to send its request headers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The serving certificate of the TLS endpoint, replaced when rotor renews it.
#[derive(Debug, Default)]
pub(crate) struct Resolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Resolver {
    pub(crate) fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn respond(shared: &dyn Probe, method: &hyper::Method, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        _ if method != hyper::Method::GET && method != hyper::Method::HEAD => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".into(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics(),
        ),
        "/healthz" | "/livez" => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => match shared.not_ready() {
            None => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".into(),
            ),
            Some(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// Serve on `listener` (already bound) on a thread of its own, until the process exits.
pub(crate) fn spawn(
    listener: std::net::TcpListener,
    tls: Option<Arc<Resolver>>,
    shared: Arc<dyn Probe>,
) -> std::io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let acceptor = tls.map(|resolver| {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_cert_resolver(resolver));
        config.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)))
    });
    let acceptor = match acceptor {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => return Err(std::io::Error::other(e)),
        None => None,
    };
    // At most this many connections at a time; each must send its request (and finish its
    // TLS handshake) within the timeout: a slow or stuck client cannot take every descriptor.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    std::thread::Builder::new()
        .name("rotor-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        crate::say!("rotor serve: http: {e}");
                        return;
                    }
                };
                loop {
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                        return;
                    };
                    let stream = match listener.accept().await {
                        Ok((stream, _)) => stream,
                        Err(_) => {
                            // Out of descriptors, most likely: let some close.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let shared = Arc::clone(&shared);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let service = hyper::service::service_fn(move |req: Request<_>| {
                            let r = respond(&*shared, req.method(), req.uri().path());
                            async move { Ok::<_, Infallible>(r) }
                        });
                        let mut http = hyper::server::conn::http1::Builder::new();
                        http.timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(CLIENT_TIMEOUT);
                        match acceptor {
                            Some(acceptor) => {
                                let handshake =
                                    tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream));
                                if let Ok(Ok(tls)) = handshake.await {
                                    let _ = http
                                        .serve_connection(
                                            hyper_util::rt::TokioIo::new(tls),
                                            service,
                                        )
                                        .await;
                                }
                            }
                            None => {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
            });
        })?;
    Ok(addr)
}
