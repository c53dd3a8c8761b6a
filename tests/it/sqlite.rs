//! kine's SQLite database read and written by rotor directly, with kine stopped (a stopped k3s
//! server's `server/db/state.db`), proved both ways against the real kine: what kine wrote,
//! rotor reads; what rotor wrote, kine started again on the file serves through the etcd API
//! with its revision history. While kine has the database open, rotor refuses it and changes
//! nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::datastores::{SharedStore, init_ok, init_server, printed_token, same_cas};
use crate::kine::{Database, Kine, Proc, kine_bin};

/// A k3s-style data dir whose `server/db/state.db` kine made, and kine serving it on TCP.
struct K3sDb {
    database: Database,
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl K3sDb {
    fn new(tmp: &Path) -> Option<K3sDb> {
        if !require_command("etcdctl") {
            return None;
        }
        let bin = kine_bin()?;
        let dir = tmp.join("k3s");
        let database = Database::sqlite(&dir.join("server/db"));
        Some(K3sDb { database, bin, dir })
    }

    fn state_db(&self) -> std::path::PathBuf {
        self.dir.join("server/db/state.db")
    }

    fn endpoint(&self) -> String {
        format!("sqlite://{}", self.state_db().display())
    }

    fn kine(&self) -> Kine {
        Kine::start(&self.bin, &self.database, &self.dir.join("kine-logs"))
    }
}

/// `etcdctl get KEY -w json` through `kine`: (create_revision, mod_revision, value), if any.
fn get_json(kine: &Kine, key: &str, rev: Option<i64>) -> Option<(i64, i64, Vec<u8>)> {
    let mut args = vec!["get", key, "-w", "json"];
    let rev = rev.map(|r| format!("--rev={r}"));
    if let Some(r) = &rev {
        args.push(r);
    }
    let out = kine.ctl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kv = json["kvs"].as_array()?.first()?.clone();
    let b64 = |v: &serde_json::Value| {
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v.as_str().unwrap_or_default(),
        )
        .unwrap()
    };
    Some((
        kv["create_revision"].as_i64().unwrap_or(0),
        kv["mod_revision"].as_i64().unwrap_or(0),
        b64(&kv["value"]),
    ))
}

/// A store as `rotor init` is pointed at it: only its flags (`--datastore-endpoint URL`).
struct Endpoint(String);

impl SharedStore for Endpoint {
    fn flags(&self) -> Vec<String> {
        vec!["--datastore-endpoint".into(), self.0.clone()]
    }
    fn keys(&self) -> Vec<String> {
        unreachable!("not used here")
    }
    fn value(&self, _: &str) -> Vec<u8> {
        unreachable!("not used here")
    }
    fn stop(&mut self, _: crate::datastores::Outage) {}
    fn start(&mut self, _: crate::datastores::Outage) {}
    fn named(&self) -> String {
        String::new()
    }
}

/// Server A initializes through kine (k3s's record format, at k3s's key); with kine running,
/// server B is refused the file; with kine stopped, B joins from the file (what kine wrote,
/// rotor reads), then rotates the token and the service-account key offline; kine started
/// again serves B's records with their history (the old record at its old revision), and A,
/// through kine, takes B's rotation with the new token.
#[test]
fn what_kine_wrote_rotor_reads_offline_and_what_rotor_wrote_kine_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(db) = K3sDb::new(tmp.path()) else {
        return;
    };
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let mut kine = db.kine();
    let (_, token) = init_ok(&a, 1, &Endpoint(kine.url()), &["--datastore-format", "k3s"]);
    let old_key = rotor::datastore::bootstrap_key(&token.password);
    let (created, first_rev, first_value) = get_json(&kine, &old_key, None).unwrap();
    assert_eq!(created, first_rev, "a create");

    // kine has the file open: refused, nothing written.
    let offline = Endpoint(db.endpoint());
    let (code, out, err) = init_server(&b, 2, &offline, &["--token", &token.render()]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("the database is in use") && err.contains("stop k3s"),
        "{err}"
    );
    assert!(!b.join(".rotor").exists(), "nothing written");

    // kine stopped: B joins from the file.
    kine.kill();
    let (out, _) = init_ok(&b, 2, &offline, &["--token", &token.render()]);
    assert!(out.contains("joined the cluster"), "{out}");
    same_cas(&a, &b);
    let out = rotor_ok(&b, &["token", "rotate", "--new-token", "rotated-offline"]);
    let new = printed_token(&out);
    rotor_ok(&b, &["certificate", "rotate-service-key"]);
    rotor_ok(&b, &["start"]);

    // kine again, on the file rotor wrote (at the address A recorded).
    kine.resume();
    let new_key = rotor::datastore::bootstrap_key(&new.password);
    assert_eq!(
        get_json(&kine, &old_key, None),
        None,
        "the old record deleted"
    );
    let (created, modified, value) = get_json(&kine, &new_key, None).unwrap();
    assert!(
        created > first_rev && modified > created,
        "created at {created}, then replaced at {modified}"
    );
    let plain = rotor::datastore::open_record(&new.password, &new_key, &value).unwrap();
    assert!(String::from_utf8_lossy(&plain).contains("\"ServiceKey\""));
    // History: the old record at its first revision, the new one as first created.
    assert_eq!(
        get_json(&kine, &old_key, Some(first_rev)).map(|(_, m, v)| (m, v)),
        Some((first_rev, first_value))
    );
    assert_eq!(
        get_json(&kine, &new_key, Some(created)).map(|(c, m, _)| (c, m)),
        Some((created, created))
    );

    // A takes B's offline rotation through kine, with the new token only.
    let (code, _, err) = rotor_at(&a, &["start"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("token does not decrypt"), "{err}");
    rotor_ok(&a, &["start", "--token", &new.render()]);
    assert_eq!(
        std::fs::read(a.join("server/tls/service.current.key")).unwrap(),
        std::fs::read(b.join("server/tls/service.current.key")).unwrap()
    );
}

/// A k3s data dir holding kine's `server/db/state.db`: `rotor init` without an endpoint keeps
/// the CA material there (the default), in k3s's record format at k3s's key, read back by kine.
/// While a kine answers on `server/kine.sock` (as k3s runs it), every command is refused with
/// what to do, and nothing changes.
#[test]
fn a_k3s_data_dir_with_state_db_defaults_to_it_and_a_live_kine_socket_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(db) = K3sDb::new(tmp.path()) else {
        return;
    };
    // kine makes the database (as k3s's first start does), then stops.
    drop(db.kine());
    let dir = &db.dir;
    let (code, out, err) = rotor_at(
        dir,
        &[
            "init",
            "--node-name",
            "server-1",
            "--node-ip",
            "127.0.0.1",
            "--datastore-format",
            "k3s",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let token = printed_token(&out);
    let config = std::fs::read_to_string(dir.join("rotor.json")).unwrap();
    assert!(config.contains("\"sqlite\""), "{config}");
    assert!(
        !dir.join("server/db/.kv").exists(),
        "no datastore of rotor's"
    );
    let key = rotor::datastore::bootstrap_key(&token.password);
    {
        let kine = db.kine();
        let (_, _, value) = get_json(&kine, &key, None).expect("the record, served by kine");
        let plain = rotor::datastore::open_record(&token.password, &key, &value).unwrap();
        assert!(String::from_utf8_lossy(&plain).contains("\"ServerCA\""));
    }

    // k3s's kine on its socket: refused.
    let socket = dir.join("server/kine.sock");
    let log = std::fs::File::create(tmp.path().join("kine-socket.log")).unwrap();
    let child = Command::new(&db.bin)
        .args(["--listen-address", &format!("unix://{}", socket.display())])
        .args(["--endpoint", &db.database.endpoint])
        .args(["--metrics-bind-address", "0"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _kine = Proc::from(child);
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "no kine socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    // (The socket is no file to compare: rotor's own files are.)
    let files = || {
        (
            tree(&dir.join(".rotor/generations")),
            tree(&dir.join("server/tls")),
        )
    };
    let before = files();
    for cmd in [
        vec!["start"],
        vec!["certificate", "rotate-service-key"],
        vec!["token", "rotate", "--new-token", "refused-password"],
    ] {
        let (code, out, err) = rotor_at(dir, &cmd);
        assert_ne!(code, 0, "{cmd:?}: {out}");
        assert!(
            err.contains("the database is in use")
                && err.contains("kine.sock")
                && err.contains("stop k3s"),
            "{cmd:?}: {err}"
        );
        let after = files();
        let changed: Vec<_> = after
            .0
            .iter()
            .chain(&after.1)
            .filter(|(k, v)| before.0.get(*k) != Some(v) && before.1.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(
                before
                    .0
                    .keys()
                    .filter(|k| !after.0.contains_key(*k))
                    .cloned(),
            )
            .collect();
        assert!(
            changed.is_empty(),
            "{cmd:?} changed the data dir: {changed:?}\n{err}"
        );
    }
    drop(_kine);
    std::fs::remove_file(&socket).ok();
    rotor_ok(dir, &["start"]);
}
