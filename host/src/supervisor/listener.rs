//! Accepting supervisor API connections: TLS with the endpoint's certificate (whatever name a
//! client asks for), connections counted per address and closed after their lifetime, each
//! request handed to [`super::Supervisor`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;

use super::server::Supervisor;

/// The endpoint's serving certificate, replaced when the server CA changes.
#[derive(Debug, Default)]
pub struct Resolver {
    pub(super) current: RwLock<Option<Arc<rustls::sign::CertifiedKey>>>,
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
pub(super) struct Held {
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
