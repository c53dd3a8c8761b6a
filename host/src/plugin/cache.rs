//! Precompiled plugins on disk, keyed by the plugin's sha256 and the engine's compatibility hash.
//!
//! # Security
//! Loading a precompiled artifact runs native code produced by Cranelift, so wasmtime requires
//! that only artifacts we produced are deserialized. The cache directory is created with mode
//! 0700 and is refused (rotor then compiles in memory) when it is writable by anyone but the
//! current user. Anyone who can write there can already run code as that user.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::fs::{FsError, PRIVATE_FILE, Root};

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
        Ok(ArtifactCache { root })
    }

    fn file_name(digest: &str, compat: &str) -> PathBuf {
        PathBuf::from(format!("{digest}-{compat}.cwasm"))
    }

    /// The cached component, if present and loadable. A corrupt entry is ignored (and will be
    /// replaced by the next store).
    ///
    /// The artifact is memory-mapped rather than read (no copy of ~1 MB per plugin on the
    /// boot path of `rotor start`); the path is the owner-only directory checked in `open`.
    pub(crate) fn load(&self, engine: &Engine, digest: &str, compat: &str) -> Option<Component> {
        let name = Self::file_name(digest, compat);
        if !self.root.exists(&name) {
            return None;
        }
        let path = self.root.display(&name);
        // SAFETY: as in `deserialize_own`: the file is our own `precompile_component` output in
        // the owner-only cache directory; wasmtime rejects incompatible artifacts.
        #[allow(unsafe_code, reason = "memory-mapping our own precompiled artifacts")]
        let loaded = unsafe { Component::deserialize_file(engine, &path) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "{}: ignoring unusable cached plugin: {e}",
                    self.root.display(&name).display()
                );
                None
            }
        }
    }

    pub(crate) fn store(&self, digest: &str, compat: &str, compiled: &[u8]) -> Result<(), FsError> {
        self.root
            .write_atomic(&Self::file_name(digest, compat), compiled, PRIVATE_FILE)
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
