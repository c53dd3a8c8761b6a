//! What the write model costs, in process, on a real k3s data dir (17 leaves, 5 CAs): taking
//! the data dir's lock; opening it for writing (lock, recovery check, debris sweep, links,
//! permission checks); and making a change live (the next generation staged from the live one,
//! journaled, switched in one rename), against writing the same files in place one by one as
//! rotor did before (temp file, fsync, rename, fsync of the directory, for each).
//!
//! `cargo bench -p rotor --bench state` (after `make plugins`). Figures: docs/performance.md.

#![allow(
    clippy::disallowed_methods,
    reason = "benches set up data dirs directly"
)]

#[path = "settings.rs"]
mod settings;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rotor::cluster::{Change, Cluster, Storage};
use rotor::datadir::{DataDir, Options};
use rotor::fs::{PRIVATE_FILE, PUBLIC_FILE, Root};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// An initialized k3s data dir (the k3s datastore format).
fn data_dir(base: &Path) -> PathBuf {
    let dir = base.join("data");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_rotor"))
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "init",
            "--node-name",
            "bench",
            "--node-ip",
            "10.0.0.5",
            "--datastore-format",
            "k3s",
        ])
        .env("ROTOR_BUNDLE", repo().join("policies/default"))
        .env("ROTOR_PLUGIN_CACHE", base.join("plugin-cache"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rotor init");
    assert!(status.success());
    dir
}

fn options() -> Options {
    Options {
        lock_timeout: Duration::from_secs(5),
        backup_keep: 5,
        command: "bench".into(),
        ..Options::default()
    }
}

/// The files of the first `n` leaves, as they are: (path, content, mode).
fn leaf_files(cluster: &Cluster, n: usize) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut out = Vec::new();
    for leaf in cluster.layout.leaves.iter().take(n) {
        if let Storage::Files { cert, key, .. } = &leaf.storage {
            out.push((
                cert.clone(),
                cluster.live.read(cert).expect("cert"),
                PUBLIC_FILE,
            ));
            out.push((
                key.clone(),
                cluster.live.read(key).expect("key"),
                PRIVATE_FILE,
            ));
        }
    }
    out
}

fn write_model(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = data_dir(tmp.path());
    let opts = options();
    let mut group = c.benchmark_group("write_model");
    group.sample_size(30);

    group.bench_function("lock/exclusive_acquire_release", |b| {
        b.iter(|| {
            let root = Root::open_ambient(&dir).expect("root");
            drop(DataDir::lock_exclusive(root, opts.clone()).expect("lock"));
        })
    });
    group.bench_function("open_for_writing", |b| {
        b.iter(|| drop(Cluster::open_write(&dir, &opts).expect("open")))
    });

    // The old model's baseline: the same files written in place, one atomic write each, in a
    // plain directory laid out like the data dir.
    let in_place = tmp.path().join("in-place");
    let probe = Cluster::open_write(&dir, &opts).expect("open");
    let all = leaf_files(&probe, 17);
    drop(probe);
    let plain = Root::create_ambient(&in_place).expect("plain dir");
    for (p, content, mode) in &all {
        plain
            .create_dir_all(p.parent().expect("parent"))
            .expect("dirs");
        plain.write_atomic(p, content, *mode).expect("write");
    }
    for n in [1usize, 17] {
        group.bench_function(format!("switch_generation/{n}_leaves"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut cluster = Cluster::open_write(&dir, &opts).expect("open");
                    let mut change = Change::default();
                    for (p, content, mode) in leaf_files(&cluster, n) {
                        change.write(p, content, mode);
                    }
                    let started = Instant::now();
                    cluster.commit(change, false).expect("commit");
                    total += started.elapsed();
                }
                total
            })
        });
        group.bench_function(format!("in_place_atomic_writes/{n}_leaves"), |b| {
            b.iter(|| {
                for (p, content, mode) in all.iter().take(2 * n) {
                    plain.write_atomic(p, content, *mode).expect("write");
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = settings::config();
    targets = write_model
}
criterion_main!(benches);
