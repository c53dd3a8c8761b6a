//! The datastores real k3s clusters use, side by side in one run: `rotor start` with nothing
//! to renew and `rotate-ca` on the directory datastore, etcd (one member, plain HTTP on
//! loopback), the real kine on SQLite, PostgreSQL and MariaDB, and kine's SQLite database
//! opened directly (`sqlite://`), as ratios to the directory datastore; and the bootstrap read
//! of a `state.db` that also holds 100,000 unrelated kine rows (a busy cluster's) against the
//! same database without them.
//!
//! `cargo build --release -p rotor --bin rotor && cargo bench -p rotor --bench datastores`
//! (after `make plugins` and `make deps`, which installs etcd, PostgreSQL, MariaDB and builds
//! kine). A component that is missing skips its cases. Every data dir uses k3s's record format
//! (PBKDF2 with 4,096 rounds), so the key derivation does not hide the datastore's cost.
//! Figures: docs/performance.md.

#![allow(
    clippy::disallowed_methods,
    reason = "benches set up data dirs and databases directly"
)]

#[path = "../tests/support/components.rs"]
mod components;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use components::{Database, Kine, kine_binary};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

const ROTOR: &str = env!("CARGO_BIN_EXE_rotor");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cache: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().to_path_buf();
        let env = Env {
            cache: root.join("plugin-cache"),
            _tmp: tmp,
            root,
        };
        env.rotor(None, &["policy", "check"]);
        env
    }

    fn rotor(&self, dir: Option<&Path>, args: &[&str]) {
        let mut cmd = Command::new(ROTOR);
        if let Some(d) = dir {
            cmd.arg("--data-dir").arg(d);
        }
        let out = cmd
            .args(args)
            .env("ROTOR_BUNDLE", repo().join("policies/default"))
            .env("ROTOR_PLUGIN_CACHE", &self.cache)
            .env_remove("ROTOR_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("rotor");
        assert!(
            out.status.success(),
            "rotor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn init(&self, dir: &Path, endpoint: Option<&str>) {
        let mut args = vec![
            "init",
            "--node-name",
            "server-1",
            "--node-ip",
            "127.0.0.1",
            "--datastore-format",
            "k3s",
            "--token",
            "bench-password",
        ];
        if let Some(e) = endpoint {
            args.extend(["--datastore-endpoint", e]);
        }
        self.rotor(Some(dir), &args);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A one-member etcd on plain HTTP (as kine is reached), killed when dropped.
struct Etcd {
    child: Child,
    url: String,
}

impl Etcd {
    fn start(root: &Path) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!("etcd is not installed (make deps): its cases are skipped");
            return None;
        }
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(root.join("etcd-data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd");
        let etcd = Etcd { child, url };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Command::new("etcdctl")
            .args(["--endpoints", &etcd.url, "endpoint", "health"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "etcd never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers behind the backends; dropped (stopped) at the end.
#[derive(Default)]
struct Servers {
    etcd: Option<Etcd>,
    kines: Vec<Kine>,
    databases: Vec<Database>,
}

/// `state.db` made by kine (its schema), kine stopped: the direct SQLite backend's database.
fn kine_made_state_db(bin: &Path, dir: &Path) -> PathBuf {
    let database = Database::sqlite(dir);
    drop(Kine::start(bin, &database, &dir.join("kine-logs")));
    dir.join("state.db")
}

/// Each backend's name and the data dir initialized on it.
fn backends(env: &Env, servers: &mut Servers) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    let local = env.root.join("directory");
    env.init(&local, None);
    out.push(("directory", local));
    servers.etcd = Etcd::start(&env.root);
    if let Some(etcd) = &servers.etcd {
        let dir = env.root.join("etcd");
        env.init(&dir, Some(&etcd.url));
        out.push(("etcd", dir));
    }
    let bin = match kine_binary() {
        Ok(bin) => bin,
        Err(what) => {
            eprintln!("{what}: the kine cases are skipped");
            return out;
        }
    };
    let mut databases = vec![(
        "kine-sqlite",
        Ok(Database::sqlite(&env.root.join("kine-sqlite"))),
    )];
    databases.push((
        "kine-postgresql",
        Database::start_postgres(&env.root.join("postgresql")),
    ));
    databases.push((
        "kine-mysql",
        Database::start_mariadb(&env.root.join("mariadb")),
    ));
    for (name, database) in databases {
        let database = match database {
            Ok(d) => d,
            Err(what) => {
                eprintln!("{what}: {name} is skipped");
                continue;
            }
        };
        let kine = Kine::start(&bin, &database, &env.root.join(format!("{name}-logs")));
        let dir = env.root.join(name);
        env.init(&dir, Some(&kine.url()));
        out.push((name, dir));
        servers.kines.push(kine);
        servers.databases.push(database);
    }
    let state_db = kine_made_state_db(&bin, &env.root.join("direct-db"));
    let dir = env.root.join("sqlite-direct");
    env.init(&dir, Some(&format!("sqlite://{}", state_db.display())));
    out.push(("sqlite-direct", dir));
    out
}

fn start_and_rotate_ca(c: &mut Criterion) {
    let env = Env::new();
    let mut servers = Servers::default();
    let backends = backends(&env, &mut servers);
    let mut group = c.benchmark_group("datastore_backends");
    group.sample_size(15);
    for (name, dir) in &backends {
        group.bench_function(format!("start_nothing_to_renew/{name}"), |b| {
            b.iter(|| env.rotor(Some(dir), &["start"]))
        });
    }
    for (name, dir) in &backends {
        let mut n = 0;
        group.bench_function(format!("rotate_ca/{name}"), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let staged = env.root.join(format!("{name}-rotate-{n}"));
                    env.rotor(
                        Some(dir),
                        &[
                            "certificate",
                            "rotate-default-ca",
                            "--out",
                            staged.to_str().expect("utf-8"),
                        ],
                    );
                    staged
                },
                |staged| {
                    env.rotor(
                        Some(dir),
                        &[
                            "certificate",
                            "rotate-ca",
                            "--path",
                            staged.to_str().expect("utf-8"),
                            "--force",
                        ],
                    );
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
    drop(servers);
}

/// 100,000 rows as a busy cluster's kine writes them: created keys under `/registry/`, values
/// of 512 bytes, each a row of its own revision.
fn fill_busy(state_db: &Path, rows: u32) {
    let mut conn = rusqlite::Connection::open(state_db).expect("state.db");
    let tx = conn.transaction().expect("transaction");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO kine(name, created, deleted, create_revision, prev_revision, lease, value, old_value) \
                 VALUES (?1, 1, 0, NULL, 0, 0, randomblob(512), NULL)",
            )
            .expect("insert");
        for i in 0..rows {
            insert
                .execute([format!("/registry/pods/ns-{}/pod-{i}", i % 100)])
                .expect("row");
        }
    }
    tx.commit().expect("commit");
}

fn busy_state_db(c: &mut Criterion) {
    use rotor::datastore::{BOOTSTRAP_PREFIX, Datastore, SqliteConfig, SqliteDatastore};
    let bin = match kine_binary() {
        Ok(bin) => bin,
        Err(what) => {
            eprintln!("{what}: the state.db cases are skipped");
            return;
        }
    };
    let env = Env::new();
    let mut group = c.benchmark_group("state_db_bootstrap_read");
    group.sample_size(30);
    for (name, rows) in [("alone", 0), ("beside_100k_rows", 100_000)] {
        let state_db = kine_made_state_db(&bin, &env.root.join(format!("{name}-db")));
        let dir = env.root.join(name);
        env.init(&dir, Some(&format!("sqlite://{}", state_db.display())));
        fill_busy(&state_db, rows);
        let config = SqliteConfig {
            sqlite: state_db.clone(),
        };
        group.bench_function(format!("open_and_snapshot/{name}"), |b| {
            b.iter(|| {
                let store = SqliteDatastore::open(&config).expect("open");
                let snapshot = store.snapshot(BOOTSTRAP_PREFIX).expect("snapshot");
                assert_eq!(snapshot.entries.len(), 1);
            })
        });
        group.bench_function(format!("start_nothing_to_renew/{name}"), |b| {
            b.iter(|| env.rotor(Some(&dir), &["start"]))
        });
    }
    group.finish();
}

criterion_group!(benches, start_and_rotate_ca, busy_state_db);
criterion_main!(benches);
