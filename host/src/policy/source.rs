//! Where a bundle's files come from: a directory (through a capability), or the default
//! bundle embedded in this build; and where an installed rotor finds the bundles installed
//! beside it (`<prefix>/share/rotor/policies`).

use std::path::{Path, PathBuf};

use super::bundle::BundleFile;
use crate::fs::{FsError, Root};

/// The default bundle (`policies/default`) as it was when this rotor was built: empty when
/// the plugins were not built then (`make plugins`).
pub(super) static BUILTIN: &[(&str, &[u8])] =
    include!(concat!(env!("OUT_DIR"), "/builtin_bundle.rs"));

/// The policies installed beside this rotor: `<prefix>/share/rotor/policies` for the running
/// `<prefix>/bin/rotor` (symbolic links resolved), when it holds a `default/bundle.toml`.
pub fn installed_policies() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let prefix = exe.parent()?.parent()?;
    let dir = prefix.join("share").join("rotor").join("policies");
    let root = Root::open_ambient(&dir).ok()?;
    root.exists(Path::new("default/bundle.toml")).then_some(dir)
}

/// What [`Bundle::builtin`] calls the embedded bundle in messages.
pub(crate) const BUILTIN_NAME: &str = "built-in default bundle";

/// Where a bundle's files are read from.
pub(super) enum Files {
    /// A directory, through a capability: plugin paths cannot leave it.
    Dir(Root),
    /// The embedded default bundle.
    Builtin,
}

impl Files {
    pub(super) fn read(&self, rel: &Path) -> Result<Vec<u8>, FsError> {
        match self {
            Files::Dir(root) => root.read(rel),
            Files::Builtin => BUILTIN
                .iter()
                .find(|(name, _)| Path::new(name) == rel)
                .map(|(_, bytes)| bytes.to_vec())
                .ok_or_else(|| {
                    FsError::io(
                        Path::new(BUILTIN_NAME).join(rel),
                        std::io::ErrorKind::NotFound.into(),
                    )
                }),
        }
    }
}

impl Files {
    /// The `.wasm` files beside the bundle's plugins (in `plugins/` and in each directory a
    /// hook's plugin is in, not below) that none of `used` is: a plugin meant to be pinned, or
    /// one left behind. Best effort: a directory that cannot be listed has none.
    pub(super) fn unused_plugins(&self, used: &[BundleFile]) -> Vec<String> {
        let Files::Dir(root) = self else {
            return Vec::new();
        };
        let plain = |p: &Path| -> PathBuf {
            p.components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect()
        };
        let used: Vec<PathBuf> = used.iter().map(|(p, _)| plain(p)).collect();
        let mut dirs: Vec<PathBuf> = vec![PathBuf::from("plugins")];
        for p in &used {
            if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty())
                && !dirs.iter().any(|d| d == parent)
            {
                dirs.push(parent.to_path_buf());
            }
        }
        let mut unused: Vec<String> = dirs
            .iter()
            .flat_map(|dir| {
                root.list_dir(dir)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |name| dir.join(name))
            })
            .filter(|p| {
                p.extension().is_some_and(|e| e == "wasm")
                    && !used.contains(p)
                    && root.kind(p).ok().flatten() == Some(crate::fs::Kind::File)
            })
            .map(|p| p.display().to_string())
            .collect();
        unused.sort();
        unused
    }
}
