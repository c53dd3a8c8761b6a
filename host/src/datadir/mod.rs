//! The write model of a data dir: one writer at a time, every change switched in one step,
//! recovery after any crash.
//!
//! ```text
//! <data-dir>/
//!   .rotor/lock                     flock: writers exclusive, readers shared (lock.rs)
//!   .rotor/current -> generations/7 the live generation; one rename switches everything
//!   .rotor/generations/7/           every file rotor manages, at its usual relative path
//!   .rotor/generations/6/ ...       earlier generations: the backups (--backup-keep)
//!   .rotor/journal.json             a change in flight: staged, maybe in the datastore, not live
//!   server/tls -> ../.rotor/current/server/tls        (a managed directory)
//!   agent/client-kubelet.crt -> ../.rotor/current/agent/client-kubelet.crt   (a managed file)
//! ```
//!
//! This is Kubernetes' `AtomicWriter` (projected volumes) for a whole data dir, plus a
//! journal for the one part that cannot be in the same rename, the datastore (the data
//! dir's own, or etcd). A change is made like this, by [`crate::cluster::Cluster::commit`]:
//!
//! 1. decide everything in memory (the change: files to write or remove, datastore ops);
//! 2. [`DataDir::stage`]: copy the live generation to `generations/.8.partial`, apply the
//!    files, fsync every file and directory, rename it to `generations/8`;
//! 3. [`DataDir::write_journal`]: the intent: from 7 to 8, and what the datastore will hold
//!    (the SHA-256 of each value put, each key deleted, the revision it must still be at);
//! 4. the datastore commit: every write conditioned on what the command read (one step for
//!    the directory backend, one guarded step per key for etcd and kine);
//! 5. [`DataDir::switch`]: a new link renamed over `current`;
//! 6. [`DataDir::complete`]: the visible links, the watchers of generation 7's files told
//!    ([`DataDir::notify_watchers`]), trigger files, journal removed, old generations pruned.
//!
//! Every file a consumer opens belongs to generation 7 or to generation 8, and each generation
//! is consistent; a consumer that opens `x.crt` and then `x.key` resolves `current` twice, so
//! a switch landing between its two opens (once per change, for microseconds) can still hand
//! it one of each, as with any rename-based writer; one that opens the directory once and the
//! files relative to it cannot. rotor's own readers hold the shared lock. After a crash, the next command finds the journal and asks the
//! datastore ([`crate::datastore::Datastore::settle`], which first finishes or undoes a
//! change a shared store holds half of): if it holds what the journal says, the change rolls
//! forward (switch, complete); otherwise it rolls back (the staged generation is removed). Without a journal, anything
//! staged is debris and is removed. The paths consumers open stay where k3s, RKE2 and kubeadm
//! put them; a container that bind-mounts a managed directory keeps the generation it started
//! with until it restarts, which every rotation asks for anyway.

mod lock;

pub use lock::{DirLock, LockError, LockMode, wait_totals};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::datastore::{Intent, IntentOutcome};
use crate::fs::{FsError, Kind, PRIVATE_FILE, Root, TEMP_MARKER};

/// rotor's own directory in a data dir.
pub const META: &str = ".rotor";
const LOCK: &str = "lock";
const CURRENT: &str = "current";
const GENERATIONS: &str = "generations";
const JOURNAL: &str = "journal.json";
const ADOPTED: &str = "adopted";

/// A data dir cannot be used as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// A file of the data dir could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The data dir's lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The data dir's own state (`.rotor`) is damaged.
    #[error("{}: {reason}", .path.display())]
    Corrupt {
        /// The file or directory concerned.
        path: PathBuf,
        /// Why it is not usable.
        reason: String,
    },
    #[error(
        "{}: expected rotor's link into its generations, found a {found}: something other than rotor \
         put it there. rotor does not overwrite it; move it away (its content may be worth keeping) \
         and run the command again",
        .path.display()
    )]
    /// A path rotor manages is not what rotor left there.
    NotOurs {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is there instead (a file, a directory, a foreign link).
        found: &'static str,
    },
}

type Result<T> = std::result::Result<T, DataDirError>;

/// A path rotor manages, seen by consumers through a symlink into the live generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory rotor owns (`server/tls`, kubeadm's `pki`).
    Dir(PathBuf),
    /// A file in a directory rotor shares (`agent/client-kubelet.crt`, `admin.conf`).
    File(PathBuf),
}

impl Entry {
    /// The managed path, relative to the data dir.
    pub fn path(&self) -> &Path {
        match self {
            Entry::Dir(p) | Entry::File(p) => p,
        }
    }

    /// Whether `rel` (a path in a generation) is this entry or below it.
    pub fn covers(&self, rel: &Path) -> bool {
        match self {
            Entry::Dir(p) => rel.starts_with(p),
            Entry::File(p) => rel == p,
        }
    }
}

/// How a command holds a data dir.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to wait for the lock.
    pub lock_timeout: Duration,
    /// Earlier generations kept as backups.
    pub backup_keep: usize,
    /// The command, as `rotor <command>` (recorded in the lock and the journal).
    pub command: String,
    /// How long one request to a shared datastore (etcd) may take.
    pub datastore_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            datastore_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(30),
            backup_keep: 5,
            command: "(library)".into(),
        }
    }
}

pub use crate::fs::NewFile;

/// What one command changes on disk, decided in full before anything is written: each path
/// (relative to the data dir, inside a managed entry) is written, or removed (`None`).
pub type FileChanges = BTreeMap<PathBuf, Option<NewFile>>;

/// The record of a change in flight (`.rotor/journal.json`): present from the moment the new
/// generation is complete until the change is live (or rolled back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    /// Format of the journal file.
    pub format: u32,
    /// The command that made it (`token rotate`).
    pub command: String,
    /// The process that wrote it.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// The live generation it started from (`None` for init).
    pub from: Option<u64>,
    /// The staged generation it switches to.
    pub to: u64,
    /// Real files and directories found at managed paths are taken over (init).
    #[serde(default)]
    pub adopt: bool,
    /// What the datastore commit will do.
    pub datastore: Intent,
    /// Trigger files outside the generations to create once the change is live (RKE2's
    /// `force-restart`): relative to the data dir.
    #[serde(default)]
    pub after: Vec<PathBuf>,
}

/// A data dir held under its lock.
#[derive(Debug)]
pub struct DataDir {
    root: Root,
    meta: Root,
    lock: DirLock,
    live: Option<u64>,
    options: Options,
    /// Whether the last [`DataDir::complete`] told the watchers of the previous generation.
    watchers_told: std::sync::atomic::AtomicBool,
}

/// `depth` times `..`, then `rest`: the relative target of a link at `link` to `rest` (a path
/// from the data dir).
fn link_target(link: &Path, rest: &Path) -> PathBuf {
    let depth = link.components().count().saturating_sub(1);
    let mut t = PathBuf::new();
    for _ in 0..depth {
        t.push("..");
    }
    t.push(rest);
    t
}

fn generation_name(rel: &Path) -> Option<u64> {
    rel.file_name()?.to_str()?.parse().ok()
}

impl DataDir {
    /// Lock `root` for a writer, creating `.rotor` (mode 0700) if needed.
    pub fn lock_exclusive(root: Root, options: Options) -> Result<DataDir> {
        root.create_dir_all(Path::new(META))?;
        let meta = root.open_dir(Path::new(META))?;
        meta.refuse_if_shared(Path::new("."))?;
        let lock = Self::acquire(&meta, LockMode::Exclusive, &options, true)?;
        Self::after_lock(root, meta, lock, options)
    }

    /// Lock `root` for a reader; `None` when rotor never wrote there (no `.rotor`).
    pub fn lock_shared(root: Root, options: Options) -> Result<Option<DataDir>> {
        if root.kind(Path::new(META))? != Some(Kind::Dir) {
            return Ok(None);
        }
        let meta = root.open_dir(Path::new(META))?;
        meta.refuse_if_shared(Path::new("."))?;
        if !meta.exists(Path::new(LOCK)) {
            return Ok(None);
        }
        let lock = Self::acquire(&meta, LockMode::Shared, &options, false)?;
        Self::after_lock(root, meta, lock, options).map(Some)
    }

    fn after_lock(root: Root, meta: Root, lock: DirLock, options: Options) -> Result<DataDir> {
        let mut dir = DataDir {
            root,
            meta,
            lock,
            live: None,
            options,
            watchers_told: std::sync::atomic::AtomicBool::new(true),
        };
        dir.live = dir.read_live()?;
        Ok(dir)
    }

    /// Trade a shared lock for the exclusive one (recovery by a reader). Another writer may
    /// run in between: everything is read again.
    pub fn upgrade(self) -> Result<DataDir> {
        let DataDir {
            root,
            meta,
            lock,
            options,
            ..
        } = self;
        drop(lock);
        let lock = Self::acquire(&meta, LockMode::Exclusive, &options, false)?;
        Self::after_lock(root, meta, lock, options)
    }

    fn acquire(meta: &Root, mode: LockMode, options: &Options, create: bool) -> Result<DirLock> {
        Ok(DirLock::acquire(
            meta,
            Path::new(LOCK),
            mode,
            options.lock_timeout,
            &options.command,
            create,
        )?)
    }

    /// The options this data dir was opened with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// How this data dir is held.
    pub fn lock_mode(&self) -> LockMode {
        self.lock.mode()
    }

    /// The data dir.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The live generation, if any.
    pub fn live(&self) -> Option<u64> {
        self.live
    }

    fn read_live(&self) -> Result<Option<u64>> {
        let link = Path::new(CURRENT);
        match self.meta.kind(link)? {
            None => Ok(None),
            Some(Kind::Symlink) => {
                let target = self.meta.read_link(link)?;
                let n = target
                    .strip_prefix(GENERATIONS)
                    .ok()
                    .and_then(generation_name)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| DataDirError::Corrupt {
                        path: self.meta.display(link),
                        reason: format!("points at '{}', not a generation", target.display()),
                    })?;
                if self.meta.kind(&Self::generation_dir(n))? != Some(Kind::Dir) {
                    return Err(DataDirError::Corrupt {
                        path: self.meta.display(link),
                        reason: format!("its generation {n} is missing"),
                    });
                }
                Ok(Some(n))
            }
            Some(_) => Err(DataDirError::Corrupt {
                path: self.meta.display(link),
                reason: "not a symlink".into(),
            }),
        }
    }

    fn generation_dir(n: u64) -> PathBuf {
        Path::new(GENERATIONS).join(n.to_string())
    }

    /// Where generation `n` is, for messages.
    pub fn generation_path(&self, n: u64) -> PathBuf {
        self.meta.display(&Self::generation_dir(n))
    }

    /// Generation `n` as a root to read from.
    pub fn open_generation(&self, n: u64) -> Result<Root> {
        Ok(self.meta.open_dir(&Self::generation_dir(n))?)
    }

    /// The complete generations there are, oldest first.
    pub fn generations(&self) -> Result<Vec<u64>> {
        let dir = Path::new(GENERATIONS);
        if self.meta.kind(dir)? != Some(Kind::Dir) {
            return Ok(Vec::new());
        }
        let mut out: Vec<u64> = self
            .meta
            .list_dir(dir)?
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The change in flight, if a writer died (or failed) in the middle of one.
    pub fn journal(&self) -> Result<Option<Journal>> {
        let rel = Path::new(JOURNAL);
        match self.meta.read(rel) {
            Ok(bytes) => {
                let j: Journal =
                    serde_json::from_slice(&bytes).map_err(|e| DataDirError::Corrupt {
                        path: self.meta.display(rel),
                        reason: format!("unreadable journal: {e}"),
                    })?;
                if j.format != 1 {
                    return Err(DataDirError::Corrupt {
                        path: self.meta.display(rel),
                        reason: format!("unsupported journal format {}", j.format),
                    });
                }
                Ok(Some(j))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Build the next generation from the live one (or from nothing) with `changes` applied,
    /// complete and durable, under its final name. Returns its number. Every path must be
    /// covered by one of `entries`. On error nothing is left behind.
    pub fn stage(&self, changes: &FileChanges, entries: &[Entry]) -> Result<u64> {
        for rel in changes.keys() {
            let inside = rel.components().all(|c| matches!(c, Component::Normal(_)))
                && entries.iter().any(|e| e.covers(rel));
            if !inside {
                return Err(DataDirError::Corrupt {
                    path: self.root.display(rel),
                    reason: "not a path rotor manages (an internal error: please report it)".into(),
                });
            }
        }
        let gens = Path::new(GENERATIONS);
        self.meta.create_dir_all(gens)?;
        let highest = self
            .meta
            .list_dir(gens)?
            .iter()
            .filter_map(|n| {
                n.trim_start_matches('.')
                    .trim_end_matches(".partial")
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        let to = highest.max(self.live.unwrap_or(0)) + 1;
        let from = match self.live {
            Some(live) => Some(self.open_generation(live)?),
            None => None,
        };
        self.meta
            .build_dir(&Self::generation_dir(to), from.as_ref(), changes)?;
        Ok(to)
    }

    /// Record the change in flight (the commit record of the local side).
    pub fn write_journal(&self, journal: &Journal) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(journal).map_err(|e| DataDirError::Corrupt {
            path: self.meta.display(Path::new(JOURNAL)),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        Ok(self
            .meta
            .write_atomic(Path::new(JOURNAL), &json, PRIVATE_FILE)?)
    }

    /// A journal for a change of this process from the live generation to `to`.
    pub fn new_journal(
        &self,
        to: u64,
        adopt: bool,
        datastore: Intent,
        after: Vec<PathBuf>,
    ) -> Journal {
        Journal {
            format: 1,
            command: self.options.command.clone(),
            pid: std::process::id(),
            started: crate::clock::rfc3339(crate::clock::system_now()),
            from: self.live,
            to,
            adopt,
            datastore,
            after,
        }
    }

    /// Make generation `to` the live one: one rename of the `current` link. Once the rename is
    /// done the switch counts as made ([`DataDir::live`] says `to`), even if the fsync of the
    /// directory that follows fails.
    pub fn switch(&mut self, to: u64) -> Result<()> {
        let target = Self::generation_dir(to);
        if self.meta.kind(&target)? != Some(Kind::Dir) {
            return Err(DataDirError::Corrupt {
                path: self.generation_path(to),
                reason: "the generation to switch to is missing".into(),
            });
        }
        let tmp = PathBuf::from(format!(".{CURRENT}{TEMP_MARKER}{}", std::process::id()));
        if self.meta.kind(&tmp)?.is_some() {
            self.meta.remove_file(&tmp)?;
        }
        self.meta.symlink(&target, &tmp)?;
        if let Err(e) = self.meta.rename(&tmp, Path::new(CURRENT)) {
            let _ = self.meta.remove_file(&tmp);
            return Err(e.into());
        }
        self.live = Some(to);
        self.meta.sync_dir(Path::new("."))?;
        Ok(())
    }

    /// Finish a switched change: links, trigger files, journal removed, old generations
    /// pruned. Returns warnings (pruning that failed is not a failed change).
    pub fn complete(&self, journal: &Journal, entries: &[Entry]) -> Result<Vec<String>> {
        self.ensure_links(entries, journal.adopt)?;
        let mut warnings = Vec::new();
        self.watchers_told
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // The generation this change replaced: every file of it renamed under a second name
        // (it stays the backup, untouched), so that watchers of the paths consumers open hear
        // of the change. One that is about to be pruned (--backup-keep 0) is not: its removal
        // tells them.
        if let Some(from) = journal.from.filter(|f| Some(*f) != self.live)
            && self.options.backup_keep > 0
            && let Err(e) = self.notify_watchers(from)
        {
            self.watchers_told
                .store(false, std::sync::atomic::Ordering::Relaxed);
            warnings.push(format!(
                "could not tell the watchers of the previous generation {} of the change ({e}): a \
                 component that watches its files sees this change when it restarts",
                self.generation_path(from).display()
            ));
        }
        for f in &journal.after {
            if let Some(parent) = f.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.root.create_dir_all(parent)?;
            }
            self.root.write_atomic(f, b"", PRIVATE_FILE)?;
        }
        self.meta.remove_file(Path::new(JOURNAL))?;
        self.meta.sync_dir(Path::new("."))?;
        warnings.extend(self.prune());
        Ok(warnings)
    }

    /// Whether the last [`DataDir::complete`] told the watchers of the previous generation's
    /// files (false when that failed: a component that reloads by itself must then restart).
    pub fn watchers_told(&self) -> bool {
        self.watchers_told
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tell whatever watches a file of generation `n` (no longer live) that it changed, without
    /// touching the generation: each of its files gets a second name in the scratch directory
    /// `generations/.N.notify` (a hard link), which is renamed, then removed.
    ///
    /// Why: a consumer that watches a file it opens with inotify (kube-apiserver's certificate
    /// and CA reloaders, anything on fsnotify) watches the inode the links resolved to, in the
    /// generation that was live when it looked. The switch renames `current`, which touches none
    /// of those inodes. A rename of any name of the inode sends the watch `IN_MOVE_SELF`, on which
    /// such a watcher reads its path again (now the new generation's file) and watches that,
    /// as after Kubernetes' `AtomicWriter` deletes its previous data directory. Renaming a second
    /// name, rather than moving or deleting the files, leaves the previous generation exactly
    /// as it was: it stays the backup, and a container that bind-mounted one of its directories
    /// (a static pod mounting `pki/`, resolved at mount time) keeps reading it until it
    /// restarts, as before. A kill half way leaves extra links in the scratch directory, which
    /// [`DataDir::clean`] removes as debris.
    pub fn notify_watchers(&self, n: u64) -> Result<()> {
        let generation = Self::generation_dir(n);
        if self.meta.kind(&generation)? != Some(Kind::Dir) {
            return Ok(());
        }
        let scratch = Path::new(GENERATIONS).join(format!(".{n}.notify"));
        if self.meta.kind(&scratch)?.is_some() {
            self.meta.remove_dir_all(&scratch)?;
        }
        self.meta.create_dir_unsynced(&scratch)?;
        let files = self
            .meta
            .walk(&generation)?
            .into_iter()
            .filter(|(_, kind)| *kind == Kind::File);
        for (i, (rel, _)) in files.enumerate() {
            self.meta.rename_second_name(
                &rel,
                &scratch.join(i.to_string()),
                &scratch.join(format!("{i}.renamed")),
            )?;
        }
        self.meta.remove_dir_all(&scratch)?;
        Ok(())
    }

    /// Undo a change that is not live. The journal goes first (durably): from then on the
    /// staged generation is debris that [`DataDir::clean`] removes if this is interrupted, so a
    /// rollback stopped half way never leaves a journal beside a half-deleted generation.
    pub fn discard(&self, journal: &Journal) -> Result<()> {
        if Some(journal.to) == self.live {
            return Err(DataDirError::Corrupt {
                path: self.meta.display(Path::new(JOURNAL)),
                reason: "refusing to discard the live generation".into(),
            });
        }
        if self.meta.kind(Path::new(JOURNAL))?.is_some() {
            self.meta.remove_file(Path::new(JOURNAL))?;
            self.meta.sync_dir(Path::new("."))?;
        }
        let staged = Self::generation_dir(journal.to);
        if self.meta.kind(&staged)?.is_some() {
            self.meta.remove_dir_all(&staged)?;
        }
        Ok(())
    }

    /// Remove what writers that died left behind when no change is in flight: partial and
    /// never-switched generations, backups whose pruning stopped half way (`.N.pruned`: one
    /// that still cannot be removed is warned about, never an error), the extra links of a
    /// [`DataDir::notify_watchers`] that stopped half way (`.N.notify`), temporary files and
    /// links. Returns what was removed.
    pub fn clean(&self, entries: &[Entry]) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let gens = Path::new(GENERATIONS);
        if self.meta.kind(gens)? == Some(Kind::Dir) {
            let live = self.live.unwrap_or(0);
            for name in self.meta.list_dir(gens)? {
                let p = gens.join(&name);
                let debris = match name.parse::<u64>() {
                    Ok(n) => n > live,
                    Err(_) => true,
                };
                if !debris {
                    continue;
                }
                let gone = if self.meta.kind(&p)? == Some(Kind::Dir) {
                    self.meta.remove_dir_all(&p)
                } else {
                    self.meta.remove_file(&p)
                };
                match gone {
                    Ok(()) => removed.push(self.meta.display(&p)),
                    // A backup already out of the generations (a prune that stopped half way)
                    // is in nobody's way: one that cannot be removed (an immutable file) is
                    // said, as prune says it, and never fails the command. Anything else
                    // (a never-switched generation) would be, and is an error.
                    Err(e) if name.starts_with('.') && name.ends_with(".pruned") => {
                        tracing::warn!(
                            "could not remove the old backup {}: {e}",
                            self.meta.display(&p).display()
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        dirs.insert(PathBuf::from("."));
        for e in entries {
            if let Some(p) = e.path().parent().filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(p.to_path_buf());
            }
        }
        for d in dirs {
            if self.root.kind(&d)? != Some(Kind::Dir) {
                continue;
            }
            for name in self.root.list_dir(&d)? {
                if name.contains(TEMP_MARKER) {
                    let p = if d == Path::new(".") {
                        PathBuf::from(&name)
                    } else {
                        d.join(&name)
                    };
                    if self.root.kind(&p)? != Some(Kind::Dir) {
                        self.root.remove_file(&p)?;
                        removed.push(self.root.display(&p));
                    }
                }
            }
        }
        for name in self.meta.list_dir(Path::new("."))? {
            if name.contains(TEMP_MARKER) {
                self.meta.remove_file(Path::new(&name))?;
                removed.push(self.meta.display(Path::new(&name)));
            }
        }
        Ok(removed)
    }

    /// Make every entry that the live generation holds visible at its usual path, as a
    /// relative symlink through `.rotor/current`. A symlink elsewhere is replaced; a real file
    /// or directory is taken over only when `adopt` (init, whose generation copied it), and is
    /// otherwise an error naming it.
    pub fn ensure_links(&self, entries: &[Entry], adopt: bool) -> Result<()> {
        let Some(live) = self.live else {
            return Ok(());
        };
        let generation = self.open_generation(live)?;
        for entry in entries {
            let rel = entry.path();
            let target = link_target(rel, &Path::new(META).join(CURRENT).join(rel));
            // The common case, one system call: the link is there and right.
            if self.root.read_link(rel).is_ok_and(|t| t == target) {
                continue;
            }
            if generation.kind(rel)?.is_none() {
                continue;
            }
            match self.root.kind(rel)? {
                Some(Kind::Symlink) if self.root.read_link(rel)? == target => continue,
                Some(Kind::Symlink) | None => {}
                Some(Kind::File)
                    if !adopt
                        && matches!(entry, Entry::File(_))
                        && self.same_as_live(&generation, rel)? => {}
                Some(Kind::File | Kind::Dir) if adopt => {
                    // Kept, not deleted: what was there moves to .rotor/adopted (its content,
                    // or what init made of it, is in the generation).
                    let adopted = Path::new(ADOPTED);
                    self.meta.create_dir_all(adopted)?;
                    let flat = rel.to_string_lossy().replace('/', "_");
                    let mut to = adopted.join(format!("{flat}.{live}"));
                    let mut n = 1;
                    while self.meta.kind(&to)?.is_some() {
                        to = adopted.join(format!("{flat}.{live}.{n}"));
                        n += 1;
                    }
                    self.root.rename(rel, &Path::new(META).join(&to))?;
                    self.meta.sync_dir(adopted)?;
                }
                Some(Kind::File) => {
                    return Err(DataDirError::NotOurs {
                        path: self.root.display(rel),
                        found: "file",
                    });
                }
                Some(Kind::Dir) => {
                    return Err(DataDirError::NotOurs {
                        path: self.root.display(rel),
                        found: "directory",
                    });
                }
            }
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.root.create_dir_all(parent)?;
            }
            self.root.replace_with_symlink(&target, rel)?;
        }
        Ok(())
    }

    fn same_as_live(&self, generation: &Root, rel: &Path) -> Result<bool> {
        Ok(self.root.read(rel)? == generation.read(rel)?)
    }

    /// Remove generations older than the `backup_keep` before the live one. Each is first
    /// renamed out of the generations (`generations/.N.pruned`, durably), then removed: a
    /// removal stopped half way (a kill, a full disk) never leaves a half-deleted backup under
    /// a generation's name, and [`DataDir::clean`] removes the rest at the next command.
    /// Failures are returned as warnings: a backup that cannot be removed (an immutable file)
    /// is no reason to fail a change that is live.
    pub fn prune(&self) -> Vec<String> {
        let Some(live) = self.live else {
            return Vec::new();
        };
        let mut warnings = Vec::new();
        let older: Vec<u64> = match self.generations() {
            Ok(g) => g.into_iter().filter(|n| *n < live).collect(),
            Err(e) => return vec![e.to_string()],
        };
        let drop = older.len().saturating_sub(self.options.backup_keep);
        for n in &older[..drop] {
            let pruned = Path::new(GENERATIONS).join(format!(".{n}.pruned"));
            let moved = self
                .meta
                .rename(&Self::generation_dir(*n), &pruned)
                .and_then(|()| self.meta.sync_dir(Path::new(GENERATIONS)));
            let (what, removed) = match moved {
                Err(e) => (self.generation_path(*n), Err(e)),
                Ok(()) => (
                    self.meta.display(&pruned),
                    self.meta.remove_dir_all(&pruned),
                ),
            };
            if let Err(e) = removed {
                warnings.push(format!(
                    "could not remove the old backup {}: {e}",
                    what.display()
                ));
            }
        }
        warnings
    }

    /// Refuse directories on the way to managed files that others may write to, or that
    /// another user owns: the data dir, `.rotor`, the generations (the live one and one about
    /// to be rolled forward, every directory in them), the real parents of managed entries, and
    /// `extra` (the datastore's directories).
    pub fn check_permissions(
        &self,
        entries: &[Entry],
        staged: Option<u64>,
        extra: &[(&Root, &Path)],
    ) -> Result<()> {
        self.root.refuse_if_shared(Path::new("."))?;
        self.meta.refuse_if_shared(Path::new("."))?;
        if self.meta.kind(Path::new(GENERATIONS))?.is_some() {
            self.meta.refuse_if_shared(Path::new(GENERATIONS))?;
        }
        for n in self.live.into_iter().chain(staged) {
            if self.meta.kind(&Self::generation_dir(n))? != Some(Kind::Dir) {
                continue;
            }
            let generation = self.open_generation(n)?;
            generation.refuse_if_shared(Path::new("."))?;
            for (rel, kind) in generation.walk(Path::new("."))? {
                if kind == Kind::Dir {
                    generation.refuse_if_shared(&rel)?;
                }
            }
        }
        let mut parents: BTreeSet<PathBuf> = BTreeSet::new();
        for e in entries {
            let mut p = e.path().parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                parents.insert(d.to_path_buf());
                p = d.parent();
            }
        }
        for p in parents {
            // A parent that is a symlink is checked where it leads (the root keeps it inside).
            if self.root.kind(&p)?.is_some() {
                self.root.refuse_if_shared(&p)?;
            }
        }
        for (r, rel) in extra {
            if r.kind(rel)?.is_some() {
                r.refuse_if_shared(rel)?;
            }
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

    fn file(s: &str) -> Option<NewFile> {
        Some(NewFile {
            content: s.as_bytes().to_vec(),
            mode: 0o600,
        })
    }

    fn opts() -> Options {
        Options {
            lock_timeout: Duration::ZERO,
            backup_keep: 1,
            command: "test".into(),
            ..Options::default()
        }
    }

    #[test]
    fn a_change_switches_every_managed_path_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(tmp.path()).unwrap();
        let entries = vec![
            Entry::Dir("server/tls".into()),
            Entry::File("agent/a.crt".into()),
        ];
        let mut dir = DataDir::lock_exclusive(root, opts()).unwrap();
        assert_eq!(dir.live(), None);
        let mut changes = FileChanges::new();
        changes.insert("server/tls/x.crt".into(), file("cert-1"));
        changes.insert("server/tls/x.key".into(), file("key-1"));
        changes.insert("agent/a.crt".into(), file("agent-1"));
        let to = dir.stage(&changes, &entries).unwrap();
        let j = dir.new_journal(to, false, Intent::default(), vec![]);
        dir.write_journal(&j).unwrap();
        assert_eq!(dir.journal().unwrap(), Some(j.clone()));
        dir.switch(to).unwrap();
        dir.complete(&j, &entries).unwrap();
        let read = |p: &str| std::fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(read("server/tls/x.crt"), "cert-1");
        assert_eq!(read("agent/a.crt"), "agent-1");
        assert_eq!(
            std::fs::read_link(tmp.path().join("server/tls")).unwrap(),
            Path::new("../.rotor/current/server/tls")
        );

        // The next change: one file replaced, one removed, the rest carried over.
        let mut changes = FileChanges::new();
        changes.insert("server/tls/x.key".into(), file("key-2"));
        changes.insert("server/tls/x.crt".into(), None);
        let to = dir.stage(&changes, &entries).unwrap();
        // Staged but not switched: nothing visible changed.
        assert_eq!(read("server/tls/x.key"), "key-1");
        let j = dir.new_journal(to, false, Intent::default(), vec![]);
        dir.write_journal(&j).unwrap();
        dir.switch(to).unwrap();
        dir.complete(&j, &entries).unwrap();
        assert_eq!(read("server/tls/x.key"), "key-2");
        assert!(!tmp.path().join("server/tls/x.crt").exists());
        assert_eq!(read("agent/a.crt"), "agent-1");
        assert_eq!(dir.journal().unwrap(), None);
        assert_eq!(dir.generations().unwrap(), vec![1, 2]);

        // A path outside the managed entries is refused before anything is written.
        let mut bad = FileChanges::new();
        bad.insert("etc/passwd".into(), file("x"));
        assert!(dir.stage(&bad, &entries).is_err());
        assert!(dir.clean(&entries).unwrap().is_empty());
    }

    /// One change through every step, as `Cluster::commit` makes it.
    fn change(dir: &mut DataDir, entries: &[Entry], files: &[(&str, &str)]) -> Vec<String> {
        let mut changes = FileChanges::new();
        for (p, c) in files {
            changes.insert((*p).into(), file(c));
        }
        let to = dir.stage(&changes, entries).unwrap();
        let j = dir.new_journal(to, false, Intent::default(), vec![]);
        dir.write_journal(&j).unwrap();
        dir.switch(to).unwrap();
        dir.complete(&j, entries).unwrap()
    }

    #[test]
    fn the_watchers_of_the_previous_generation_hear_of_a_change_and_it_stays_as_it_was() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(tmp.path()).unwrap();
        let entries = vec![Entry::Dir("pki".into())];
        let mut dir = DataDir::lock_exclusive(root, opts()).unwrap();
        let gens = tmp.path().join(".rotor/generations");
        change(
            &mut dir,
            &entries,
            &[("pki/ca.crt", "one"), ("pki/etcd/x", "x")],
        );
        let meta = |p: &Path| std::fs::metadata(p).unwrap();
        let watched = meta(&tmp.path().join("pki/ca.crt"));
        let dir_ino = meta(&gens.join("1/pki")).ino();
        // An inotify watch, as kube-apiserver's reloader sets one: on the path's inode.
        let fd = rustix::fs::inotify::init(rustix::fs::inotify::CreateFlags::NONBLOCK).unwrap();
        rustix::fs::inotify::add_watch(
            &fd,
            tmp.path().join("pki/ca.crt"),
            rustix::fs::inotify::WatchFlags::MOVE_SELF,
        )
        .unwrap();
        assert!(change(&mut dir, &entries, &[("pki/ca.crt", "two")]).is_empty());
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut reader = rustix::fs::inotify::Reader::new(&fd, &mut buf);
        let event = reader.next().expect("the watch heard IN_MOVE_SELF");
        assert!(
            event
                .events()
                .contains(rustix::fs::inotify::ReadFlags::MOVE_SELF)
        );
        // Generation 1 is the backup exactly as it was: same inodes, same directory, one link.
        let kept = meta(&gens.join("1/pki/ca.crt"));
        assert_eq!((kept.ino(), kept.nlink()), (watched.ino(), 1));
        assert_eq!(meta(&gens.join("1/pki")).ino(), dir_ino);
        assert_eq!(
            std::fs::read_to_string(gens.join("1/pki/etcd/x")).unwrap(),
            "x"
        );
        assert!(!gens.join(".1.notify").exists());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("pki/ca.crt")).unwrap(),
            "two"
        );
        // What a kill half way leaves (extra links) is debris the next command removes.
        std::fs::create_dir_all(gens.join(".2.notify")).unwrap();
        std::fs::hard_link(gens.join("2/pki/ca.crt"), gens.join(".2.notify/0")).unwrap();
        let removed = dir.clean(&entries).unwrap();
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert_eq!(meta(&gens.join("2/pki/ca.crt")).nlink(), 1);
    }

    #[test]
    fn with_no_backup_kept_the_removal_of_the_previous_generation_tells_the_watchers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(tmp.path()).unwrap();
        let entries = vec![Entry::Dir("pki".into())];
        let options = Options {
            backup_keep: 0,
            ..opts()
        };
        let mut dir = DataDir::lock_exclusive(root, options).unwrap();
        change(&mut dir, &entries, &[("pki/ca.crt", "one")]);
        let fd = rustix::fs::inotify::init(rustix::fs::inotify::CreateFlags::NONBLOCK).unwrap();
        rustix::fs::inotify::add_watch(
            &fd,
            tmp.path().join("pki/ca.crt"),
            rustix::fs::inotify::WatchFlags::DELETE_SELF
                | rustix::fs::inotify::WatchFlags::MOVE_SELF,
        )
        .unwrap();
        assert!(change(&mut dir, &entries, &[("pki/ca.crt", "two")]).is_empty());
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        let mut reader = rustix::fs::inotify::Reader::new(&fd, &mut buf);
        let event = reader.next().expect("the watch heard the removal");
        assert!(
            event
                .events()
                .contains(rustix::fs::inotify::ReadFlags::DELETE_SELF)
        );
        assert!(!tmp.path().join(".rotor/generations/1").exists());
    }

    #[test]
    fn staged_generations_without_a_switch_are_debris() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(tmp.path()).unwrap();
        let entries = vec![Entry::Dir("pki".into())];
        let dir = DataDir::lock_exclusive(root, opts()).unwrap();
        let mut changes = FileChanges::new();
        changes.insert("pki/ca.crt".into(), file("ca"));
        let to = dir.stage(&changes, &entries).unwrap();
        let j = dir.new_journal(to, false, Intent::default(), vec![]);
        dir.write_journal(&j).unwrap();
        dir.discard(&j).unwrap();
        assert_eq!(dir.generations().unwrap(), Vec::<u64>::new());
        dir.stage(&changes, &entries).unwrap();
        std::fs::create_dir_all(tmp.path().join(".rotor/generations/.9.partial/pki")).unwrap();
        let removed = dir.clean(&entries).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(dir.generations().unwrap().is_empty());
    }

    #[test]
    fn real_files_at_managed_paths_are_never_overwritten_silently() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(tmp.path()).unwrap();
        let entries = vec![Entry::Dir("pki".into()), Entry::File("admin.conf".into())];
        std::fs::create_dir(tmp.path().join("pki")).unwrap();
        std::fs::write(tmp.path().join("pki/ca.crt"), "theirs").unwrap();
        let mut dir = DataDir::lock_exclusive(root, opts()).unwrap();
        let mut changes = FileChanges::new();
        changes.insert("pki/ca.crt".into(), file("theirs"));
        changes.insert("admin.conf".into(), file("conf"));
        let to = dir.stage(&changes, &entries).unwrap();
        dir.switch(to).unwrap();
        let err = dir.ensure_links(&entries, false).unwrap_err();
        assert!(matches!(err, DataDirError::NotOurs { .. }), "{err}");
        // Adopting keeps the original beside the generation.
        dir.ensure_links(&entries, true).unwrap();
        assert!(tmp.path().join(".rotor/adopted/pki.1/ca.crt").exists());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("pki/ca.crt")).unwrap(),
            "theirs"
        );
    }
}
