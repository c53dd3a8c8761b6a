//! Node password bindings, as k3s keeps them: the first request for a node name binds the
//! name to the password it came with (a salted Argon2id hash, in the datastore); a later
//! request for that name with another password is refused ("hash does not match"), on every
//! server sharing the datastore. Of two first requests racing for one name, exactly one binds
//! it (the record is created with a compare-and-swap on its key).
//!
//! The hash is memory-hard on purpose (19 MiB, 2 passes: OWASP's Argon2id minimum) and costs
//! what it costs; a server remembers the passwords it verified (a SHA-256 of each, beside the
//! hash it was checked against), so a node that renews pays the hash once per server, not at
//! every request, and a binding deleted or replaced elsewhere is never taken from memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, SaltString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::datastore::{Datastore, DatastoreError, RECORDS_PREFIX};

/// Where node bindings live in the datastore.
pub const NODES_PREFIX: &str = "/rotor/records/nodes/";

/// Most verified passwords a server remembers.
const CACHE_LIMIT: usize = 200_000;

/// What went wrong binding a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Not a usable node name.
    #[error(
        "node name {0:?} is not a valid node name (lowercase letters, digits, '-' and '.', at most 253)"
    )]
    BadName(String),
    /// The name is bound to another password.
    #[error(
        "node password for {0:?}: hash does not match (the name is bound to another node's password; if this is that node and it lost its password, an operator frees the name with `rotor node delete {0}`)"
    )]
    Mismatch(String),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] DatastoreError),
    /// A record in the datastore is not a node binding.
    #[error("{key}: not a node binding: {reason}")]
    Corrupt {
        /// The record.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A node's binding as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The password's Argon2id hash (PHC string).
    pub hash: String,
    /// When the name was first bound.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// When a certificate was last issued to it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_issued: Option<OffsetDateTime>,
    /// The notAfter of the last certificate of each kind issued to it (`client-kubelet`, ...).
    #[serde(default)]
    pub certificates: BTreeMap<String, String>,
    /// The addresses the node gave when it was bound (and the one it came from): the
    /// evidence its later serving certificates are checked against.
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
}

/// What a node name is bound to, as far as one request is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The name is free: nothing is bound until [`Nodes::bind`] (after the request is approved).
    Free,
    /// The name is bound and the password matches; the addresses bound with it.
    Matches(Vec<std::net::IpAddr>),
}

/// How a request's password was found good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The name was free: it is now bound to this password.
    Created,
    /// The password matches the binding (hashed now).
    Verified,
    /// The password matches the binding this server verified before (no hash needed).
    Remembered,
}

/// The node name k3s would use: lowercase, and a DNS-1123 subdomain.
pub fn node_name(name: &str) -> Result<String, NodeError> {
    let lower = name.to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if lower.is_empty()
        || lower.len() > 253
        || !lower.split('.').all(label_ok)
        || lower.contains(crate::fs::TEMP_MARKER.trim_matches('.'))
    {
        return Err(NodeError::BadName(name.chars().take(80).collect()));
    }
    Ok(lower)
}

/// The datastore key of node `name` (already checked by [`node_name`]).
pub fn node_key(name: &str) -> String {
    format!("{NODES_PREFIX}{name}")
}

/// The bindings of a datastore, with the passwords this server verified.
pub struct Nodes {
    store: Arc<dyn Datastore>,
    /// Node name -> (the hash it was verified against, SHA-256 of the password).
    verified: Mutex<HashMap<String, (String, [u8; 32])>>,
}

/// OWASP's minimum for Argon2id: 19 MiB, 2 passes, 1 lane.
const M_COST: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

fn hasher() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(M_COST, T_COST, P_COST, None).unwrap_or_default();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Argon2's working memory (19 MiB per hash), reused from a small pool. Allocated per hash,
/// it stayed resident: glibc keeps each thread's freed 19 MiB, and 300 joins left each of three
/// servers at about 1 GiB (benches/agents.rs). With the pool a server holds at most
/// [`MEMORY_POOL`] of them, however many nodes join.
static MEMORY: Mutex<Vec<Vec<argon2::Block>>> = Mutex::new(Vec::new());
/// Working memories kept for reuse (hashes run at most two per core at once).
const MEMORY_POOL: usize = 16;

/// The raw Argon2id output of `password` and `salt` into `out`, with pooled working memory.
fn argon2id(password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), argon2::Error> {
    let taken = MEMORY.lock().ok().and_then(|mut pool| pool.pop());
    let mut blocks = taken.unwrap_or_else(|| vec![argon2::Block::default(); M_COST as usize]);
    let result = hasher().hash_password_into_with_memory(password, salt, out, &mut blocks);
    if let Ok(mut pool) = MEMORY.lock()
        && pool.len() < MEMORY_POOL
    {
        pool.push(blocks);
    }
    result
}

/// A fresh Argon2id hash of `password` (random 16-byte salt from aws-lc), as a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`, what the argon2 crate writes).
pub fn hash_password(password: &str) -> Result<String, NodeError> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| NodeError::Corrupt {
        key: what.into(),
        reason: e.to_string(),
    };
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| NodeError::Corrupt {
        key: "salt".into(),
        reason: "the system's random source failed".into(),
    })?;
    let encoded = SaltString::encode_b64(&salt).map_err(|e| corrupt("salt", &e))?;
    let mut out = [0u8; argon2::Params::DEFAULT_OUTPUT_LEN];
    argon2id(password.as_bytes(), &salt, &mut out).map_err(|e| corrupt("hash", &e))?;
    let params =
        argon2::Params::new(M_COST, T_COST, P_COST, None).map_err(|e| corrupt("hash", &e))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(argon2::Version::V0x13.into()),
        params: argon2::password_hash::ParamsString::try_from(&params)
            .map_err(|e| corrupt("hash", &e))?,
        salt: Some(encoded.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&out).map_err(|e| corrupt("hash", &e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` is the one `parsed` (an Argon2id hash with rotor's parameters) was
/// made from; the outputs are compared in constant time.
fn password_matches(parsed: &PasswordHash<'_>, password: &str) -> Result<bool, String> {
    let (Some(salt), Some(stored)) = (parsed.salt, parsed.hash) else {
        return Err("no salt or no hash".into());
    };
    let mut buf = [0u8; 64];
    let salt = salt.decode_b64(&mut buf).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; stored.len()];
    argon2id(password.as_bytes(), salt, &mut out).map_err(|e| e.to_string())?;
    let computed = argon2::password_hash::Output::new(&out).map_err(|e| e.to_string())?;
    Ok(computed == stored)
}

impl Nodes {
    /// The bindings kept in `store`.
    pub fn new(store: Arc<dyn Datastore>) -> Nodes {
        Nodes {
            store,
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn parse(key: &str, bytes: &[u8]) -> Result<NodeRecord, NodeError> {
        serde_json::from_slice(bytes).map_err(|e| NodeError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// Whether `password` may ask for node `name` (already a [`node_name`]): the name is free,
    /// or bound to this password. Nothing is written.
    ///
    /// # Errors
    /// [`NodeError::Mismatch`] when the name is bound to another password; a datastore error.
    pub fn check(&self, name: &str, password: &str) -> Result<Binding, NodeError> {
        let key = node_key(name);
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        match self.store.record(&key)? {
            None => Ok(Binding::Free),
            Some(bytes) => {
                let record = Self::parse(&key, &bytes)?;
                self.verify(name, &record.hash, password, digest)?;
                Ok(Binding::Matches(record.addresses))
            }
        }
    }

    /// Check `password` for node `name` (already a [`node_name`]), binding the name to it and
    /// to `addresses` if it is free.
    ///
    /// # Errors
    /// [`NodeError::Mismatch`] when the name is bound to another password; a datastore error.
    pub fn bind(
        &self,
        name: &str,
        password: &str,
        addresses: &[std::net::IpAddr],
        now: OffsetDateTime,
    ) -> Result<Bound, NodeError> {
        let key = node_key(name);
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        // Two rounds at most: a record created by another server between our read and our
        // create is read again and verified.
        for _ in 0..2 {
            if let Some(bytes) = self.store.record(&key)? {
                let record = Self::parse(&key, &bytes)?;
                return self.verify(name, &record.hash, password, digest);
            }
            let record = NodeRecord {
                hash: hash_password(password)?,
                first_seen: now,
                last_issued: None,
                certificates: BTreeMap::new(),
                addresses: addresses.to_vec(),
            };
            let value = serde_json::to_vec(&record).map_err(|e| NodeError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            if self.store.create_record(&key, &value)? {
                self.remember(name, &record.hash, digest);
                return Ok(Bound::Created);
            }
        }
        Err(NodeError::Corrupt {
            key,
            reason: "created and removed by others while this server bound it; try again".into(),
        })
    }

    fn verify(
        &self,
        name: &str,
        hash: &str,
        password: &str,
        digest: [u8; 32],
    ) -> Result<Bound, NodeError> {
        let remembered = self
            .verified
            .lock()
            .map(|m| m.get(name).is_some_and(|(h, d)| h == hash && *d == digest))
            .unwrap_or(false);
        if remembered {
            return Ok(Bound::Remembered);
        }
        let parsed = PasswordHash::new(hash).map_err(|e| NodeError::Corrupt {
            key: node_key(name),
            reason: e.to_string(),
        })?;
        // Only rotor's own parameters: a record changed to make every check slow (or weak) is
        // refused, not computed.
        let expected = argon2::Params::try_from(&parsed).ok();
        if parsed.algorithm.as_str() != "argon2id"
            || parsed.version != Some(argon2::Version::V0x13.into())
            || expected
                .is_none_or(|p| (p.m_cost(), p.t_cost(), p.p_cost()) != (M_COST, T_COST, P_COST))
        {
            return Err(NodeError::Corrupt {
                key: node_key(name),
                reason: "not an Argon2id hash with rotor's parameters".into(),
            });
        }
        match password_matches(&parsed, password) {
            Ok(true) => {}
            Ok(false) => return Err(NodeError::Mismatch(name.to_string())),
            Err(reason) => {
                return Err(NodeError::Corrupt {
                    key: node_key(name),
                    reason,
                });
            }
        }
        self.remember(name, hash, digest);
        Ok(Bound::Verified)
    }

    fn remember(&self, name: &str, hash: &str, digest: [u8; 32]) {
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= CACHE_LIMIT {
                m.clear();
            }
            m.insert(name.to_string(), (hash.to_string(), digest));
        }
    }

    /// Record that a certificate of `kind` ending at `not_after` was issued to `name` now.
    /// Best effort: a record changed meanwhile by another server is read again (a few times).
    ///
    /// # Errors
    /// A datastore error, or a record that is not a binding.
    pub fn issued(
        &self,
        name: &str,
        kind: &str,
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), NodeError> {
        let key = node_key(name);
        for _ in 0..5 {
            let Some(old) = self.store.record(&key)? else {
                return Ok(());
            };
            let mut record = Self::parse(&key, &old)?;
            record.last_issued = Some(now);
            record
                .certificates
                .insert(kind.to_string(), crate::clock::rfc3339(not_after));
            let new = serde_json::to_vec(&record).map_err(|e| NodeError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            if self.store.swap_record(&key, &old, &new)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Every binding, by node name.
    ///
    /// # Errors
    /// A datastore error, or a record that is not a binding.
    pub fn list(&self) -> Result<Vec<(String, NodeRecord)>, NodeError> {
        self.store
            .records(NODES_PREFIX)?
            .into_iter()
            .map(|(key, value)| {
                let name = key
                    .strip_prefix(NODES_PREFIX)
                    .unwrap_or(key.trim_start_matches(RECORDS_PREFIX))
                    .to_string();
                Self::parse(&key, &value).map(|r| (name, r))
            })
            .collect()
    }

    /// Remove node `name`'s binding, so the name can join again with a new password. `false`
    /// when it had none.
    ///
    /// # Errors
    /// A datastore error.
    pub fn delete(&self, name: &str) -> Result<bool, NodeError> {
        let removed = self.store.delete_record(&node_key(name))?;
        if let Ok(mut m) = self.verified.lock() {
            m.remove(name);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::DirectoryDatastore;

    #[test]
    fn pooled_hashes_are_the_argon2_crates_and_verify_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Made here, checked by the crate's own verifier.
        let ours = hash_password("node-pw").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(hasher().verify_password(b"node-pw", &parsed).is_ok());
        assert!(hasher().verify_password(b"other", &parsed).is_err());
        assert_eq!(password_matches(&parsed, "node-pw"), Ok(true));
        assert_eq!(password_matches(&parsed, "other"), Ok(false));
        // Made by the crate (as bindings stored before the pool were), checked here.
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let theirs = hasher()
            .hash_password(b"node-pw", &salt)
            .unwrap()
            .to_string();
        let parsed = PasswordHash::new(&theirs).unwrap();
        assert_eq!(password_matches(&parsed, "node-pw"), Ok(true));
        assert_eq!(password_matches(&parsed, "node-pW"), Ok(false));
        // Many hashes reuse at most the pool's memories.
        for _ in 0..3 {
            hash_password("x").unwrap();
        }
        assert!(MEMORY.lock().unwrap().len() <= MEMORY_POOL);
    }
    use crate::fs::Root;

    fn nodes() -> (tempfile::TempDir, Nodes) {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(tmp.path()).unwrap();
        let store = DirectoryDatastore::within(&root, std::path::Path::new("db")).unwrap();
        (tmp, Nodes::new(Arc::new(store)))
    }

    const NOW: OffsetDateTime = time::macros::datetime!(2027-01-01 00:00 UTC);

    #[test]
    fn the_first_password_binds_the_name_and_another_is_refused() {
        let (_tmp, nodes) = nodes();
        assert_eq!(nodes.check("a", "pw-a").unwrap(), Binding::Free);
        assert_eq!(nodes.bind("a", "pw-a", &[], NOW).unwrap(), Bound::Created);
        assert!(nodes.check("a", "other").is_err());
        assert_eq!(nodes.check("a", "pw-a").unwrap(), Binding::Matches(vec![]));
        assert_eq!(
            nodes.bind("a", "pw-a", &[], NOW).unwrap(),
            Bound::Remembered
        );
        let err = nodes.bind("a", "other", &[], NOW).unwrap_err();
        assert!(err.to_string().contains("hash does not match"), "{err}");
        // Another server (an empty memory) verifies by the hash.
        let again = Nodes::new(Arc::clone(&nodes.store));
        assert_eq!(again.bind("a", "pw-a", &[], NOW).unwrap(), Bound::Verified);
        assert!(again.bind("a", "other", &[], NOW).is_err());
        // The stored hash is Argon2id, never the password.
        let listed = nodes.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert!(
            listed[0].1.hash.starts_with("$argon2id$"),
            "{:?}",
            listed[0]
        );
        assert!(!listed[0].1.hash.contains("pw-a"));
    }

    #[test]
    fn a_deleted_binding_frees_the_name_even_on_a_server_that_remembers_it() {
        let (_tmp, nodes) = nodes();
        let other = Nodes::new(Arc::clone(&nodes.store));
        nodes.bind("a", "old", &[], NOW).unwrap();
        other.bind("a", "old", &[], NOW).unwrap();
        assert!(nodes.delete("a").unwrap());
        assert!(!nodes.delete("a").unwrap());
        assert_eq!(nodes.bind("a", "new", &[], NOW).unwrap(), Bound::Created);
        // `other` remembered "old" against the old hash: the new binding wins there too.
        assert!(other.bind("a", "old", &[], NOW).is_err());
        assert_eq!(other.bind("a", "new", &[], NOW).unwrap(), Bound::Verified);
    }

    #[test]
    fn issuance_is_recorded_and_names_are_checked() {
        let (_tmp, nodes) = nodes();
        nodes.bind("node-1", "pw", &[], NOW).unwrap();
        nodes
            .issued(
                "node-1",
                "client-kubelet",
                NOW + time::Duration::days(365),
                NOW,
            )
            .unwrap();
        let (_, record) = &nodes.list().unwrap()[0];
        assert_eq!(record.last_issued, Some(NOW));
        assert_eq!(
            record.certificates["client-kubelet"],
            "2028-01-01T00:00:00Z"
        );
        assert_eq!(node_name("Node-1.Example").unwrap(), "node-1.example");
        for bad in ["", "-a", "a_b", "a/b", "..", &"x".repeat(64)] {
            assert!(node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn two_first_requests_racing_bind_the_name_once() {
        let (_tmp, nodes) = nodes();
        let nodes = Arc::new(nodes);
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = Arc::clone(&nodes.store);
                std::thread::spawn(move || {
                    Nodes::new(store)
                        .bind("race", &format!("pw-{i}"), &[], NOW)
                        .is_ok()
                })
            })
            .collect();
        let won: usize = handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum();
        assert_eq!(won, 1, "exactly one password binds the name");
    }
}
