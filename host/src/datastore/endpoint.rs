//! Which datastore a server keeps its CA material in, as `--datastore-endpoint` names it (k3s's
//! flag): an etcd cluster, or kine, by its etcd URLs; or kine's SQLite database itself, offline,
//! by `sqlite://PATH`. Recorded in `rotor.json` at init.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Datastore, DatastoreError, EtcdConfig, EtcdConfigError, EtcdDatastore, SqliteConfig,
    SqliteDatastore,
};

/// A datastore outside the data dir.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DatastoreConfig {
    /// etcd, or kine serving the etcd API (on SQLite, PostgreSQL, MySQL).
    Etcd(EtcdConfig),
    /// kine's SQLite database, read and written directly while nothing serves it.
    Sqlite(SqliteConfig),
}

impl DatastoreConfig {
    /// The datastore `endpoint` names (`https://…`, `http://…`, or `sqlite://PATH`, k3s's
    /// DSN with its `?…` options accepted and ignored), with the TLS files of an etcd.
    pub fn new(
        endpoint: &str,
        ca_file: Option<PathBuf>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
    ) -> Result<DatastoreConfig, EtcdConfigError> {
        let bad = |reason: String| EtcdConfigError {
            field: "endpoint",
            reason,
        };
        let endpoint = endpoint.trim();
        if let Some(rest) = endpoint.strip_prefix("sqlite://") {
            if ca_file.is_some() || cert_file.is_some() || key_file.is_some() {
                return Err(bad(
                    "TLS files were given for a sqlite:// endpoint (a local file)".into(),
                ));
            }
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(bad(format!(
                    "'{endpoint}' names no database file (sqlite:///var/lib/rancher/k3s/server/db/state.db)"
                )));
            }
            let sqlite = std::path::absolute(path).map_err(|e| bad(format!("{path}: {e}")))?;
            return Ok(DatastoreConfig::Sqlite(SqliteConfig { sqlite }));
        }
        if endpoint.starts_with("unix://") || endpoint.starts_with("unixs://") {
            return Err(bad(format!(
                "'{endpoint}' is a unix socket: rotor reaches etcd and kine over TCP (http:// or \
                 https://HOST:PORT); for a stopped k3s server, give its SQLite database \
                 (sqlite://<data-dir>/server/db/state.db)"
            )));
        }
        for scheme in ["postgres://", "mysql://", "nats://"] {
            if endpoint.starts_with(scheme) {
                return Err(bad(format!(
                    "rotor reaches this database through kine, as k3s does: run `kine --endpoint '{endpoint}'` \
                     and give its etcd URL (http://127.0.0.1:2379)"
                )));
            }
        }
        EtcdConfig::new(endpoint, ca_file, cert_file, key_file).map(DatastoreConfig::Etcd)
    }

    /// Whether recorded settings are usable (run before connecting).
    pub fn check(&self) -> Result<(), EtcdConfigError> {
        match self {
            DatastoreConfig::Etcd(etcd) => etcd.check(),
            DatastoreConfig::Sqlite(sqlite) if sqlite.sqlite.is_absolute() => Ok(()),
            DatastoreConfig::Sqlite(_) => Err(EtcdConfigError {
                field: "endpoint",
                reason: "the SQLite database path is not absolute".into(),
            }),
        }
    }

    /// For messages.
    pub fn describe(&self) -> String {
        match self {
            DatastoreConfig::Etcd(etcd) => etcd.describe(),
            DatastoreConfig::Sqlite(sqlite) => sqlite.describe(),
        }
    }

    /// Connect to (open) the store; every request to a remote one is bounded by `timeout`.
    pub fn open(&self, timeout: Duration) -> Result<Box<dyn Datastore>, DatastoreError> {
        Ok(match self {
            DatastoreConfig::Etcd(etcd) => Box::new(EtcdDatastore::connect(etcd, timeout)?),
            DatastoreConfig::Sqlite(sqlite) => Box::new(SqliteDatastore::open(sqlite)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_told_apart() {
        let sqlite = DatastoreConfig::new(
            "sqlite:///var/lib/rancher/k3s/server/db/state.db?_journal_mode=WAL&cache=shared",
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            sqlite,
            DatastoreConfig::Sqlite(SqliteConfig {
                sqlite: "/var/lib/rancher/k3s/server/db/state.db".into()
            })
        );
        let json = serde_json::to_string(&sqlite).unwrap();
        assert_eq!(
            serde_json::from_str::<DatastoreConfig>(&json).unwrap(),
            sqlite
        );
        let etcd = DatastoreConfig::new("http://127.0.0.1:2379", None, None, None).unwrap();
        assert!(matches!(etcd, DatastoreConfig::Etcd(_)));
        let json = serde_json::to_string(&etcd).unwrap();
        assert_eq!(
            serde_json::from_str::<DatastoreConfig>(&json).unwrap(),
            etcd
        );
        for refused in [
            "sqlite://",
            "postgres://kine@127.0.0.1/kine",
            "mysql://root@tcp(127.0.0.1:3306)/kine",
        ] {
            assert!(
                DatastoreConfig::new(refused, None, None, None).is_err(),
                "{refused}"
            );
        }
        assert!(DatastoreConfig::new("sqlite:///x.db", Some("ca.crt".into()), None, None).is_err());
    }
}
