//! Single keys outside the bootstrap: node records, and the init lock. Each is written alone,
//! in the transaction shapes kine accepts (created when its mod revision is 0, changed or
//! deleted at the mod revision read, with a read on failure).

use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{EtcdDatastore, INIT_LOCK, LEASE_TTL_SECONDS};
use crate::datastore::{Datastore, DatastoreError, DatastoreLock};

/// The init lock's value: who holds it, and until when (Unix seconds) unless renewed.
#[derive(Serialize, Deserialize)]
struct LockRecord {
    holder: String,
    expires: i64,
}

impl EtcdDatastore {
    pub(super) fn read_record(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError> {
        let key = crate::datastore::record_key(key)?.to_string();
        Ok(self.read_at(&key, "reading a record")?.map(|(v, _)| v))
    }

    pub(super) fn create_record_key(
        &self,
        key: &str,
        value: &[u8],
    ) -> Result<bool, DatastoreError> {
        let key = crate::datastore::record_key(key)?.to_string();
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

    pub(super) fn swap_record_key(
        &self,
        key: &str,
        old: &[u8],
        new: &[u8],
    ) -> Result<bool, DatastoreError> {
        let key = crate::datastore::record_key(key)?.to_string();
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

    pub(super) fn delete_record_key(&self, key: &str) -> Result<bool, DatastoreError> {
        let key = crate::datastore::record_key(key)?.to_string();
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

    pub(super) fn records_under(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, DatastoreError> {
        if !prefix.starts_with(crate::datastore::RECORDS_PREFIX) {
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

    pub(super) fn take_init_lock(&self, wait: Duration) -> Result<DatastoreLock, DatastoreError> {
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
