//! The datastore: where the authoritative CA material lives, encrypted with a key derived from
//! the join token's password.
//!
//! [`Datastore`] is the backend: a consistent [`Snapshot`] of the keys under a prefix with the
//! store's revision, and [`Datastore::commit`], which applies the [`Op`]s of a change only if
//! the keys it changes are still as the command read them. This is k3s's rule (every write
//! conditioned on the record's revision). The directory backend applies a change in one step;
//! etcd and kine, one key at a time, each write guarded by that key's revision, with the steps
//! in the journal ([`Intent`]) so that [`Datastore::settle`] finishes or undoes a change that
//! stopped half way.
//!
//! The default backend, [`DirectoryDatastore`], keeps its keys under `<data-dir>/server/db`
//! (k3s, RKE2) or `<data-dir>/datastore` (kubeadm), one file per key in a revision directory;
//! a commit builds the next revision beside the current one and switches the `current` link in
//! one rename (see its docs). The bootstrap record is stored under k3s's key name,
//! `/bootstrap/<first 12 hex digits of SHA-256(password)>`.
//!
//! [`EtcdDatastore`] keeps the same records in an etcd cluster that several servers share
//! (`rotor init --datastore-endpoint`), or in kine, which serves the same API on SQLite,
//! PostgreSQL or MySQL; it uses only the transactions kine accepts, and the first
//! initialization of a cluster is serialized by [`Datastore::lock_init`] (see its docs).

mod bootstrap;
mod directory;
mod endpoint;
mod envelope;
mod etcd;
mod intent;
mod keys;
mod sqlite;

pub use bootstrap::{BootstrapData, BootstrapFile};
pub use directory::DirectoryDatastore;
pub use endpoint::DatastoreConfig;
pub use envelope::{
    EnvelopeError, RecordFormat, V1_ITERATIONS, open_record, record_format, seal_record,
};
pub use etcd::{EtcdConfig, EtcdConfigError, EtcdDatastore, INIT_LOCK, LEASE_TTL_SECONDS};
pub use intent::{Intent, IntentOutcome, KeyStep};
pub use keys::ROTOR_PREFIX;
pub use sqlite::{SqliteConfig, SqliteDatastore};

use std::collections::BTreeMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::fs::FsError;

/// The prefix of bootstrap records.
pub const BOOTSTRAP_PREFIX: &str = "/bootstrap/";

/// Where records outside the bootstrap live: small values, each under its own key and changed
/// alone with a compare-and-swap on that key (node password bindings: `/rotor/records/nodes/<name>`).
pub const RECORDS_PREFIX: &str = "/rotor/records/";

/// `key` if it is a record key: [`RECORDS_PREFIX`], then `/`-separated parts of lowercase
/// letters, digits, `-`, `_` and `.` (no part empty, starting with `.`, or holding the marker of
/// rotor's temporary files), 512 bytes at most: every such key is a file name of the directory
/// backend that nothing else uses.
pub fn record_key(key: &str) -> Result<&str, DatastoreError> {
    let rest = key
        .strip_prefix(RECORDS_PREFIX)
        .ok_or_else(|| DatastoreError::BadKey(key.to_string()))?;
    let part_ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.contains(crate::fs::TEMP_MARKER)
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
    };
    if key.len() > 512 || !rest.split('/').all(part_ok) {
        return Err(DatastoreError::BadKey(key.to_string()));
    }
    Ok(key)
}

/// A datastore operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    /// A file of the directory datastore.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A key outside what rotor writes.
    #[error("datastore key '{0}' is not a valid key")]
    BadKey(String),
    /// A record's envelope could not be opened.
    #[error("{what}: {error}")]
    Envelope {
        /// What was being read or changed.
        what: String,
        /// The underlying error.
        error: EnvelopeError,
    },
    #[error(
        "the token does not decrypt the bootstrap data: the datastore holds it under another token ({keys}){hint}"
    )]
    /// The records are sealed with another token.
    OtherToken {
        /// The records found.
        keys: String,
        /// How to find the token that opens them.
        hint: String,
    },
    /// A record or revision is damaged.
    #[error("{what}: {reason}")]
    Corrupt {
        /// What was being read or changed.
        what: String,
        /// Why it is not usable.
        reason: String,
    },
    /// A shared datastore did not answer, or answered with an error.
    #[error("{store}: {doing} failed: {reason}")]
    Unavailable {
        /// The store (its endpoints).
        store: String,
        /// What rotor was doing.
        doing: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// Another process has the database open (k3s or kine, on an offline SQLite database).
    #[error(
        "{store}: the database is in use: {by}; stop k3s (or the kine serving it) first: rotor \
         opens this database itself; nothing was changed"
    )]
    InUse {
        /// The store.
        store: String,
        /// What holds it.
        by: String,
    },
    /// Another server holds the init lock.
    #[error(
        "{store}: another server is initializing the cluster: the lock {lock} stayed taken for {} s; \
         run the command again (a dead holder's lock expires within {LEASE_TTL_SECONDS} s)",
        waited.as_secs()
    )]
    Busy {
        /// The store (its endpoints).
        store: String,
        /// The lock's key.
        lock: &'static str,
        /// How long this command waited.
        waited: Duration,
    },
    #[error(
        "{what}: changed by someone else since this command read it (revision {expected}, now {found}); \
         nothing was written: run the command again"
    )]
    /// Another writer changed the datastore since this command read it.
    Conflict {
        /// What was being read or changed.
        what: String,
        /// The revision this command read.
        expected: u64,
        /// The revision the datastore is at now.
        found: u64,
    },
}

/// One change to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store a value under a key.
    Put {
        /// The key.
        key: String,
        /// The value stored under it.
        value: Vec<u8>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// The key the operation changes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// The keys under a prefix as the store held them at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision: 0 before the first commit, then one more per commit.
    pub revision: u64,
    /// Every key under the prefix read, with its value.
    pub entries: BTreeMap<String, Vec<u8>>,
    /// Where the store tracks them (etcd, kine): the revision at which each key read was last
    /// written. A commit guards each key it changes by it.
    pub revisions: BTreeMap<String, u64>,
}

impl Snapshot {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Keys under `prefix`.
    pub fn keys_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.entries
            .keys()
            .filter(move |k| k.starts_with(prefix))
            .map(String::as_str)
    }
}

/// A key-value backend for the datastore.
pub trait Datastore: Send + Sync {
    /// Every key under `prefix` and its value, read at one revision.
    fn snapshot(&self, prefix: &str) -> Result<Snapshot, DatastoreError>;
    /// Apply `ops` in one step if the store still holds what `base` (a snapshot of this store)
    /// read; otherwise change nothing and fail with [`DatastoreError::Conflict`]. With no ops,
    /// only that is checked. Returns the new revision.
    fn commit(&self, base: &Snapshot, ops: &[Op]) -> Result<u64, DatastoreError>;
    /// A description for messages (a path, a URL).
    fn describe(&self, key: &str) -> String;
    /// Remove what a writer that died left behind (temporary files, unused revisions). Only
    /// called by the holder of the data dir's lock.
    fn clean(&self) -> Result<(), DatastoreError>;
    /// Serialize the first initialization of a cluster among the servers sharing this store,
    /// waiting at most `wait`; held until the returned value is dropped. A local store has no
    /// other servers: the data dir's lock is enough, and this returns at once.
    fn lock_init(&self, wait: Duration) -> Result<DatastoreLock, DatastoreError> {
        let _ = wait;
        Ok(DatastoreLock::none())
    }
    /// The steps a commit of `ops` on `base` takes, for the journal: empty for a store that
    /// commits every op in one step (this directory); one per key for a store that changes one
    /// key at a time (etcd and kine, see [`EtcdDatastore`]).
    fn plan(&self, base: &Snapshot, ops: &[Op]) -> Result<Vec<KeyStep>, DatastoreError> {
        let _ = (base, ops);
        Ok(Vec::new())
    }
    /// Whether the store holds the change `intent` describes, after a commit that failed or
    /// stopped: made final first, so the answer cannot change later. A local store commits
    /// synchronously and only needs a look; a shared one may have a request still in flight,
    /// and a change of several keys may be half made: it fences the keys, finishes a change
    /// whose remaining steps it can finish, and undoes what it created of one it cannot (see
    /// [`EtcdDatastore`]).
    fn settle(&self, intent: &Intent) -> Result<IntentOutcome, DatastoreError> {
        Ok(intent.outcome(&self.snapshot(BOOTSTRAP_PREFIX)?))
    }

    // Records outside the bootstrap ([`RECORDS_PREFIX`], [`record_key`]): each changed alone,
    // never part of a bootstrap commit, and safe to change from several servers at once.

    /// The value of record `key`, if there is one.
    fn record(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError>;
    /// Create record `key` holding `value` unless it exists: `false` (and nothing written)
    /// when it does. Of two servers creating one key at once, exactly one gets `true`.
    fn create_record(&self, key: &str, value: &[u8]) -> Result<bool, DatastoreError>;
    /// Replace record `key`'s value by `new` if it still holds `old`: `false` (and nothing
    /// written) otherwise.
    fn swap_record(&self, key: &str, old: &[u8], new: &[u8]) -> Result<bool, DatastoreError>;
    /// Remove record `key`: `false` when there was none.
    fn delete_record(&self, key: &str) -> Result<bool, DatastoreError>;
    /// Every record whose key starts with `prefix` (itself below [`RECORDS_PREFIX`]), by key.
    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, DatastoreError>;
}

/// A lock in a datastore, released when dropped.
pub struct DatastoreLock {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl DatastoreLock {
    /// No lock to release.
    pub fn none() -> DatastoreLock {
        DatastoreLock { release: None }
    }

    /// A held lock, released by `release`.
    pub fn held(release: impl FnOnce() + Send + 'static) -> DatastoreLock {
        DatastoreLock {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for DatastoreLock {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// A commit with nothing to write: only that the store still holds what `base` read (every
/// record at the revision read, none added). The revision, or a conflict.
fn unchanged_since(
    store: &(impl Datastore + ?Sized),
    base: &Snapshot,
    what: String,
) -> Result<u64, DatastoreError> {
    let now = store.snapshot(BOOTSTRAP_PREFIX)?;
    if now.revisions != base.revisions {
        return Err(DatastoreError::Conflict {
            what,
            expected: base.revision,
            found: now.revision,
        });
    }
    Ok(base.revision)
}

/// The failpoint step of a commit to `store` (counted, and failed when a test asks).
fn commit_step(store: String) -> Result<(), DatastoreError> {
    crate::fs::failpoints::step(|| format!("datastore commit {store}")).map_err(|e| {
        DatastoreError::Unavailable {
            store,
            doing: "writing the bootstrap records",
            reason: e.to_string(),
        }
    })
}

/// The datastore key of the bootstrap record for a token password (k3s's naming).
pub fn bootstrap_key(password: &str) -> String {
    let digest = hex::encode(Sha256::digest(password.as_bytes()));
    format!("{BOOTSTRAP_PREFIX}{}", &digest[..12])
}

/// The operation that stores `data`, encrypted under `password`, at the token's key.
pub fn bootstrap_put(
    password: &str,
    data: &BootstrapData,
    format: RecordFormat,
) -> Result<Op, DatastoreError> {
    let key = bootstrap_key(password);
    let value = seal_record(format, password, &key, &data.to_json()).map_err(|error| {
        DatastoreError::Envelope {
            what: format!("bootstrap record {key}"),
            error,
        }
    })?;
    Ok(Op::Put { key, value })
}

/// SHA-256 of a value, hex: how a journal names a value without holding it.
pub fn value_digest(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))
}

/// The bootstrap record of one cluster in a snapshot, opened with a token password.
pub struct Bootstrap<'a> {
    store: &'a dyn Datastore,
    snapshot: &'a Snapshot,
    password: &'a str,
}

impl<'a> Bootstrap<'a> {
    /// The record `password` opens, in `snapshot` of `store`.
    pub fn new(store: &'a dyn Datastore, snapshot: &'a Snapshot, password: &'a str) -> Self {
        Bootstrap {
            store,
            snapshot,
            password,
        }
    }

    /// The record's key: `/bootstrap/<hash of the password>`.
    pub fn key(&self) -> String {
        bootstrap_key(self.password)
    }

    /// The format of the stored record, if there is one for this token.
    pub fn stored_format(&self) -> Option<RecordFormat> {
        self.snapshot.get(&self.key()).and_then(record_format)
    }

    /// Every bootstrap key in the snapshot.
    pub fn keys(&self) -> Vec<String> {
        self.snapshot
            .keys_under(BOOTSTRAP_PREFIX)
            .map(str::to_string)
            .collect()
    }

    /// Decrypt the record. `Ok(None)` when the datastore holds no bootstrap data at all; an
    /// error when it holds some that this token cannot open.
    pub fn load(&self) -> Result<Option<BootstrapData>, DatastoreError> {
        let key = self.key();
        let what = self.store.describe(&key);
        let Some(record) = self.snapshot.get(&key) else {
            let others = self.keys();
            if others.is_empty() {
                return Ok(None);
            }
            return Err(DatastoreError::OtherToken {
                keys: others.join(", "),
                hint: String::new(),
            });
        };
        if record.is_empty() {
            return Err(DatastoreError::Corrupt {
                what,
                reason: "empty record (an interrupted first save?)".into(),
            });
        }
        let plain =
            open_record(self.password, &key, record).map_err(|error| DatastoreError::Envelope {
                what: what.clone(),
                error,
            })?;
        BootstrapData::from_json(&plain)
            .map(Some)
            .map_err(|reason| DatastoreError::Corrupt { what, reason })
    }

    /// The operation that stores `data` under this token.
    pub fn put(&self, data: &BootstrapData, format: RecordFormat) -> Result<Op, DatastoreError> {
        bootstrap_put(self.password, data, format)
    }

    /// The operation that removes the record of this token.
    pub fn delete(&self) -> Op {
        Op::Delete { key: self.key() }
    }
}

/// Fuzzing entry: a stored record's format, its envelope parsed and its body opened (with a
/// fixed key: see `envelope::fuzz_open`), and bootstrap JSON. Never panics.
#[doc(hidden)]
pub fn fuzz_record(data: &[u8]) {
    let _ = record_format(data);
    if let Some(plain) = envelope::fuzz_open("/bootstrap/fuzz", data) {
        let _ = BootstrapData::from_json(&plain);
    }
    let _ = BootstrapData::from_json(data);
}
