//! k3s's own datastores as test components (tests/support/components.rs: the real kine on
//! SQLite, PostgreSQL and MariaDB, started on loopback with throwaway data dirs), failing the
//! tests under CI when missing; and the tests of kine itself and of rotor's backend through it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;

#[path = "../support/components.rs"]
pub(crate) mod components;

pub(crate) use components::{Database, Kine, Proc, tools_dir};

/// The kine binary of the pinned release; a failure under CI when it is missing.
pub(crate) fn kine_bin() -> Option<PathBuf> {
    match components::kine_binary() {
        Ok(path) => Some(path),
        Err(what) => {
            require(&what, false);
            None
        }
    }
}

impl Database {
    /// A PostgreSQL server of its own in `dir`; a failure under CI when it is missing.
    pub(crate) fn postgres(dir: &Path) -> Option<Database> {
        Database::start_postgres(dir)
            .map_err(|what| require(&what, false))
            .ok()
    }

    /// A MariaDB server of its own in `dir`; a failure under CI when it is missing.
    pub(crate) fn mariadb(dir: &Path) -> Option<Database> {
        Database::start_mariadb(dir)
            .map_err(|what| require(&what, false))
            .ok()
    }
}

/// The real kine serves the etcd API on each of k3s's SQL datastores: plain puts and gets,
/// the create-if-absent transaction kine accepts (one winner), and after kine is killed and
/// started again on the same database, what it served before.
#[test]
fn kine_serves_the_etcd_api_on_sqlite_postgresql_and_mariadb() {
    if !require_command("etcdctl") {
        return;
    }
    let Some(bin) = kine_bin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut databases = vec![Database::sqlite(&tmp.path().join("sqlite"))];
    databases.extend(Database::postgres(&tmp.path().join("pg")));
    databases.extend(Database::mariadb(&tmp.path().join("maria")));
    assert!(
        databases.len() == 3 || std::env::var_os("CI").is_none(),
        "every database under CI"
    );
    for db in &databases {
        let mut kine = Kine::start(&bin, db, &tmp.path().join("kine"));
        let name = db.name;
        let (ok, out) = kine.etcdctl(&["put", "/bootstrap/test", "v1"], "");
        assert!(ok, "{name}: put: {out}");
        let (ok, out) = kine.etcdctl(&["get", "/bootstrap/test", "--print-value-only"], "");
        assert!(ok && out.trim() == "v1", "{name}: get: {out}");
        // kine's create: one compare on the key's mod revision being 0, one put, no failure ops.
        let create = "mod(\"/rotor/records/x\") = \"0\"\n\nput /rotor/records/x first\n\n\n";
        let (ok, out) = kine.etcdctl(&["txn", "--interactive=false"], create);
        assert!(ok && out.starts_with("SUCCESS"), "{name}: create: {out}");
        let again = create.replace("first", "second");
        let (ok, out) = kine.etcdctl(&["txn", "--interactive=false"], &again);
        assert!(
            ok && out.starts_with("FAILURE"),
            "{name}: second create: {out}"
        );
        // Killed and started again: the same data, served again.
        kine.restart();
        let (ok, out) = kine.etcdctl(&["get", "/rotor/records/x", "--print-value-only"], "");
        assert!(
            ok && out.trim() == "first",
            "{name}: after a restart: {out}"
        );
    }
    for mut db in databases {
        db.kill();
    }
}

/// What rotor already does through kine's accepted shapes, on each database: node password
/// bindings (create-if-absent, one winner of two; changed and deleted at the revision read)
/// and the bootstrap snapshot (two ranges at one revision), through the same etcd backend
/// that etcd runs.
#[test]
fn node_bindings_and_snapshots_go_through_kine_on_each_database() {
    use rotor::datastore::{BOOTSTRAP_PREFIX, Datastore, EtcdConfig, EtcdDatastore};
    use rotor::supervisor::{Binding, Nodes};
    if !require_command("etcdctl") {
        return;
    }
    let Some(bin) = kine_bin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut databases = vec![Database::sqlite(&tmp.path().join("sqlite"))];
    databases.extend(Database::postgres(&tmp.path().join("pg")));
    databases.extend(Database::mariadb(&tmp.path().join("maria")));
    let now = rotor::clock::system_now();
    for db in &databases {
        let name = db.name;
        let kine = Kine::start(&bin, db, &tmp.path().join("kine"));
        let config = EtcdConfig::new(&kine.url(), None, None, None).unwrap();
        let store: std::sync::Arc<dyn Datastore> =
            std::sync::Arc::new(EtcdDatastore::connect(&config, Duration::from_secs(10)).unwrap());
        let other: std::sync::Arc<dyn Datastore> =
            std::sync::Arc::new(EtcdDatastore::connect(&config, Duration::from_secs(10)).unwrap());
        let (a, b) = (Nodes::new(std::sync::Arc::clone(&store)), Nodes::new(other));
        let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(a.check("w1", "pw-1").unwrap(), Binding::Free, "{name}");
        a.bind("w1", "pw-1", &[ip], now).unwrap();
        // The other server sees it; another password is refused there.
        assert!(b.check("w1", "other").is_err(), "{name}");
        assert!(
            matches!(b.check("w1", "pw-1").unwrap(), Binding::Matches(_)),
            "{name}"
        );
        // Two first binds of one name on two servers at once: one wins.
        let (x, y) = std::thread::scope(|s| {
            let x = s.spawn(|| a.bind("race", "pw-a", &[ip], now).is_ok());
            let y = s.spawn(|| b.bind("race", "pw-b", &[ip], now).is_ok());
            (x.join().unwrap(), y.join().unwrap())
        });
        assert!(x ^ y, "{name}: exactly one bind wins ({x} {y})");
        // Records change at the revision read, and are deleted so.
        a.issued("w1", "client-kubelet", now + time::Duration::days(365), now)
            .unwrap();
        let listed = b.list().unwrap();
        assert!(
            listed
                .iter()
                .any(|(n, r)| n == "w1" && !r.certificates.is_empty()),
            "{name}"
        );
        assert!(b.delete("w1").unwrap(), "{name}");
        assert!(!a.delete("w1").unwrap(), "{name}");
        assert_eq!(a.check("w1", "anything").unwrap(), Binding::Free, "{name}");
        // The snapshot: a k3s bootstrap key written by etcdctl, read back with its revision.
        let (ok, out) = kine.etcdctl(&["put", "/bootstrap/abcdef012345", "{}"], "");
        assert!(ok, "{name}: {out}");
        let snapshot = store.snapshot(BOOTSTRAP_PREFIX).unwrap();
        assert_eq!(
            snapshot
                .entries
                .get("/bootstrap/abcdef012345")
                .map(Vec::as_slice),
            Some(&b"{}"[..]),
            "{name}"
        );
        assert!(snapshot.revision > 0, "{name}");
    }
}

/// The init lock in kine's shapes, on kine and on etcd alike: one holder at a time, a waiter
/// told "busy" after its wait, the lock free again once released, and a dead holder's lock
/// (never renewed) taken over once it expires.
#[test]
fn the_init_lock_works_through_kine() {
    use rotor::datastore::{Datastore, DatastoreError, EtcdConfig, EtcdDatastore, INIT_LOCK};
    if !require_command("etcdctl") {
        return;
    }
    let Some(bin) = kine_bin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::sqlite(&tmp.path().join("sqlite"));
    let kine = Kine::start(&bin, &db, &tmp.path().join("kine"));
    let config = EtcdConfig::new(&kine.url(), None, None, None).unwrap();
    let a = EtcdDatastore::connect(&config, Duration::from_secs(5)).unwrap();
    let b = EtcdDatastore::connect(&config, Duration::from_secs(5)).unwrap();
    let held = a.lock_init(Duration::from_secs(5)).unwrap();
    // Held past a renewal: the other waits, then is told busy.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        matches!(
            b.lock_init(Duration::from_secs(1)),
            Err(DatastoreError::Busy { .. })
        ),
        "a second holder"
    );
    drop(held);
    let again = b.lock_init(Duration::from_secs(5)).unwrap();
    drop(again);
    // A holder that died: its record stays until it expires, then the next one takes it.
    let expires = rotor::clock::system_now().unix_timestamp() + 2;
    let (ok, out) = kine.etcdctl(
        &[
            "put",
            INIT_LOCK,
            &format!("{{\"holder\":\"dead\",\"expires\":{expires}}}"),
        ],
        "",
    );
    assert!(ok, "{out}");
    let started = Instant::now();
    let taken = a.lock_init(Duration::from_secs(20)).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "taken before it expired"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    drop(taken);
    let (ok, out) = kine.etcdctl(&["get", INIT_LOCK, "--print-value-only"], "");
    assert!(ok && out.trim().is_empty(), "released: {out}");
}
