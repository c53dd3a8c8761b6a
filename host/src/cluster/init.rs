//! `rotor init`: create the cluster PKI, or adopt CAs already in place.
//!
//! Everything is decided and issued in memory first (CAs generated or adopted, names checked
//! by the SAN policy, the token computed, every leaf signed); only then is anything written,
//! the datastore record and `rotor.json` last. An initialized data dir is refused untouched.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use time::OffsetDateTime;

use super::config::{CONFIG_FILE, ClusterConfig, POLICY_DIR, Profile};
use super::layout::Storage;
use super::{
    Change, Cluster, ClusterError, Input, IssuedLeaf, LeafOnDisk, LoadedCa, Result, check_names,
    kubeconfig,
};
use crate::contract::SanStage;
use crate::datadir::{DataDir, Entry, META, Options};
use crate::datastore::{
    BOOTSTRAP_PREFIX, Bootstrap, BootstrapData, DatastoreConfig, DatastoreError,
    DirectoryDatastore, RecordFormat,
};
use crate::fs::{Kind, PRIVATE_FILE, PUBLIC_FILE, Root, TEMP_MARKER};
use crate::pki::{KeyType, PrivateKey, Token, ca_hash, generate_password};
use crate::policy::Bundle;

mod cas;

use cas::{PlannedCa, join_cas, plan_cas};

/// What `rotor init` was asked.
#[derive(Clone, Debug)]
pub(crate) struct InitOptions {
    pub profile: Profile,
    pub node_name: String,
    pub node_ips: Vec<IpAddr>,
    pub tls_sans: Vec<String>,
    pub cluster_domain: String,
    pub service_cidr: Option<IpNet>,
    /// A token to use (`K10...` or a bare password); generated when absent.
    pub token: Option<String>,
    pub key_type: Option<KeyType>,
    pub datastore_format: RecordFormat,
    /// A datastore outside the data dir (etcd, kine, kine's SQLite database) instead of the
    /// directory in the data dir.
    pub datastore: Option<DatastoreConfig>,
    pub now: OffsetDateTime,
}

/// What `rotor init` did.
#[derive(Debug)]
pub(crate) struct InitReport {
    pub token: Token,
    pub generated_cas: Vec<&'static str>,
    /// CAs taken from a shared datastore another server initialized (a join).
    pub joined_cas: Vec<&'static str>,
    pub adopted_cas: Vec<&'static str>,
    pub external_cas: Vec<&'static str>,
    pub issued: Vec<String>,
    /// Leaves found in place and kept (external-CA mode).
    pub kept: Vec<String>,
    /// kubeadm's `--discovery-token-ca-cert-hash` value.
    pub discovery_hash: Option<String>,
    pub token_file: PathBuf,
}

fn validate_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadInput {
            input: Input::NodeName,
            reason: format!(
                "'{name}' is not a valid node name (lowercase RFC 1123 subdomain: a-z, 0-9, '-', '.')"
            ),
        })
    }
}

pub(crate) fn init(
    data_dir: &Path,
    opts: InitOptions,
    bundle: &Bundle,
    options: &Options,
) -> Result<InitReport> {
    validate_node_name(&opts.node_name)?;
    if opts.profile.is_k3s_family() && opts.key_type.is_some_and(|k| k != KeyType::EcdsaP256) {
        return Err(ClusterError::BadInput {
            input: Input::KeyType,
            reason: "k3s and RKE2 use ECDSA P-256 for every CA and leaf; a key type applies to the kubeadm profile only".into(),
        });
    }
    if opts.cluster_domain.is_empty() || opts.cluster_domain.contains(char::is_whitespace) {
        return Err(ClusterError::BadInput {
            input: Input::ClusterDomain,
            reason: format!("'{}' is not a domain", opts.cluster_domain),
        });
    }
    let root = Root::create_ambient(data_dir)?;
    root.refuse_if_shared(Path::new("."))?;
    let unlocked = root.kind(Path::new(META))? != Some(Kind::Dir);
    let committing = std::cell::Cell::new(false);
    match init_in(data_dir, root, opts, bundle, options, &committing) {
        // Deciding without the lock, it may have found another init's work half visible: the
        // other init won. (Not for errors of its own commit: those are its own.)
        Err(e)
            if unlocked
                && !committing.get()
                && Root::open_ambient(data_dir)
                    .and_then(|r| r.kind(&Path::new(META).join("current")))
                    .is_ok_and(|k| k.is_some()) =>
        {
            tracing::debug!("a concurrent init won: {e}");
            Err(ClusterError::AlreadyInitialized {
                path: data_dir.to_path_buf(),
                what: "another 'rotor init' initialized it meanwhile".into(),
            })
        }
        r => r,
    }
}

fn init_in(
    data_dir: &Path,
    root: Root,
    opts: InitOptions,
    bundle: &Bundle,
    options: &Options,
    committing: &std::cell::Cell<bool>,
) -> Result<InitReport> {
    if root.kind(Path::new(META))? != Some(Kind::Dir) {
        super::refuse_legacy(&root).map_err(|_| ClusterError::AlreadyInitialized {
            path: data_dir.to_path_buf(),
            what: format!("{CONFIG_FILE}, written by an earlier rotor"),
        })?;
    }
    // Where rotor has been before, it takes the lock and recovers first, and decides under
    // the lock. On a data dir it never wrote to, there is nothing to recover: it decides first
    // and takes the lock only to commit, so a refused init (a denied name, a partial custom CA
    // set) leaves nothing behind, not even its lock file.
    let dir = if root.kind(Path::new(META))? == Some(Kind::Dir) {
        Some(lock_for_init(&root, options, data_dir)?)
    } else {
        None
    };
    let mut cluster = Cluster::for_init(root, dir, initial_config(&opts), options)?;
    let entries = cluster.layout.entries();
    if cluster.dir.is_some() {
        cluster.tidy_locked()?;
    }
    check_init_permissions(&cluster, &entries)?;
    // A shared datastore: the first initialization of the cluster is one server's at a time
    // (held until this init ends); whoever comes next finds the record and joins.
    let _init_lock = match (&cluster.config.datastore, &cluster.store) {
        (Some(_), Some(store)) => Some(store.lock_init(options.lock_timeout)?),
        _ => None,
    };
    crate::fs::failpoint("init:decide");
    refuse_initialized_store(&cluster, data_dir)?;
    let joining = joined(&cluster, &opts)?;
    // A join keeps the record's format (a token rotation later writes it the same way).
    if joining.is_some()
        && let Some(token) = opts.token.as_deref().and_then(|t| Token::parse(t).ok())
    {
        let stored = Bootstrap::new(cluster.datastore()?, cluster.snapshot()?, &token.password)
            .stored_format();
        if let Some(format) = stored {
            cluster.config.datastore_format = format;
        }
    }

    // Check and decide everything in memory, then plan the one change.
    let decided = decide(&mut cluster, &opts, bundle, joining.as_ref())?;
    let change = plan(&cluster, &entries, bundle, &decided)?;

    if cluster.dir.is_none() {
        // Decided: now the lock, and a second look at what a concurrent init may have done.
        // (A shared datastore keeps the snapshot: the commit is conditioned on it.)
        cluster.dir = Some(lock_for_init(&cluster.root, options, data_dir)?);
        if cluster.config.datastore.is_none() {
            cluster.store =
                DirectoryDatastore::existing(&cluster.root, &cluster.layout.datastore_dir)?
                    .map(|s| Box::new(s) as Box<dyn crate::datastore::Datastore>);
            cluster.snapshot = std::sync::OnceLock::new();
            refuse_initialized_store(&cluster, data_dir)?;
        }
    }
    committing.set(true);
    cluster.commit(change, true)?;
    Ok(report(&cluster, decided))
}

/// Take the data dir's lock for `init`, finish what a dead writer left, and refuse a data dir
/// that has a live generation.
pub(super) fn lock_for_init(root: &Root, options: &Options, data_dir: &Path) -> Result<DataDir> {
    let mut dir = DataDir::lock_exclusive(root.try_clone()?, options.clone())?;
    super::check_permissions(&dir)?;
    super::recover(&mut dir)?;
    if let Some(n) = dir.live() {
        return Err(ClusterError::AlreadyInitialized {
            path: data_dir.to_path_buf(),
            what: format!("generation {n} is live"),
        });
    }
    Ok(dir)
}

/// The configuration `init` starts from (external CAs and custom-CA mode are decided later).
pub(super) fn initial_config(opts: &InitOptions) -> ClusterConfig {
    ClusterConfig {
        format: 1,
        profile: opts.profile,
        node_name: opts.node_name.clone(),
        node_ips: opts.node_ips.iter().map(|ip| ip.to_canonical()).collect(),
        tls_sans: opts.tls_sans.clone(),
        cluster_domain: opts.cluster_domain.clone(),
        service_cidr: opts
            .service_cidr
            .unwrap_or_else(|| opts.profile.default_service_cidr())
            .trunc(),
        key_type: opts
            .key_type
            .unwrap_or_else(|| opts.profile.default_key_type()),
        datastore_format: opts.datastore_format,
        external_cas: Vec::new(),
        custom_ca: false,
        datastore: opts.datastore.clone(),
    }
}

/// A data dir's own datastore that already holds a bootstrap record belongs to an initialized
/// cluster. (In a shared one, it means this server joins: see [`joined`].)
fn refuse_initialized_store(cluster: &Cluster, data_dir: &Path) -> Result<()> {
    if cluster.config.datastore.is_none()
        && cluster
            .snapshot()?
            .keys_under(BOOTSTRAP_PREFIX)
            .next()
            .is_some()
    {
        return Err(ClusterError::AlreadyInitialized {
            path: data_dir.to_path_buf(),
            what: format!("bootstrap data in {}", cluster.datastore_name()),
        });
    }
    Ok(())
}

/// A shared datastore that holds a cluster's bootstrap data: this server joins that cluster.
/// The token must open the record (nothing is decided otherwise).
fn joined(cluster: &Cluster, opts: &InitOptions) -> Result<Option<BootstrapData>> {
    if cluster.config.datastore.is_none() {
        return Ok(None);
    }
    let snapshot = cluster.snapshot()?;
    if snapshot.keys_under(BOOTSTRAP_PREFIX).next().is_none() {
        return Ok(None);
    }
    let Some(given) = &opts.token else {
        return Err(ClusterError::BadInput {
            input: Input::Token,
            reason: format!(
                "{} already holds a cluster's CA material: to join this server to that cluster, give the \
                 cluster's token (the one the first server's 'rotor init' or the last 'rotor token rotate' printed)",
                cluster.datastore_name()
            ),
        });
    };
    let token = Token::parse(given).map_err(|source| ClusterError::BadToken {
        input: Input::Token,
        source,
    })?;
    match Bootstrap::new(cluster.datastore()?, snapshot, &token.password).load() {
        Ok(Some(data)) => Ok(Some(data)),
        Ok(None) => Ok(None),
        Err(DatastoreError::OtherToken { keys, .. }) => Err(DatastoreError::OtherToken {
            keys,
            hint: format!(
                ". Give the cluster's current token ({}: the one the first server's 'rotor init' \
                 or the last 'rotor token rotate' printed); nothing was written",
                Input::Token
            ),
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// Leaves issued now, by index in the layout.
type Issued = Vec<(usize, IssuedLeaf)>;

/// Everything `init` decided, before anything is written.
struct Decided {
    planned: Vec<PlannedCa>,
    service_pem: Vec<u8>,
    token: Token,
    issued: Issued,
    /// External-CA leaves found in place.
    kept: Vec<String>,
    /// The cluster's record was found in the shared datastore: it stays as it is.
    joined: bool,
}

impl Decided {
    fn ca(&self, name: &str) -> Result<&LoadedCa> {
        self.planned
            .iter()
            .find(|p| p.spec.name == name)
            .map(|p| &p.ca)
            .ok_or(ClusterError::Internal(
                "a layout names a CA it does not define",
            ))
    }
}

/// Names, CAs, service-account keys, token and leaves, in that order: any refusal comes before
/// anything is generated that depends on it, and nothing is written.
fn decide(
    cluster: &mut Cluster,
    opts: &InitOptions,
    bundle: &Bundle,
    joining: Option<&BootstrapData>,
) -> Result<Decided> {
    // 1. Names: every requested name passes the SAN policy, before anything is generated.
    for leaf in &cluster.layout.leaves {
        check_names(
            bundle,
            &leaf.name,
            &leaf.subject,
            SanStage::Configuration,
            opts.now,
        )?;
    }

    // 2. CAs: those of the cluster joined, else adopt what is in place and generate the rest.
    let planned = match joining {
        Some(data) => join_cas(cluster, data)?,
        None => plan_cas(cluster, opts.now)?,
    };
    cluster.config.external_cas = planned
        .iter()
        .filter(|p| p.ca.signer().is_none())
        .map(|p| p.spec.name.to_string())
        .collect();
    cluster.config.custom_ca = planned.iter().any(|p| p.write.is_none() && !p.joined);
    let service_pem = match joining {
        Some(data) => {
            let field = cluster.layout.service_key.field;
            data.get(field)
                .ok_or(ClusterError::MissingField { field })?
                .content
                .clone()
        }
        None => service_keys(cluster)?,
    };
    let mut decided = Decided {
        joined: joining.is_some(),
        planned,
        service_pem,
        token: Token {
            ca_hash: None,
            user: String::new(),
            password: String::new(),
        },
        issued: Vec::new(),
        kept: Vec::new(),
    };
    decided.token = token(opts, decided.ca(cluster.layout.token_ca().name)?)?;
    let (issued, kept) = leaves(cluster, &decided, opts.now)?;
    decided.issued = issued;
    decided.kept = kept;
    Ok(decided)
}

/// Step 3, the service-account key(s): adopted from disk, else generated.
fn service_keys(cluster: &Cluster) -> Result<Vec<u8>> {
    let sk = &cluster.layout.service_key;
    let service_pem = match cluster.live.read(&sk.adopt) {
        Ok(pem) => {
            let keys =
                PrivateKey::all_from_pem(&cluster.path(&sk.adopt).display().to_string(), &pem)?;
            if keys.is_empty() {
                return Err(ClusterError::BadFile {
                    path: cluster.path(&sk.adopt),
                    reason: "no private key".into(),
                });
            }
            pem
        }
        Err(e) if e.is_not_found() => sk.key_type.generate()?.pem().as_bytes().to_vec(),
        Err(e) => return Err(e.into()),
    };
    // Every key must parse (the files are derived from its PEM blocks).
    PrivateKey::all_from_pem("service key", &service_pem)?;
    Ok(service_pem)
}

/// Step 4, the token, pinned to the token CA as agents will compute it: the one given (whose
/// hash, if any, must pin that CA), else a new one.
fn token(opts: &InitOptions, token_ca: &LoadedCa) -> Result<Token> {
    let hash = ca_hash(token_ca.bundle_pem(), token_ca.bundle_der(), opts.now);
    Ok(match &opts.token {
        Some(t) => {
            let t = Token::parse(t).map_err(|source| ClusterError::BadToken {
                input: Input::Token,
                source,
            })?;
            if let Some(h) = &t.ca_hash
                && *h != hash
            {
                return Err(ClusterError::TokenPinsAnotherCa {
                    input: Input::Token,
                    given: h.clone(),
                    cluster: hash,
                });
            }
            t.with_hash(hash)
        }
        None => Token {
            ca_hash: Some(hash),
            user: "server".into(),
            password: generate_password()?,
        },
    })
}

/// Step 5, the leaves: issued now under the CAs rotor holds the keys of; an external CA's
/// leaves must already be in place, signed by it. Returns the issued ones and those kept.
fn leaves(
    cluster: &Cluster,
    decided: &Decided,
    now: OffsetDateTime,
) -> Result<(Issued, Vec<String>)> {
    let mut issued: Issued = Vec::new();
    let mut kept = Vec::new();
    let mut missing_external = Vec::new();
    for (i, leaf) in cluster.layout.leaves.iter().enumerate() {
        let ca = decided.ca(leaf.ca)?;
        match ca.signer() {
            Some(signer) => issued.push((
                i,
                cluster.issue(leaf, signer, now, crate::pki::LEAF_LIFETIME)?,
            )),
            None => match cluster.read_leaf(leaf)? {
                LeafOnDisk::Present { der, .. } if crate::pki::signed_by(&der, ca.cert_der()) => {
                    kept.push(leaf.name.clone())
                }
                LeafOnDisk::Present { .. } => missing_external.push(format!(
                    "{} (not signed by {})",
                    cluster.path(leaf.storage.cert_path()).display(),
                    leaf.ca
                )),
                LeafOnDisk::Missing(why) => missing_external.push(format!(
                    "{} ({why})",
                    cluster.path(leaf.storage.cert_path()).display()
                )),
            },
        }
    }
    if !missing_external.is_empty() {
        return Err(ClusterError::Refused(format!(
            "external-CA mode ({} without its key): every certificate that CA signs must be in place before init; \
             missing or invalid:\n  {}\n(make CSRs for them with 'rotor certs generate-csr' on a data dir with the same settings)",
            cluster.path(&cluster.layout.cas[0].cert).display(),
            missing_external.join("\n  ")
        )));
    }
    Ok((issued, kept))
}

/// Step 6, the change, all in memory: what was found in place (adopted), then the CA files,
/// service key, leaves, kubeconfigs, token, bundle, configuration, and the datastore record.
fn plan(
    cluster: &Cluster,
    entries: &[Entry],
    bundle: &Bundle,
    decided: &Decided,
) -> Result<Change> {
    let mut change = adopted_files(cluster, entries)?;
    for p in &decided.planned {
        if let Some((cert, key)) = &p.write {
            change.write(p.spec.key.clone(), key.clone(), PRIVATE_FILE);
            change.write(p.spec.cert.clone(), cert.clone(), PUBLIC_FILE);
        } else if p.joined {
            change.write(p.spec.cert.clone(), p.ca.bundle_pem().to_vec(), PUBLIC_FILE);
        }
        if let Some(nochain) = &p.spec.nochain {
            let first = crate::pki::pem_encode("CERTIFICATE", p.ca.cert_der());
            change.write(nochain.clone(), first.into_bytes(), PUBLIC_FILE);
        }
    }
    cluster.write_service_keys(&mut change, &decided.service_pem)?;
    for (i, leaf) in &decided.issued {
        let spec = &cluster.layout.leaves[*i];
        let signer = decided
            .ca(spec.ca)?
            .signer()
            .ok_or(ClusterError::Internal("an external CA was asked to sign"))?;
        cluster.write_leaf(&mut change, spec, signer, leaf);
    }
    cluster.write_file_kubeconfigs(&mut change);
    change.write(
        cluster.layout.token_file.clone(),
        format!("{}\n", decided.token.render()).into_bytes(),
        PRIVATE_FILE,
    );
    record_bundle(&mut change, bundle);
    change.write(
        PathBuf::from(CONFIG_FILE),
        cluster.config.to_json()?,
        PUBLIC_FILE,
    );

    if decided.joined {
        // The record stays as the cluster has it; the commit is still conditioned on it.
        return Ok(change);
    }
    // Timestamps are compared with file modification times (conflict detection), so they are
    // the real time of writing, whatever '--now' says.
    let written_at = crate::clock::system_now();
    let mut data = BootstrapData::default();
    for p in &decided.planned {
        data.set(p.spec.cert_field, p.ca.bundle_pem().to_vec(), written_at);
        if p.ca.signer().is_some() {
            let key = match &p.write {
                Some((_, key)) => key.clone(),
                None => cluster.live.read(&p.spec.key)?,
            };
            data.set(p.spec.key_field, key, written_at);
        }
    }
    data.set(
        cluster.layout.service_key.field,
        decided.service_pem.clone(),
        written_at,
    );
    change.ops.push(crate::datastore::bootstrap_put(
        &decided.token.password,
        &data,
        cluster.config.datastore_format,
    )?);
    Ok(change)
}

/// What `init` did, for the operator.
fn report(cluster: &Cluster, decided: Decided) -> InitReport {
    let planned = &decided.planned;
    let token_ca = planned
        .iter()
        .find(|p| p.spec.name == cluster.layout.token_ca().name);
    let discovery_hash = (cluster.config.profile == Profile::Kubeadm).then(|| {
        use sha2::Digest;
        let spki = token_ca
            .and_then(|p| crate::pki::spki_of(p.ca.cert_der()))
            .unwrap_or_default();
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(spki)))
    });
    InitReport {
        generated_cas: planned
            .iter()
            .filter(|p| p.write.is_some() && !p.joined)
            .map(|p| p.spec.name)
            .collect(),
        joined_cas: planned
            .iter()
            .filter(|p| p.joined)
            .map(|p| p.spec.name)
            .collect(),
        adopted_cas: planned
            .iter()
            .filter(|p| p.write.is_none() && !p.joined && p.ca.signer().is_some())
            .map(|p| p.spec.name)
            .collect(),
        external_cas: planned
            .iter()
            .filter(|p| p.ca.signer().is_none())
            .map(|p| p.spec.name)
            .collect(),
        issued: decided
            .issued
            .iter()
            .map(|(i, _)| cluster.layout.leaves[*i].name.clone())
            .collect(),
        kept: decided.kept,
        discovery_hash,
        token_file: cluster.path(&cluster.layout.token_file),
        token: decided.token,
    }
}

/// Refuse shared directories at init: the data dir, the real directories on the way to
/// managed paths, the datastore's.
pub(super) fn check_init_permissions(cluster: &Cluster, entries: &[Entry]) -> Result<()> {
    let root = &cluster.root;
    root.refuse_if_shared(Path::new("."))?;
    for e in entries {
        let mut p = Some(e.path());
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            if root.kind(d)? == Some(Kind::Dir) {
                root.refuse_if_shared(d)?;
            }
            p = d.parent();
        }
    }
    if cluster.config.datastore.is_none()
        && let Some(store) = DirectoryDatastore::existing(root, &cluster.layout.datastore_dir)?
    {
        store.root().refuse_if_shared(Path::new("."))?;
    }
    Ok(())
}

/// Everything found in place at the managed paths, to carry into the first generation: a
/// custom CA set in `server/tls`, an external CA's certificates in `pki`, kubeconfigs.
pub(super) fn adopted_files(cluster: &Cluster, entries: &[Entry]) -> Result<Change> {
    let mut change = Change::default();
    let root = &cluster.root;
    let mut add = |rel: PathBuf| -> Result<()> {
        let (mode, _) = root.mode_and_owner(&rel)?;
        change.write(rel.clone(), root.read(&rel)?, mode & 0o777);
        Ok(())
    };
    for entry in entries {
        let rel = entry.path();
        match (entry, root.kind(rel)?) {
            (Entry::Dir(_), Some(Kind::Dir)) => {
                for (sub, kind) in root.open_dir(rel)?.walk(Path::new("."))? {
                    if kind != Kind::Dir && !sub.to_string_lossy().contains(TEMP_MARKER) {
                        add(rel.join(sub))?;
                    }
                }
            }
            (Entry::File(_), Some(Kind::File)) => add(rel.to_path_buf())?,
            (_, None) => {}
            (_, Some(kind)) => {
                return Err(ClusterError::BadFile {
                    path: root.display(rel),
                    reason: format!(
                        "a {} where rotor keeps a {}",
                        match kind {
                            Kind::Dir => "directory",
                            Kind::File => "file",
                            Kind::Symlink => "symlink",
                        },
                        if matches!(entry, Entry::Dir(_)) {
                            "directory"
                        } else {
                            "file"
                        }
                    ),
                });
            }
        }
    }
    Ok(change)
}

impl Cluster {
    /// The service-account key files, from every key of `pem` (signing key first).
    pub fn write_service_keys(&self, change: &mut Change, pem: &[u8]) -> Result<()> {
        for (path, content, private) in
            self.layout.service_key.files_from_pem("service key", pem)?
        {
            change.write(
                path,
                content,
                if private { PRIVATE_FILE } else { PUBLIC_FILE },
            );
        }
        Ok(())
    }

    /// k3s's `server/cred/*.kubeconfig`: they name the files (by the paths consumers know).
    pub fn write_file_kubeconfigs(&self, change: &mut Change) {
        let abs = self.root.absolute_path();
        for kc in &self.layout.file_kubeconfigs {
            let (Some(leaf), Some(ca)) = (self.layout.leaf(kc.leaf), self.layout.ca(kc.ca)) else {
                continue;
            };
            let Storage::Files { cert, key, .. } = &leaf.storage else {
                continue;
            };
            let path = |p: &PathBuf| abs.join(p).display().to_string();
            let bytes =
                kubeconfig::referencing(&kc.server, &path(&ca.cert), &path(cert), &path(key));
            change.write(kc.file.clone(), bytes, PRIVATE_FILE);
        }
    }
}

/// Record `bundle` in the change: its manifest and plugins under [`POLICY_DIR`], replacing
/// whatever bundle was recorded before.
pub(crate) fn record_bundle(change: &mut Change, bundle: &Bundle) {
    for (rel, bytes) in bundle.files() {
        change.write(Path::new(POLICY_DIR).join(rel), bytes.clone(), PUBLIC_FILE);
    }
}

impl Cluster {
    /// The bundle `init` (or `policy use`) recorded, as a directory of the live generation;
    /// `None` for a data dir that recorded none.
    ///
    /// # Errors
    /// A recorded directory without its `bundle.toml`, or one that cannot be opened.
    pub fn recorded_bundle(&self) -> Result<Option<Root>> {
        let dir = Path::new(POLICY_DIR);
        if self.live.kind(dir)?.is_none() {
            return Ok(None);
        }
        // Named as consumers see it (`<data-dir>/rotor-policy`), read in the live generation.
        let root = self.live.open_dir(dir)?.named(self.path(dir));
        if root.kind(Path::new("bundle.toml"))?.is_none() {
            return Err(ClusterError::BadFile {
                path: self.path(dir),
                reason: "the recorded policy bundle has no bundle.toml: record one with 'rotor policy use --bundle DIR'".into(),
            });
        }
        Ok(Some(root))
    }

    /// `rotor policy use`: make `bundle` the data dir's recorded bundle, replacing the one
    /// recorded before, as one change. `false` when it was recorded already (nothing written).
    pub fn record_bundle(&mut self, bundle: &Bundle) -> Result<bool> {
        let dir = Path::new(POLICY_DIR);
        let mut old: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
        if self.live.exists(dir) {
            for (path, kind) in self.live.walk(dir)? {
                if kind == Kind::File {
                    let bytes = self.live.read(&path)?;
                    old.insert(path, bytes);
                }
            }
        }
        let mut change = Change::default();
        record_bundle(&mut change, bundle);
        let unchanged = old.len() == change.files.len()
            && change.files.iter().all(|(path, new)| {
                new.as_ref()
                    .is_some_and(|f| old.get(path).is_some_and(|b| *b == f.content))
            });
        if unchanged {
            return Ok(false);
        }
        for path in old.keys() {
            if !change.files.contains_key(path) {
                change.remove(path.clone());
            }
        }
        self.commit(change, false)?;
        Ok(true)
    }
}
