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

/// Crash-safety testing: in debug builds, abort the process (as a kill would) when the
/// `ROTOR_FAILPOINT` environment variable names this point. Release builds ignore it.
pub fn failpoint(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("ROTOR_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("rotor: failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// An I/O error with the full path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FsError {
    pub path: PathBuf,
    pub message: String,
    /// The underlying error (its text is already in `message`, so it is not a `source`).
    pub io: Option<io::Error>,
}

impl FsError {
    fn io(path: PathBuf, e: io::Error) -> FsError {
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
        let dir = Dir::open_ambient_dir(path, ambient_authority())
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
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR);
        builder.recursive(true);
        builder
            .create(path)
            .map_err(|e| FsError::io(path.to_path_buf(), e))?;
        Root::open_ambient(path)
    }

    /// The path this root was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The full path of `rel`, for messages.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
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

    pub fn read(&self, rel: &Path) -> Result<Vec<u8>, FsError> {
        self.check(rel)?;
        self.dir
            .read(rel)
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    pub fn exists(&self, rel: &Path) -> bool {
        self.check(rel).is_ok() && self.dir.exists(rel)
    }

    /// A sub-directory as its own root.
    pub fn open_dir(&self, rel: &Path) -> Result<Root, FsError> {
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

    /// Create `rel` and its parents with mode 0700.
    pub fn create_dir_all(&self, rel: &Path) -> Result<(), FsError> {
        self.check(rel)?;
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(PRIVATE_DIR);
        self.dir
            .create_dir_with(rel, &builder)
            .map_err(|e| FsError::io(self.display(rel), e))
    }

    /// Remove a file (not a directory).
    pub fn remove_file(&self, rel: &Path) -> Result<(), FsError> {
        self.check(rel)?;
        self.dir
            .remove_file(rel)
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

    /// Copy the tree `from` to `to` (which must not exist), keeping file modes. Symlinks are
    /// refused: a data directory rotor manages holds none.
    pub fn copy_tree(&self, from: &Path, to: &Path) -> Result<(), FsError> {
        use cap_std::fs::PermissionsExt;
        self.check(from)?;
        self.check(to)?;
        if self.exists(to) {
            return Err(FsError::refused(self.display(to), "already exists"));
        }
        self.create_dir_all(to)?;
        for name in self.list_dir(from)? {
            let src = from.join(&name);
            let dst = to.join(&name);
            let meta = self
                .dir
                .symlink_metadata(&src)
                .map_err(|e| FsError::io(self.display(&src), e))?;
            if meta.is_symlink() {
                return Err(FsError::refused(
                    self.display(&src),
                    "refused: unexpected symlink in the data directory",
                ));
            } else if meta.is_dir() {
                self.copy_tree(&src, &dst)?;
            } else {
                let bytes = self.read(&src)?;
                self.write_atomic(&dst, &bytes, meta.permissions().mode() & 0o777)?;
            }
        }
        Ok(())
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

    /// The permission bits and owner of `rel` (or of the root itself for `.`).
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

    /// Write `bytes` to `rel` atomically with the given mode: temp file, fsync, rename, fsync
    /// of the directory. The parent directory must exist.
    pub fn write_atomic(&self, rel: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
        self.check(rel)?;
        let full = self.display(rel);
        let name = rel
            .file_name()
            .ok_or_else(|| FsError::refused(full.clone(), "not a file name"))?
            .to_string_lossy()
            .into_owned();
        let parent = rel
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let parent_dir = if parent == Path::new(".") {
            self.dir.try_clone()
        } else {
            self.dir.open_dir(parent)
        }
        .map_err(|e| FsError::io(self.display(parent), e))?;

        let tmp_name = format!(".{name}.rotor-tmp-{}", std::process::id());
        let tmp = Path::new(&tmp_name);
        // A stale temp file from a crashed run of the same pid is overwritten, never read.
        let _ = parent_dir.remove_file(tmp);
        let result = (|| {
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true).mode(mode);
            let mut file = parent_dir.open_with(tmp, &opts)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            failpoint(&format!("atomic:written:{name}"));
            parent_dir.rename(tmp, &parent_dir, &name)?;
            failpoint(&format!("atomic:renamed:{name}"));
            parent_dir.open(".")?.sync_all()
        })();
        if let Err(e) = result {
            let _ = parent_dir.remove_file(tmp);
            return Err(FsError::io(full, e));
        }
        Ok(())
    }
}

#[cfg(test)]
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
