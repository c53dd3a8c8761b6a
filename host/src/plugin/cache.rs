//! Precompiled plugins on disk, keyed by the plugin's sha256 and the engine's compatibility hash.
//!
//! # Security
//! Loading a precompiled artifact runs native code produced by Cranelift, so wasmtime requires
//! that only artifacts we produced are deserialized. The cache directory is created with mode
//! 0700 and is refused (rotor then compiles in memory) when it is writable by anyone but the
//! current user. Anyone who can write there can already run code as that user.
//!
//! # Integrity
//! wasmtime checks an artifact's header and engine compatibility, not its code: a bit flipped
//! on disk would run as native code (and crash the host, or worse). Each artifact is written
//! with a sidecar `<artifact>.sha256` holding the SHA-256 rotor computed when it wrote it; an
//! artifact is deserialized only from the very bytes whose digest matches that record. A
//! mismatch, or a missing record, recompiles from the pinned `.wasm` (and says so).

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use sha2::{Digest, Sha256};

use crate::fs::{FsError, PRIVATE_FILE, Root, TEMP_MARKER};

pub(crate) struct ArtifactCache {
    root: Root,
}

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{}: writable by other users (mode {mode:o}); refusing to load native code from it", .path.display())]
    Unsafe { path: PathBuf, mode: u32 },
    #[error("{}: owned by uid {owner}, not by the current user", .path.display())]
    NotOwned { path: PathBuf, owner: u32 },
}

impl ArtifactCache {
    pub(crate) fn open(dir: &Path) -> Result<ArtifactCache, CacheError> {
        let root = Root::create_ambient(dir)?;
        let (mode, owner) = root.mode_and_owner(Path::new("."))?;
        if mode & 0o022 != 0 {
            return Err(CacheError::Unsafe {
                path: dir.to_path_buf(),
                mode,
            });
        }
        if owner != current_uid() {
            return Err(CacheError::NotOwned {
                path: dir.to_path_buf(),
                owner,
            });
        }
        let cache = ArtifactCache { root };
        cache.clean();
        Ok(cache)
    }

    fn file_name(digest: &str, compat: &str) -> PathBuf {
        PathBuf::from(format!("{digest}-{compat}.cwasm"))
    }

    fn digest_name(digest: &str, compat: &str) -> PathBuf {
        PathBuf::from(format!("{digest}-{compat}.cwasm.sha256"))
    }

    /// The cached component, if present, intact and loadable; `None` means compile it.
    ///
    /// The artifact is hashed through one open file (in pieces: no copy of ~1 MB per plugin on
    /// the boot path of `rotor start`), then memory-mapped by wasmtime from the same path; the
    /// path must still name the inode that was hashed (writers only ever rename new files into
    /// place, they never change one in place).
    pub(crate) fn load(&self, engine: &Engine, digest: &str, compat: &str) -> Option<Component> {
        use std::io::Read;
        let name = Self::file_name(digest, compat);
        if !self.root.exists(&name) {
            return None;
        }
        let path = self.root.display(&name);
        let recompile = |why: String| {
            tracing::warn!(
                "{}: {why}; recompiling it from the pinned plugin",
                path.display()
            );
            None
        };
        let recorded = match self.root.read(&Self::digest_name(digest, compat)) {
            Ok(r) => String::from_utf8_lossy(&r).trim().to_string(),
            Err(_) => return recompile("no digest recorded for this cached plugin".into()),
        };
        let mut file = match self.root.open_read(&name) {
            Ok(f) => f,
            Err(e) => return recompile(format!("unreadable: {e}")),
        };
        let hashed = (|| -> std::io::Result<String> {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(hex::encode(hasher.finalize()))
        })();
        let actual = match hashed {
            Ok(h) => h,
            Err(e) => return recompile(format!("unreadable: {e}")),
        };
        if actual != recorded {
            return recompile(format!(
                "the cached plugin's digest ({actual}) is not the one rotor recorded when it wrote it \
                 ({recorded}): corrupted on disk"
            ));
        }
        // The very file just hashed, through its descriptor: nothing can be swapped in between.
        // wasmtime memory-maps it (no copy); without /proc, the bytes are read again from the
        // same descriptor and copied.
        use std::os::fd::AsRawFd;
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        #[expect(
            clippy::disallowed_methods,
            reason = "whether this process has /proc, to reopen its own descriptor"
        )]
        let proc_fd = by_fd.exists();
        let loaded = if proc_fd {
            // SAFETY: as in `deserialize_own`: the file is our own `precompile_component` output
            // in the owner-only cache directory, and its bytes are the ones just checked against
            // the digest recorded when it was written; wasmtime rejects incompatible artifacts.
            #[allow(unsafe_code, reason = "memory-mapping our own precompiled artifacts")]
            unsafe {
                Component::deserialize_file(engine, &by_fd)
            }
        } else {
            use std::io::Seek;
            let mut bytes = Vec::new();
            match file.rewind().and_then(|()| file.read_to_end(&mut bytes)) {
                Ok(_) if hex::encode(Sha256::digest(&bytes)) == recorded => {
                    Self::deserialize_own(engine, &bytes)
                }
                _ => return recompile("changed while it was being loaded".into()),
            }
        };
        drop(file);
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("{}: ignoring unusable cached plugin: {e}", path.display());
                None
            }
        }
    }

    /// Write an artifact, then the digest that vouches for it (a crash in between leaves an
    /// artifact without a valid record: it is recompiled, never trusted).
    pub(crate) fn store(&self, digest: &str, compat: &str, compiled: &[u8]) -> Result<(), FsError> {
        let _ = self.root.remove_file(&Self::digest_name(digest, compat));
        self.root
            .write_atomic(&Self::file_name(digest, compat), compiled, PRIVATE_FILE)?;
        let sum = hex::encode(Sha256::digest(compiled));
        self.root.write_atomic(
            &Self::digest_name(digest, compat),
            format!("{sum}\n").as_bytes(),
            PRIVATE_FILE,
        )
    }

    /// Remove temporary files of writers that died (their pid is gone).
    fn clean(&self) {
        let Ok(names) = self.root.list_dir(Path::new(".")) else {
            return;
        };
        for name in names {
            let Some((_, pid)) = name.rsplit_once(TEMP_MARKER) else {
                continue;
            };
            let alive = pid
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|p| {
                    !matches!(
                        rustix::process::test_kill_process(p),
                        Err(rustix::io::Errno::SRCH)
                    )
                });
            if !alive {
                let _ = self.root.remove_file(Path::new(&name));
            }
        }
    }

    /// Deserialize an artifact that this process (or an earlier rotor run, through the
    /// owner-only cache directory) produced with `Engine::precompile_component`.
    pub(crate) fn deserialize_own(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: wasmtime requires the bytes to come from `precompile_component` of a
        // compatible engine. They come either from our own call a moment ago or from the
        // owner-only cache directory checked in `open`; wasmtime itself rejects artifacts of an
        // incompatible engine or version.
        #[allow(unsafe_code, reason = "deserializing our own precompiled artifacts")]
        unsafe {
            Component::deserialize(engine, bytes)
        }
    }
}

fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}
