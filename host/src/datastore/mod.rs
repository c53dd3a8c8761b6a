//! The datastore: where the authoritative CA material lives, encrypted with a key derived from
//! the join token's password.
//!
//! [`Datastore`] is the backend trait (get/put/list of opaque values by key); the default
//! backend, [`DirectoryDatastore`], keeps one file per key under `<data-dir>/datastore/`, written
//! atomically. [`BootstrapStore`] stores the bootstrap record under k3s's key name,
//! `/bootstrap/<first 12 hex digits of SHA-256(password)>`.

mod bootstrap;
mod envelope;

pub use bootstrap::{BootstrapData, BootstrapFile};
pub use envelope::{
    EnvelopeError, RecordFormat, V1_ITERATIONS, open_record, record_format, seal_record,
};

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::fs::{FsError, PRIVATE_FILE, Root};

/// A datastore operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatastoreError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("datastore key '{0}' is not a valid key")]
    BadKey(String),
    #[error("{what}: {error}")]
    Envelope { what: String, error: EnvelopeError },
    #[error(
        "the token does not decrypt the bootstrap data: the datastore holds bootstrap data under another token ({keys})"
    )]
    OtherToken { keys: String },
    #[error("{what}: {reason}")]
    Corrupt { what: String, reason: String },
}

/// A key-value backend for the datastore.
pub trait Datastore {
    /// The value at `key`, or `None`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError>;
    /// Replace the value at `key` atomically.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), DatastoreError>;
    /// Remove `key` (no error if absent).
    fn delete(&self, key: &str) -> Result<(), DatastoreError>;
    /// Every key under `prefix` (`/bootstrap/`).
    fn list(&self, prefix: &str) -> Result<Vec<String>, DatastoreError>;
    /// A description for messages (a path, a URL).
    fn describe(&self, key: &str) -> String;
}

/// One file per key below a directory: key `/bootstrap/abc` is the file `bootstrap/abc`.
pub struct DirectoryDatastore {
    root: Root,
}

impl DirectoryDatastore {
    /// The datastore in `dir` (created, mode 0700, if missing).
    pub fn open(dir: &Path) -> Result<DirectoryDatastore, DatastoreError> {
        Ok(DirectoryDatastore {
            root: Root::create_ambient(dir)?,
        })
    }

    /// The datastore below an already opened root (for example `<data-dir>` + `datastore`).
    pub fn within(parent: &Root, rel: &Path) -> Result<DirectoryDatastore, DatastoreError> {
        parent.create_dir_all(rel)?;
        Ok(DirectoryDatastore {
            root: parent.open_dir(rel)?,
        })
    }

    fn rel(key: &str) -> Result<std::path::PathBuf, DatastoreError> {
        let trimmed = key.trim_start_matches('/');
        let ok = !trimmed.is_empty()
            && trimmed.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !ok {
            return Err(DatastoreError::BadKey(key.to_string()));
        }
        Ok(std::path::PathBuf::from(trimmed))
    }
}

impl Datastore for DirectoryDatastore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError> {
        let rel = Self::rel(key)?;
        match self.root.read(&rel) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), DatastoreError> {
        let rel = Self::rel(key)?;
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.root.create_dir_all(parent)?;
        }
        Ok(self.root.write_atomic(&rel, value, PRIVATE_FILE)?)
    }

    fn delete(&self, key: &str) -> Result<(), DatastoreError> {
        let rel = Self::rel(key)?;
        match self.root.remove_file(&rel) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, DatastoreError> {
        let rel = Self::rel(prefix)?;
        let names = match self.root.list_dir(&rel) {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let base = format!("/{}", rel.display());
        Ok(names
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .map(|n| format!("{base}/{n}"))
            .collect())
    }

    fn describe(&self, key: &str) -> String {
        self.root
            .display(Path::new(key.trim_start_matches('/')))
            .display()
            .to_string()
    }
}

/// The datastore key of the bootstrap record for a token password (k3s's naming).
pub fn bootstrap_key(password: &str) -> String {
    let digest = hex::encode(Sha256::digest(password.as_bytes()));
    format!("/bootstrap/{}", &digest[..12])
}

/// Whether the datastore holds any bootstrap record (for any token).
pub fn has_bootstrap(store: &dyn Datastore) -> Result<bool, DatastoreError> {
    Ok(!store.list("/bootstrap")?.is_empty())
}

/// The bootstrap record of one cluster, read and written with a token password.
pub struct BootstrapStore<'a> {
    store: &'a dyn Datastore,
    password: String,
}

impl<'a> BootstrapStore<'a> {
    pub fn new(store: &'a dyn Datastore, password: &str) -> BootstrapStore<'a> {
        BootstrapStore {
            store,
            password: password.to_string(),
        }
    }

    pub fn key(&self) -> String {
        bootstrap_key(&self.password)
    }

    /// The format of the stored record, if there is one for this token.
    pub fn stored_format(&self) -> Result<Option<RecordFormat>, DatastoreError> {
        Ok(self
            .store
            .get(&self.key())?
            .as_deref()
            .and_then(record_format))
    }

    /// Read and decrypt the record. `Ok(None)` when the datastore holds no bootstrap data at
    /// all; an error when it holds some that this token cannot open.
    pub fn load(&self) -> Result<Option<BootstrapData>, DatastoreError> {
        let key = self.key();
        let what = self.store.describe(&key);
        let Some(record) = self.store.get(&key)? else {
            let others = self.store.list("/bootstrap")?;
            if others.is_empty() {
                return Ok(None);
            }
            return Err(DatastoreError::OtherToken {
                keys: others.join(", "),
            });
        };
        if record.is_empty() {
            return Err(DatastoreError::Corrupt {
                what,
                reason: "empty record (an interrupted first save?)".into(),
            });
        }
        let plain = open_record(&self.password, &key, &record).map_err(|error| {
            DatastoreError::Envelope {
                what: what.clone(),
                error,
            }
        })?;
        BootstrapData::from_json(&plain)
            .map(Some)
            .map_err(|reason| DatastoreError::Corrupt { what, reason })
    }

    /// Encrypt and store `data`, replacing the record atomically.
    pub fn save(&self, data: &BootstrapData, format: RecordFormat) -> Result<(), DatastoreError> {
        let key = self.key();
        let record =
            seal_record(format, &self.password, &key, &data.to_json()).map_err(|error| {
                DatastoreError::Envelope {
                    what: self.store.describe(&key),
                    error,
                }
            })?;
        self.store.put(&key, &record)
    }

    /// Remove the record of this token (after re-encrypting it under another).
    pub fn delete(&self) -> Result<(), DatastoreError> {
        self.store.delete(&self.key())
    }
}
