//! `rotor init --adopt`: take over, as it is, a data dir another tool made: a k3s or RKE2
//! server's (its `server/tls`, `server/token`, `server/cred`, and the bootstrap record in its
//! datastore: kine's SQLite, its managed etcd, or an endpoint given) or a kubeadm control
//! plane's `/etc/kubernetes` (`pki/` and the kubeconfigs).
//!
//! Nothing is issued and no file is rewritten: the first generation holds every file found at
//! a managed path, byte for byte, and rotor adds only its own (`rotor.json`, the recorded
//! bundle; for kubeadm, which keeps no token or datastore, `rotor-token` and the record of its
//! CAs in rotor's datastore). Everything is checked first, and a half-made or foreign dir is
//! refused with the list of what is wrong, nothing changed: every CA with its key (kubeadm's
//! `ca` may come without one, the external-CA mode), every certificate of the layout signed by
//! its CA and beside its key, the service-account key, k3s's token (pinning the server CA, if
//! it pins one) and the record it opens, whose CAs must be the files'. Files at managed paths
//! that the layout does not name are kept and listed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::config::{CONFIG_FILE, POLICY_DIR, Profile};
use super::init::{
    InitOptions, adopted_files, check_init_permissions, initial_config, lock_for_init,
    record_bundle,
};
use super::{Change, Cluster, ClusterError, LeafOnDisk, LoadedCa, Result, load_external_ca};
use crate::datadir::{META, Options};
use crate::datastore::{
    BOOTSTRAP_PREFIX, Bootstrap, BootstrapData, DatastoreConfig, DatastoreError, RecordFormat,
    record_format,
};
use crate::fs::{Kind, PRIVATE_FILE, PUBLIC_FILE, Root};
use crate::pki::{CaSigner, PrivateKey, Token, ca_hash, generate_password};
use crate::policy::Bundle;

/// What `rotor init --adopt` found and recorded.
#[derive(Debug)]
pub(crate) struct AdoptReport {
    /// The generation the data dir is at now.
    pub generation: Option<u64>,
    /// The datastore it uses.
    pub datastore: String,
    /// The CAs taken over (with their keys), and those without a key here (external).
    pub cas: Vec<&'static str>,
    pub external_cas: Vec<&'static str>,
    /// The certificates taken over.
    pub certificates: Vec<String>,
    /// Files at managed paths that the layout does not name: kept as they are.
    pub unrecognised: Vec<PathBuf>,
    /// The token file, and the token when rotor made it (kubeadm keeps none).
    pub token_file: PathBuf,
    pub new_token: Option<Token>,
}

/// The datastore a k3s or RKE2 data dir defaults to when it has none of rotor's
/// (`server/db/.kv`): its managed etcd when it has one (`server/db/etcd/`), reached as k3s
/// reaches it, at `https://127.0.0.1:2379` with `server/tls/etcd/client.crt|key` and trusting
/// `server/tls/etcd/server-ca.crt`; else (k3s) kine's SQLite database `server/db/state.db` when
/// it holds one (k3s's default datastore). `None` otherwise (the directory datastore).
pub(crate) fn k3s_default_datastore(
    data_dir: &Path,
    profile: Profile,
) -> Result<Option<DatastoreConfig>> {
    if !profile.is_k3s_family() {
        return Ok(None);
    }
    let Ok(root) = Root::open_ambient(data_dir) else {
        return Ok(None);
    };
    let db = Path::new("server/db");
    // rotor's directory datastore keeps its revisions in `server/db/.kv`.
    if root.exists(&db.join(".kv")) {
        return Ok(None);
    }
    let absolute = |rel: &Path| {
        std::path::absolute(root.path().join(rel))
            .map_err(|e| crate::fs::FsError::io(root.display(rel), e))
    };
    if root.kind(&db.join("etcd"))? == Some(Kind::Dir) {
        let tls = |name: &str| absolute(&Path::new("server/tls/etcd").join(name));
        let etcd = crate::datastore::EtcdConfig::new(
            "https://127.0.0.1:2379",
            Some(tls("server-ca.crt")?),
            Some(tls("client.crt")?),
            Some(tls("client.key")?),
        )
        .map_err(|e| ClusterError::BadInput {
            input: super::Input::DatastoreEndpoint,
            reason: e.reason,
        })?;
        return Ok(Some(DatastoreConfig::Etcd(etcd)));
    }
    if profile != Profile::K3s || root.kind(&db.join("state.db"))? != Some(Kind::File) {
        return Ok(None);
    }
    Ok(Some(DatastoreConfig::Sqlite(
        crate::datastore::SqliteConfig {
            sqlite: absolute(&db.join("state.db"))?,
        },
    )))
}

/// Take over the data dir at `data_dir` as it is (see the module docs).
pub(crate) fn adopt(
    data_dir: &Path,
    opts: InitOptions,
    bundle: &Bundle,
    options: &Options,
) -> Result<AdoptReport> {
    let root = Root::open_ambient(data_dir).map_err(|e| {
        if e.is_not_found() {
            ClusterError::Refused(format!(
                "cannot adopt {}: no such directory",
                data_dir.display()
            ))
        } else {
            e.into()
        }
    })?;
    root.refuse_if_shared(Path::new("."))?;
    if root.kind(Path::new(META))?.is_some() {
        return Err(ClusterError::AlreadyInitialized {
            path: data_dir.to_path_buf(),
            what: format!("{META}: rotor manages it already"),
        });
    }
    let mut cluster = Cluster::for_init(root, None, initial_config(&opts), options)?;
    let entries = cluster.layout.entries();
    check_init_permissions(&cluster, &entries)?;
    let mut problems = Vec::new();
    let cas = check_cas(&cluster, opts.now, &mut problems)?;
    let certificates = check_leaves(&cluster, &cas, &mut problems)?;
    let service_pem = check_service_key(&cluster, &mut problems)?;
    let k3s_family = cluster.config.profile.is_k3s_family();
    let mut change = adopted_files(&cluster, &entries)?;
    for kc in &cluster.layout.file_kubeconfigs {
        if !change.files.contains_key(&kc.file) {
            problems.push(format!("{}: missing", cluster.path(&kc.file).display()));
        }
    }
    let mut new_token = None;
    if k3s_family {
        if let Some(format) = check_k3s_record(&cluster, &cas, &mut problems)? {
            cluster.config.datastore_format = format;
        }
    } else if problems.is_empty() {
        // kubeadm keeps no token and no datastore: rotor's own, for its CAs.
        let token = rotor_token(&cas, cluster.layout.token_ca().name, opts.now)?;
        let mut data = BootstrapData::default();
        let at = crate::clock::system_now();
        for spec in &cluster.layout.cas {
            let Some(ca) = cas.iter().find(|(n, _)| *n == spec.name).map(|(_, c)| c) else {
                continue;
            };
            data.set(spec.cert_field, ca.bundle_pem().to_vec(), at);
            if ca.signer().is_some() {
                data.set(spec.key_field, cluster.live.read(&spec.key)?, at);
            }
        }
        if let Some(pem) = &service_pem {
            data.set(cluster.layout.service_key.field, pem.clone(), at);
        }
        change.ops.push(crate::datastore::bootstrap_put(
            &token.password,
            &data,
            cluster.config.datastore_format,
        )?);
        change.write(
            cluster.layout.token_file.clone(),
            format!("{}\n", token.render()).into_bytes(),
            PRIVATE_FILE,
        );
        new_token = Some(token);
    }
    if !problems.is_empty() {
        return Err(ClusterError::Refused(format!(
            "cannot adopt {} as a {} data dir; nothing was changed:\n  - {}",
            data_dir.display(),
            cluster.config.profile.as_str(),
            problems.join("\n  - ")
        )));
    }
    cluster.config.external_cas = cas
        .iter()
        .filter(|(_, c)| c.signer().is_none())
        .map(|(n, _)| n.to_string())
        .collect();
    cluster.config.custom_ca = true;
    let unrecognised = unrecognised(&cluster, &change);
    record_bundle(&mut change, bundle);
    change.write(
        PathBuf::from(CONFIG_FILE),
        cluster.config.to_json()?,
        PUBLIC_FILE,
    );
    cluster.dir = Some(lock_for_init(&cluster.root, options, data_dir)?);
    let committed = cluster.commit(change, true)?;
    Ok(AdoptReport {
        generation: committed.generation,
        datastore: cluster.datastore_name(),
        cas: cas
            .iter()
            .filter(|(_, c)| c.signer().is_some())
            .map(|(n, _)| *n)
            .collect(),
        external_cas: cas
            .iter()
            .filter(|(_, c)| c.signer().is_none())
            .map(|(n, _)| *n)
            .collect(),
        certificates,
        unrecognised,
        token_file: cluster.path(&cluster.layout.token_file),
        new_token,
    })
}

/// Every CA of the layout, with its key (kubeadm's `ca` may come without: external), valid now.
fn check_cas(
    cluster: &Cluster,
    now: time::OffsetDateTime,
    problems: &mut Vec<String>,
) -> Result<Vec<(&'static str, LoadedCa)>> {
    let mut cas = Vec::new();
    for spec in &cluster.layout.cas {
        let cert_path = cluster.path(&spec.cert).display().to_string();
        let read = |p: &PathBuf| match cluster.live.read(p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        };
        let loaded = match (read(&spec.cert)?, read(&spec.key)?) {
            (Some(cert), Some(key)) => CaSigner::load(&cert_path, &cert, &key)
                .map(LoadedCa::Signing)
                .map_err(|e| e.to_string()),
            (Some(cert), None) if spec.name == "ca" && !cluster.config.profile.is_k3s_family() => {
                load_external_ca(&cert_path, &cert).map_err(|e| e.to_string())
            }
            (Some(_), None) => Err(format!(
                "{cert_path}: the CA's key {} is missing",
                cluster.path(&spec.key).display()
            )),
            (None, _) => Err(format!("{cert_path}: missing (the {} CA)", spec.name)),
        };
        match loaded {
            Ok(ca) if ca.facts().not_after <= now => problems.push(format!(
                "{cert_path}: the CA expired on {}",
                crate::clock::rfc3339(ca.facts().not_after)
            )),
            Ok(ca) => cas.push((spec.name, ca)),
            Err(reason) => problems.push(reason),
        }
    }
    Ok(cas)
}

/// Every certificate of the layout: present, beside its key, signed by its CA.
fn check_leaves(
    cluster: &Cluster,
    cas: &[(&'static str, LoadedCa)],
    problems: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut kept = Vec::new();
    for leaf in &cluster.layout.leaves {
        let path = cluster.path(leaf.storage.cert_path()).display().to_string();
        let on_disk = match cluster.read_leaf(leaf) {
            Ok(l) => l,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let ca = cas.iter().find(|(n, _)| *n == leaf.ca).map(|(_, c)| c);
        match on_disk {
            LeafOnDisk::Missing(why) => problems.push(format!("{path}: {why}")),
            LeafOnDisk::Present {
                key_matches: false, ..
            } => problems.push(format!("{path}: its key is not the certificate's")),
            LeafOnDisk::Present { der, .. } => match ca {
                Some(ca) if crate::pki::signed_by(&der, ca.cert_der()) => {
                    kept.push(leaf.name.clone());
                }
                Some(_) => problems.push(format!("{path}: not signed by the {} CA", leaf.ca)),
                // The CA itself is listed already.
                None => {}
            },
        }
    }
    Ok(kept)
}

/// The service-account key(s), every one a key.
fn check_service_key(cluster: &Cluster, problems: &mut Vec<String>) -> Result<Option<Vec<u8>>> {
    let sk = &cluster.layout.service_key;
    let path = cluster.path(&sk.adopt).display().to_string();
    match cluster.live.read(&sk.adopt) {
        Ok(pem) => match PrivateKey::all_from_pem(&path, &pem) {
            Ok(keys) if !keys.is_empty() => Ok(Some(pem)),
            Ok(_) => {
                problems.push(format!("{path}: no private key"));
                Ok(None)
            }
            Err(e) => {
                problems.push(e.to_string());
                Ok(None)
            }
        },
        Err(e) if e.is_not_found() => {
            problems.push(format!("{path}: missing (the service-account key)"));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// k3s's token (its file) and the bootstrap record it opens in the datastore, whose CAs must
/// be the files'. The record's format, when it is found.
fn check_k3s_record(
    cluster: &Cluster,
    cas: &[(&'static str, LoadedCa)],
    problems: &mut Vec<String>,
) -> Result<Option<RecordFormat>> {
    let token_path = cluster.path(&cluster.layout.token_file);
    let token = match cluster.live.read(&cluster.layout.token_file) {
        Ok(bytes) => match Token::parse(String::from_utf8_lossy(&bytes).trim()) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: {e}", token_path.display()));
                return Ok(None);
            }
        },
        Err(e) if e.is_not_found() => {
            problems.push(format!(
                "{}: missing (the join token)",
                token_path.display()
            ));
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if let (Some(pinned), Some((_, ca))) = (
        &token.ca_hash,
        cas.iter()
            .find(|(n, _)| *n == cluster.layout.token_ca().name),
    ) {
        let hash = ca_hash(ca.bundle_pem(), ca.bundle_der(), crate::clock::system_now());
        if *pinned != hash {
            problems.push(format!(
                "{}: the token pins CA hash {pinned}, the server CA's is {hash}",
                token_path.display()
            ));
        }
    }
    let Some(store) = cluster.store.as_deref() else {
        problems.push(
            "no k3s datastore found (server/db/state.db, server/db/etcd/): give the server's \
             --datastore-endpoint"
                .into(),
        );
        return Ok(None);
    };
    let snapshot = match store.snapshot(BOOTSTRAP_PREFIX) {
        Ok(s) => s,
        Err(e @ DatastoreError::InUse { .. }) => return Err(e.into()),
        Err(e) => {
            problems.push(e.to_string());
            return Ok(None);
        }
    };
    let bootstrap = Bootstrap::new(store, &snapshot, &token.password);
    let key = bootstrap.key();
    let data = match bootstrap.load() {
        Ok(Some(data)) => data,
        Ok(None) => {
            problems.push(format!(
                "{}: no bootstrap record (k3s keeps one at {key} for this token)",
                store.describe(&key)
            ));
            return Ok(None);
        }
        Err(e) => {
            problems.push(e.to_string());
            return Ok(None);
        }
    };
    for spec in &cluster.layout.cas {
        let Some((_, ca)) = cas.iter().find(|(n, _)| *n == spec.name) else {
            continue;
        };
        let same_cert = data
            .get(spec.cert_field)
            .and_then(|f| crate::facts::certificate_ders("record", &f.content).ok())
            .and_then(|d| d.into_iter().next())
            .is_some_and(|der| der == ca.cert_der());
        let same_key = data.get(spec.key_field).map(|f| f.content.clone())
            == cluster.live.read(&spec.key).ok();
        if !same_cert || !same_key {
            problems.push(format!(
                "{}: the datastore's {} is not {}",
                store.describe(&key),
                if same_cert {
                    spec.key_field
                } else {
                    spec.cert_field
                },
                cluster
                    .path(if same_cert { &spec.key } else { &spec.cert })
                    .display()
            ));
        }
    }
    Ok(snapshot.get(&key).and_then(record_format))
}

/// A token for a kubeadm data dir, pinned to its token CA.
fn rotor_token(
    cas: &[(&'static str, LoadedCa)],
    token_ca: &str,
    now: time::OffsetDateTime,
) -> Result<Token> {
    let ca = cas
        .iter()
        .find(|(n, _)| *n == token_ca)
        .map(|(_, c)| c)
        .ok_or(ClusterError::Internal("the token CA was not loaded"))?;
    Ok(Token {
        ca_hash: Some(ca_hash(ca.bundle_pem(), ca.bundle_der(), now)),
        user: "server".into(),
        password: generate_password()?,
    })
}

/// The files the change carries over that the layout does not name.
fn unrecognised(cluster: &Cluster, change: &Change) -> Vec<PathBuf> {
    let known: BTreeSet<PathBuf> = cluster.layout.known_files().into_iter().collect();
    change
        .files
        .keys()
        .filter(|p| !known.contains(*p) && !p.starts_with(POLICY_DIR))
        .cloned()
        .collect()
}
