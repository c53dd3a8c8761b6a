//! A renewal reaching a running kube-apiserver, beside a restart (issue 31, part 4): the real
//! kube-apiserver v1.37.2 (scripts/build-control-plane.sh) with kubeadm's flags on etcd, on a
//! data dir `rotor init --profile kubeadm` wrote, on loopback.
//!
//! - renew -> served: from `rotor certs renew apiserver` returning to a fresh TLS handshake with
//!   the apiserver showing the new serial (polled every 5 ms), over `RENEWALS` renewals (the
//!   apiserver's inotify watch of the file it opened, told by `DataDir::notify_watchers`);
//! - restart -> ready: from killing the apiserver to its `/readyz` answering ok again, over
//!   `RESTARTS` restarts (what an operator does without a reload).
//!
//! p50 and max of each, and the ratio, in one run. Not criterion: a handful of samples of a
//! multi-second process restart. `cargo bench -p rotor --bench control_plane` (after `make deps`
//! built the control plane and `make build` the release rotor; `ROTOR_BIN` to choose another).
//! Skips, saying why, when the control plane or etcd is missing.

#![allow(
    clippy::disallowed_methods,
    reason = "a bench sets up files as an operator would"
)]

#[path = "../tests/support/components.rs"]
mod components;
#[path = "../tests/support/control_plane.rs"]
mod control_plane;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use control_plane::{Apiserver, Binaries, TlsEtcd, file_serial};

const RENEWALS: usize = 20;
const RESTARTS: usize = 5;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // `cargo bench` passes --bench; a filter that excludes us is honoured.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.iter().any(|f| !"control_plane".contains(f.as_str())) {
        return;
    }
    let bins = match Binaries::find() {
        Ok(b) => b,
        Err(what) => {
            eprintln!("control_plane bench skipped: {what} is missing");
            return;
        }
    };
    let rotor = std::env::var_os("ROTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/rotor"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let work = tmp.path().join("work");
    let run = |args: &[&str]| {
        let out = Command::new(&rotor)
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .env("ROTOR_PLUGIN_CACHE", tmp.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rotor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "init",
        "--profile",
        "kubeadm",
        "--node-name",
        "cp1",
        "--node-ip",
        "127.0.0.1",
    ]);
    let etcd = match TlsEtcd::start(&dir, &work) {
        Ok(e) => e,
        Err(what) => {
            eprintln!("control_plane bench skipped: {what} is missing");
            return;
        }
    };
    let mut apiserver = Apiserver::kubeadm(&bins, &dir, &etcd.url(), &work);
    let cert = dir.join("pki/apiserver.crt");

    let mut served = Vec::new();
    for i in 0..RENEWALS {
        run(&["certs", "renew", "apiserver"]);
        let returned = Instant::now();
        let want = file_serial(&cert);
        while apiserver.serving_serial().as_deref() != Some(want.as_str()) {
            assert!(
                returned.elapsed() < Duration::from_secs(60),
                "renewal {i} not served after 60 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        served.push(returned.elapsed());
    }
    let mut restarts: Vec<Duration> = (0..RESTARTS).map(|_| apiserver.restart()).collect();
    served.sort();
    restarts.sort();
    let (s50, smax) = (percentile(&served, 0.5), *served.last().unwrap());
    let (r50, rmax) = (percentile(&restarts, 0.5), *restarts.last().unwrap());
    println!(
        "kube-apiserver {}, kubeadm flags, etcd on loopback",
        control_plane::K8S_VERSION
    );
    println!("| | n | p50 | max |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| `certs renew apiserver` returned -> new serial served | {RENEWALS} | {} | {} |",
        ms(s50),
        ms(smax)
    );
    println!(
        "| apiserver killed -> `/readyz` ok again | {RESTARTS} | {} | {} |",
        ms(r50),
        ms(rmax)
    );
    println!(
        "reload p50 / restart p50 = {:.3}",
        s50.as_secs_f64() / r50.as_secs_f64()
    );
}
