//! Talking to the supervisor API of one or more servers: HTTPS (rustls, hyper) with the
//! cluster's server CA as the only trust (or, for the first `/cacerts` only, no trust at all:
//! what it returns is then checked against the token's hash), basic auth, k3s's node headers,
//! and failover: a server that cannot be reached, or answers that it cannot decide now (5xx,
//! 429), is left for the next one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The largest answer read from a server (a certificate chain, a CA bundle).
const MAX_ANSWER: usize = 1 << 20;

/// A request could not be answered, or was answered with a refusal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A `--server` URL that cannot be used.
    #[error("--server {url}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No server answered (each one's reason, in the order tried).
    #[error("no server answered: {}", .0.join("; "))]
    Unreachable(Vec<String>),
    /// A server answered with a refusal that another server would repeat (400, 401, 403, 404,
    /// 413): the request itself is wrong.
    #[error("{url} answered {status}: {body}")]
    Refused {
        /// The server that answered.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its text.
        body: String,
    },
    /// The trust for the servers could not be built from a CA bundle.
    #[error("{0}")]
    Trust(String),
}

/// One server of `--server`.
#[derive(Clone, Debug)]
struct Server {
    url: String,
    host: String,
    port: u16,
    name: ServerName<'static>,
}

/// Whom the TLS connection trusts.
#[derive(Clone, Debug)]
pub struct Trust(Arc<rustls::ClientConfig>);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Trust {
    /// Trust the certificates of `bundle_pem` (the server CA bundle an agent keeps; every
    /// certificate of it, the cross-signed ones included, is an anchor).
    ///
    /// # Errors
    /// The bundle holds no certificate that can be an anchor.
    pub fn pinned(bundle_pem: &[u8]) -> Result<Trust, ClientError> {
        let ders = crate::facts::certificate_ders("server CA bundle", bundle_pem)
            .map_err(|e| ClientError::Trust(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for der in ders {
            roots
                .add(CertificateDer::from(der))
                .map_err(|e| ClientError::Trust(format!("server CA bundle: {e}")))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Trust(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Trust(Arc::new(config)))
    }

    /// Trust any server: only for fetching `/cacerts` before anything is trusted, whose answer
    /// is checked against the token's hash (k3s's `getCACerts`).
    pub fn any() -> Result<Trust, ClientError> {
        let provider = provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Trust(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth();
        Ok(Trust(Arc::new(config)))
    }
}

/// Accepts any server certificate (its handshake signature is still checked).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One request to the supervisor API.
#[derive(Clone, Debug)]
pub struct Call {
    /// GET or POST.
    pub method: Method,
    /// The path, `/cacerts` or `/v1-k3s/...`.
    pub path: String,
    /// Basic auth `user:password`, when the path needs it.
    pub auth: Option<(String, String)>,
    /// Extra headers (k3s's node headers).
    pub headers: Vec<(String, String)>,
    /// The body (a CSR).
    pub body: Vec<u8>,
}

impl Call {
    /// `GET path` without credentials.
    pub fn get(path: &str) -> Call {
        Call {
            method: Method::GET,
            path: path.into(),
            auth: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// A successful answer: who gave it, and what.
#[derive(Clone, Debug)]
pub struct Answered {
    /// The server's URL.
    pub url: String,
    /// The body.
    pub body: Bytes,
}

/// The servers of `--server`, tried in turn from the last one that answered.
#[derive(Debug)]
pub struct Servers {
    servers: Vec<Server>,
    preferred: AtomicUsize,
    timeout: Duration,
}

impl Servers {
    /// Parse `https://host:port` URLs (the port defaults to 6443, k3s's; a path is ignored as
    /// k3s ignores it). `timeout` bounds each step of one request (connect, handshake, answer).
    ///
    /// # Errors
    /// A URL that is not `https://host[:port]`, or none at all.
    pub fn new(urls: &[String], timeout: Duration) -> Result<Servers, ClientError> {
        let bad = |url: &str, reason: &str| ClientError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if urls.is_empty() {
            return Err(bad("", "at least one server is needed"));
        }
        let mut servers = Vec::new();
        for url in urls {
            let uri: http::Uri = url
                .parse()
                .map_err(|e: http::uri::InvalidUri| bad(url, &e.to_string()))?;
            if uri.scheme_str() != Some("https") {
                return Err(bad(
                    url,
                    "the supervisor API is HTTPS only (https://host:port)",
                ));
            }
            let host = uri
                .host()
                .ok_or_else(|| bad(url, "no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(6443);
            let name = ServerName::try_from(host.clone())
                .map_err(|e| bad(url, &format!("host {host}: {e}")))?;
            servers.push(Server {
                url: format!(
                    "https://{}",
                    uri.authority().map_or(host.as_str(), |a| a.as_str())
                ),
                host,
                port,
                name,
            });
        }
        Ok(Servers {
            servers,
            preferred: AtomicUsize::new(0),
            timeout,
        })
    }

    /// The servers' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url.clone()).collect()
    }

    /// Send `call` to the servers in turn, from the last one that answered, until one answers
    /// it: a success, or a refusal every server would repeat.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the answer, or [`ClientError::Unreachable`] with each
    /// server's reason.
    pub async fn send(&self, trust: &Trust, call: &Call) -> Result<Answered, ClientError> {
        let n = self.servers.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut reasons = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            let server = &self.servers[index];
            match self.once(server, trust, call).await {
                Ok((200, body)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(Answered {
                        url: server.url.clone(),
                        body,
                    });
                }
                Ok((status, body)) => {
                    let text = String::from_utf8_lossy(&body).trim().to_string();
                    // 429 and 5xx: this server cannot decide now; another may.
                    if status == 429 || status >= 500 {
                        reasons.push(format!("{}: {status} {text}", server.url));
                        continue;
                    }
                    self.preferred.store(index, Ordering::Relaxed);
                    return Err(ClientError::Refused {
                        url: server.url.clone(),
                        status,
                        body: text,
                    });
                }
                Err(reason) => reasons.push(format!("{}: {reason}", server.url)),
            }
        }
        Err(ClientError::Unreachable(reasons))
    }

    /// One request to one server on a connection of its own: (status, body), or why there
    /// was no answer.
    async fn once(
        &self,
        server: &Server,
        trust: &Trust,
        call: &Call,
    ) -> Result<(u16, Bytes), String> {
        let timeout = self.timeout;
        let step = |what: &'static str| move |_| format!("{what}: no answer in {timeout:?}");
        let tcp = tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((server.host.as_str(), server.port)),
        )
        .await
        .map_err(step("connect"))?
        .map_err(|e| format!("connect: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&trust.0));
        let tls = tokio::time::timeout(timeout, connector.connect(server.name.clone(), tcp))
            .await
            .map_err(step("TLS handshake"))?
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let result = async {
            let mut request = Request::builder()
                .method(call.method.clone())
                .uri(&call.path)
                .header(
                    hyper::header::HOST,
                    format!("{}:{}", server.host, server.port),
                );
            if let Some((user, password)) = &call.auth {
                use base64::Engine as _;
                let creds =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                request = request.header(hyper::header::AUTHORIZATION, format!("Basic {creds}"));
            }
            for (k, v) in &call.headers {
                request = request.header(k.as_str(), v.as_str());
            }
            let request = request
                .body(Full::new(Bytes::from(call.body.clone())))
                .map_err(|e| format!("request: {e}"))?;
            let response = tokio::time::timeout(timeout, sender.send_request(request))
                .await
                .map_err(step("request"))?
                .map_err(|e| format!("HTTP: {e}"))?;
            let status = response.status().as_u16();
            let body = tokio::time::timeout(
                timeout,
                Limited::new(response.into_body(), MAX_ANSWER).collect(),
            )
            .await
            .map_err(step("answer"))?
            .map_err(|e| format!("answer: {e}"))?
            .to_bytes();
            Ok((status, body))
        }
        .await;
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_https_with_a_host() {
        let t = Duration::from_secs(1);
        let s = Servers::new(
            &[
                "https://10.0.0.1:9345".into(),
                "https://k3s.example.com".into(),
                "https://[::1]:6443/".into(),
            ],
            t,
        )
        .unwrap();
        assert_eq!(
            s.urls(),
            [
                "https://10.0.0.1:9345",
                "https://k3s.example.com",
                "https://[::1]:6443"
            ]
        );
        assert_eq!(s.servers[1].port, 6443);
        assert_eq!(s.servers[2].host, "::1");
        for bad in [
            "http://10.0.0.1:6443",
            "10.0.0.1:6443",
            "https://",
            "https://a b",
        ] {
            assert!(
                matches!(
                    Servers::new(&[bad.to_string()], t),
                    Err(ClientError::BadUrl { .. })
                ),
                "{bad}"
            );
        }
        assert!(Servers::new(&[], t).is_err());
    }
}
