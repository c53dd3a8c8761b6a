//! Capability-limited file access: every read and write below a [`Root`] goes through a cap-std
//! [`Dir`] and cannot leave it.
//!
//! # Ambient authority
//!
//! [`Root::open_ambient`] and [`Root::create_ambient`] are the only functions in rotor that turn
//! a path from the command line or the environment into a directory handle. Everything else
//! takes a [`Root`] and a relative path. Relative paths with `..` or a root are refused before
//! any system call, and cap-std refuses symlinks that resolve outside the root.
//!
//! # Writes
//!
//! [`Root::write_atomic`] writes a temporary file in the target directory, fsyncs it, renames it
//! over the target and fsyncs the directory: after a crash at any point the target is either the
//! old file or the new one, never a torn mix.

use std::fmt;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, OpenOptions, OpenOptionsExt};

/// Mode for private keys and anything secret.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode for certificates and other public files.
pub const PUBLIC_FILE: u32 = 0o644;
/// Mode for every directory rotor creates.
pub const PRIVATE_DIR: u32 = 0o700;

/// Crash and error injection for tests, in every build (`ROTOR_FAILPOINT`).
///
/// Every step that changes the file system (a file written, a rename, a symlink, a removal, a
/// directory fsync) and every datastore commit is counted. `ROTOR_FAILPOINT` selects one:
///
/// - `kill@N`: the process SIGKILLs itself just before step N (as an operator's `kill -9`);
/// - `error@N`: step N fails with ENOSPC, as a full disk would make it fail;
/// - `NAME`: the process SIGKILLs itself at the named point (see [`failpoint`]);
/// - `wait:NAME`: at the named point the process says `rotor: failpoint: waiting at NAME` on
///   standard error and waits until the file `ROTOR_FAILPOINT_RESUME` names exists (at most
///   60 s), so a test can act between two steps (start a second writer, stop a server).
///
/// `ROTOR_FAILPOINT_TRACE=1` prints every step (`rotor: step N: what`) to standard error, so a
/// test can count the steps of a command and then stop it at each one. Release builds keep
/// this: the crash tests run the binary that ships, and reading one variable costs nothing.
pub mod failpoints {
    use std::io;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    enum Spec {
        None,
        KillAt(u64),
        ErrorAt(u64),
        Named(String),
        Wait(String),
    }

    struct Config {
        spec: Spec,
        trace: bool,
    }

    static STEPS: AtomicU64 = AtomicU64::new(0);

    fn config() -> &'static Config {
        static CONFIG: OnceLock<Config> = OnceLock::new();
        CONFIG.get_or_init(|| {
            let spec = match std::env::var("ROTOR_FAILPOINT") {
                Ok(v) if v.starts_with("kill@") => {
                    v[5..].parse().map(Spec::KillAt).unwrap_or(Spec::None)
                }
                Ok(v) if v.starts_with("error@") => {
                    v[6..].parse().map(Spec::ErrorAt).unwrap_or(Spec::None)
                }
                Ok(v) if v.starts_with("wait:") => Spec::Wait(v[5..].to_string()),
                Ok(v) if !v.is_empty() => Spec::Named(v),
                _ => Spec::None,
            };
            let trace = std::env::var_os("ROTOR_FAILPOINT_TRACE").is_some_and(|v| v == "1");
            Config { spec, trace }
        })
    }

    fn kill_self(what: &str) -> ! {
        eprintln!("rotor: failpoint: killed at {what}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; abort if it somehow returned.
        std::process::abort()
    }

    /// Count one step that changes the file system; `what` describes it for traces.
    /// Returns the injected error when the step must fail.
    pub fn step(what: impl FnOnce() -> String) -> io::Result<()> {
        let n = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
        let c = config();
        if matches!(c.spec, Spec::None) && !c.trace {
            return Ok(());
        }
        let what = what();
        if c.trace {
            eprintln!("rotor: step {n}: {what}");
        }
        match c.spec {
            Spec::KillAt(k) if k == n => kill_self(&format!("step {n} ({what})")),
            Spec::ErrorAt(k) if k == n => {
                eprintln!("rotor: failpoint: step {n} ({what}) fails with ENOSPC");
                Err(io::Error::from(rustix::io::Errno::NOSPC))
            }
            _ => Ok(()),
        }
    }

    /// A named point: the process is killed here when `ROTOR_FAILPOINT` names it.
    pub fn named(name: &str) {
        match &config().spec {
            Spec::Named(n) if n == name => kill_self(name),
            Spec::Wait(n) if n == name => wait_here(name),
            _ => {}
        }
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "a test's resume file, named by the environment, only checked for existence"
    )]
    fn wait_here(name: &str) {
        eprintln!("rotor: failpoint: waiting at {name}");
        let Some(resume) = std::env::var_os("ROTOR_FAILPOINT_RESUME") else {
            return;
        };
        let resume = std::path::PathBuf::from(resume);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !resume.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Kill the process here when `ROTOR_FAILPOINT` names this point (see [`failpoints`]).
pub fn failpoint(name: &str) {
    failpoints::named(name);
}

/// An I/O error with the full path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FsError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
    /// The underlying error (its text is already in `message`, so it is not a `source`).
    pub io: Option<io::Error>,
}

impl FsError {
    pub(crate) fn io(path: PathBuf, e: io::Error) -> FsError {
        let message = if e.raw_os_error().is_none() && e.kind() == io::ErrorKind::PermissionDenied {
            // cap-std reports an escape attempt as PermissionDenied without an OS error.
            format!("refused: the path leads outside its directory ({e})")
        } else {
            e.to_string()
        };
        FsError {
            path,
            message,
            io: Some(e),
        }
    }

    fn refused(path: PathBuf, message: impl Into<String>) -> FsError {
        FsError {
            path,
            message: message.into(),
            io: None,
        }
    }

    /// The error is "no such file or directory".
    pub fn is_not_found(&self) -> bool {
        self.io
            .as_ref()
            .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
    }
}

/// Files and directories written for a tree nobody reads yet, made durable together: every
/// fsync is issued at once from several threads, so the file system commits them in a few
/// journal transactions instead of one each (on ext4, about 1 ms of device flush apiece).
#[derive(Debug, Default)]
pub struct Durable {
    pending: Vec<(PathBuf, std::fs::File)>,
}

impl Durable {
    /// An empty set of pending fsyncs.
    pub fn new() -> Durable {
        Durable::default()
    }

    /// Fsync everything written so far. Counted as one step (see [`failpoints`]).
    pub fn sync(&mut self) -> Result<(), FsError> {
        let pending = std::mem::take(&mut self.pending);
        let Some((first, _)) = pending.first() else {
            return Ok(());
        };
        failpoints::step(|| format!("fsync {} files and directories", pending.len()))
            .map_err(|e| FsError::io(first.clone(), e))?;
        const THREADS: usize = 16;
        let chunk = pending.len().div_ceil(THREADS);
        std::thread::scope(|scope| {
            let handles: Vec<_> = pending
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        for (path, file) in part {
                            file.sync_all().map_err(|e| FsError::io(path.clone(), e))?;
                        }
                        Ok::<(), FsError>(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(FsError::refused(first.clone(), "fsync thread panicked"))
                })
            })
        })
    }
}

/// A file to write: its bytes and mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewFile {
    /// The bytes.
    pub content: Vec<u8>,
    /// Unix permissions (`0o600`, `0o644`).
    pub mode: u32,
}

/// What a path is, without following a final symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
}

/// The marker in the names of temporary files and links. Under the data-dir lock, any name
/// holding it belongs to a writer that died, and the next writer removes it.
pub const TEMP_MARKER: &str = ".rotor-tmp-";

/// Count a step (see [`failpoints`]) inside a function that works with `io::Result`.
fn step_io(path: &Path, what: &str) -> io::Result<()> {
    failpoints::step(|| format!("{what} {}", path.display()))
}

/// A temporary name beside `name` for this process.
fn temp_name(name: &str) -> String {
    format!(".{name}{TEMP_MARKER}{}", std::process::id())
}

/// A directory rotor may read (and, if opened for it, write) below, and nothing else.
pub struct Root {
    dir: Dir,
    path: PathBuf,
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root").field("path", &self.path).finish()
    }
}

impl Root {
    /// Open an existing directory named by the user.
    ///
    /// # Ambient authority
    /// This is one of the two places where a path from outside becomes a capability.
    pub fn open_ambient(path: &Path) -> Result<Root, FsError> {
        #[expect(
            clippy::disallowed_methods,
            reason = "the ambient opening of a directory the user named: what makes it a capability"
        )]
        let authority = ambient_authority();
        let dir = Dir::open_ambient_dir(path, authority)
            .map_err(|e| FsError::io(path.to_path_buf(), e))?;
        Ok(Root {
            dir,
            path: path.to_path_buf(),
        })
    }

    /// Open a directory named by the user, creating it (mode 0700) and its parents if needed.
    ///
    /// # Ambient authority
    /// This is one of the two places where a path from outside becomes a capability.
    pub fn create_ambient(path: &Path) -> Result<Root, FsError> {
        #[expect(
            clippy::disallowed_methods,
            reason = "whether a directory the user named exists, before it is a capability"
        )]
        let exists = path.is_dir();
        if !exists {
            failpoints::step(|| format!("mkdir -p {}", path.display()))
                .map_err(|e| FsError::io(path.to_path_buf(), e))?;
        }
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR);
        builder.recursive(true);
        #[expect(
            clippy::disallowed_methods,
            reason = "the ambient creation of a directory the user named, before it is a capability"
        )]
        builder
            .create(path)
            .map_err(|e| FsError::io(path.to_path_buf(), e))?;
        Root::open_ambient(path)
    }

    /// Read a whole file the user named (an input: a CSR, a certificate, a fixture's JSON).
    ///
    /// # Ambient authority
    /// The third place a path from outside is used: one file, opened as the user named it and
    /// read whole. No capability outlives the call.
    pub fn read_ambient_file(path: &Path) -> Result<Vec<u8>, FsError> {
        // Opened as named, symlinks and all: `/dev/stdin`, `<(...)` pipes and links the user
        // chose are inputs too. A single file grants nothing beyond its bytes.
        #[expect(
            clippy::disallowed_methods,
            reason = "the ambient opening of one input file the user named"
        )]
        let file = std::fs::File::open(path);
        let mut bytes = Vec::new();
        file.and_then(|mut f| io::Read::read_to_end(&mut f, &mut bytes))
            .map_err(|e| FsError::io(path.to_path_buf(), e))?;
        Ok(bytes)
    }

    /// Open a file the user named for reading as a stream (a batch read line by line), as
    /// [`Root::read_ambient_file`] does for a whole file: one input, nothing beyond its bytes.
    pub fn open_ambient_file(path: &Path) -> Result<std::fs::File, FsError> {
        #[expect(
            clippy::disallowed_methods,
            reason = "the ambient opening of one input file the user named"
        )]
        let file = std::fs::File::open(path);
        file.map_err(|e| FsError::io(path.to_path_buf(), e))
    }

    /// The directory's absolute path with symlinks resolved, for files that name it to
    /// consumers (k3s's kubeconfigs name their certificate files); as given when it cannot be
    /// resolved.
    pub fn absolute_path(&self) -> PathBuf {
        #[expect(
            clippy::disallowed_methods,
            reason = "a path query for text written into a file, no access"
        )]
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> Result<Root, FsError> {
        Ok(Root {
            dir: self
                .dir
                .try_clone()
                .map_err(|e| FsError::io(self.path.clone(), e))?,
            path: self.path.clone(),
        })
    }

    /// The path this root was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The full path of `rel`, for messages.
    pub fn display(&self, rel: &Path) -> PathBuf {
        if rel == Path::new(".") {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Refuse absolute paths and `..` before touching the file system.
    fn check(&self, rel: &Path) -> Result<(), FsError> {
        if rel.as_os_str().is_empty() {
            return Err(FsError::refused(self.path.clone(), "empty relative path"));
        }
        for c in rel.components() {
            match c {
                Component::Normal(_) | Component::CurDir => {}
                Component::ParentDir => {
                    return Err(FsError::refused(
                        self.display(rel),
                        "refused: '..' is not allowed here",
                    ));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(FsError::refused(
                        rel.to_path_buf(),
                        format!(
                            "refused: must be a path relative to {}",
                            self.path.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Count a step that changes the file system (see [`failpoints`]); an injected error is
    /// reported against `rel`.
    fn step(&self, rel: &Path, what: &str) -> Result<(), FsError> {
        failpoints::step(|| format!("{what} {}", self.display(rel).display()))
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// The whole file `rel`.
    pub fn read(&self, rel: &Path) -> Result<Vec<u8>, FsError> {
        self.check(rel)?;
        self.dir
            .read(rel)
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// The file `name` of this directory (one plain component) as a path, for a library that
    /// only opens files by name (SQLite, and the files it keeps beside a database): through
    /// this directory's open descriptor (`/proc/self/fd/N/name`), so it names a file in the
    /// directory this `Root` opened, whatever the user's path names by then. Valid while this
    /// `Root` lives.
    pub fn descriptor_path(&self, name: &str) -> Result<PathBuf, FsError> {
        let rel = Path::new(name);
        self.check(rel)?;
        if name.contains('/') || name == "." {
            return Err(FsError::refused(self.display(rel), "not a plain file name"));
        }
        use std::os::fd::AsRawFd;
        Ok(PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd())).join(name))
    }

    /// Whether `rel` exists (following a final symlink).
    pub fn exists(&self, rel: &Path) -> bool {
        self.check(rel).is_ok() && self.dir.exists(rel)
    }

    /// What `rel` is, without following a final symlink; `None` when nothing is there.
    pub fn kind(&self, rel: &Path) -> Result<Option<Kind>, FsError> {
        self.check(rel)?;
        match self.dir.symlink_metadata(rel) {
            Ok(m) if m.is_symlink() => Ok(Some(Kind::Symlink)),
            Ok(m) if m.is_dir() => Ok(Some(Kind::Dir)),
            Ok(_) => Ok(Some(Kind::File)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FsError::io(self.display(rel), e)),
        }
    }

    /// The target of the symlink `rel` (a relative path; absolute targets are refused).
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf, FsError> {
        self.check(rel)?;
        self.dir
            .read_link(rel)
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// The same directory, named `path` in messages (a path through a link the user knows,
    /// rather than the directory the link resolves to).
    pub(crate) fn named(mut self, path: PathBuf) -> Root {
        self.path = path;
        self
    }

    /// A sub-directory as its own root.
    pub fn open_dir(&self, rel: &Path) -> Result<Root, FsError> {
        if rel == Path::new(".") {
            return self.try_clone();
        }
        self.check(rel)?;
        let dir = self
            .dir
            .open_dir(rel)
            .map_err(|e| FsError::io(self.display(rel), e))?;
        Ok(Root {
            dir,
            path: self.display(rel),
        })
    }

    /// Create `rel` and its parents with mode 0700, and make the new entries durable (the
    /// parent of every directory created is fsynced).
    pub fn create_dir_all(&self, rel: &Path) -> Result<(), FsError> {
        self.check(rel)?;
        if self.dir.is_dir(rel) {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut p = Some(rel);
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && *d != Path::new(".")) {
            if self.dir.is_dir(d) {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        self.step(rel, "mkdir -p")?;
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(PRIVATE_DIR);
        self.dir
            .create_dir_with(rel, &builder)
            .map_err(|e| FsError::io(self.display(rel), e))?;
        for d in missing.iter().rev() {
            let parent = d
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            self.sync_dir(parent)?;
        }
        Ok(())
    }

    /// Create the directory `rel` (its parent must exist) with mode 0700, without fsyncing its
    /// parent: for a tree being built whose directories a [`Durable`] batch syncs at the end.
    pub fn create_dir_unsynced(&self, rel: &Path) -> Result<(), FsError> {
        self.check(rel)?;
        self.step(rel, "mkdir")?;
        let mut builder = DirBuilder::new();
        builder.mode(PRIVATE_DIR);
        self.dir
            .create_dir_with(rel, &builder)
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// Remove a file or a symlink (not a directory).
    pub fn remove_file(&self, rel: &Path) -> Result<(), FsError> {
        self.check(rel)?;
        self.step(rel, "remove")?;
        self.dir
            .remove_file(rel)
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// Remove a directory and everything below it (symlinks are removed, never followed), one
    /// entry at a time: each removal is a step of its own (see [`failpoints`]), so crash tests
    /// also stop a removal half done.
    pub fn remove_dir_all(&self, rel: &Path) -> Result<(), FsError> {
        self.check(rel)?;
        let entries = self.walk(rel)?;
        for (p, kind) in &entries {
            if *kind != Kind::Dir {
                self.remove_file(p)?;
            }
        }
        for (p, _) in entries.iter().rev().filter(|(_, k)| *k == Kind::Dir) {
            self.step(p, "rmdir")?;
            self.dir
                .remove_dir(p)
                .map_err(|e| FsError::io(self.display(p), e))?;
        }
        self.step(rel, "rmdir")?;
        self.dir
            .remove_dir(rel)
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// Rename `from` to `to`, both below this root; `to` is replaced atomically if it exists
    /// (a file or symlink over a file or symlink, a directory over an empty directory).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<(), FsError> {
        self.check(from)?;
        self.check(to)?;
        self.step(to, &format!("rename {} ->", from.display()))?;
        self.dir
            .rename(from, &self.dir, to)
            .map_err(|e| FsError::io(self.display(to), e))
    }

    /// Send `IN_MOVE_SELF` to whatever watches the file `rel` (an inotify watch is on the
    /// inode) without moving it: a second name for it, `spare` (a hard link), is renamed to
    /// `moved` and removed. `rel` keeps its name and content throughout; what is left after a
    /// crash is an extra link in the scratch directory, nothing more. One step.
    pub fn rename_second_name(
        &self,
        rel: &Path,
        spare: &Path,
        moved: &Path,
    ) -> Result<(), FsError> {
        self.check(rel)?;
        self.check(spare)?;
        self.check(moved)?;
        self.step(rel, "rename a second name of")?;
        self.dir
            .hard_link(rel, &self.dir, spare)
            .map_err(|e| FsError::io(self.display(spare), e))?;
        if let Err(e) = self.dir.rename(spare, &self.dir, moved) {
            let _ = self.dir.remove_file(spare);
            return Err(FsError::io(self.display(moved), e));
        }
        self.dir
            .remove_file(moved)
            .map_err(|e| FsError::io(self.display(moved), e))
    }

    /// Create the symlink `rel` pointing at `target` (a relative path); fails if `rel` exists.
    pub fn symlink(&self, target: &Path, rel: &Path) -> Result<(), FsError> {
        self.check(rel)?;
        self.step(rel, &format!("symlink -> {}:", target.display()))?;
        self.dir
            .symlink(target, rel)
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// Make `rel` a symlink to `target` in one step, replacing a file or symlink already there
    /// (a temporary link renamed over it), then fsync its directory.
    pub fn replace_with_symlink(&self, target: &Path, rel: &Path) -> Result<(), FsError> {
        let (parent, name) = self.split(rel)?;
        let tmp = parent.join(temp_name(&name));
        let _ = self.dir.remove_file(&tmp);
        self.symlink(target, &tmp)?;
        if let Err(e) = self.rename(&tmp, rel) {
            let _ = self.dir.remove_file(&tmp);
            return Err(e);
        }
        self.sync_dir(&parent)
    }

    /// Fsync the directory `rel` (`.` for the root): makes renames and new entries durable.
    pub fn sync_dir(&self, rel: &Path) -> Result<(), FsError> {
        self.step(rel, "fsync dir")?;
        let dir = if rel == Path::new(".") || rel.as_os_str().is_empty() {
            self.dir.open(".")
        } else {
            self.check(rel)?;
            self.dir.open_dir(rel).and_then(|d| d.open("."))
        };
        dir.and_then(|f| f.sync_all())
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// Names in directory `rel` (`.` for the root), sorted.
    pub fn list_dir(&self, rel: &Path) -> Result<Vec<String>, FsError> {
        let entries = if rel == Path::new(".") {
            self.dir.entries()
        } else {
            self.check(rel)?;
            self.dir.read_dir(rel)
        }
        .map_err(|e| FsError::io(self.display(rel), e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| FsError::io(self.display(rel), e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Every entry below `rel` (`.` for the root), sorted, directories before their contents;
    /// symlinks are listed, never followed. Kinds come from the directory listing (no stat per
    /// entry where the file system reports them).
    pub fn walk(&self, rel: &Path) -> Result<Vec<(PathBuf, Kind)>, FsError> {
        let mut out = Vec::new();
        let mut stack = vec![rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = if dir == Path::new(".") {
                self.dir.entries()
            } else {
                self.check(&dir)?;
                self.dir.read_dir(&dir)
            }
            .map_err(|e| FsError::io(self.display(&dir), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| FsError::io(self.display(&dir), e))?;
                let name = entry.file_name();
                let p = if dir == Path::new(".") {
                    PathBuf::from(&name)
                } else {
                    dir.join(&name)
                };
                let ft = entry
                    .file_type()
                    .map_err(|e| FsError::io(self.display(&p), e))?;
                if ft.is_dir() {
                    out.push((p.clone(), Kind::Dir));
                    stack.push(p);
                } else if ft.is_symlink() {
                    out.push((p, Kind::Symlink));
                } else {
                    out.push((p, Kind::File));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Whether `rel` is a directory (not following a final symlink).
    pub fn is_dir(&self, rel: &Path) -> bool {
        self.check(rel).is_ok() && self.dir.symlink_metadata(rel).is_ok_and(|m| m.is_dir())
    }

    /// Modification time of `rel`.
    pub fn modified(&self, rel: &Path) -> Result<std::time::SystemTime, FsError> {
        self.check(rel)?;
        let meta = self
            .dir
            .metadata(rel)
            .map_err(|e| FsError::io(self.display(rel), e))?;
        meta.modified()
            .map(|t| t.into_std())
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// Device and inode of `rel` (`.` for the root): tells whether two paths are one directory.
    pub fn identity(&self, rel: &Path) -> Result<(u64, u64), FsError> {
        use cap_std::fs::MetadataExt;
        let meta = if rel == Path::new(".") {
            self.dir.dir_metadata()
        } else {
            self.check(rel)?;
            self.dir.metadata(rel)
        }
        .map_err(|e| FsError::io(self.display(rel), e))?;
        Ok((meta.dev(), meta.ino()))
    }

    /// The permission bits and owner of `rel` (or of the root itself for `.`), following
    /// symlinks.
    pub fn mode_and_owner(&self, rel: &Path) -> Result<(u32, u32), FsError> {
        use cap_std::fs::{MetadataExt, PermissionsExt};
        let meta = if rel == Path::new(".") {
            self.dir.dir_metadata()
        } else {
            self.check(rel)?;
            self.dir.metadata(rel)
        }
        .map_err(|e| FsError::io(self.display(rel), e))?;
        Ok((meta.permissions().mode() & 0o7777, meta.uid()))
    }

    /// Refuse a directory that users other than its owner may write to: whoever can write
    /// there can swap a key or a certificate under rotor.
    pub fn refuse_if_shared(&self, rel: &Path) -> Result<(), FsError> {
        let (mode, owner) = self.mode_and_owner(rel)?;
        let me = rustix::process::geteuid().as_raw();
        if owner != me && owner != 0 {
            let path = self.display(rel);
            return Err(FsError::refused(
                path.clone(),
                format!(
                    "owned by uid {owner}, neither this user (uid {me}) nor root: that user can replace a \
                     key or a certificate, so rotor refuses to use it; fix it with 'chown {me} {}'",
                    path.display()
                ),
            ));
        }
        if mode & 0o022 != 0 {
            let path = self.display(rel);
            return Err(FsError::refused(
                path.clone(),
                format!(
                    "writable by {} (mode {mode:04o}): anyone who can write here can replace a key or a \
                     certificate, so rotor refuses to use it; fix it with 'chmod go-w {}'",
                    match (mode & 0o020 != 0, mode & 0o002 != 0) {
                        (true, true) => "group and others",
                        (true, false) => "its group",
                        _ => "others",
                    },
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Split `rel` into its parent (`.` for none) and file name.
    fn split(&self, rel: &Path) -> Result<(PathBuf, String), FsError> {
        self.check(rel)?;
        let name = rel
            .file_name()
            .ok_or_else(|| FsError::refused(self.display(rel), "not a file name"))?
            .to_string_lossy()
            .into_owned();
        let parent = rel
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok((parent, name))
    }

    fn parent_dir(&self, parent: &Path) -> Result<Dir, FsError> {
        if parent == Path::new(".") {
            self.dir.try_clone()
        } else {
            self.dir.open_dir(parent)
        }
        .map_err(|e| FsError::io(self.display(parent), e))
    }

    /// Write `bytes` to `rel` atomically with the given mode: temp file, fsync, rename, fsync
    /// of the directory. The parent directory must exist.
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
        let (parent, name) = self.split(rel)?;
        let full = self.display(rel);
        let parent_dir = self.parent_dir(&parent)?;
        let tmp_name = temp_name(&name);
        let tmp = Path::new(&tmp_name);
        // A stale temp file from a crashed run of the same pid is overwritten, never read.
        let _ = parent_dir.remove_file(tmp);
        let result = (|| {
            step_io(&full, "write (temp)")?;
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true).mode(mode);
            let mut file = parent_dir.open_with(tmp, &opts)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            failpoint(&format!("atomic:written:{name}"));
            step_io(&full, "rename over")?;
            parent_dir.rename(tmp, &parent_dir, &name)?;
            failpoint(&format!("atomic:renamed:{name}"));
            step_io(&self.display(&parent), "fsync dir")?;
            parent_dir.open(".")?.sync_all()
        })();
        if let Err(e) = result {
            let _ = parent_dir.remove_file(tmp);
            return Err(FsError::io(full, e));
        }
        Ok(())
    }

    /// Create the new file `rel` (which must not exist) with `bytes`, `mode` and, if given, a
    /// modification time. For files of a directory nobody reads yet (a generation being
    /// built): no temp file and rename; `durable` fsyncs it later, with the rest of the tree.
    pub fn write_new(
        &self,
        rel: &Path,
        bytes: &[u8],
        mode: u32,
        modified: Option<std::time::SystemTime>,
        durable: &mut Durable,
    ) -> Result<(), FsError> {
        self.check(rel)?;
        self.step(rel, "write")?;
        let result = (|| {
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true).mode(mode);
            let mut file = self.dir.open_with(rel, &opts)?;
            file.write_all(bytes)?;
            let file = file.into_std();
            // The mode is exact whatever the umask.
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            if let Some(t) = modified {
                file.set_modified(t)?;
            }
            Ok(file)
        })();
        let file = result.map_err(|e| FsError::io(self.display(rel), e))?;
        durable.pending.push((self.display(rel), file));
        Ok(())
    }

    /// Add the directory `rel` (`.` for the root) to what `durable` fsyncs: its new entries.
    pub fn sync_dir_later(&self, rel: &Path, durable: &mut Durable) -> Result<(), FsError> {
        let dir = if rel == Path::new(".") || rel.as_os_str().is_empty() {
            self.dir.open(".")
        } else {
            self.check(rel)?;
            self.dir.open_dir(rel).and_then(|d| d.open("."))
        };
        let dir = dir.map_err(|e| FsError::io(self.display(rel), e))?;
        durable.pending.push((self.display(rel), dir.into_std()));
        Ok(())
    }

    /// Copy the file `from` of this root to `to` below `dest` (a new file), keeping its mode
    /// and modification time; a symlink is copied as a symlink.
    pub fn copy_into(
        &self,
        from: &Path,
        dest: &Root,
        to: &Path,
        durable: &mut Durable,
    ) -> Result<(), FsError> {
        use cap_std::fs::PermissionsExt;
        self.check(from)?;
        let meta = self
            .dir
            .symlink_metadata(from)
            .map_err(|e| FsError::io(self.display(from), e))?;
        if meta.is_symlink() {
            let target = self
                .dir
                .read_link_contents(from)
                .map_err(|e| FsError::io(self.display(from), e))?;
            return dest.symlink(&target, to);
        }
        let bytes = self.read(from)?;
        let modified = meta.modified().ok().map(|t| t.into_std());
        dest.write_new(
            to,
            &bytes,
            meta.permissions().mode() & 0o7777,
            modified,
            durable,
        )
    }

    /// Build the directory `to` (which must not exist) as a copy of `from` (when given) with
    /// `files` applied: `Some` written with its mode, `None` left out. It is built under the
    /// name `.NAME.partial` beside `to`, every file and directory made durable, then renamed to
    /// `to`: whoever finds `to` finds it complete. On error nothing of it is left behind.
    /// Names holding [`TEMP_MARKER`] are not copied.
    pub fn build_dir(
        &self,
        to: &Path,
        from: Option<&Root>,
        files: &std::collections::BTreeMap<PathBuf, Option<NewFile>>,
    ) -> Result<(), FsError> {
        let (parent, name) = self.split(to)?;
        let partial = parent.join(format!(".{name}.partial"));
        if self.kind(&partial)?.is_some() {
            self.remove_dir_all(&partial)?;
        }
        let result = (|| {
            self.create_dir_all(&partial)?;
            let dest = self.open_dir(&partial)?;
            let mut durable = Durable::new();
            let mut dirs = std::collections::BTreeSet::from([PathBuf::from(".")]);
            if let Some(from) = from {
                for (rel, kind) in from.walk(Path::new("."))? {
                    if rel.to_string_lossy().contains(TEMP_MARKER) {
                        continue;
                    }
                    if kind == Kind::Dir {
                        dest.create_dir_unsynced(&rel)?;
                        dirs.insert(rel);
                    } else if !files.contains_key(&rel) {
                        from.copy_into(&rel, &dest, &rel, &mut durable)?;
                    }
                }
            }
            for (rel, file) in files {
                let Some(file) = file else { continue };
                let ancestors: Vec<&Path> = rel
                    .ancestors()
                    .skip(1)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect();
                for p in ancestors.into_iter().rev() {
                    if dirs.insert(p.to_path_buf()) {
                        dest.create_dir_unsynced(p)?;
                    }
                }
                dest.write_new(rel, &file.content, file.mode, None, &mut durable)?;
            }
            for d in &dirs {
                dest.sync_dir_later(d, &mut durable)?;
            }
            // Every file and directory durable before the tree gets its final name.
            durable.sync()?;
            self.rename(&partial, to)?;
            self.sync_dir(&parent)
        })();
        if let Err(e) = result {
            let _ = self.remove_dir_all(&partial);
            if self.kind(to).ok().flatten().is_some() {
                let _ = self.remove_dir_all(to);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Open `rel` for reading, as a file to read in pieces.
    pub fn open_read(&self, rel: &Path) -> Result<std::fs::File, FsError> {
        self.check(rel)?;
        self.dir
            .open(rel)
            .map(|f| f.into_std())
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// Open `rel` to append to, creating it (with `mode`) when missing: a log. Its current
    /// length comes with it.
    pub fn open_append(&self, rel: &Path, mode: u32) -> Result<(std::fs::File, u64), FsError> {
        self.check(rel)?;
        let mut opts = OpenOptions::new();
        opts.append(true).create(true).mode(mode);
        let file = self
            .dir
            .open_with(rel, &opts)
            .map(|f| f.into_std())
            .map_err(|e| FsError::io(self.display(rel), e))?;
        let len = file
            .metadata()
            .map_err(|e| FsError::io(self.display(rel), e))?
            .len();
        Ok((file, len))
    }

    /// Open (and with `create`, create, mode 0600) a file to hold an advisory lock on, for
    /// writing when `write` (an exclusive `flock` is an `fcntl` write lock on NFS, which needs
    /// a writable descriptor). The lock is the caller's business.
    pub fn open_lock_file(
        &self,
        rel: &Path,
        create: bool,
        write: bool,
    ) -> Result<std::fs::File, FsError> {
        self.check(rel)?;
        let mut opts = OpenOptions::new();
        opts.read(true);
        if write || create {
            opts.write(true);
        }
        if create {
            opts.create(true).mode(PRIVATE_FILE);
        }
        self.dir
            .open_with(rel, &opts)
            .map(|f| f.into_std())
            .map_err(|e| FsError::io(self.display(rel), e))
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
    fn writes_are_atomic_private_and_confined() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(&tmp.path().join("data")).unwrap();
        root.create_dir_all(Path::new("server/tls")).unwrap();
        root.write_atomic(Path::new("server/tls/a.key"), b"secret", PRIVATE_FILE)
            .unwrap();
        assert_eq!(root.read(Path::new("server/tls/a.key")).unwrap(), b"secret");
        let (mode, _) = root.mode_and_owner(Path::new("server/tls/a.key")).unwrap();
        assert_eq!(mode, 0o600);
        let (mode, _) = root.mode_and_owner(Path::new("server/tls")).unwrap();
        assert_eq!(mode, 0o700);
        // Overwrite keeps no temp file behind.
        root.write_atomic(Path::new("server/tls/a.key"), b"new", PRIVATE_FILE)
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("data/server/tls"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["a.key".to_string()]);

        let err = root.read(Path::new("../x")).unwrap_err();
        assert!(err.to_string().contains("'..' is not allowed"), "{err}");
        let err = root.read(Path::new("/etc/passwd")).unwrap_err();
        assert!(
            err.to_string().contains("must be a path relative to"),
            "{err}"
        );

        // A symlink pointing outside is refused by cap-std.
        std::fs::write(tmp.path().join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), tmp.path().join("data/link"))
            .unwrap();
        let err = root.read(Path::new("link")).unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        let err = root.write_atomic(Path::new("link"), b"y", PUBLIC_FILE);
        // Writing replaces the link itself (rename), never the file outside.
        assert!(err.is_ok());
        assert_eq!(std::fs::read(tmp.path().join("outside")).unwrap(), b"x");
    }
}
