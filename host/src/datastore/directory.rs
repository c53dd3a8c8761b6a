//! The directory backend: a datastore in a local directory, with the same compare-and-swap
//! rule as a shared one.
//!
//! ```text
//! server/db/                      (kubeadm: datastore/)
//!   .kv/current -> 7              the live revision: one rename switches every key at once
//!   .kv/7/bootstrap/<hash>        one file per key, the record's bytes exactly
//!   bootstrap -> .kv/current/bootstrap   where the records have always been, for readers
//! ```
//!
//! A commit checks that `current` still names the revision the command read, copies that
//! revision to `.kv/.8.partial` with the ops applied, fsyncs it, renames it to `.kv/8`, points a
//! new link at it and renames the link over `current`. The old revision is removed at once: a
//! rotated token must not open any copy of the record. A crash leaves the old revision live, or
//! the new one; what it leaves besides is removed by [`Datastore::clean`].
//!
//! The check-then-switch is not atomic against a second process by itself: writers hold the
//! data dir's exclusive lock, which makes it so. Readers read through one resolved revision.
//!
//! Records outside the bootstrap (`/rotor/records/...`, [`super::RECORDS_PREFIX`]) are files of
//! `records/` beside the revisions, one per key, each replaced atomically (temp file, fsync,
//! rename) under `records/.lock` (an exclusive `flock` held for one record's change only, not
//! the data dir's lock): a server changes them while it runs, from any thread or process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Datastore, DatastoreError, Op, Snapshot};
use crate::fs::{FsError, Kind, NewFile, PRIVATE_FILE, Root, TEMP_MARKER};

const KV: &str = ".kv";
/// Records outside the bootstrap, one file per key.
const RECORDS: &str = "records";
/// Held while one record is changed.
const RECORDS_LOCK: &str = "records/.lock";
/// How long a record change waits for another one.
const RECORDS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
const CURRENT: &str = ".kv/current";
/// The compatibility link for the one prefix rotor uses.
const BOOTSTRAP_LINK: &str = "bootstrap";

/// One file per key below a directory, switched one revision at a time.
pub struct DirectoryDatastore {
    root: Root,
}

impl DirectoryDatastore {
    /// The datastore in `dir`, for reading from outside a data dir (tests, tools). It is not
    /// created: a missing directory is an empty store.
    pub fn open(dir: &Path) -> Result<DirectoryDatastore, DatastoreError> {
        Ok(DirectoryDatastore {
            root: Root::open_ambient(dir)?,
        })
    }

    /// The datastore below an already opened root (`<data-dir>` + `server/db`), created
    /// (mode 0700) if missing.
    pub fn within(parent: &Root, rel: &Path) -> Result<DirectoryDatastore, DatastoreError> {
        parent.create_dir_all(rel)?;
        Ok(DirectoryDatastore {
            root: parent.open_dir(rel)?,
        })
    }

    /// The datastore below `parent` if its directory exists (reading must not create it).
    pub fn existing(
        parent: &Root,
        rel: &Path,
    ) -> Result<Option<DirectoryDatastore>, DatastoreError> {
        match parent.kind(rel)? {
            Some(Kind::Dir) => Ok(Some(DirectoryDatastore {
                root: parent.open_dir(rel)?,
            })),
            Some(_) => Err(DatastoreError::Corrupt {
                what: parent.display(rel).display().to_string(),
                reason: "not a directory".into(),
            }),
            None => Ok(None),
        }
    }

    /// The directory, for permission checks.
    pub fn root(&self) -> &Root {
        &self.root
    }

    fn rel(key: &str) -> Result<PathBuf, DatastoreError> {
        let trimmed = key.trim_start_matches('/');
        let ok = !trimmed.is_empty()
            && trimmed.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && !seg.starts_with('.')
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !ok {
            return Err(DatastoreError::BadKey(key.to_string()));
        }
        Ok(PathBuf::from(trimmed))
    }

    /// Record `key`'s file below the store.
    fn record_rel(key: &str) -> Result<PathBuf, DatastoreError> {
        let key = super::record_key(key)?;
        let rest = key.trim_start_matches(super::RECORDS_PREFIX);
        Ok(Path::new(RECORDS).join(rest))
    }

    /// Run `change` holding the records' lock.
    fn with_records_lock<T>(
        &self,
        change: impl FnOnce() -> Result<T, DatastoreError>,
    ) -> Result<T, DatastoreError> {
        self.root.create_dir_all(Path::new(RECORDS))?;
        let _lock = crate::datadir::DirLock::acquire(
            &self.root,
            Path::new(RECORDS_LOCK),
            crate::datadir::LockMode::Exclusive,
            RECORDS_WAIT,
            "changing a datastore record",
            true,
        )
        .map_err(|e| DatastoreError::Corrupt {
            what: self
                .root
                .display(Path::new(RECORDS_LOCK))
                .display()
                .to_string(),
            reason: e.to_string(),
        })?;
        change()
    }

    fn read_record(&self, rel: &Path) -> Result<Option<Vec<u8>>, DatastoreError> {
        match self.root.read(rel) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write_record(&self, rel: &Path, value: &[u8]) -> Result<(), DatastoreError> {
        if let Some(parent) = rel.parent() {
            self.root.create_dir_all(parent)?;
        }
        self.root.write_atomic(rel, value, PRIVATE_FILE)?;
        Ok(())
    }

    /// The live revision: 0 when nothing was ever committed.
    fn current(&self) -> Result<u64, DatastoreError> {
        match self.root.kind(Path::new(CURRENT))? {
            None => {
                // A store written before revisions existed keeps its records in a real
                // `bootstrap/` directory; rotor no longer reads it in place.
                if self.root.kind(Path::new(BOOTSTRAP_LINK))? == Some(Kind::Dir) {
                    return Err(DatastoreError::Corrupt {
                        what: self.root.display(Path::new(BOOTSTRAP_LINK)).display().to_string(),
                        reason: "a datastore of an earlier rotor (records written in place, no revisions); \
                                 initialize a new data dir with this rotor"
                            .into(),
                    });
                }
                Ok(0)
            }
            Some(Kind::Symlink) => {
                let target = self.root.read_link(Path::new(CURRENT))?;
                target
                    .to_str()
                    .and_then(|t| t.parse::<u64>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| DatastoreError::Corrupt {
                        what: self.root.display(Path::new(CURRENT)).display().to_string(),
                        reason: format!("points at '{}', not a revision", target.display()),
                    })
            }
            Some(_) => Err(DatastoreError::Corrupt {
                what: self.root.display(Path::new(CURRENT)).display().to_string(),
                reason: "not a symlink".into(),
            }),
        }
    }

    fn revision_dir(revision: u64) -> PathBuf {
        Path::new(KV).join(revision.to_string())
    }

    /// Read every key under `prefix` of one revision; `None` when the revision vanished
    /// under a reader (a writer switched and removed it).
    fn read_revision(
        &self,
        revision: u64,
        prefix: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, DatastoreError> {
        let mut entries = BTreeMap::new();
        if revision == 0 {
            return Ok(Some(entries));
        }
        let base = Self::revision_dir(revision);
        let rel_prefix = Self::rel(prefix.trim_end_matches('/'))?;
        let dir = base.join(&rel_prefix);
        let vanished = |e: &FsError| e.is_not_found();
        match self.root.kind(&base) {
            Ok(Some(Kind::Dir)) => {}
            Ok(_) => return Ok(None),
            Err(e) if vanished(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let names = match self.root.list_dir(&dir) {
            Ok(n) => n,
            Err(e) if vanished(&e) => {
                return if self.root.is_dir(&base) {
                    Ok(Some(entries))
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(e.into()),
        };
        for name in names.into_iter().filter(|n| !n.starts_with('.')) {
            match self.root.read(&dir.join(&name)) {
                Ok(v) => {
                    entries.insert(format!("/{}/{name}", rel_prefix.display()), v);
                }
                Err(e) if vanished(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(entries))
    }

    /// Make sure `bootstrap` links to the live revision's records (created once).
    fn ensure_link(&self) -> Result<(), DatastoreError> {
        let target = Path::new(KV).join("current").join(BOOTSTRAP_LINK);
        let link = Path::new(BOOTSTRAP_LINK);
        match self.root.kind(link)? {
            Some(Kind::Symlink) if self.root.read_link(link)? == target => Ok(()),
            Some(Kind::Symlink) | None => Ok(self.root.replace_with_symlink(&target, link)?),
            Some(_) => Err(DatastoreError::Corrupt {
                what: self.root.display(link).display().to_string(),
                reason: "expected rotor's link to the live revision".into(),
            }),
        }
    }
}

impl Datastore for DirectoryDatastore {
    fn snapshot(&self, prefix: &str) -> Result<Snapshot, DatastoreError> {
        // A writer removes the revision it replaced: a reader that lost the race reads again.
        for _ in 0..8 {
            let revision = self.current()?;
            if let Some(entries) = self.read_revision(revision, prefix)? {
                return Ok(Snapshot {
                    revision,
                    entries,
                    ..Snapshot::default()
                });
            }
        }
        Err(DatastoreError::Corrupt {
            what: self.root.path().display().to_string(),
            reason: "the live revision kept changing while it was read".into(),
        })
    }

    fn commit(&self, base: &Snapshot, ops: &[Op]) -> Result<u64, DatastoreError> {
        let expected = base.revision;
        crate::fs::failpoints::step(|| format!("datastore commit {}", self.root.path().display()))
            .map_err(|e| FsError::io(self.root.path().to_path_buf(), e))?;
        let found = self.current()?;
        if found != expected {
            return Err(DatastoreError::Conflict {
                what: self.root.path().display().to_string(),
                expected,
                found,
            });
        }
        if ops.is_empty() {
            return Ok(found);
        }
        let next = found + 1;
        let kv = Path::new(KV);
        self.root.create_dir_all(kv)?;
        let mut files = BTreeMap::new();
        for op in ops {
            let file = match op {
                Op::Put { value, .. } => Some(NewFile {
                    content: value.clone(),
                    mode: PRIVATE_FILE,
                }),
                Op::Delete { .. } => None,
            };
            files.insert(Self::rel(op.key())?, file);
        }
        let live = if found > 0 {
            Some(self.root.open_dir(&Self::revision_dir(found))?)
        } else {
            None
        };
        self.root
            .build_dir(&Self::revision_dir(next), live.as_ref(), &files)?;
        // The switch: one rename of the link. Once the rename is done the commit is made,
        // whatever follows: the new revision is never removed after it.
        let tmp = kv.join(format!(".current{TEMP_MARKER}{}", std::process::id()));
        let _ = self.root.remove_file(&tmp);
        let linked = self
            .root
            .symlink(Path::new(&next.to_string()), &tmp)
            .and_then(|()| self.root.rename(&tmp, Path::new(CURRENT)));
        if let Err(e) = linked {
            let _ = self.root.remove_file(&tmp);
            if self.current().ok() != Some(next) {
                let _ = self.root.remove_dir_all(&Self::revision_dir(next));
            }
            return Err(e.into());
        }
        if let Err(e) = self.root.sync_dir(kv) {
            // Made, but perhaps not durable: report it; the caller finds the change in place.
            return Err(e.into());
        }
        // Committed. What follows is tidying that `clean` redoes under the next lock if it
        // fails here, so it does not turn a committed change into a reported failure.
        let tidy = self.ensure_link().and_then(|()| {
            if found > 0 {
                // A rotated token must not open an older copy of the record.
                self.root.remove_dir_all(&Self::revision_dir(found))?;
            }
            Ok(())
        });
        if let Err(e) = tidy {
            tracing::warn!(
                "datastore committed, but tidying up failed (the next command retries): {e}"
            );
        }
        Ok(next)
    }

    fn describe(&self, key: &str) -> String {
        self.root
            .display(Path::new(key.trim_start_matches('/')))
            .display()
            .to_string()
    }

    fn record(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError> {
        self.read_record(&Self::record_rel(key)?)
    }

    fn create_record(&self, key: &str, value: &[u8]) -> Result<bool, DatastoreError> {
        let rel = Self::record_rel(key)?;
        self.with_records_lock(|| {
            if self.read_record(&rel)?.is_some() {
                return Ok(false);
            }
            self.write_record(&rel, value)?;
            Ok(true)
        })
    }

    fn swap_record(&self, key: &str, old: &[u8], new: &[u8]) -> Result<bool, DatastoreError> {
        let rel = Self::record_rel(key)?;
        self.with_records_lock(|| {
            if self.read_record(&rel)?.as_deref() != Some(old) {
                return Ok(false);
            }
            self.write_record(&rel, new)?;
            Ok(true)
        })
    }

    fn delete_record(&self, key: &str) -> Result<bool, DatastoreError> {
        let rel = Self::record_rel(key)?;
        self.with_records_lock(|| {
            if self.read_record(&rel)?.is_none() {
                return Ok(false);
            }
            self.root.remove_file(&rel)?;
            Ok(true)
        })
    }

    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, DatastoreError> {
        let mut out = Vec::new();
        if self.root.kind(Path::new(RECORDS))? != Some(Kind::Dir) {
            return Ok(out);
        }
        for (path, kind) in self.root.walk(Path::new(RECORDS))? {
            let Ok(rest) = path.strip_prefix(RECORDS) else {
                continue;
            };
            let name = rest.to_string_lossy();
            let hidden = path
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with('.'));
            if kind != Kind::File || hidden || name.contains(TEMP_MARKER) {
                continue;
            }
            let key = format!("{}{name}", super::RECORDS_PREFIX);
            if key.starts_with(prefix)
                && super::record_key(&key).is_ok()
                && let Some(value) = self.read_record(&path)?
            {
                out.push((key, value));
            }
        }
        out.sort();
        Ok(out)
    }

    fn clean(&self) -> Result<(), DatastoreError> {
        let kv = Path::new(KV);
        if self.root.kind(kv)? != Some(Kind::Dir) {
            return Ok(());
        }
        let live = self.current()?;
        if live > 0 && self.root.kind(&Self::revision_dir(live))? != Some(Kind::Dir) {
            // Never delete what might be the only copy left: this needs a person.
            return Err(DatastoreError::Corrupt {
                what: self.root.display(Path::new(CURRENT)).display().to_string(),
                reason: format!(
                    "points at revision {live}, which is missing; nothing was removed (restore the datastore from a backup)"
                ),
            });
        }
        for name in self.root.list_dir(kv)? {
            let keep = name == "current" || name == live.to_string();
            if !keep {
                let p = kv.join(&name);
                if self.root.kind(&p)? == Some(Kind::Dir) {
                    self.root.remove_dir_all(&p)?;
                } else {
                    self.root.remove_file(&p)?;
                }
            }
        }
        for name in self.root.list_dir(Path::new("."))? {
            if name.contains(TEMP_MARKER) {
                self.root.remove_file(Path::new(&name))?;
            }
        }
        if live > 0 {
            self.ensure_link()?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests set up and inspect files directly"
)]
mod tests {
    use super::*;

    #[test]
    fn commits_switch_every_key_at_once_and_check_the_revision() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(tmp.path()).unwrap();
        let store = DirectoryDatastore::within(&root, Path::new("server/db")).unwrap();
        let empty = store.snapshot("/bootstrap/").unwrap();
        assert_eq!(empty.revision, 0);
        assert!(empty.entries.is_empty());

        let at = |revision| Snapshot {
            revision,
            ..Snapshot::default()
        };
        let put = |k: &str, v: &[u8]| Op::Put {
            key: k.into(),
            value: v.to_vec(),
        };
        let r1 = store
            .commit(&at(0), &[put("/bootstrap/aaa", b"one")])
            .unwrap();
        assert_eq!(r1, 1);
        // The record is where it always was, through the link.
        assert_eq!(
            std::fs::read(tmp.path().join("server/db/bootstrap/aaa")).unwrap(),
            b"one"
        );
        // A stale revision is a conflict and changes nothing.
        let err = store
            .commit(&at(0), &[put("/bootstrap/bbb", b"x")])
            .unwrap_err();
        assert!(
            matches!(
                err,
                DatastoreError::Conflict {
                    expected: 0,
                    found: 1,
                    ..
                }
            ),
            "{err}"
        );
        // Put one and delete another in one step; the old revision is gone.
        let r2 = store
            .commit(
                &at(1),
                &[
                    put("/bootstrap/bbb", b"two"),
                    Op::Delete {
                        key: "/bootstrap/aaa".into(),
                    },
                ],
            )
            .unwrap();
        assert_eq!(r2, 2);
        let snap = store.snapshot("/bootstrap/").unwrap();
        assert_eq!(snap.revision, 2);
        assert_eq!(
            snap.entries.keys().cloned().collect::<Vec<_>>(),
            vec!["/bootstrap/bbb".to_string()]
        );
        assert!(!tmp.path().join("server/db/.kv/1").exists());
        // Empty ops only check the revision.
        assert_eq!(store.commit(&at(2), &[]).unwrap(), 2);
        assert!(store.commit(&at(1), &[]).is_err());

        // Debris of a dead writer is cleaned; the live revision stays.
        std::fs::create_dir_all(tmp.path().join("server/db/.kv/.3.partial/bootstrap")).unwrap();
        std::fs::create_dir_all(tmp.path().join("server/db/.kv/9")).unwrap();
        store.clean().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("server/db/.kv"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["2".to_string(), "current".to_string()]);
        assert_eq!(store.snapshot("/bootstrap/").unwrap(), snap);
    }

    #[test]
    fn keys_cannot_escape_or_hide() {
        for bad in [
            "",
            "/",
            "/bootstrap/../x",
            "/bootstrap/.kv",
            "/a//b",
            "/a/b c",
        ] {
            assert!(DirectoryDatastore::rel(bad).is_err(), "{bad}");
        }
    }
}
