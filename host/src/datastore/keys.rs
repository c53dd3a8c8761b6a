//! How records are named in a store of keys (etcd, kine): a k3s-format record under k3s's key
//! (`/bootstrap/<hash>`), a rotor-v1 record under `/rotor` + that key, so that a k3s server
//! sharing the store never finds a record it cannot open under its own key. Callers name every
//! record by its k3s key; the store's key is where it is kept.

use std::collections::BTreeMap;

use super::{DatastoreError, Snapshot};

/// Where rotor-v1 records live: this prefix, then the k3s key.
pub const ROTOR_PREFIX: &str = "/rotor";

/// A key that rotor before 0.3 wrote to fence off unconfirmed commits; never a record.
const FENCE_KEY: &str = "/rotor/bootstrap/~fence";

/// The store's key of the record `key` holding `value`.
pub(crate) fn physical(key: &str, value: &[u8]) -> String {
    if value.starts_with(super::envelope::V1_MAGIC) {
        format!("{ROTOR_PREFIX}{key}")
    } else {
        key.to_string()
    }
}

/// The other store key a record named `key` could be kept under.
pub(crate) fn other_physical(key: &str, at: &str) -> String {
    if at == key {
        format!("{ROTOR_PREFIX}{key}")
    } else {
        key.to_string()
    }
}

/// The prefixes to read for the records under `prefix`: k3s's, then rotor's.
pub(crate) fn physical_prefixes(prefix: &str) -> [String; 2] {
    [prefix.to_string(), format!("{ROTOR_PREFIX}{prefix}")]
}

/// The end of the range of keys starting with `prefix` (etcd's prefix convention).
pub(crate) fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&end).into_owned()
}

/// A snapshot of the records under `prefix` from the store's `(key, mod revision, value)`
/// items under both physical prefixes. Two records for one name are refused.
pub(crate) fn assemble(
    prefix: &str,
    items: impl IntoIterator<Item = (String, u64, Vec<u8>)>,
    describe: impl Fn(&str) -> String,
) -> Result<Snapshot, DatastoreError> {
    let mut snapshot = Snapshot::default();
    let mut located = BTreeMap::new();
    for (key, revision, value) in items {
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
                what: describe(&logical),
                reason: format!("two records for one token: {other} and {key}"),
            });
        }
        snapshot.revision = snapshot.revision.max(revision);
        snapshot.revisions.insert(logical.clone(), revision);
        snapshot.entries.insert(logical, value);
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            other_physical("/bootstrap/abc", "/bootstrap/abc"),
            "/rotor/bootstrap/abc"
        );
        assert_eq!(prefix_end("/bootstrap/"), "/bootstrap0");
    }
}
