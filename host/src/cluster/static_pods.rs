//! Who really reloads: a kubeadm static pod that mounts a directory rotor manages.
//!
//! kubeadm's manifests mount `/etc/kubernetes/pki` (and `pki/etcd`) as hostPath volumes. rotor
//! makes `pki` a symlink into the live generation, and a bind mount resolves the symlink when
//! the container starts: the container keeps that generation's files (kept untouched as a
//! backup) until it restarts, whatever it watches. So a component that reloads its files by
//! itself (kube-apiserver, etcd) still needs a restart when its pod mounts a managed directory
//! rather than the data dir above it. rotor reads the manifests beside the data dir's `pki`
//! (`manifests/kube-apiserver.yaml`, `manifests/etcd.yaml`) to say which.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::Cluster;
use super::config::Profile;
use crate::datadir::Entry;

/// The components whose static pod (kubeadm) mounts a directory rotor manages, each with the
/// manifest that says so.
pub(crate) fn pinned(cluster: &Cluster) -> Vec<(&'static str, PathBuf)> {
    if cluster.config.profile != Profile::Kubeadm {
        return Vec::new();
    }
    // The data dir as given (made absolute) and as the file system resolves it: a manifest
    // names it one way or the other.
    let given = std::path::absolute(cluster.root.path()).unwrap_or_default();
    let bases = [given, cluster.root.absolute_path()];
    let managed: Vec<PathBuf> = cluster
        .layout
        .entries()
        .iter()
        .filter_map(|e| match e {
            Entry::Dir(p) => Some(p),
            Entry::File(_) => None,
        })
        .flat_map(|p| bases.iter().map(move |b| b.join(p)))
        .collect();
    let mut out = Vec::new();
    for (component, manifest) in [
        ("kube-apiserver", "manifests/kube-apiserver.yaml"),
        ("etcd", "manifests/etcd.yaml"),
    ] {
        let rel = Path::new(manifest);
        // No manifest, or one that cannot be read: not a static pod that rotor can see.
        let Ok(bytes) = cluster.root.read(rel) else {
            continue;
        };
        let doc = match serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(&bytes) {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(
                    "{}: not a pod manifest rotor can read ({e}); if its pod mounts a directory \
                     rotor manages, restart {component} after every change",
                    cluster.root.display(rel).display()
                );
                continue;
            }
        };
        let mounts_managed = doc["spec"]["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v["hostPath"]["path"].as_str())
            .any(|p| managed.iter().any(|m| Path::new(p).starts_with(m)));
        if mounts_managed {
            out.push((component, cluster.root.display(rel)));
        }
    }
    out
}

/// Who restarts and who reloads, as rotor prints it.
#[derive(Debug, Default)]
pub(crate) struct Sorted {
    /// Components to restart.
    pub restart: Vec<&'static str>,
    /// Components that load the change by themselves.
    pub reload: Vec<&'static str>,
    /// Components that would reload but whose static pod pins a generation, with its manifest.
    pub pinned: Vec<(&'static str, PathBuf)>,
    /// Components that would reload but whose file watchers rotor could not tell.
    pub untold: Vec<&'static str>,
}

/// `restarts` and `reloads` as a plan or a renewal computed them, corrected: a component that
/// reloads by itself restarts after all when its pod pins a generation (`pinned`), or when the
/// watchers of the replaced files were not told (`told` false).
pub(crate) fn sort(
    restarts: BTreeSet<&'static str>,
    reloads: BTreeSet<&'static str>,
    pinned: &[(&'static str, PathBuf)],
    told: bool,
) -> Sorted {
    let mut out = Sorted {
        restart: restarts.iter().copied().collect(),
        ..Sorted::default()
    };
    for c in reloads {
        if let Some((_, manifest)) = pinned.iter().find(|(p, _)| *p == c) {
            out.pinned.push((c, manifest.clone()));
        } else if !told {
            out.untold.push(c);
        } else {
            out.reload.push(c);
            continue;
        }
        if !out.restart.contains(&c) {
            out.restart.push(c);
        }
    }
    out.restart.sort_unstable();
    out
}
