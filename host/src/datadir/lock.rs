//! One writer per data dir: an advisory `flock(2)` on `.rotor/lock`.
//!
//! Writers take it exclusive, readers shared, for the whole command, so a reader never sees a
//! change half made and two writers never interleave. The kernel releases it when its holder
//! dies, whatever the signal, so a crash never leaves the data dir locked. A command that
//! finds it taken waits a bounded time, then fails naming the holder: the pid and command line
//! of every process holding it (from `/proc/locks`), or the record the last writer left in the
//! file when `/proc` cannot tell.
//!
//! On NFS, Linux emulates `flock` with whole-file `fcntl` locks, so the lock still excludes
//! writers on other NFS clients; keep data dirs on local disks all the same.

use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fs::{FsError, Root};

/// Size of the holder record in the lock file (padded with spaces).
const RECORD_LEN: usize = 512;

/// How a command holds the data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Readers: any number at once, never beside a writer.
    Shared,
    /// A writer: alone.
    Exclusive,
}

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock file could not be opened.
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "{}: the data dir is locked by {holder}; gave up after {waited_s} s ({}). \
         Wait for it to finish, or stop it; the kernel releases the lock when it exits",
        .path.display(),
        crate::input::Input::LockTimeout
    )]
    /// Another command held the lock for longer than this one would wait.
    Timeout {
        /// The file or directory concerned.
        path: PathBuf,
        /// Who holds the lock (pid and command line), as far as the system tells.
        holder: String,
        /// How long this command waited, in seconds.
        waited_s: u64,
    },
    /// The lock call failed.
    #[error("{}: cannot lock: {source}", .path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

static WAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static WAITED_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times this process waited for a lock another process held (whether it got it or
/// gave up), and for how long in all (`rotor serve` exports both).
pub fn wait_totals() -> (u64, Duration) {
    use std::sync::atomic::Ordering::Relaxed;
    (
        WAITS.load(Relaxed),
        Duration::from_nanos(WAITED_NANOS.load(Relaxed)),
    )
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DirLock {
    file: std::fs::File,
    mode: LockMode,
    path: PathBuf,
}

impl DirLock {
    /// Take the lock on `rel` below `root` (the file is created if `create`), waiting at most
    /// `timeout`. `command` is recorded for others to read while an exclusive lock is held.
    pub fn acquire(
        root: &Root,
        rel: &Path,
        mode: LockMode,
        timeout: Duration,
        command: &str,
        create: bool,
    ) -> Result<DirLock, LockError> {
        let file = root.open_lock_file(rel, create, mode == LockMode::Exclusive)?;
        let path = root.display(rel);
        let started = Instant::now();
        let mut announced = false;
        let mut pause = Duration::from_millis(5);
        loop {
            let attempt = match mode {
                LockMode::Shared => file.try_lock_shared(),
                LockMode::Exclusive => file.try_lock(),
            };
            match attempt {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(LockError::Io { path, source });
                }
            }
            let waited = started.elapsed();
            if waited >= timeout {
                use std::sync::atomic::Ordering::Relaxed;
                WAITS.fetch_add(1, Relaxed);
                let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
                WAITED_NANOS.fetch_add(nanos, Relaxed);
                return Err(LockError::Timeout {
                    holder: holders(&file, &path),
                    path,
                    waited_s: waited.as_secs_f64().round() as u64,
                });
            }
            if !announced {
                announced = true;
                crate::say!(
                    "rotor: waiting up to {} s for {} (locked by {})",
                    timeout.as_secs(),
                    path.display(),
                    holders(&file, &path)
                );
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        if announced {
            use std::sync::atomic::Ordering::Relaxed;
            WAITS.fetch_add(1, Relaxed);
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            WAITED_NANOS.fetch_add(nanos, Relaxed);
        }
        let lock = DirLock { file, mode, path };
        if mode == LockMode::Exclusive {
            // Informational only (for `holders` when /proc cannot tell): not synced, and
            // written over the previous record at a fixed size (no truncation, which costs a
            // journal transaction on ext4).
            let mut record = format!(
                "pid {}\ncommand rotor {command}\nsince {}\n",
                std::process::id(),
                crate::clock::rfc3339(crate::clock::system_now())
            )
            .into_bytes();
            record.resize(RECORD_LEN.max(record.len()), b' ');
            let _ = std::os::unix::fs::FileExt::write_all_at(&lock.file, &record, 0);
        }
        tracing::debug!("locked {} ({:?})", lock.path.display(), lock.mode);
        Ok(lock)
    }

    /// Shared or exclusive.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Who holds the lock on `file`: every pid `/proc/locks` lists for its inode, with its command
/// line (secrets redacted), or the last writer's record.
fn holders(file: &std::fs::File, path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let from_proc = (|| -> Option<Vec<String>> {
        let meta = file.metadata().ok()?;
        let dev = meta.dev();
        let id = format!(
            "{:02x}:{:02x}:{}",
            rustix::fs::major(dev),
            rustix::fs::minor(dev),
            meta.ino()
        );
        let proc = Root::open_ambient(Path::new("/proc")).ok()?;
        let locks = String::from_utf8(proc.read(Path::new("locks")).ok()?).ok()?;
        let mut out = Vec::new();
        for line in locks.lines().filter(|l| !l.contains("->")) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 6 && f[1] == "FLOCK" && f[5] == id {
                let kind = if f[3] == "WRITE" { "writer" } else { "reader" };
                let pid = f[4];
                let cmd = proc
                    .read(&Path::new(pid).join("cmdline"))
                    .map(|c| redacted_command_line(&c))
                    .unwrap_or_else(|_| "?".into());
                out.push(format!("pid {pid} ({kind}: {cmd})"));
            }
        }
        (!out.is_empty()).then_some(out)
    })();
    if let Some(list) = from_proc {
        return list.join(", ");
    }
    let mut record = String::new();
    let mut f = file;
    if f.rewind().is_ok() && f.read_to_string(&mut record).is_ok() && !record.trim().is_empty() {
        return format!(
            "the last writer recorded: {}",
            record.trim().replace('\n', ", ")
        );
    }
    format!("another process (see 'fuser {}')", path.display())
}

/// A NUL-separated command line, with the values of token flags hidden.
fn redacted_command_line(raw: &[u8]) -> String {
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".to_string());
            hide_next = false;
        } else if a.contains("token") && a.starts_with("--") {
            match a.split_once('=') {
                Some((flag, _)) => out.push(format!("{flag}=***")),
                None => {
                    hide_next = true;
                    out.push(a);
                }
            }
        } else if a.starts_with("K10") {
            out.push("***".to_string());
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_values_never_appear_in_holder_descriptions() {
        let raw = b"rotor\0--data-dir\0d\0token\0rotate\0--new-token\0secret\0--token=K10abc::server:pw\0";
        let s = redacted_command_line(raw);
        assert_eq!(
            s,
            "rotor --data-dir d token rotate --new-token *** --token=***"
        );
        assert!(!s.contains("secret") && !s.contains("pw"));
    }

    #[test]
    fn a_second_writer_waits_then_names_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Root::create_ambient(tmp.path()).unwrap();
        let rel = Path::new("lock");
        let held = DirLock::acquire(
            &root,
            rel,
            LockMode::Exclusive,
            Duration::ZERO,
            "start",
            true,
        )
        .unwrap();
        // flock locks belong to the open file description: a second open conflicts, even in
        // the same process.
        let started = Instant::now();
        let err = DirLock::acquire(
            &root,
            rel,
            LockMode::Shared,
            Duration::from_millis(300),
            "certificate check",
            true,
        )
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        let a =
            DirLock::acquire(&root, rel, LockMode::Shared, Duration::ZERO, "check", false).unwrap();
        let b =
            DirLock::acquire(&root, rel, LockMode::Shared, Duration::ZERO, "check", false).unwrap();
        assert!(
            DirLock::acquire(
                &root,
                rel,
                LockMode::Exclusive,
                Duration::ZERO,
                "start",
                false
            )
            .is_err()
        );
        drop((a, b));
        DirLock::acquire(
            &root,
            rel,
            LockMode::Exclusive,
            Duration::ZERO,
            "start",
            false,
        )
        .unwrap();
    }
}
