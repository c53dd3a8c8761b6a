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
//! **Revisions.** A [`Snapshot`] is read as two prefix ranges at one etcd revision (the
//! second at the first one's, since kine serves no read-only transaction); its revision is the highest `mod_revision` among the records read (0 when there
//! are none), so writes elsewhere in a shared etcd do not count as conflicts. A commit is one
//! transaction conditioned on the snapshot: no key under either prefix modified after it (a
//! range compare, `mod_revision < revision + 1`), and every record read still there. If
//! another server changed anything under the prefixes meanwhile, nothing is written and the
//! command fails with [`DatastoreError::Conflict`].
//!
//! **Timeouts and members.** Every request is bounded by the datastore timeout on each member
//! and tried on the next member when one is unreachable, has no leader or does not answer;
//! requests ask for a leader (`require_leader`), so a member that lost quorum answers "no
//! leader" at once instead of hanging. The wait for the init lock is bounded by the lock
//! timeout.
//!
//! **Records** (node bindings) are single keys, written only in the transaction shapes kine
//! accepts as well: created when their mod revision is 0, changed or deleted when it is still
//! the one read (the failure branch reads the key, as kine requires).
//!
//! **Unconfirmed commits.** A commit that got no clear answer may still be in etcd's log.
//! Before anyone decides it did not happen, [`EtcdDatastore::fence`] writes a fence key inside
//! the compared range on the same condition: afterwards the commit has landed, or it never
//! will (its compare fails).
//!
//! **The init lock.** [`EtcdDatastore::lock_init`] creates the key `/rotor/locks/init`
//! (holder and expiry, [`LEASE_TTL_SECONDS`] ahead) if it is absent, renews it every third of
//! that time at the revision of its last renewal, and deletes it at that revision when done;
//! a waiter polls, and takes over a lock whose holder stopped renewing it (expired) by an
//! update at the revision it read. Only single-key transactions in the shapes kine accepts:
//! no lease, no lock service. If the holder dies the next server gets the lock within the TTL
//! (k3s's empty-key lock needs five 5-second polls). A holder that stalled past its expiry is
//! not told; its commit is still conditioned on what it read, so a second server that
//! initialized meanwhile makes it fail with a conflict, never overwrites.
//!
//! The client is `etcd-client` (gRPC over tonic, TLS through rustls): etcd's own protocol,
//! which kine serves too, and balancing over every endpoint given, so one dead member of three
//! is routed around (with etcd's JSON gateway the failover would have been ours to write).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, TlsOptions, Txn,
    TxnOp,
};
use serde::{Deserialize, Serialize};

use super::{BOOTSTRAP_PREFIX, Datastore, DatastoreError, DatastoreLock, Op, Snapshot};
use crate::fs::Root;

/// Where rotor-v1 records live: this prefix, then the k3s key.
pub const ROTOR_PREFIX: &str = "/rotor";
/// The key of the lock that serializes the first initialization of a cluster.
pub const INIT_LOCK: &str = "/rotor/locks/init";
/// A key inside the compared range that only [`Datastore::fence`] writes; never a record.
const FENCE_KEY: &str = "/rotor/bootstrap/~fence";
/// How long the init lock lasts unless its holder renews it: how long a dead holder keeps it.
pub const LEASE_TTL_SECONDS: i64 = 10;

/// The init lock's value: who holds it, and until when (Unix seconds) unless renewed.
#[derive(Serialize, Deserialize)]
struct LockRecord {
    holder: String,
    expires: i64,
}

/// Which etcd cluster holds the datastore, and how to reach it (recorded at `init`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the members (`https://127.0.0.1:2379`); requests are balanced over them.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' serving certificates (PEM); required for https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate to present (PEM), with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// Why an etcd configuration is not usable; `field` names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct EtcdConfigError {
    /// The setting at fault: `endpoint`, `cafile`, `certfile` or `keyfile`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl EtcdConfig {
    /// A configuration from k3s-style settings: comma-separated endpoints and optional files
    /// (made absolute, since later commands may run elsewhere).
    pub fn new(
        endpoints: &str,
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
    ) -> Result<EtcdConfig, EtcdConfigError> {
        let bad = |field, reason: String| EtcdConfigError { field, reason };
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(bad("endpoint", "no endpoint given".into()));
        }
        let absolute = |p: Option<PathBuf>, field| {
            p.map(|p| {
                std::path::absolute(&p).map_err(|e| bad(field, format!("{}: {e}", p.display())))
            })
            .transpose()
        };
        let config = EtcdConfig {
            endpoints,
            ca_file: absolute(ca_file, "cafile")?,
            cert_file: absolute(cert_file, "certfile")?,
            key_file: absolute(key_file, "keyfile")?,
        };
        config.check()?;
        Ok(config)
    }

    /// Whether the settings are usable: at least one endpoint, every one `http://HOST:PORT` or
    /// every one `https://HOST:PORT`, a CA for https, a client certificate with its key. (Also
    /// run on the settings a data dir recorded, before connecting.)
    pub fn check(&self) -> Result<(), EtcdConfigError> {
        let bad = |field, reason: String| EtcdConfigError { field, reason };
        let not_url = |e: &str| {
            bad(
                "endpoint",
                format!("'{e}' is not an etcd client URL (http://HOST:PORT or https://HOST:PORT)"),
            )
        };
        if self.endpoints.is_empty() {
            return Err(bad("endpoint", "no endpoint given".into()));
        }
        let mut schemes = std::collections::BTreeSet::new();
        for e in &self.endpoints {
            let (scheme, rest) = e.split_once("://").ok_or_else(|| not_url(e))?;
            if scheme != "http" && scheme != "https" {
                return Err(not_url(e));
            }
            schemes.insert(scheme);
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            let (host, port) = authority.rsplit_once(':').ok_or_else(|| not_url(e))?;
            let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
            {
                v6.parse::<std::net::Ipv6Addr>().is_ok()
            } else {
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            };
            if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(not_url(e));
            }
        }
        if schemes.len() > 1 {
            return Err(bad(
                "endpoint",
                "mixes http:// and https:// endpoints: the members of one etcd cluster serve one way".into(),
            ));
        }
        let tls = schemes.contains("https");
        if tls && self.ca_file.is_none() {
            return Err(bad(
                "cafile",
                "an https endpoint needs the CA that signed etcd's serving certificate".into(),
            ));
        }
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()) {
            return Err(bad(
                "endpoint",
                "TLS files were given for http:// endpoints: use https://".into(),
            ));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(bad("keyfile", "a client certificate needs its key".into())),
            (None, Some(_)) => Err(bad("certfile", "a client key needs its certificate".into())),
            _ => Ok(()),
        }
    }

    /// The endpoints, for messages.
    pub fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }
}

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
    /// Where each record of the last snapshot was found (k3s key -> etcd key).
    located: Mutex<BTreeMap<String, String>>,
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

/// The etcd key a record with `value` is stored under.
fn physical(key: &str, value: &[u8]) -> String {
    if value.starts_with(super::envelope::V1_MAGIC) {
        format!("{ROTOR_PREFIX}{key}")
    } else {
        key.to_string()
    }
}

/// The end of the range of keys starting with `prefix` (etcd's prefix convention).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
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
            located: Mutex::new(BTreeMap::new()),
        })
    }

    /// The client of the member that answered last.
    fn client(&self) -> Client {
        let i = self.preferred.load(std::sync::atomic::Ordering::Relaxed);
        self.clients[i % self.clients.len()].clone()
    }

    /// Run one request, each try bounded by the timeout: on the member that answered last,
    /// then on the others while a member cannot serve it (unreachable, no leader, no answer).
    /// A request that reached a member that then failed to confirm it may have been applied:
    /// a retried commit then fails its compare, and the caller asks the store what it holds.
    fn run<T, F>(
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
    fn read_at(
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

    fn check_key(key: &str) -> Result<(), DatastoreError> {
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
        let rotor_prefix = format!("{ROTOR_PREFIX}{prefix}");
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
        let mut snapshot = Snapshot::default();
        let mut located = BTreeMap::new();
        for get in [&first, &second] {
            for item in get.kvs() {
                let key = String::from_utf8_lossy(item.key()).into_owned();
                // The fence counts for the revision (a commit compares against it), but it is
                // no record.
                snapshot.revision = snapshot
                    .revision
                    .max(u64::try_from(item.mod_revision()).unwrap_or(0));
                if key == FENCE_KEY {
                    continue;
                }
                let logical = key
                    .strip_prefix(ROTOR_PREFIX)
                    .filter(|k| k.starts_with(prefix))
                    .unwrap_or(&key)
                    .to_string();
                if let Some(other) = located.insert(logical.clone(), key.clone()) {
                    return Err(DatastoreError::Corrupt {
                        what: self.describe(&logical),
                        reason: format!("two records for one token: {other} and {key}"),
                    });
                }
                snapshot.entries.insert(logical, item.value().to_vec());
            }
        }
        if let Ok(mut l) = self.located.lock() {
            *l = located;
        }
        Ok(snapshot)
    }

    fn commit(&self, base: &Snapshot, ops: &[Op]) -> Result<u64, DatastoreError> {
        let revision = i64::try_from(base.revision)
            .map_err(|_| DatastoreError::BadKey(format!("revision {}", base.revision)))?;
        let rotor_prefix = format!("{ROTOR_PREFIX}{BOOTSTRAP_PREFIX}");
        // Nothing under either prefix changed since the snapshot...
        let mut compares = vec![
            Compare::mod_revision(BOOTSTRAP_PREFIX, CompareOp::Less, revision + 1)
                .with_range(prefix_end(BOOTSTRAP_PREFIX)),
            Compare::mod_revision(rotor_prefix.as_str(), CompareOp::Less, revision + 1)
                .with_range(prefix_end(&rotor_prefix)),
        ];
        // ...and nothing read was deleted.
        let located = self.located.lock().map(|l| l.clone()).unwrap_or_default();
        for (key, value) in &base.entries {
            let at = located
                .get(key)
                .cloned()
                .unwrap_or_else(|| physical(key, value));
            compares.push(Compare::version(at, CompareOp::Greater, 0));
        }
        let mut writes = Vec::new();
        for op in ops {
            Self::check_key(op.key())?;
            match op {
                Op::Put { key, value } => {
                    let at = physical(key, value);
                    let other = if at == *key {
                        format!("{ROTOR_PREFIX}{key}")
                    } else {
                        key.clone()
                    };
                    writes.push(TxnOp::put(at, value.clone(), None));
                    writes.push(TxnOp::delete(other, None));
                }
                Op::Delete { key } => {
                    writes.push(TxnOp::delete(key.as_str(), None));
                    writes.push(TxnOp::delete(format!("{ROTOR_PREFIX}{key}"), None));
                }
            }
        }
        crate::fs::failpoints::step(|| format!("datastore commit {}", self.config.describe()))
            .map_err(|e| DatastoreError::Unavailable {
                store: self.config.describe(),
                doing: "writing the bootstrap records",
                reason: e.to_string(),
            })?;
        let txn = Txn::new().when(compares).and_then(writes);
        let response = self.run("writing the bootstrap records", |client| {
            let txn = txn.clone();
            async move { client.kv_client().txn(txn).await }
        })?;
        if !response.succeeded() {
            let found = self
                .snapshot(BOOTSTRAP_PREFIX)
                .map(|s| s.revision)
                .unwrap_or(0);
            return Err(DatastoreError::Conflict {
                what: self.config.describe(),
                expected: base.revision,
                found,
            });
        }
        let new = response
            .header()
            .map(|h| u64::try_from(h.revision()).unwrap_or(0))
            .unwrap_or(base.revision);
        Ok(if ops.is_empty() { base.revision } else { new })
    }

    fn describe(&self, key: &str) -> String {
        format!("{} key {key}", self.config.describe())
    }

    fn record(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError> {
        let key = super::record_key(key)?.to_string();
        Ok(self.read_at(&key, "reading a record")?.map(|(v, _)| v))
    }

    fn create_record(&self, key: &str, value: &[u8]) -> Result<bool, DatastoreError> {
        let key = super::record_key(key)?.to_string();
        // Created only if it does not exist (mod revision 0): one transaction in the shape
        // kine accepts too, so of two servers creating the same key exactly one succeeds.
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value.to_vec(), None)]);
        let response = self.run("creating a record", |client| {
            let txn = txn.clone();
            async move { client.kv_client().txn(txn).await }
        })?;
        Ok(response.succeeded())
    }

    fn swap_record(&self, key: &str, old: &[u8], new: &[u8]) -> Result<bool, DatastoreError> {
        let key = super::record_key(key)?.to_string();
        // Read, then update guarded by the mod revision read (kine's update shape): swapped
        // only if it still holds `old` and nobody wrote it in between.
        let Some((value, revision)) = self.read_at(&key, "changing a record")? else {
            return Ok(false);
        };
        if value != old {
            return Ok(false);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key.as_str(), new.to_vec(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.run("changing a record", |client| {
            let txn = txn.clone();
            async move { client.kv_client().txn(txn).await }
        })?;
        Ok(response.succeeded())
    }

    fn delete_record(&self, key: &str) -> Result<bool, DatastoreError> {
        let key = super::record_key(key)?.to_string();
        // Deleted at the mod revision read (kine's delete shape; kine has no plain delete). A
        // record rewritten in between (a server noting an issued certificate) is read again:
        // deleting it is still what was asked.
        for _ in 0..5 {
            let Some((_, revision)) = self.read_at(&key, "deleting a record")? else {
                return Ok(false);
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::delete(key.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let response = self.run("deleting a record", |client| {
                let txn = txn.clone();
                async move { client.kv_client().txn(txn).await }
            })?;
            if response.succeeded() {
                return Ok(true);
            }
        }
        let found = self
            .read_at(&key, "deleting a record")?
            .map_or(0, |(_, r)| u64::try_from(r).unwrap_or(0));
        Err(DatastoreError::Conflict {
            what: self.describe(&key),
            expected: found,
            found,
        })
    }

    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, DatastoreError> {
        if !prefix.starts_with(super::RECORDS_PREFIX) {
            return Err(DatastoreError::BadKey(prefix.to_string()));
        }
        let prefix = prefix.to_string();
        let response = self.run("listing records", |client| {
            let prefix = prefix.clone();
            async move {
                client
                    .kv_client()
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            }
        })?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect())
    }

    fn clean(&self) -> Result<(), DatastoreError> {
        Ok(())
    }

    /// One transaction: if nothing under the prefixes changed since `expected`, put the fence
    /// key (inside the compared range). Either way, afterwards a commit conditioned on
    /// `expected` that is still in etcd's log fails its compare: it landed before, or never.
    fn fence(&self, expected: u64) -> Result<(), DatastoreError> {
        let revision = i64::try_from(expected)
            .map_err(|_| DatastoreError::BadKey(format!("revision {expected}")))?;
        let rotor_prefix = format!("{ROTOR_PREFIX}{BOOTSTRAP_PREFIX}");
        let txn = Txn::new()
            .when([
                Compare::mod_revision(BOOTSTRAP_PREFIX, CompareOp::Less, revision + 1)
                    .with_range(prefix_end(BOOTSTRAP_PREFIX)),
                Compare::mod_revision(rotor_prefix.as_str(), CompareOp::Less, revision + 1)
                    .with_range(prefix_end(&rotor_prefix)),
            ])
            .and_then([TxnOp::put(FENCE_KEY, "fence", None)]);
        self.run("fencing off an unconfirmed write", |client| {
            let txn = txn.clone();
            async move { client.kv_client().txn(txn).await }
        })
        .map(|_| ())
    }

    fn lock_init(&self, wait: Duration) -> Result<DatastoreLock, DatastoreError> {
        // A zero wait would give up before any answer could come.
        let wait = wait.max(self.timeout);
        let started = std::time::Instant::now();
        let holder = format!(
            "pid {} on {}, {}",
            std::process::id(),
            rustix::system::uname().nodename().to_string_lossy(),
            crate::clock::rfc3339(crate::clock::system_now())
        );
        let value = |holder: &str| -> Vec<u8> {
            let expires = crate::clock::system_now().unix_timestamp() + LEASE_TTL_SECONDS;
            serde_json::to_vec(&LockRecord {
                holder: holder.to_string(),
                expires,
            })
            .unwrap_or_default()
        };
        let revision = loop {
            let current = self.read_at(INIT_LOCK, "reading the init lock")?;
            let txn = match &current {
                // Free: created if still absent.
                None => Some(
                    Txn::new()
                        .when([Compare::mod_revision(INIT_LOCK, CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(INIT_LOCK, value(&holder), None)]),
                ),
                // Held: taken over only once its holder stopped renewing it.
                Some((bytes, revision)) => {
                    let expired = serde_json::from_slice::<LockRecord>(bytes).map_or(true, |r| {
                        r.expires < crate::clock::system_now().unix_timestamp()
                    });
                    expired.then(|| {
                        Txn::new()
                            .when([Compare::mod_revision(
                                INIT_LOCK,
                                CompareOp::Equal,
                                *revision,
                            )])
                            .and_then([TxnOp::put(INIT_LOCK, value(&holder), None)])
                            .or_else([TxnOp::get(INIT_LOCK, None)])
                    })
                }
            };
            if let Some(txn) = txn {
                let response = self.run("taking the init lock", |client| {
                    let txn = txn.clone();
                    async move { client.kv_client().txn(txn).await }
                })?;
                if response.succeeded() {
                    break response.header().map_or(0, |h| h.revision());
                }
            }
            if started.elapsed() >= wait {
                return Err(DatastoreError::Busy {
                    store: self.config.describe(),
                    lock: INIT_LOCK,
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        // Renewed by its holder every third of its time, each renewal at the revision of the
        // last one (a holder that lost it stops); released by a delete at the last revision.
        let held = std::sync::Arc::new(Mutex::new(revision));
        let renewing = {
            let held = std::sync::Arc::clone(&held);
            let client = self.client();
            let holder = holder.clone();
            self.runtime.spawn(async move {
                let every = Duration::from_secs((LEASE_TTL_SECONDS / 3).max(1) as u64);
                loop {
                    tokio::time::sleep(every).await;
                    let at = *held.lock().unwrap_or_else(|e| e.into_inner());
                    let expires = crate::clock::system_now().unix_timestamp() + LEASE_TTL_SECONDS;
                    let Ok(next) = serde_json::to_vec(&LockRecord {
                        holder: holder.clone(),
                        expires,
                    }) else {
                        break;
                    };
                    let txn = Txn::new()
                        .when([Compare::mod_revision(INIT_LOCK, CompareOp::Equal, at)])
                        .and_then([TxnOp::put(INIT_LOCK, next, None)])
                        .or_else([TxnOp::get(INIT_LOCK, None)]);
                    let client = client.clone();
                    match client.kv_client().txn(txn).await {
                        Ok(r) if r.succeeded() => {
                            *held.lock().unwrap_or_else(|e| e.into_inner()) =
                                r.header().map_or(at, |h| h.revision());
                        }
                        // Taken over (we stalled past its time), or etcd unreachable: the
                        // commit is still conditioned on what was read.
                        _ => break,
                    }
                }
            })
        };
        let handle = self.runtime.handle().clone();
        let client = self.client();
        Ok(DatastoreLock::held(move || {
            renewing.abort();
            let at = *held.lock().unwrap_or_else(|e| e.into_inner());
            let txn = Txn::new()
                .when([Compare::mod_revision(INIT_LOCK, CompareOp::Equal, at)])
                .and_then([TxnOp::delete(INIT_LOCK, None)])
                .or_else([TxnOp::get(INIT_LOCK, None)]);
            let client = client.clone();
            let _ = handle.block_on(async {
                tokio::time::timeout(Duration::from_secs(2), client.kv_client().txn(txn)).await
            });
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(endpoints: &str, ca: bool, cert: bool, key: bool) -> Result<EtcdConfig, &'static str> {
        let p = |b: bool, name: &str| b.then(|| PathBuf::from(name));
        EtcdConfig::new(
            endpoints,
            p(ca, "ca.crt"),
            p(cert, "c.crt"),
            p(key, "c.key"),
        )
        .map_err(|e| e.field)
    }

    #[test]
    fn settings_are_checked_and_named() {
        let ok = field(
            "https://127.0.0.1:2379, https://127.0.0.2:2379",
            true,
            true,
            true,
        )
        .unwrap();
        assert_eq!(ok.endpoints.len(), 2);
        assert!(
            ok.ca_file.unwrap().is_absolute(),
            "recorded as absolute paths"
        );
        assert_eq!(
            field("http://127.0.0.1:2379", false, false, false)
                .unwrap()
                .ca_file,
            None
        );
        assert_eq!(field("", false, false, false), Err("endpoint"));
        assert_eq!(
            field("127.0.0.1:2379", false, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("unix:///run/etcd.sock", false, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://h:1/path", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://127.0.0.1:2379", false, false, false),
            Err("cafile")
        );
        assert_eq!(
            field("https://127.0.0.1:2379", true, true, false),
            Err("keyfile")
        );
        assert_eq!(
            field("https://127.0.0.1:2379", true, false, true),
            Err("certfile")
        );
        assert_eq!(
            field("http://127.0.0.1:2379", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("http://a:1,https://b:2", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://etcd.example", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://etcd.example:0", true, false, false),
            Err("endpoint")
        );
        assert_eq!(
            field("https://h st:2379", true, false, false),
            Err("endpoint")
        );
        assert!(
            field(
                "https://[::1]:2379,https://etcd-2.example:2379",
                true,
                false,
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn rotor_v1_records_live_under_their_own_key() {
        assert_eq!(
            physical("/bootstrap/abc", b"rotor-v1$pbkdf2"),
            "/rotor/bootstrap/abc"
        );
        assert_eq!(
            physical("/bootstrap/abc", b"0123456789abcdef:AAAA"),
            "/bootstrap/abc"
        );
        assert_eq!(prefix_end("/bootstrap/"), b"/bootstrap0".to_vec());
    }
}
