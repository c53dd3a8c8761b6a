//! What a change does to the datastore, as the journal records it, so that the next command
//! can tell whether a change that stopped is in the store, not in it, or half in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Op, Snapshot, value_digest};

/// What the datastore must hold once a change is in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The revision the command read; the commit is conditioned on it.
    pub expected_revision: u64,
    /// Key -> SHA-256 of the value put.
    pub puts: BTreeMap<String, String>,
    /// Every key the datastore will delete.
    pub deletes: Vec<String>,
    /// A shared store that changes one key at a time ([`super::EtcdDatastore`]): its steps, in
    /// order, each guarded by the revision its key must be at. Empty for a store that commits
    /// every op in one step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<KeyStep>,
}

/// One step of a commit to a store that changes one key at a time: the key as the store names
/// it, the revision it must be at (0: absent), and the SHA-256 of the value put (`None`: the
/// key is deleted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStep {
    /// The key in the store.
    pub key: String,
    /// The key's revision when the command read it; 0 when it was absent.
    pub expect: u64,
    /// SHA-256 of the value put, hex; `None` for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub put: Option<String>,
}

/// Whether the datastore holds a journal's change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntentOutcome {
    /// It holds exactly what the change put and deleted (or, for a change without datastore
    /// ops, it is still at the revision the command read).
    Applied,
    /// It is still at the revision the command read: the commit never happened.
    NotApplied,
    /// Someone else changed it and ours is not in it.
    Diverged,
}

impl Intent {
    /// The intent of committing `ops` on `expected_revision`.
    pub fn of(expected_revision: u64, ops: &[Op]) -> Intent {
        let mut intent = Intent {
            expected_revision,
            ..Intent::default()
        };
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    intent.puts.insert(key.clone(), value_digest(value));
                }
                Op::Delete { key } => intent.deletes.push(key.clone()),
            }
        }
        intent
    }

    /// Whether the datastore does not change.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    /// Whether `snapshot` holds this change, the state before it, or something else.
    pub fn outcome(&self, snapshot: &Snapshot) -> IntentOutcome {
        if self.is_empty() {
            return if snapshot.revision == self.expected_revision {
                IntentOutcome::Applied
            } else {
                IntentOutcome::Diverged
            };
        }
        let puts_there = self
            .puts
            .iter()
            .all(|(k, d)| snapshot.get(k).is_some_and(|v| value_digest(v) == *d));
        let deletes_gone = self.deletes.iter().all(|k| snapshot.get(k).is_none());
        if puts_there && deletes_gone {
            IntentOutcome::Applied
        } else if snapshot.revision == self.expected_revision {
            IntentOutcome::NotApplied
        } else {
            IntentOutcome::Diverged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_tell_applied_from_not_applied() {
        let put = Op::Put {
            key: "/bootstrap/a".into(),
            value: b"new".to_vec(),
        };
        let del = Op::Delete {
            key: "/bootstrap/b".into(),
        };
        let intent = Intent::of(3, &[put, del]);
        let mut before = Snapshot {
            revision: 3,
            ..Snapshot::default()
        };
        before
            .entries
            .insert("/bootstrap/b".into(), b"old".to_vec());
        assert_eq!(intent.outcome(&before), IntentOutcome::NotApplied);
        let mut after = Snapshot {
            revision: 4,
            ..Snapshot::default()
        };
        after.entries.insert("/bootstrap/a".into(), b"new".to_vec());
        assert_eq!(intent.outcome(&after), IntentOutcome::Applied);
        let mut other = after.clone();
        other
            .entries
            .insert("/bootstrap/a".into(), b"theirs".to_vec());
        assert_eq!(intent.outcome(&other), IntentOutcome::Diverged);
        let none = Intent::of(4, &[]);
        assert_eq!(none.outcome(&after), IntentOutcome::Applied);
        assert_eq!(none.outcome(&before), IntentOutcome::Diverged);
    }
}
