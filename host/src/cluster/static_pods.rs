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
    let base = cluster.root.path();
    let managed: Vec<PathBuf> = cluster
        .layout
        .entries()
        .iter()
        .filter_map(|e| match e {
            Entry::Dir(p) => Some(base.join(p)),
            Entry::File(_) => None,
        })
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
        let Ok(doc) = serde_yaml_ng::from_slice::<serde_yaml_ng::Value>(&bytes) else {
            continue;
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

/// `restarts` and `reloads` as a plan or a renewal computed them, corrected for `pinned`: a
/// component that reloads by itself but whose pod pins a generation moves to the restarts.
pub(crate) fn adjust(
    mut restarts: BTreeSet<&'static str>,
    reloads: BTreeSet<&'static str>,
    pinned: &[(&'static str, PathBuf)],
) -> (BTreeSet<&'static str>, BTreeSet<&'static str>) {
    let mut live = BTreeSet::new();
    for c in reloads {
        if pinned.iter().any(|(p, _)| *p == c) {
            restarts.insert(c);
        } else {
            live.insert(c);
        }
    }
    (restarts, live)
}
