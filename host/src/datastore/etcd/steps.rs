//! A commit as single-key steps in the shapes kine accepts, and how a commit that failed or
//! stopped half way is settled (see the module docs of `etcd`).

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::EtcdDatastore;
use crate::datastore::keys::physical;
use crate::datastore::{
    BOOTSTRAP_PREFIX, Datastore, DatastoreError, Intent, IntentOutcome, KeyStep, Op, Snapshot,
    value_digest,
};

const WRITING: &str = "writing the bootstrap records";
const SETTLING: &str = "settling an interrupted write";

/// One step of a commit: a key of etcd, the mod revision it must be at (0: absent), the value
/// put (`None`: deleted) and the value it held (to undo the step).
pub(super) struct Step {
    key: String,
    expect: i64,
    put: Option<Vec<u8>>,
    old: Option<Vec<u8>>,
}

impl Step {
    /// What the journal keeps of it: no value, only its digest.
    pub(super) fn journaled(&self) -> KeyStep {
        KeyStep {
            key: self.key.clone(),
            expect: u64::try_from(self.expect).unwrap_or(0),
            put: self.put.as_deref().map(value_digest),
        }
    }
}

/// The steps that apply `ops` to `base`: every put, then every delete. A record that changes
/// format moves to its other key: created there, then deleted where it was.
pub(super) fn plan(base: &Snapshot, ops: &[Op]) -> Result<Vec<Step>, DatastoreError> {
    let found = |key: &str| -> Result<Option<(String, i64, Vec<u8>)>, DatastoreError> {
        let Some(value) = base.get(key) else {
            return Ok(None);
        };
        let revision = base
            .revisions
            .get(key)
            .and_then(|r| i64::try_from(*r).ok())
            .filter(|r| *r > 0)
            .ok_or_else(|| DatastoreError::Corrupt {
                what: key.to_string(),
                reason: "the snapshot this commit is based on has no revision for it".into(),
            })?;
        Ok(Some((physical(key, value), revision, value.to_vec())))
    };
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for op in ops {
        EtcdDatastore::check_key(op.key())?;
        match op {
            Op::Put { key, value } => {
                let at = physical(key, value);
                let put = Some(value.clone());
                match found(key)? {
                    Some((was, expect, old)) if was == at => puts.push(Step {
                        key: at,
                        expect,
                        put,
                        old: Some(old),
                    }),
                    Some((was, expect, old)) => {
                        puts.push(Step {
                            key: at,
                            expect: 0,
                            put,
                            old: None,
                        });
                        deletes.push(Step {
                            key: was,
                            expect,
                            put: None,
                            old: Some(old),
                        });
                    }
                    None => puts.push(Step {
                        key: at,
                        expect: 0,
                        put,
                        old: None,
                    }),
                }
            }
            Op::Delete { key } => {
                if let Some((was, expect, old)) = found(key)? {
                    deletes.push(Step {
                        key: was,
                        expect,
                        put: None,
                        old: Some(old),
                    });
                }
            }
        }
    }
    puts.extend(deletes);
    Ok(puts)
}

/// Where a journaled step's key is now.
enum State {
    /// It holds what the step put, or is gone if the step deleted it.
    Done,
    /// Still at the revision the step expected (absent for a create): the step may be in
    /// flight. The value it holds, if any.
    Pending(Option<Vec<u8>>),
    /// Another writer changed it.
    Diverged,
}

fn state(step: &KeyStep, now: Option<&(Vec<u8>, i64)>) -> State {
    let expect = i64::try_from(step.expect).unwrap_or(-1);
    match (&step.put, now) {
        (Some(digest), Some((value, _))) if value_digest(value) == *digest => State::Done,
        (None, None) => State::Done,
        (_, Some((value, revision))) if *revision == expect => State::Pending(Some(value.clone())),
        (Some(_), None) if expect == 0 => State::Pending(None),
        _ => State::Diverged,
    }
}

impl EtcdDatastore {
    /// Write `key` (`put`, or delete it) if its mod revision is still `at` (0: absent), in one
    /// of kine's shapes: the revision written, or `None` when the key was elsewhere.
    fn apply(
        &self,
        key: &str,
        at: i64,
        put: Option<&[u8]>,
        doing: &'static str,
    ) -> Result<Option<i64>, DatastoreError> {
        let guard = Compare::mod_revision(key, CompareOp::Equal, at);
        let txn = match put {
            // kine's create: the compare and the put, nothing on failure.
            Some(value) if at == 0 => {
                Txn::new()
                    .when([guard])
                    .and_then([TxnOp::put(key, value.to_vec(), None)])
            }
            Some(value) => Txn::new()
                .when([guard])
                .and_then([TxnOp::put(key, value.to_vec(), None)])
                .or_else([TxnOp::get(key, None)]),
            // Nothing to delete.
            None if at == 0 => return Ok(Some(0)),
            None => Txn::new()
                .when([guard])
                .and_then([TxnOp::delete(key, None)])
                .or_else([TxnOp::get(key, None)]),
        };
        self.txn(doing, txn)
    }

    pub(super) fn commit_steps(&self, base: &Snapshot, ops: &[Op]) -> Result<u64, DatastoreError> {
        let steps = plan(base, ops)?;
        crate::datastore::commit_step(self.config.describe())?;
        if steps.is_empty() {
            return crate::datastore::unchanged_since(self, base, self.config.describe());
        }
        let mut done: Vec<(&Step, i64)> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            if i > 0 {
                crate::fs::failpoint("datastore:between-steps");
            }
            match self.apply(&step.key, step.expect, step.put.as_deref(), WRITING)? {
                Some(revision) => done.push((step, revision)),
                None => {
                    // Another writer changed this key since the snapshot: undo ours.
                    self.undo(&done);
                    let found = self
                        .read_at(&step.key, WRITING)
                        .ok()
                        .flatten()
                        .map_or(0, |(_, r)| u64::try_from(r).unwrap_or(0));
                    return Err(DatastoreError::Conflict {
                        what: self.describe(&step.key),
                        expected: u64::try_from(step.expect).unwrap_or(0),
                        found,
                    });
                }
            }
        }
        Ok(done
            .last()
            .map_or(base.revision, |(_, r)| u64::try_from(*r).unwrap_or(0)))
    }

    /// Undo steps made by this commit, last first, each at the revision it wrote: a created
    /// key deleted, a replaced one given its old value back, a deleted one created again.
    /// A key another writer changed since is theirs and stays.
    fn undo(&self, done: &[(&Step, i64)]) {
        for (step, revision) in done.iter().rev() {
            let undone = match (&step.put, &step.old) {
                (Some(_), None) => self.apply(&step.key, *revision, None, WRITING),
                (Some(_), Some(old)) => self.apply(&step.key, *revision, Some(old), WRITING),
                (None, Some(old)) => self.apply(&step.key, 0, Some(old), WRITING),
                (None, None) => continue,
            };
            match undone {
                Ok(Some(_)) => {}
                Ok(None) => tracing::warn!(
                    "undoing a write to {}: another server changed it since; it keeps theirs",
                    step.key
                ),
                Err(e) => tracing::warn!("undoing a write to {} failed: {e}", step.key),
            }
        }
    }

    pub(super) fn settle_steps(&self, intent: &Intent) -> Result<IntentOutcome, DatastoreError> {
        if intent.steps.is_empty() {
            return Ok(intent.outcome(&self.snapshot(BOOTSTRAP_PREFIX)?));
        }
        // Each round reads every key; a write lost to another writer starts a new round.
        'round: for _ in 0..5 {
            let mut states = Vec::new();
            for step in &intent.steps {
                let now = self.read_at(&step.key, SETTLING)?;
                states.push(state(step, now.as_ref()));
            }
            if states.iter().all(|s| matches!(s, State::Done)) {
                return Ok(IntentOutcome::Applied);
            }
            let diverged = states.iter().any(|s| matches!(s, State::Diverged));
            let any_done = states.iter().any(|s| matches!(s, State::Done));
            let pending_put = intent
                .steps
                .iter()
                .zip(&states)
                .any(|(step, s)| step.put.is_some() && matches!(s, State::Pending(_)));
            if diverged || (any_done && pending_put) {
                // Another writer changed a key this change needs (or, never with rotor's op
                // order, a put is left that the journal has no value for): undo what it made.
                self.undo_created(intent, &states);
                return Ok(IntentOutcome::Diverged);
            }
            for (step, s) in intent.steps.iter().zip(&states) {
                let State::Pending(value) = s else {
                    continue;
                };
                let expect = i64::try_from(step.expect).unwrap_or(0);
                let wrote = if any_done {
                    // Half made, only deletes left: finish them. The delete at the revision
                    // expected is its own fence (the request in flight is the same one).
                    self.apply(&step.key, expect, None, SETTLING)?
                } else if let Some(value) = value {
                    // Nothing made: fence each key off by writing back its own value, so a
                    // request in flight fails its compare afterwards.
                    self.apply(&step.key, expect, Some(value), SETTLING)?
                } else {
                    // A create cannot be fenced without writing the record (see the docs).
                    Some(0)
                };
                if wrote.is_none() {
                    continue 'round;
                }
            }
            return Ok(if any_done {
                IntentOutcome::Applied
            } else {
                IntentOutcome::NotApplied
            });
        }
        Err(DatastoreError::Unavailable {
            store: self.config.describe(),
            doing: SETTLING,
            reason: "its keys kept changing under other writers".into(),
        })
    }

    /// Delete the keys this change created that still hold its value. (A replaced or deleted
    /// key cannot be given back: the journal keeps no values. With rotor's op order, a change
    /// that another writer overtook made at most the create of its put.)
    fn undo_created(&self, intent: &Intent, states: &[State]) {
        for (step, s) in intent.steps.iter().zip(states) {
            if !matches!(s, State::Done) || step.expect != 0 || step.put.is_none() {
                continue;
            }
            let removed = match self.read_at(&step.key, SETTLING) {
                Ok(Some((value, revision)))
                    if Some(value_digest(&value)) == step.put
                        && self.apply(&step.key, revision, None, SETTLING).is_ok() =>
                {
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!("undoing the create of {} failed: {e}", step.key);
            }
        }
    }
}
