//! kine's SQLite database, read and written directly while nothing serves it: a stopped k3s
//! server's `server/db/state.db` (`--datastore-endpoint sqlite://PATH`), for the commands k3s
//! itself runs with k3s stopped (`certificate rotate`, `rotate-ca`).
//!
//! The records are kine's, by kine's rules (`pkg/logstructured`, `pkg/logstructured/sqllog`,
//! `pkg/drivers/generic`): the table `kine` is a log with one row per write, and a row's `id`
//! is the store's revision after it. A key's value is its row with the highest `id`, unless
//! that row is a delete. A write is a new row:
//!
//! ```text
//!             created deleted create_revision      prev_revision        value  old_value
//! create      1       0       NULL                 the last row or 0    v      that row's value
//! update      0       0       the create's id      the last row's id    v      its value
//! delete      0       1       the create's id      the last row's id    NULL   its value
//! ```
//!
//! The unique index on `(name, prev_revision)` is the compare-and-swap: of two writers that
//! read the same last row, one insert fails. `compact_rev_key` and compaction are left to kine;
//! lease is 0 (no record of rotor's has a TTL). Reads use kine's own query shape (the highest
//! `id` per name in a name range, on kine's `(name, id)` index), so a database holding many
//! unrelated rows is not scanned.
//!
//! A change is one SQLite transaction (`BEGIN IMMEDIATE`): every key of it checked against the
//! revision the command read, then written, or none. The connection keeps SQLite's exclusive
//! locking mode, so it cannot open a database that k3s or kine holds open (SQLite says busy;
//! rotor refuses and says to stop k3s or to use the running kine), and neither can start on it
//! while rotor works. The database is opened through its directory's descriptor
//! ([`crate::fs::Root::descriptor_path`]); SQLite is built in (`rusqlite`, bundled).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::keys::{self, other_physical, physical, physical_prefixes};
use super::{BOOTSTRAP_PREFIX, Datastore, DatastoreError, Op, RECORDS_PREFIX, Snapshot};
use crate::fs::{Kind, Root};

/// How long to wait for a database another process holds before saying so.
const BUSY_WAIT: Duration = Duration::from_secs(2);

/// The columns of kine's table that rotor reads and writes.
const COLUMNS: &[&str] = &[
    "id",
    "name",
    "created",
    "deleted",
    "create_revision",
    "prev_revision",
    "lease",
    "value",
    "old_value",
];

/// An offline kine database: `--datastore-endpoint sqlite://PATH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file (absolute).
    pub sqlite: PathBuf,
}

impl SqliteConfig {
    /// For messages.
    pub fn describe(&self) -> String {
        format!("sqlite {}", self.sqlite.display())
    }
}

/// kine's SQLite database, opened by rotor alone.
pub struct SqliteDatastore {
    conn: Mutex<Connection>,
    config: SqliteConfig,
    /// The directory's descriptor, through which SQLite names the database and its WAL.
    _dir: Root,
}

/// The last row of a name.
struct Last {
    id: i64,
    created: bool,
    deleted: bool,
    create_revision: Option<i64>,
    value: Option<Vec<u8>>,
}

impl Last {
    /// The revision the key was created at (kine stores none on the create row itself).
    fn create_revision(&self) -> i64 {
        if self.created {
            self.id
        } else {
            self.create_revision.unwrap_or(0)
        }
    }
}

/// A write found its key elsewhere than the command read it.
struct Moved {
    key: String,
    expected: i64,
    found: i64,
}

fn last(tx: &Connection, name: &str) -> rusqlite::Result<Option<Last>> {
    tx.query_row(
        "SELECT id, created, deleted, create_revision, value FROM kine \
         WHERE id = (SELECT MAX(id) FROM kine WHERE name = ?1)",
        [name],
        |r| {
            Ok(Last {
                id: r.get(0)?,
                created: r.get::<_, Option<i64>>(1)?.unwrap_or(0) != 0,
                deleted: r.get::<_, Option<i64>>(2)?.unwrap_or(0) != 0,
                create_revision: r.get(3)?,
                value: r.get(4)?,
            })
        },
    )
    .optional()
}

/// The live keys in `[start, end)` with their revision and value, kine's list query.
fn range(tx: &Connection, start: &str, end: &str) -> rusqlite::Result<Vec<(String, u64, Vec<u8>)>> {
    let mut statement = tx.prepare_cached(
        "SELECT kine.name, kine.id, kine.value FROM kine \
         INNER JOIN (SELECT MAX(id) AS id FROM kine WHERE name >= ?1 AND name < ?2 GROUP BY name) \
         AS mkv USING (id) WHERE kine.deleted = 0 ORDER BY kine.name ASC",
    )?;
    let rows = statement.query_map([start, end], |r| {
        Ok((
            r.get::<_, String>(0)?,
            u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
        ))
    })?;
    rows.collect()
}

/// Append a row as kine does; its `id` is the new revision.
fn insert(
    tx: &Connection,
    name: &str,
    (created, deleted): (bool, bool),
    create_revision: Option<i64>,
    prev_revision: i64,
    value: Option<&[u8]>,
) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value) \
         SELECT ?1, ?2, ?3, ?4, ?5, 0, ?6, (SELECT value FROM kine WHERE id = ?5)",
        rusqlite::params![
            name,
            i64::from(created),
            i64::from(deleted),
            create_revision,
            prev_revision,
            value
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Write `value` to `name` (or delete it, `None`) if its live revision is `expect` (0: absent).
fn write(
    tx: &Connection,
    name: &str,
    expect: i64,
    value: Option<&[u8]>,
) -> rusqlite::Result<Result<i64, Moved>> {
    let last = last(tx, name)?;
    let live = last.as_ref().filter(|l| !l.deleted);
    let found = live.map_or(0, |l| l.id);
    if found != expect {
        return Ok(Err(Moved {
            key: name.to_string(),
            expected: expect,
            found,
        }));
    }
    let id = match (live, value) {
        // Nothing to delete.
        (None, None) => return Ok(Ok(0)),
        (None, Some(v)) => insert(
            tx,
            name,
            (true, false),
            None,
            last.map_or(0, |l| l.id),
            Some(v),
        )?,
        (Some(l), Some(v)) => insert(
            tx,
            name,
            (false, false),
            Some(l.create_revision()),
            l.id,
            Some(v),
        )?,
        (Some(l), None) => insert(
            tx,
            name,
            (false, true),
            Some(l.create_revision()),
            l.id,
            None,
        )?,
    };
    Ok(Ok(id))
}

impl SqliteDatastore {
    /// Open the kine database `config` names, for this process alone: refused while k3s or
    /// kine has it open.
    pub fn open(config: &SqliteConfig) -> Result<SqliteDatastore, DatastoreError> {
        let path = &config.sqlite;
        let store = config.describe();
        let corrupt = |reason: String| DatastoreError::Corrupt {
            what: store.clone(),
            reason,
        };
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(corrupt("not a database file path".into()));
        };
        let dir = Root::open_ambient(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?;
        match dir.kind(Path::new(name))? {
            Some(Kind::File) => {}
            Some(_) => return Err(corrupt("not a regular file".into())),
            None => {
                return Err(corrupt(
                    "no such database (kine creates it when k3s first starts)".into(),
                ));
            }
        }
        refuse_live_kine_socket(path, &store)?;
        let sql = |doing: &'static str| {
            let store = store.clone();
            move |e: rusqlite::Error| held_or(&store, doing, e)
        };
        let conn = Connection::open_with_flags(
            dir.descriptor_path(name)?,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("opening the database"))?;
        conn.busy_timeout(BUSY_WAIT)
            .map_err(sql("opening the database"))?;
        // This connection alone from the first transaction on: another process that has the
        // database open makes it busy here.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(sql("opening the database"))?;
        conn.execute_batch("BEGIN IMMEDIATE; SELECT COUNT(*) FROM sqlite_master; COMMIT;")
            .map_err(sql("taking the database"))?;
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('kine')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(sql("reading the schema"))?;
        let missing: Vec<&str> = COLUMNS
            .iter()
            .filter(|c| !columns.iter().any(|have| have == *c))
            .copied()
            .collect();
        if !missing.is_empty() {
            return Err(corrupt(if columns.is_empty() {
                "not a kine database (no table 'kine')".into()
            } else {
                format!("kine's table lacks {}", missing.join(", "))
            }));
        }
        Ok(SqliteDatastore {
            conn: Mutex::new(conn),
            config: config.clone(),
            _dir: dir,
        })
    }

    /// Run `f` in one immediate transaction, committed if it returns `Ok(Ok(_))`.
    fn transaction<T>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<Result<T, Moved>>,
    ) -> Result<Result<T, Moved>, DatastoreError> {
        let sql = |e| held_or(&self.config.describe(), doing, e);
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let result = f(&tx).map_err(sql)?;
        if result.is_ok() {
            tx.commit().map_err(sql)?;
        }
        Ok(result)
    }

    fn conflict(&self, moved: Moved) -> DatastoreError {
        DatastoreError::Conflict {
            what: self.describe(&moved.key),
            expected: u64::try_from(moved.expected).unwrap_or(0),
            found: u64::try_from(moved.found).unwrap_or(0),
        }
    }
}

/// k3s serves its kine on `server/kine.sock` beside `server/db/`: a socket that answers means
/// k3s is running on this database.
fn refuse_live_kine_socket(path: &Path, store: &str) -> Result<(), DatastoreError> {
    let Some(server) = path.parent().and_then(Path::parent) else {
        return Ok(());
    };
    let Ok(server) = Root::open_ambient(if server.as_os_str().is_empty() {
        Path::new(".")
    } else {
        server
    }) else {
        return Ok(());
    };
    if !server.exists(Path::new("kine.sock")) {
        return Ok(());
    }
    let socket = server.descriptor_path("kine.sock")?;
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(DatastoreError::InUse {
            store: store.to_string(),
            by: format!(
                "kine answers on {} (k3s is running)",
                server.display(Path::new("kine.sock")).display()
            ),
        });
    }
    Ok(())
}

/// A SQLite error in rotor's words: busy means another process holds the database.
fn held_or(store: &str, doing: &'static str, e: rusqlite::Error) -> DatastoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        )
    {
        return DatastoreError::InUse {
            store: store.to_string(),
            by: format!(
                "SQLite says it is busy after {} s (k3s or kine has it open)",
                BUSY_WAIT.as_secs()
            ),
        };
    }
    DatastoreError::Unavailable {
        store: store.to_string(),
        doing,
        reason: e.to_string(),
    }
}

impl Datastore for SqliteDatastore {
    fn snapshot(&self, prefix: &str) -> Result<Snapshot, DatastoreError> {
        if prefix != BOOTSTRAP_PREFIX {
            return Err(DatastoreError::BadKey(prefix.to_string()));
        }
        let items = self.transaction("reading the bootstrap records", |tx| {
            let mut items = Vec::new();
            for p in physical_prefixes(prefix) {
                items.extend(range(tx, &p, &keys::prefix_end(&p))?);
            }
            Ok(Ok(items))
        })?;
        let items = items.map_err(|m| self.conflict(m))?;
        keys::assemble(prefix, items, |k| self.describe(k))
    }

    fn commit(&self, base: &Snapshot, ops: &[Op]) -> Result<u64, DatastoreError> {
        for op in ops {
            if !op.key().starts_with(BOOTSTRAP_PREFIX) || op.key().len() <= BOOTSTRAP_PREFIX.len() {
                return Err(DatastoreError::BadKey(op.key().to_string()));
            }
        }
        super::commit_step(self.config.describe())?;
        // Where each record read was, and at which revision.
        let read = |key: &str| -> Option<(String, i64)> {
            let value = base.get(key)?;
            let revision = base.revisions.get(key).copied().unwrap_or(base.revision);
            Some((physical(key, value), i64::try_from(revision).unwrap_or(0)))
        };
        if ops.is_empty() {
            // (No other process can write while this connection holds the database.)
            return super::unchanged_since(self, base, self.config.describe());
        }
        let result = self.transaction("writing the bootstrap records", |tx| {
            let mut revision = 0;
            for op in ops {
                let steps: Vec<(String, i64, Option<&[u8]>)> = match op {
                    Op::Put { key, value } => {
                        let at = physical(key, value);
                        let other = other_physical(key, &at);
                        match read(key) {
                            Some((was, rev)) if was == at => {
                                vec![(at, rev, Some(value.as_slice()))]
                            }
                            Some((was, rev)) => {
                                vec![(at, 0, Some(value.as_slice())), (was, rev, None)]
                            }
                            // Neither key may have appeared since.
                            None => vec![(at, 0, Some(value.as_slice())), (other, 0, None)],
                        }
                    }
                    Op::Delete { key } => match read(key) {
                        Some((was, rev)) => vec![(was, rev, None)],
                        None => {
                            let at = physical(key, b"");
                            let other = other_physical(key, &at);
                            vec![(at, 0, None), (other, 0, None)]
                        }
                    },
                };
                for (key, expect, value) in steps {
                    match write(tx, &key, expect, value)? {
                        Ok(id) => revision = revision.max(id),
                        Err(moved) => return Ok(Err(moved)),
                    }
                }
            }
            Ok(Ok(u64::try_from(revision).unwrap_or(0)))
        })?;
        result.map_err(|m| self.conflict(m))
    }

    fn describe(&self, key: &str) -> String {
        format!("{} key {key}", self.config.describe())
    }

    fn record(&self, key: &str) -> Result<Option<Vec<u8>>, DatastoreError> {
        let key = super::record_key(key)?;
        let found = self.transaction("reading a record", |tx| {
            Ok(Ok(last(tx, key)?
                .filter(|l| !l.deleted)
                .map(|l| l.value.unwrap_or_default())))
        })?;
        Ok(found.ok().flatten())
    }

    fn create_record(&self, key: &str, value: &[u8]) -> Result<bool, DatastoreError> {
        let key = super::record_key(key)?;
        let done = self.transaction("creating a record", |tx| write(tx, key, 0, Some(value)))?;
        Ok(done.is_ok())
    }

    fn swap_record(&self, key: &str, old: &[u8], new: &[u8]) -> Result<bool, DatastoreError> {
        let key = super::record_key(key)?;
        let done = self.transaction("changing a record", |tx| {
            match last(tx, key)?.filter(|l| !l.deleted) {
                Some(l) if l.value.as_deref().unwrap_or_default() == old => {
                    write(tx, key, l.id, Some(new))
                }
                _ => Ok(Err(Moved {
                    key: key.to_string(),
                    expected: 0,
                    found: 0,
                })),
            }
        })?;
        Ok(done.is_ok())
    }

    fn delete_record(&self, key: &str) -> Result<bool, DatastoreError> {
        let key = super::record_key(key)?;
        let done = self.transaction("deleting a record", |tx| {
            match last(tx, key)?.filter(|l| !l.deleted) {
                Some(l) => write(tx, key, l.id, None),
                None => Ok(Err(Moved {
                    key: key.to_string(),
                    expected: 0,
                    found: 0,
                })),
            }
        })?;
        Ok(done.is_ok())
    }

    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, DatastoreError> {
        if !prefix.starts_with(RECORDS_PREFIX) {
            return Err(DatastoreError::BadKey(prefix.to_string()));
        }
        let found = self.transaction("listing records", |tx| {
            Ok(Ok(range(tx, prefix, &keys::prefix_end(prefix))?))
        })?;
        Ok(found
            .map(|items| items.into_iter().map(|(k, _, v)| (k, v)).collect())
            .unwrap_or_default())
    }

    fn clean(&self) -> Result<(), DatastoreError> {
        Ok(())
    }
}
