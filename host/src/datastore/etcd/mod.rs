//! The etcd backend: the datastore k3s and RKE2 servers share, through etcd's v3 API.
//!
//! ```text
//! /bootstrap/<first 12 hex of SHA-256(password)>        a k3s-format record (k3s reads it too)
//! /rotor/bootstrap/<first 12 hex of SHA-256(password)>  a rotor-v1 record (k3s never sees it)
//! /rotor/locks/init                                     the lock of a first init (holder, expiry)
//! ```
//!
//! Values are the bytes the directory backend writes. Callers name every record by its k3s key
//! (`/bootstrap/<hash>`); a rotor-v1 record is stored under `/rotor` + that key, so a k3s
//! server sharing the etcd never finds a record it cannot open under its own key. (A rotor-v1
//! envelope binds the k3s key as associated data, whichever backend holds it.)
//!
//! **Revisions and commits.** A [`Snapshot`] is read as two prefix ranges at one etcd revision
//! (the second at the first one's, since kine serves no read-only transaction), with each
//! record's `mod_revision`; its revision is the highest of them (0 when there are none), so
//! writes elsewhere in a shared etcd do not count as conflicts. A commit changes one key at a
//! time, each in the only transaction shapes kine accepts: created when its mod revision is 0,
//! replaced or deleted when it is still the one read (a read on failure). The ops become steps
//! (steps.rs): the put first (a record that changes format is created under its new key, then
//! the old key is deleted, as k3s migrates its own records), then the deletes (a token
//! rotation: the new token's record, then the old one's removed). Conflicts are per key: if
//! another server changed a key since this command read it, that step fails; the steps already
//! made are undone (each at the revision it wrote) and the command fails with
//! [`DatastoreError::Conflict`], nothing left written.
//!
//! **Unconfirmed and half-made commits.** A step that got no clear answer may still be in
//! etcd's log, and a writer that died between two steps left half a change. The journal keeps
//! the steps ([`KeyStep`]: key, revision expected, digest of the value), and
//! [`Datastore::settle`] decides from the keys: a step's key holds its value (done), is still
//! at the revision expected (pending) or was changed by another writer (diverged). Pending keys
//! are fenced first (rewritten with their own value at the revision expected, so a request in
//! flight fails its compare afterwards); then a change with every step done is in the store,
//! one with none done is not, and one half made is finished when what is left are deletes (the
//! only case the op order allows), or undone when another writer changed a key it needs. A
//! pending create cannot be fenced without writing the record: if its request is still in
//! flight when the next command settles, it may land afterwards as a record under a token that
//! no live generation holds (the journal's change was rolled back); etcd applies a request
//! within its election timeout, so this needs a request older than the command's restart.
//!
//! **Timeouts and members.** Every request is bounded by the datastore timeout on each member
//! and tried on the next member when one is unreachable, has no leader or does not answer;
//! requests ask for a leader (`require_leader`), so a member that lost quorum answers "no
//! leader" at once instead of hanging. The wait for the init lock is bounded by the lock
//! timeout.
//!
//! **Records** (node bindings, records.rs) are single keys, written in the same shapes.
//!
//! **The init lock.** [`EtcdDatastore::lock_init`] creates the key `/rotor/locks/init`
//! (holder and expiry, [`LEASE_TTL_SECONDS`] ahead) if it is absent, renews it every third of
//! that time at the revision of its last renewal, and deletes it at that revision when done;
//! a waiter polls, and takes over a lock whose holder stopped renewing it (expired) by an
//! update at the revision it read. Only single-key transactions in the shapes kine accepts:
//! no lease, no lock service. If the holder dies the next server gets the lock within the TTL
//! (k3s's empty-key lock needs five 5-second polls). A holder that stalled past its expiry is
//! not told; its commit is still conditioned on what it read, so a second server that
//! initialized meanwhile makes it fail with a conflict (its create of the record finds one),
//! never overwrites.
//!
//! The client is `etcd-client` (gRPC over tonic, TLS through rustls): etcd's own protocol,
//! which kine serves too, and balancing over every endpoint given, so one dead member of three
//! is routed around (with etcd's JSON gateway the failover would have been ours to write).

mod config;
mod records;
mod steps;

pub use config::{EtcdConfig, EtcdConfigError};

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions, Txn};

use super::keys;
use super::{
    BOOTSTRAP_PREFIX, Datastore, DatastoreError, DatastoreLock, Intent, IntentOutcome, KeyStep, Op,
    Snapshot,
};
use crate::fs::Root;

/// The key of the lock that serializes the first initialization of a cluster.
pub const INIT_LOCK: &str = "/rotor/locks/init";
/// How long the init lock lasts unless its holder renews it: how long a dead holder keeps it.
pub const LEASE_TTL_SECONDS: i64 = 10;

/// The datastore in an etcd cluster.
pub struct EtcdDatastore {
    runtime: tokio::runtime::Runtime,
    /// One client per endpoint: a request that cannot reach a member (refused, no leader,
    /// no answer) is tried on the next one.
    clients: Vec<Client>,
    /// The member that answered last.
    preferred: std::sync::atomic::AtomicUsize,
    config: EtcdConfig,
    timeout: Duration,
}

enum PemWant {
    Certificates,
    Key,
}

/// A TLS file's bytes, checked here so that a wrong file is named (the TLS stack would only say
/// "Error parsing TLS certificate").
fn pem_file(path: &std::path::Path, want: PemWant) -> Result<Vec<u8>, DatastoreError> {
    let bytes = Root::read_ambient_file(path)?;
    let what = path.display().to_string();
    let checked = match want {
        PemWant::Certificates => crate::facts::certificate_ders(&what, &bytes)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        PemWant::Key => crate::pki::PrivateKey::from_pem(&what, &bytes)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    };
    checked.map_err(|reason| DatastoreError::Corrupt {
        what: "etcd TLS file".into(),
        reason,
    })?;
    Ok(bytes)
}

impl EtcdDatastore {
    /// Connect to the etcd cluster `config` names; every request is bounded by `timeout`.
    pub fn connect(
        config: &EtcdConfig,
        timeout: Duration,
    ) -> Result<EtcdDatastore, DatastoreError> {
        let unavailable = |reason: String| DatastoreError::Unavailable {
            store: config.describe(),
            doing: "connecting",
            reason,
        };
        config.check().map_err(|e| DatastoreError::Corrupt {
            what: format!("etcd settings ({})", e.field),
            reason: e.reason,
        })?;
        // One worker: the lock's keep-alive runs while the command works.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rotor-etcd")
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("cannot start the client's runtime: {e}")))?;
        // No per-request timeout on the channel: waiting for the init lock may take longer.
        // Every other request is bounded by `run`.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(5), timeout);
        if let Some(ca) = &config.ca_file {
            let mut tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(pem_file(ca, PemWant::Certificates)?));
            if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
                tls = tls.identity(Identity::from_pem(
                    pem_file(cert, PemWant::Certificates)?,
                    pem_file(key, PemWant::Key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        let mut clients = Vec::new();
        for endpoint in &config.endpoints {
            let client = runtime
                .block_on(async {
                    tokio::time::timeout(
                        timeout,
                        Client::connect([endpoint.as_str()], Some(options.clone())),
                    )
                    .await
                })
                .map_err(|_| unavailable(no_answer(timeout)))?
                .map_err(|e| unavailable(format!("{endpoint}: {}", reason(&e))))?;
            clients.push(client);
        }
        Ok(EtcdDatastore {
            runtime,
            clients,
            preferred: std::sync::atomic::AtomicUsize::new(0),
            config: config.clone(),
            timeout,
        })
    }

    /// The client of the member that answered last.
    pub(super) fn client(&self) -> Client {
        let i = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        self.clients[i % self.clients.len()].clone()
    }

    /// Run one request, each try bounded by the timeout: on the member that answered last,
    /// then on the others while a member cannot serve it (unreachable, no leader, no answer).
    /// A request that reached a member that then failed to confirm it may have been applied:
    /// a retried commit then fails its compare, and the caller asks the store what it holds.
    pub(super) fn run<T, F>(
        &self,
        doing: &'static str,
        request: impl Fn(Client) -> F,
    ) -> Result<T, DatastoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        use std::sync::atomic::Ordering;
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..self.clients.len() {
            let i = (first + k) % self.clients.len();
            let attempt = request(self.clients[i].clone());
            let result = self
                .runtime
                .block_on(async { tokio::time::timeout(self.timeout, attempt).await });
            let endpoint = &self.config.endpoints[i];
            match result {
                Ok(Ok(value)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) if !member_unavailable(&e) => {
                    return Err(DatastoreError::Unavailable {
                        store: self.config.describe(),
                        doing,
                        reason: format!("{endpoint}: {}", reason(&e)),
                    });
                }
                Ok(Err(e)) => failures.push(format!("{endpoint}: {}", reason(&e))),
                Err(_) => failures.push(format!("{endpoint}: {}", no_answer(self.timeout))),
            }
        }
        Err(DatastoreError::Unavailable {
            store: self.config.describe(),
            doing,
            reason: failures.join("; "),
        })
    }

    /// A key's value and mod revision, if it exists.
    pub(super) fn read_at(
        &self,
        key: &str,
        doing: &'static str,
    ) -> Result<Option<(Vec<u8>, i64)>, DatastoreError> {
        let key = key.to_string();
        let response = self.run(doing, |client| {
            let key = key.clone();
            async move { client.kv_client().get(key, None).await }
        })?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// Run a single-key transaction: the revision it wrote at if its compare held, `None`
    /// if not.
    fn txn(&self, doing: &'static str, txn: Txn) -> Result<Option<i64>, DatastoreError> {
        let response = self.run(doing, |client| {
            let txn = txn.clone();
            async move { client.kv_client().txn(txn).await }
        })?;
        Ok(response
            .succeeded()
            .then(|| response.header().map_or(0, |h| h.revision())))
    }

    pub(super) fn check_key(key: &str) -> Result<(), DatastoreError> {
        if key.starts_with(BOOTSTRAP_PREFIX) && key.len() > BOOTSTRAP_PREFIX.len() {
            Ok(())
        } else {
            Err(DatastoreError::BadKey(key.to_string()))
        }
    }
}

/// Whether an error says the member cannot serve requests now (another member may).
fn member_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}

fn no_answer(timeout: Duration) -> String {
    format!(
        "no answer within {} s (is etcd running, reachable, and does it have quorum?)",
        timeout.as_secs_f64()
    )
}

/// An etcd client error in words: a gRPC status by its message, then every cause under it
/// (`tcp connect error: Connection refused`, a TLS failure).
fn reason(e: &etcd_client::Error) -> String {
    let (mut text, mut source) = match e {
        etcd_client::Error::GRpcStatus(s) => (
            if s.message().is_empty() {
                format!("{:?}", s.code())
            } else {
                s.message().to_string()
            },
            std::error::Error::source(s),
        ),
        etcd_client::Error::TransportError(t) => (t.to_string(), std::error::Error::source(t)),
        other => (other.to_string(), None),
    };
    while let Some(s) = source {
        let more = s.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}
impl Datastore for EtcdDatastore {
    fn snapshot(&self, prefix: &str) -> Result<Snapshot, DatastoreError> {
        if prefix != BOOTSTRAP_PREFIX {
            return Err(DatastoreError::BadKey(prefix.to_string()));
        }
        let [prefix, rotor_prefix] = keys::physical_prefixes(prefix);
        let prefix = prefix.as_str();
        // Both prefixes at one revision: the second range is read at the first one's (plain
        // ranges, which kine serves too; it refuses read-only transactions).
        let first = self.run("reading the bootstrap records", |client| {
            let prefix = prefix.to_string();
            async move {
                client
                    .kv_client()
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            }
        })?;
        let at = first.header().map_or(0, |h| h.revision());
        let second = self.run("reading the bootstrap records", |client| {
            let rotor_prefix = rotor_prefix.clone();
            async move {
                client
                    .kv_client()
                    .get(
                        rotor_prefix,
                        Some(GetOptions::new().with_prefix().with_revision(at)),
                    )
                    .await
            }
        })?;
        let items = [&first, &second].into_iter().flat_map(|get| {
            get.kvs().iter().map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    u64::try_from(kv.mod_revision()).unwrap_or(0),
                    kv.value().to_vec(),
                )
            })
        });
        keys::assemble(prefix, items, |k| self.describe(k))
    }

    fn commit(&self, base: &Snapshot, ops: &[Op]) -> Result<u64, DatastoreError> {
        self.commit_steps(base, ops)
    }

    fn plan(&self, base: &Snapshot, ops: &[Op]) -> Result<Vec<KeyStep>, DatastoreError> {
        Ok(steps::plan(base, ops)?
            .iter()
            .map(steps::Step::journaled)
            .collect())
    }

    fn settle(&self, intent: &Intent) -> Result<IntentOutcome, DatastoreError> {
        self.settle_steps(intent)
    }

    fn describe(&self, key: &str) -> String {
        format!("{} key {key}", self.config.describe())
    }

    fn record(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError> {
        self.read_record(key)
    }

    fn create_record(&self, key: &str, value: &[u8]) -> Result<bool, DatastoreError> {
        self.create_record_key(key, value)
    }

    fn swap_record(&self, key: &str, old: &[u8], new: &[u8]) -> Result<bool, DatastoreError> {
        self.swap_record_key(key, old, new)
    }

    fn delete_record(&self, key: &str) -> Result<bool, DatastoreError> {
        self.delete_record_key(key)
    }

    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, DatastoreError> {
        self.records_under(prefix)
    }

    fn clean(&self) -> Result<(), DatastoreError> {
        Ok(())
    }

    fn lock_init(&self, wait: Duration) -> Result<DatastoreLock, DatastoreError> {
        self.take_init_lock(wait)
    }
}
