//! k3s's datastores as components that tests and benches start: the real kine (`go install
//! github.com/k3s-io/kine@v0.17.5`, built by scripts/install-deps.sh into
//! `$ROTOR_TOOLS_DIR/bin`, default `~/.cache/rotor-tools/bin`) on SQLite, on a PostgreSQL server
//! and on a MariaDB server (Debian's packages), each started on loopback with a throwaway data
//! dir and stopped when dropped. What is missing is returned as an error: the tests fail on it
//! under CI (tests/it/kine.rs), the benches skip.

#![allow(dead_code, reason = "tests and benches each use part of it")]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where scripts/install-deps.sh puts what it builds: `$ROTOR_TOOLS_DIR`, else
/// `$XDG_CACHE_HOME/rotor-tools`, else `~/.cache/rotor-tools`.
pub(crate) fn tools_dir() -> PathBuf {
    std::env::var_os("ROTOR_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("rotor-tools"))
        })
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/rotor-tools")
        })
}

/// kine's pinned release (scripts/install-deps.sh builds it).
pub(crate) const KINE_VERSION: &str = "v0.17.5";

/// A process killed (and reaped) when dropped.
pub(crate) struct Proc(Child);

impl From<Child> for Proc {
    fn from(child: Child) -> Proc {
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_until(what: &str, log: &Path, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "{what}: not ready after {limit:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The kine binary of the pinned release (`ROTOR_KINE`, else `$ROTOR_TOOLS_DIR/bin/kine`,
/// default `~/.cache/rotor-tools/bin/kine`), or what is missing.
pub(crate) fn kine_binary() -> Result<PathBuf, String> {
    let path = std::env::var_os("ROTOR_KINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools_dir().join("bin/kine"));
    let version = Command::new(&path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if version.contains(KINE_VERSION) {
        Ok(path)
    } else {
        Err(format!(
            "kine {KINE_VERSION} at {} (make deps builds it)",
            path.display()
        ))
    }
}

/// A database server kine stores into: its `--endpoint`, and its server process (none for
/// SQLite), which a test can kill and start again.
pub(crate) struct Database {
    pub(crate) endpoint: String,
    pub(crate) name: &'static str,
    server: Option<Proc>,
    launch: Option<Box<dyn Fn() -> Proc + Send>>,
    /// How to stop the server at once when killing its process is not enough (PostgreSQL runs
    /// under `runuser`, whose death leaves the server running).
    halt: Option<Box<dyn Fn() + Send>>,
}

impl Drop for Database {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `cmd` as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    #[allow(unsafe_code, reason = "geteuid has no preconditions")]
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Database {
    /// SQLite in `dir/state.db`, as k3s's DSN opens it.
    pub(crate) fn sqlite(dir: &Path) -> Database {
        std::fs::create_dir_all(dir).unwrap();
        Database {
            endpoint: format!(
                "sqlite://{}/state.db?_journal_mode=WAL&_busy_timeout=30000&_txlock=immediate",
                dir.display()
            ),
            name: "sqlite",
            server: None,
            launch: None,
            halt: None,
        }
    }

    /// The endpoint of another database on the same server (SQLite: another file beside the
    /// first), so that each scenario starts on an empty one; kine creates it.
    pub(crate) fn endpoint_of(&self, database: &str) -> String {
        match self.name {
            "sqlite" => self
                .endpoint
                .replace("/state.db?", &format!("/{database}.db?")),
            _ => {
                let (base, query) = self
                    .endpoint
                    .split_once('?')
                    .map_or((self.endpoint.as_str(), ""), |(b, q)| (b, q));
                let base = base.strip_suffix("/kine").unwrap_or(base);
                if query.is_empty() {
                    format!("{base}/{database}")
                } else {
                    format!("{base}/{database}?{query}")
                }
            }
        }
    }

    /// A PostgreSQL server of its own in `dir` (trust auth, superuser `kine`), on loopback.
    pub(crate) fn start_postgres(dir: &Path) -> Result<Database, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .find(|b| b.join("initdb").is_file())
        });
        let Some(bin) = bin else {
            return Err("PostgreSQL's server (Debian's postgresql)".into());
        };
        std::fs::create_dir_all(dir).unwrap();
        // The postgres user must reach its data dir (the temp dirs above it are 0700).
        let mut p = dir.to_path_buf();
        while let Some(parent) = p.parent() {
            if parent == Path::new("/") || parent == Path::new("/tmp") {
                break;
            }
            let mode = std::fs::metadata(parent).unwrap().permissions();
            use std::os::unix::fs::PermissionsExt;
            if mode.mode() & 0o001 == 0 {
                std::fs::set_permissions(
                    parent,
                    std::fs::Permissions::from_mode(mode.mode() | 0o711),
                )
                .unwrap();
            }
            p = parent.to_path_buf();
        }
        let uid = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            });
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir, Some(uid), None).unwrap();
        }
        let log = dir.join("postgres.log");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "kine", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let dir = dir.to_path_buf();
        let halt = {
            let (bin, data) = (bin.clone(), dir.join("data"));
            // An immediate shutdown: every backend stopped at once, no checkpoint, crash
            // recovery at the next start (as if the machine had lost the server).
            move || {
                let _ = as_postgres(&bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .args(["stop", "-m", "immediate", "-w"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        };
        let launch = move || {
            let server = as_postgres(&bin.join("postgres"))
                .arg("-D")
                .arg(dir.join("data"))
                .arg("-k")
                .arg(&dir)
                .args([
                    "-p",
                    &port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                ])
                .stdout(Stdio::null())
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&log)
                        .unwrap(),
                )
                .spawn()
                .unwrap();
            let server = Proc(server);
            wait_until("PostgreSQL", &log, Duration::from_secs(60), || {
                Command::new(bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
            server
        };
        Ok(Database {
            endpoint: format!("postgres://kine@127.0.0.1:{port}/kine?sslmode=disable"),
            name: "postgresql",
            server: Some(launch()),
            launch: Some(Box::new(launch)),
            halt: Some(Box::new(halt)),
        })
    }

    /// A MariaDB server of its own in `dir` (no grant tables: any user), on loopback.
    pub(crate) fn start_mariadb(dir: &Path) -> Result<Database, String> {
        if Command::new("mariadb-install-db")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err("MariaDB's server (Debian's mariadb-server)".into());
        }
        // A temporary directory of its own: MariaDB names its temporary tables after the
        // process id, and two servers sharing /tmp have collided there.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = dir.join("mariadb.log");
        let dir = dir.to_path_buf();
        let launch = move || {
            // Each start appends to the log: wait for one more "ready" line than before.
            let count = || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .matches("ready for connections")
                    .count()
            };
            let before = count();
            let server = Command::new("mariadbd")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .arg(format!("--socket={}", dir.join("sock").display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .arg(format!("--port={port}"))
                .args([
                    "--user=root",
                    "--bind-address=127.0.0.1",
                    "--skip-grant-tables",
                    "--skip-log-bin",
                ])
                .arg(format!("--log-error={}", log.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let server = Proc(server);
            wait_until("MariaDB", &log, Duration::from_secs(60), || {
                count() > before
            });
            server
        };
        Ok(Database {
            endpoint: format!("mysql://root@tcp(127.0.0.1:{port})/kine"),
            name: "mariadb",
            server: Some(launch()),
            launch: Some(Box::new(launch)),
            halt: None,
        })
    }

    /// Stop the database server (a database dying under kine).
    pub(crate) fn kill(&mut self) {
        if self.server.is_some()
            && let Some(halt) = &self.halt
        {
            halt();
        }
        self.server = None;
    }

    /// Start the database server again on its data (nothing to do for SQLite).
    pub(crate) fn restart(&mut self) {
        self.kill();
        if let Some(launch) = &self.launch {
            self.server = Some(launch());
        }
    }
}

/// The real kine on `database`, serving the etcd API on a loopback port.
pub(crate) struct Kine {
    bin: PathBuf,
    endpoint: String,
    port: u16,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Kine {
    pub(crate) fn start(bin: &Path, database: &Database, dir: &Path) -> Kine {
        Kine::start_on(bin, &database.endpoint, database.name, dir)
    }

    /// The real kine on the database `endpoint` names.
    pub(crate) fn start_on(bin: &Path, endpoint: &str, name: &str, dir: &Path) -> Kine {
        std::fs::create_dir_all(dir).unwrap();
        let mut kine = Kine {
            bin: bin.to_path_buf(),
            endpoint: endpoint.to_string(),
            port: free_port(),
            log: dir.join(format!("kine-{name}.log")),
            proc: None,
        };
        kine.launch();
        kine
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .args(["--listen-address", &format!("127.0.0.1:{}", self.port)])
            .args(["--endpoint", &self.endpoint])
            .args(["--metrics-bind-address", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        let url = self.url();
        wait_until("kine", &self.log.clone(), Duration::from_secs(60), || {
            Command::new("etcdctl")
                .args(["--endpoints", &url, "get", "/", "--limit", "1"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }

    /// The etcd API URL (`--datastore-endpoint`).
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kill kine (SIGKILL) and start it again on the same database and port.
    pub(crate) fn restart(&mut self) {
        self.proc = None;
        self.launch();
    }

    /// Kill kine (SIGKILL).
    pub(crate) fn kill(&mut self) {
        self.proc = None;
    }

    /// Start kine again after [`Kine::kill`].
    pub(crate) fn resume(&mut self) {
        self.launch();
    }

    /// `etcdctl ARGS` against this kine.
    pub(crate) fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new("etcdctl")
            .args(["--endpoints", &self.url()])
            .args(["--command-timeout", "5s"])
            .args(args)
            .output()
            .unwrap()
    }

    /// `etcdctl ARGS` against this kine, with `stdin`: (success, stdout + stderr).
    pub(crate) fn etcdctl(&self, args: &[&str], stdin: &str) -> (bool, String) {
        let mut child = Command::new("etcdctl")
            .args(["--endpoints", &self.url()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}
