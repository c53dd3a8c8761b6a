//! The cluster PKI: a data dir laid out as k3s, RKE2 or kubeadm lays it out, its CAs kept in the
//! encrypted datastore, its leaves renewed through the policy bundle.
//!
//! A [`Cluster`] is an opened data dir under its lock; its [`Layout`] says which file holds which
//! certificate and which CA signs for which Kubernetes signer. Every writing operation decides
//! one [`Change`] in memory and makes it live with [`Cluster::commit`]. The operations (`init`,
//! `start`, `check`, kubeadm's `certs`, CA and secret rotations) are private modules driven by
//! the CLI; errors are [`ClusterError`]s that name the file or [`Input`] they concern.

pub(crate) mod adopt;
pub(crate) mod check;
pub(crate) mod config;
pub(crate) mod custom_ca;
mod error;
pub(crate) mod init;
pub(crate) mod kubeadm_certs;
pub(crate) mod kubeconfig;
pub(crate) mod layout;
pub(crate) mod retire_ca;
pub(crate) mod rotate_ca;
pub(crate) mod secrets;
pub(crate) mod start;
pub(crate) mod static_pods;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

pub use crate::input::Input;
pub use config::{ClusterConfig, POLICY_DIR, Profile};
pub use error::ClusterError;
pub use kubeconfig::{
    Embedded as KubeconfigCredential, read_embedded as read_kubeconfig_credential,
};
pub use layout::{CaSpec, Layout, LeafSpec, Storage};

use crate::datadir::{
    DataDir, Entry, FileChanges, Intent, IntentOutcome, LockMode, META, NewFile, Options,
};
use crate::datastore::{
    BOOTSTRAP_PREFIX, Bootstrap, BootstrapData, Datastore, DatastoreError, DirectoryDatastore, Op,
    Snapshot,
};
use crate::facts::{CertificateFacts, certificate_ders, parse_certificate_der};
use crate::fs::{FsError, PRIVATE_FILE, PUBLIC_FILE, Root, failpoint};
use crate::pki::{CaSigner, PrivateKey, Purpose, Token, Validity};

/// A cluster operation's result.
pub type Result<T> = std::result::Result<T, ClusterError>;

/// An opened, initialized data dir, held under its lock (exclusive for a writer, shared for a
/// reader) for as long as this value lives.
pub struct Cluster {
    /// The data dir.
    pub root: Root,
    /// Where managed files are read: the live generation (at `init`, the data dir itself,
    /// whose files in place may be adopted).
    pub live: Root,
    /// What `rotor init` was told and decided.
    pub config: ClusterConfig,
    /// Which file holds which certificate.
    pub layout: Layout,
    /// The data dir's lock and generations (`None` only while `init` decides, before it takes
    /// the lock on a data dir rotor never wrote to).
    dir: Option<DataDir>,
    store: Option<Box<dyn Datastore>>,
    snapshot: std::sync::OnceLock<Snapshot>,
}

/// Everything one command changes, decided in full before anything is written.
#[derive(Debug, Default)]
pub struct Change {
    /// Files of the data dir (paths as consumers know them) to write or remove.
    pub files: FileChanges,
    /// Datastore operations, committed in one compare-and-swap.
    pub ops: Vec<Op>,
    /// Trigger files outside the managed paths to create once the change is live.
    pub after: Vec<PathBuf>,
}

impl Change {
    /// Write `content` to the managed file `rel` with permissions `mode`.
    pub fn write(&mut self, rel: impl Into<PathBuf>, content: impl Into<Vec<u8>>, mode: u32) {
        self.files.insert(
            rel.into(),
            Some(NewFile {
                content: content.into(),
                mode,
            }),
        );
    }

    /// Remove the managed file `rel`.
    pub fn remove(&mut self, rel: impl Into<PathBuf>) {
        self.files.insert(rel.into(), None);
    }

    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.ops.is_empty() && self.after.is_empty()
    }
}

/// What a commit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// The generation now live, when files changed.
    pub generation: Option<u64>,
    /// The generation it replaced, kept as the backup (until pruned).
    pub backup: Option<PathBuf>,
    /// Problems that did not fail the change (a backup that could not be pruned).
    pub warnings: Vec<String>,
    /// Whether the watchers of the replaced files were told (components that reload by
    /// themselves saw the change); false: they must restart.
    pub watchers_told: bool,
}

/// A CA as loaded for an operation.
#[derive(Debug)]
pub enum LoadedCa {
    /// Certificate and key: rotor can sign with it.
    Signing(CaSigner),
    /// Certificate only (kubeadm external-CA mode): its leaves are managed elsewhere.
    External(ExternalCa),
}

/// A CA certificate (with any chain after it) without its key. Made only by
/// [`load_external_ca`], so it always holds a first certificate, and that one is a CA.
#[derive(Debug)]
pub struct ExternalCa {
    bundle_pem: Vec<u8>,
    /// The CA certificate itself.
    cert_der: Vec<u8>,
    /// Every certificate of the bundle, the CA first.
    bundle_der: Vec<Vec<u8>>,
    facts: CertificateFacts,
}

impl LoadedCa {
    /// The CA certificate's facts.
    pub fn facts(&self) -> &CertificateFacts {
        match self {
            LoadedCa::Signing(s) => &s.facts,
            LoadedCa::External(e) => &e.facts,
        }
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        match self {
            LoadedCa::Signing(s) => s.cert_der(),
            LoadedCa::External(e) => &e.cert_der,
        }
    }

    /// The CA's file: the CA certificate and any chain after it (PEM).
    pub fn bundle_pem(&self) -> &[u8] {
        match self {
            LoadedCa::Signing(s) => &s.bundle_pem,
            LoadedCa::External(e) => &e.bundle_pem,
        }
    }

    /// Every certificate of the CA's file (DER), the CA first.
    pub fn bundle_der(&self) -> &[Vec<u8>] {
        match self {
            LoadedCa::Signing(s) => &s.bundle_der,
            LoadedCa::External(e) => &e.bundle_der,
        }
    }

    /// The CA as a signer, when its key is here.
    pub fn signer(&self) -> Option<&CaSigner> {
        match self {
            LoadedCa::Signing(s) => Some(s),
            LoadedCa::External(_) => None,
        }
    }
}

/// Load a CA certificate without its key.
pub fn load_external_ca(what: &str, cert_pem: &[u8]) -> Result<LoadedCa> {
    let bundle_der = certificate_ders(what, cert_pem)?;
    let cert_der = bundle_der.first().cloned().ok_or(ClusterError::Internal(
        "certificate_ders returned no certificate",
    ))?;
    let facts = parse_certificate_der(what, &cert_der)?;
    if !facts.is_ca {
        return Err(ClusterError::Refused(format!(
            "{what}: the certificate is not a CA"
        )));
    }
    Ok(LoadedCa::External(ExternalCa {
        bundle_pem: cert_pem.to_vec(),
        cert_der,
        bundle_der,
        facts,
    }))
}

/// A leaf issued in memory, not written yet.
pub struct IssuedLeaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its new private key (PEM).
    pub key_pem: String,
    /// The certificate's facts.
    pub facts: CertificateFacts,
}

/// Ask the SAN policy about a certificate's names. A denial is an error listing every violation.
pub fn check_names(
    bundle: &crate::policy::Bundle,
    certificate: &str,
    subject: &crate::pki::Subject,
    stage: crate::contract::SanStage,
    now: OffsetDateTime,
) -> Result<()> {
    use crate::contract::SanDecision;
    let Some(request) = configured_san_request(certificate, subject, stage, now) else {
        return Ok(());
    };
    match bundle.validate_sans(&request)?.decision {
        SanDecision::Allow => Ok(()),
        SanDecision::Deny { violations } => Err(ClusterError::NamesDenied {
            certificate: certificate.to_string(),
            violations: violations.iter().map(ToString::to_string).collect(),
        }),
    }
}

/// The SAN hook's question about a cluster certificate's configured names (none without
/// names).
pub(crate) fn configured_san_request(
    certificate: &str,
    subject: &crate::pki::Subject,
    stage: crate::contract::SanStage,
    now: OffsetDateTime,
) -> Option<crate::contract::SanRequest> {
    use crate::facts::{DistinguishedName, SubjectAltNames};
    if subject.dns_names.is_empty() && subject.ip_addresses.is_empty() {
        return None;
    }
    Some(crate::contract::SanRequest {
        profile: certificate.to_string(),
        stage,
        subject: DistinguishedName {
            text: format!("CN={}", subject.common_name),
            common_name: Some(subject.common_name.clone()),
            organizations: subject.organizations.clone(),
            ..Default::default()
        },
        sans: SubjectAltNames {
            dns_names: subject.dns_names.clone(),
            ip_addresses: subject.ip_addresses.clone(),
            ..Default::default()
        },
        node: None,
        now,
    })
}

impl Cluster {
    /// Every leaf certificate on disk as the policy hooks see it, for `rotor policy diff`:
    /// its facts, its CA's notAfter, and the SAN question of its configured names.
    pub(crate) fn policy_subjects(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<crate::policy::diff::CertificateSubject>> {
        let cas = self.cas_from_disk()?;
        let mut out = Vec::new();
        for spec in &self.layout.leaves {
            let LeafOnDisk::Present { facts, .. } = self.read_leaf(spec)? else {
                continue;
            };
            out.push(crate::policy::diff::CertificateSubject {
                name: spec.name.clone(),
                facts: std::sync::Arc::new((*facts).clone()),
                issuer_not_after: cas.get(spec.ca).map(|ca| ca.facts().not_after),
                san: configured_san_request(
                    &spec.name,
                    &spec.subject,
                    crate::contract::SanStage::Configuration,
                    now,
                ),
            });
        }
        Ok(out)
    }
}

/// A leaf as found on disk.
#[derive(Debug)]
pub enum LeafOnDisk {
    /// No certificate (or no key): it must be issued.
    Missing(String),
    /// A certificate is there.
    Present {
        /// The leaf certificate (first of the file).
        der: Vec<u8>,
        /// Its facts.
        facts: Box<CertificateFacts>,
        /// Whether the key on disk is the certificate's key.
        key_matches: bool,
    },
}

impl Cluster {
    /// Open an initialized data dir for a command that changes it: take the exclusive lock
    /// (waiting at most `options.lock_timeout`), finish or roll back a change a dead writer left
    /// in flight, remove its debris, and check who may write there.
    pub fn open_write(data_dir: &Path, options: &Options) -> Result<Cluster> {
        let root = open_data_dir(data_dir)?;
        if root.kind(Path::new(META))? != Some(crate::fs::Kind::Dir) {
            refuse_legacy(&root)?;
            return Err(ClusterError::NotInitialized(data_dir.to_path_buf()));
        }
        let mut dir = DataDir::lock_exclusive(root.try_clone()?, options.clone())?;
        check_permissions(&dir)?;
        recover(&mut dir)?;
        if dir.live().is_none() {
            return Err(ClusterError::NotInitialized(data_dir.to_path_buf()));
        }
        let cluster = Cluster::from_live(root, dir)?;
        cluster.tidy_locked()?;
        Ok(cluster)
    }

    /// Open an initialized data dir for a command that only reads it: take the shared lock, so
    /// no writer changes it meanwhile. A change a dead writer left in flight is finished or
    /// rolled back first (under the exclusive lock, for that moment).
    pub fn open_read(data_dir: &Path, options: &Options) -> Result<Cluster> {
        Cluster::open_read_with(data_dir, options, true)
    }

    /// [`Cluster::open_read`] without connecting to the datastore: the data dir's own files
    /// only (its config, layout, recorded bundle, certificates), from the live generation as
    /// it is (a change a dead writer left is finished by the next command that connects).
    /// What needs the datastore fails with [`ClusterError::NoDatastore`].
    pub fn open_read_local(data_dir: &Path, options: &Options) -> Result<Cluster> {
        Cluster::open_read_with(data_dir, options, false)
    }

    /// A handle of its own on this data dir's datastore, for the records a long-running server
    /// changes beside its cycles (node bindings: [`crate::datastore::RECORDS_PREFIX`]), which
    /// are never part of a data dir change and need none of its locks.
    pub fn records_store(&self, options: &Options) -> Result<std::sync::Arc<dyn Datastore>> {
        match open_store(&self.root, &self.config, &self.layout, options)? {
            Some(store) => Ok(std::sync::Arc::from(store)),
            None => Err(ClusterError::BadFile {
                path: self.path(&self.layout.datastore_dir),
                reason: "the data dir has no datastore".into(),
            }),
        }
    }

    fn open_read_with(data_dir: &Path, options: &Options, connect: bool) -> Result<Cluster> {
        let root = open_data_dir(data_dir)?;
        let not_initialized = || ClusterError::NotInitialized(data_dir.to_path_buf());
        // A journal under the shared lock means a writer died: recover under the exclusive
        // lock, then read under a shared one again.
        for _ in 0..3 {
            let Some(dir) = DataDir::lock_shared(root.try_clone()?, options.clone())? else {
                refuse_legacy(&root)?;
                return Err(not_initialized());
            };
            check_permissions(&dir)?;
            // Without the datastore, a change a dead writer left cannot be finished here; the
            // live generation is complete either way (the switch is one rename): read it.
            if !connect || dir.journal()?.is_none() {
                if dir.live().is_none() {
                    return Err(not_initialized());
                }
                return Cluster::from_live_with(root, dir, connect);
            }
            let mut writer = dir.upgrade()?;
            recover(&mut writer)?;
            if writer.live().is_some() {
                Cluster::from_live(root.try_clone()?, writer)?.tidy_locked()?;
            }
        }
        Err(ClusterError::WritersKeepDying(data_dir.to_path_buf()))
    }

    /// The cluster as its live generation describes it.
    fn from_live(root: Root, dir: DataDir) -> Result<Cluster> {
        Cluster::from_live_with(root, dir, true)
    }

    fn from_live_with(root: Root, dir: DataDir, connect: bool) -> Result<Cluster> {
        let live_n = dir
            .live()
            .ok_or_else(|| ClusterError::NotInitialized(root.path().to_path_buf()))?;
        let live = dir.open_generation(live_n)?;
        let config = ClusterConfig::read(&live)?.ok_or_else(|| ClusterError::BadFile {
            path: dir.generation_path(live_n).join(config::CONFIG_FILE),
            reason: "missing from the live generation".into(),
        })?;
        let layout = Layout::for_config(&config);
        let store = if connect {
            open_store(&root, &config, &layout, dir.options())?
        } else {
            None
        };
        Ok(Cluster {
            root,
            live,
            config,
            layout,
            dir: Some(dir),
            store,
            snapshot: std::sync::OnceLock::new(),
        })
    }

    /// A cluster being initialized: nothing live yet; managed files are read where they are
    /// (to adopt CAs found in place).
    pub(crate) fn for_init(
        root: Root,
        dir: Option<DataDir>,
        config: ClusterConfig,
        options: &Options,
    ) -> Result<Cluster> {
        let layout = Layout::for_config(&config);
        let store = open_store(&root, &config, &layout, options)?;
        Ok(Cluster {
            live: root.try_clone()?,
            root,
            config,
            layout,
            dir,
            store,
            snapshot: std::sync::OnceLock::new(),
        })
    }

    fn datadir(&self) -> Result<&DataDir> {
        self.dir
            .as_ref()
            .ok_or(ClusterError::Internal("the data dir is not locked"))
    }

    /// Under the exclusive lock: debris removed, links in place.
    fn tidy_locked(&self) -> Result<()> {
        let entries = self.layout.entries();
        let removed = self.datadir()?.clean(&entries)?;
        if !removed.is_empty() {
            tracing::info!("removed what an interrupted writer left: {removed:?}");
        }
        if let Some(store) = &self.store {
            store.clean()?;
        }
        self.datadir()?.ensure_links(&entries, false)?;
        Ok(())
    }

    /// Let other commands in early: a reader that has read what it needs (the CAs of a CSR
    /// batch) need not hold writers off while it works.
    pub fn release(self) -> (ClusterConfig, Layout) {
        (self.config, self.layout)
    }

    /// The path of `rel` in the data dir, for messages.
    pub fn path(&self, rel: &Path) -> PathBuf {
        self.root.display(rel)
    }

    /// The datastore as it was when this command first read it. Every read of one command
    /// sees this one revision; its commit is conditioned on it.
    pub fn snapshot(&self) -> Result<&Snapshot> {
        if let Some(s) = self.snapshot.get() {
            return Ok(s);
        }
        let snap = match &self.store {
            Some(store) => store.snapshot(BOOTSTRAP_PREFIX)?,
            None => Snapshot::default(),
        };
        Ok(self.snapshot.get_or_init(|| snap))
    }

    /// The datastore, for messages and reads.
    pub fn datastore(&self) -> Result<&dyn Datastore> {
        match &self.store {
            Some(s) => Ok(s.as_ref()),
            None => Err(ClusterError::NoDatastore {
                store: self.datastore_name(),
                what: "datastore",
            }),
        }
    }

    /// Where the datastore is, for messages: its directory or its etcd endpoints.
    pub fn datastore_name(&self) -> String {
        match &self.config.datastore {
            Some(etcd) => etcd.describe(),
            None => self.path(&self.layout.datastore_dir).display().to_string(),
        }
    }

    /// The format of the record `password` opens, or the configured one for a new record:
    /// a rewrite keeps the format it found.
    pub fn record_format(&self, password: &str) -> Result<crate::datastore::RecordFormat> {
        Ok(
            Bootstrap::new(self.datastore()?, self.snapshot()?, password)
                .stored_format()
                .unwrap_or(self.config.datastore_format),
        )
    }

    /// The token: `--token` if given, else the token file.
    pub fn token(&self, given: Option<&str>) -> Result<Token> {
        let from_file = given.is_none();
        let text = match given {
            Some(t) => t.to_string(),
            None => {
                let bytes = self.live.read(&self.layout.token_file).map_err(|source| {
                    ClusterError::TokenFile {
                        path: self.path(&self.layout.token_file),
                        source,
                    }
                })?;
                String::from_utf8_lossy(&bytes).trim().to_string()
            }
        };
        Token::parse(&text).map_err(|source| {
            if from_file {
                ClusterError::BadFile {
                    path: self.path(&self.layout.token_file),
                    reason: source.to_string(),
                }
            } else {
                ClusterError::BadToken {
                    input: Input::Token,
                    source,
                }
            }
        })
    }

    /// The token (`given` on the command line, else the token file's) and the bootstrap record
    /// it opens. A given token that carries a CA hash must pin the cluster's token CA, as
    /// `init` and `--new-token` require: a token for another cluster (or a stale one) is
    /// refused before anything is decided.
    pub fn open_bootstrap(
        &self,
        given: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(Token, BootstrapData)> {
        let token = self.token(given)?;
        let data = self.bootstrap(&token)?;
        if given.is_some()
            && let Some(h) = &token.ca_hash
        {
            let (content, ders) = self.token_ca_material(&data)?;
            let hash = crate::pki::ca_hash(content, &ders, now);
            // k3s's hash depends on the time for a chain (its root once the chain verifies,
            // else the file's bytes): a token made at another time may carry the other one.
            let digest = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
            let pins_this_ca =
                *h == hash || *h == digest(content) || ders.iter().any(|d| *h == digest(d));
            if !pins_this_ca {
                return Err(ClusterError::TokenPinsAnotherCa {
                    input: Input::Token,
                    given: h.clone(),
                    cluster: hash,
                });
            }
        }
        Ok((token, data))
    }

    /// The CA hash a token of this cluster carries: of the token CA in the datastore.
    pub fn token_ca_hash(&self, data: &BootstrapData, now: OffsetDateTime) -> Result<String> {
        let (content, ders) = self.token_ca_material(data)?;
        Ok(crate::pki::ca_hash(content, &ders, now))
    }

    /// The token CA's file in the datastore and its certificates (DER).
    fn token_ca_material<'d>(&self, data: &'d BootstrapData) -> Result<(&'d [u8], Vec<Vec<u8>>)> {
        let ca = self.layout.token_ca();
        let content = &data
            .get(ca.cert_field)
            .ok_or(ClusterError::MissingField {
                field: ca.cert_field,
            })?
            .content;
        let ders = certificate_ders(&format!("datastore {}", ca.cert_field), content)?;
        Ok((content, ders))
    }

    /// Read the bootstrap record with `token`.
    pub fn bootstrap(&self, token: &Token) -> Result<BootstrapData> {
        let store = self.datastore()?;
        let snapshot = self.snapshot()?;
        match Bootstrap::new(store, snapshot, &token.password).load() {
            Ok(Some(data)) => Ok(data),
            Ok(None) => Err(ClusterError::NoDatastore {
                store: self.datastore_name(),
                what: "bootstrap record",
            }),
            Err(DatastoreError::OtherToken { keys, .. }) => Err(DatastoreError::OtherToken {
                keys,
                hint: self.token_hint(token),
            }
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// How to recover when the token does not open the record: the token file's token, or
    /// the token of a backup generation, that does.
    fn token_hint(&self, tried: &Token) -> String {
        let file = self.path(&self.layout.token_file);
        let (Ok(store), Ok(snapshot)) = (self.datastore(), self.snapshot()) else {
            return String::new();
        };
        let opens = |t: &Token| {
            Bootstrap::new(store, snapshot, &t.password)
                .load()
                .is_ok_and(|d| d.is_some())
        };
        let token_in = |root: &Root| {
            root.read(&self.layout.token_file)
                .ok()
                .and_then(|b| Token::parse(String::from_utf8_lossy(&b).trim()).ok())
        };
        if let Some(t) = token_in(&self.live)
            && t.password != tried.password
            && opens(&t)
        {
            return format!(
                ". The token in {} opens it: leave out {} to use it",
                file.display(),
                Input::Token
            );
        }
        let Some(dir) = &self.dir else {
            return String::new();
        };
        let mut seen = vec![tried.password.clone()];
        let live = dir.live();
        let mut gens = dir.generations().unwrap_or_default();
        gens.retain(|n| Some(*n) != live);
        gens.reverse();
        for n in gens {
            let Some(t) = dir.open_generation(n).ok().as_ref().and_then(token_in) else {
                continue;
            };
            if seen.contains(&t.password) {
                continue;
            }
            seen.push(t.password.clone());
            if opens(&t) {
                let backup = dir.generation_path(n).join(&self.layout.token_file);
                return format!(
                    ". The token in the backup {} opens it: rotor changes the token file and the \
                     record in one step, so the token file was changed outside rotor. Restore it \
                     with 'cp {} {}', or give that token ({})",
                    backup.display(),
                    backup.display(),
                    file.display(),
                    Input::Token
                );
            }
        }
        format!(
            ". Give the current token ({}: the one the last 'rotor init' or 'rotor token \
             rotate' printed); 'rotor start --token TOKEN' puts it in {}",
            Input::Token,
            file.display()
        )
    }

    /// Load the CAs from bootstrap data (the authoritative copy).
    pub fn cas_from_bootstrap(
        &self,
        data: &BootstrapData,
    ) -> Result<BTreeMap<&'static str, LoadedCa>> {
        let mut cas = BTreeMap::new();
        for spec in &self.layout.cas {
            let what = format!("datastore {}", spec.cert_field);
            let cert = data
                .get(spec.cert_field)
                .ok_or(ClusterError::MissingField {
                    field: spec.cert_field,
                })?;
            let ca = match data.get(spec.key_field) {
                Some(key) => LoadedCa::Signing(CaSigner::load(&what, &cert.content, &key.content)?),
                None if self.config.is_external(spec.name) => {
                    load_external_ca(&what, &cert.content)?
                }
                None => {
                    return Err(ClusterError::MissingField {
                        field: spec.key_field,
                    });
                }
            };
            cas.insert(spec.name, ca);
        }
        Ok(cas)
    }

    /// Load the CAs from their files.
    pub fn cas_from_disk(&self) -> Result<BTreeMap<&'static str, LoadedCa>> {
        let mut cas = BTreeMap::new();
        for spec in &self.layout.cas {
            let what = self.path(&spec.cert).display().to_string();
            let cert = self
                .live
                .read(&spec.cert)
                .map_err(|e| self.named(&spec.cert, e))?;
            let ca = if self.config.is_external(spec.name) {
                load_external_ca(&what, &cert)?
            } else {
                let key = self
                    .live
                    .read(&spec.key)
                    .map_err(|e| self.named(&spec.key, e))?;
                LoadedCa::Signing(CaSigner::load(&what, &cert, &key)?)
            };
            cas.insert(spec.name, ca);
        }
        Ok(cas)
    }

    /// An error reading a managed file, named by the path consumers know.
    fn named(&self, rel: &Path, e: FsError) -> ClusterError {
        ClusterError::BadFile {
            path: self.path(rel),
            reason: e.message,
        }
    }

    /// Read a leaf's certificate and key. A file that exists but cannot be parsed is an error
    /// (rotor never silently replaces what it cannot read): `certificate rotate` replaces it.
    pub fn read_leaf(&self, spec: &LeafSpec) -> Result<LeafOnDisk> {
        let (cert_pem, key_pem) = match &spec.storage {
            Storage::Files { cert, key, .. } => {
                let cert_pem = match self.live.read(cert) {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => {
                        return Ok(LeafOnDisk::Missing("certificate missing".into()));
                    }
                    Err(e) => return Err(e.into()),
                };
                let key_pem = match self.live.read(key) {
                    Ok(b) => Some(b),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e.into()),
                };
                (cert_pem, key_pem)
            }
            Storage::Kubeconfig { file, .. } => {
                let bytes = match self.live.read(file) {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => {
                        return Ok(LeafOnDisk::Missing("kubeconfig missing".into()));
                    }
                    Err(e) => return Err(e.into()),
                };
                let e = kubeconfig::read_embedded(self.path(file), &bytes)?;
                (e.cert_pem, e.key_pem)
            }
        };
        // Errors name the file, once: it is the `what` of the parse.
        let what = self.path(spec.storage.cert_path()).display().to_string();
        let der = certificate_ders(&what, &cert_pem)?
            .into_iter()
            .next()
            .ok_or(ClusterError::Internal(
                "certificate_ders returned no certificate",
            ))?;
        let facts = parse_certificate_der(&what, &der)?;
        let Some(key_pem) = key_pem else {
            return Ok(LeafOnDisk::Missing("private key missing".into()));
        };
        let key_path = match &spec.storage {
            Storage::Files { key, .. } => self.path(key),
            Storage::Kubeconfig { file, .. } => self.path(file),
        };
        let key = PrivateKey::from_pem(&key_path.display().to_string(), &key_pem)?;
        Ok(LeafOnDisk::Present {
            key_matches: key.matches_certificate(&der),
            der,
            facts: Box::new(facts),
        })
    }

    /// Issue `spec` with a new key from `ca`, in memory.
    pub fn issue(
        &self,
        spec: &LeafSpec,
        ca: &CaSigner,
        now: OffsetDateTime,
        lifetime: time::Duration,
    ) -> Result<IssuedLeaf> {
        let key = self.config.key_type.generate()?;
        let backdate = if self.config.profile.is_k3s_family() {
            time::Duration::hours(1)
        } else {
            time::Duration::minutes(5)
        };
        let not_after = now.checked_add(lifetime).ok_or_else(|| {
            ClusterError::Refused(format!(
                "{}: a lifetime of {} seconds from {} ends past what X.509 can express",
                spec.name,
                lifetime.whole_seconds(),
                crate::clock::rfc3339(now)
            ))
        })?;
        let validity = Validity {
            not_before: now - backdate,
            not_after,
        };
        let issued = ca.issue_leaf(&spec.subject, spec.purpose, &key, validity)?;
        let facts = parse_certificate_der(&spec.name, &issued.der)?;
        Ok(IssuedLeaf {
            cert_pem: issued.pem,
            key_pem: key.pem().to_string(),
            facts,
        })
    }

    /// Add a leaf's certificate and key, where its layout keeps them, to `change`.
    pub fn write_leaf(
        &self,
        change: &mut Change,
        spec: &LeafSpec,
        ca: &CaSigner,
        leaf: &IssuedLeaf,
    ) {
        match &spec.storage {
            Storage::Files {
                cert,
                key,
                with_ca_bundle,
            } => {
                let mut cert_bytes = leaf.cert_pem.as_bytes().to_vec();
                if *with_ca_bundle {
                    cert_bytes.extend_from_slice(&ca.bundle_pem);
                } else {
                    // kubeadm's files hold the leaf alone while the CA is a self-signed root;
                    // under an intermediate, or after a rotation (a new CA under a root the old
                    // one cross-signed), a server must send the chain, or a client that trusts
                    // only the root it was given (an old kubeconfig's CA) cannot verify it.
                    cert_bytes.extend_from_slice(&ca.chain_pem());
                }
                change.write(key.clone(), leaf.key_pem.as_bytes(), PRIVATE_FILE);
                change.write(cert.clone(), cert_bytes, PUBLIC_FILE);
            }
            Storage::Kubeconfig { file, user } => {
                let server = self.apiserver_url();
                let bytes = kubeconfig::embedded(
                    &server,
                    &ca.bundle_pem,
                    user,
                    leaf.cert_pem.as_bytes(),
                    leaf.key_pem.as_bytes(),
                );
                change.write(file.clone(), bytes, PRIVATE_FILE);
            }
        }
    }

    /// The API server URL written into kubeconfigs.
    pub fn apiserver_url(&self) -> String {
        let host = match self.config.apiserver_ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        format!("https://{host}:6443")
    }

    /// Make `change` live, all of it or nothing: the next generation is staged, the intent
    /// journaled, the datastore ops committed in one compare-and-swap against the revision this
    /// command read, then the generation switched in one rename. With `adopt` (init), real
    /// files and directories at managed paths are taken over (their content must be in the
    /// change). A failure before the datastore commit leaves everything as it was; a failure
    /// after it leaves the journal, and the next command completes the change.
    pub fn commit(&mut self, change: Change, adopt: bool) -> Result<Committed> {
        if self.dir.as_ref().map(DataDir::lock_mode) != Some(LockMode::Exclusive) {
            return Err(ClusterError::Internal(
                "a change committed without the exclusive lock",
            ));
        }
        if change.is_empty() {
            return Ok(Committed::default());
        }
        let base = self.snapshot()?.clone();
        let expected = base.revision;
        if self.store.is_none() && !change.ops.is_empty() {
            self.store = Some(Box::new(DirectoryDatastore::within(
                &self.root,
                &self.layout.datastore_dir,
            )?));
        }
        let entries = self.layout.entries();
        let Change { files, ops, after } = change;
        let (Some(dir), store) = (self.dir.as_mut(), self.store.as_deref()) else {
            return Err(ClusterError::Internal("no data dir"));
        };
        let mut intent = Intent::of(expected, &ops);
        if let Some(store) = store {
            intent.steps = store.plan(&base, &ops)?;
        }
        if files.is_empty() && after.is_empty() {
            // Only the datastore changes: its commit is the one step.
            if let Some(store) = store
                && let Err(e) = store.commit(&base, &ops)
            {
                // Made but not confirmed (a failed fsync after the switch, a remote timeout):
                // ask the store before calling it a failure.
                match settle(store, &intent, &e) {
                    Some(IntentOutcome::Applied) if !ops.is_empty() => {
                        tracing::warn!("the datastore holds the change, but reported: {e}");
                    }
                    Some(_) => return Err(ClusterError::NotWritten(e)),
                    None => return Err(ClusterError::Unsettled(Box::new(e.into()))),
                }
            }
            self.snapshot = std::sync::OnceLock::new();
            return Ok(Committed::default());
        }
        let to = dir.stage(&files, &entries)?;
        let journal = dir.new_journal(to, adopt, intent.clone(), after);
        if let Err(e) = dir.write_journal(&journal) {
            discard_after(dir, &journal, &e);
            return Err(e.into());
        }
        failpoint("commit:journaled");
        if let Some(store) = store
            && let Err(e) = store.commit(&base, &ops)
        {
            // A remote store may have applied a commit it failed to confirm: ask it.
            match settle(store, &intent, &e) {
                Some(IntentOutcome::Applied) if !ops.is_empty() => {}
                Some(_) => {
                    discard_after(dir, &journal, &e);
                    return Err(ClusterError::NotWritten(e));
                }
                // The journal stays: the next command asks the store again.
                None => return Err(ClusterError::Unsettled(Box::new(e.into()))),
            }
        }
        failpoint("commit:datastore");
        if let Err(e) = dir.switch(to) {
            // Not switched and nothing in the datastore: undo. Otherwise the journal stays and
            // the next command rolls forward.
            if ops.is_empty() && dir.live() != Some(to) {
                discard_after(dir, &journal, &e);
                return Err(e.into());
            }
            return Err(ClusterError::Interrupted(Box::new(e.into())));
        }
        failpoint("commit:switched");
        let warnings = dir
            .complete(&journal, &entries)
            .map_err(|e| ClusterError::Interrupted(Box::new(e.into())))?;
        let backup = journal.from.map(|n| dir.generation_path(n));
        self.live = dir.open_generation(to)?;
        // The datastore moved on: a later read in this command must see the new revision.
        self.snapshot = std::sync::OnceLock::new();
        Ok(Committed {
            generation: Some(to),
            backup,
            warnings,
            watchers_told: dir.watchers_told(),
        })
    }
}

/// Whether the change `intent` describes, whose commit failed with `error`, is in the store,
/// made final first (see [`Datastore::settle`]). `None` when the store cannot tell.
fn settle(store: &dyn Datastore, intent: &Intent, error: &DatastoreError) -> Option<IntentOutcome> {
    match store.settle(intent) {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            tracing::warn!("after '{error}', asking the datastore failed too: {e}");
            None
        }
    }
}

/// Roll back after `error`; if that fails too, say so and leave the rest to the next command
/// (which finds the journal and rolls back), reporting the first error.
fn discard_after(dir: &DataDir, journal: &crate::datadir::Journal, error: &dyn std::fmt::Display) {
    if let Err(e) = dir.discard(journal) {
        tracing::warn!(
            "after '{error}', rolling back failed too ({e}): the next rotor command rolls it back"
        );
    }
}

/// Open the data dir named by the user; a missing one is "not initialized".
fn open_data_dir(data_dir: &Path) -> Result<Root> {
    let root = Root::open_ambient(data_dir).map_err(|e| {
        if e.is_not_found() {
            ClusterError::NotInitialized(data_dir.to_path_buf())
        } else {
            e.into()
        }
    })?;
    root.refuse_if_shared(Path::new("."))?;
    Ok(root)
}

/// A data dir written by rotor before generations existed (`rotor.json` in place).
fn refuse_legacy(root: &Root) -> Result<()> {
    if root.kind(Path::new(config::CONFIG_FILE))? == Some(crate::fs::Kind::File) {
        return Err(ClusterError::BadFile {
            path: root.display(Path::new(config::CONFIG_FILE)),
            reason: "this data dir was written by an earlier rotor, which changed files in place; this rotor \
                     keeps every change in a generation it switches in one step and cannot take it over: \
                     initialize a new data dir (custom CAs are adopted by 'rotor init')"
                .into(),
        });
    }
    Ok(())
}

/// Refuse a data dir that others may write to, before anything reads from or writes to it
/// (recovery included): the directories of the live generation and of one in flight, the real
/// parents of managed paths, the datastore's.
fn check_permissions(dir: &DataDir) -> Result<()> {
    let staged = dir.journal()?.map(|j| j.to);
    let generations = dir.generations()?;
    let staged = staged.filter(|n| generations.contains(n));
    let Some(described) = dir.live().or(staged) else {
        return Ok(dir.check_permissions(&[], None, &[])?);
    };
    let (config, layout) = layout_of(dir, described)?;
    if config.datastore.is_some() {
        return Ok(dir.check_permissions(&layout.entries(), staged, &[])?);
    }
    let store = DirectoryDatastore::existing(dir.root(), &layout.datastore_dir)?;
    let mut extra: Vec<(&Root, &Path)> = Vec::new();
    if let Some(store) = &store {
        for rel in [".", ".kv", ".kv/current", ".kv/current/bootstrap"] {
            extra.push((store.root(), Path::new(rel)));
        }
    }
    Ok(dir.check_permissions(&layout.entries(), staged, &extra)?)
}

/// Finish or roll back the change a dead writer left in flight, saying which on stderr.
fn recover(dir: &mut DataDir) -> Result<()> {
    let Some(journal) = dir.journal()? else {
        return Ok(());
    };
    let who = format!(
        "an interrupted 'rotor {}' (pid {}, started {})",
        journal.command, journal.pid, journal.started
    );
    let roll_forward = |dir: &mut DataDir, how: String| -> Result<()> {
        if dir.live() != Some(journal.to) {
            dir.switch(journal.to)?;
        }
        let entries = entries_of(dir, journal.to)?;
        let warnings = dir.complete(&journal, &entries)?;
        crate::say!("rotor: recovered {who}: rolled forward {how}");
        for w in warnings {
            crate::say!("rotor: warning: {w}");
        }
        Ok(())
    };
    if dir.live() == Some(journal.to) {
        return roll_forward(
            dir,
            format!(
                "(generation {} was already live; finished its links)",
                journal.to
            ),
        );
    }
    let staged = dir.generations()?.contains(&journal.to);
    let outcome = if staged {
        // Where the datastore is: the live generation says (init: the staged one).
        let (config, layout) = layout_of(dir, dir.live().unwrap_or(journal.to))?;
        match open_store(dir.root(), &config, &layout, dir.options())? {
            // A shared store may still have its commit in flight, or half of it: settled
            // (fenced, finished or undone) before the answer counts.
            Some(store) => store.settle(&journal.datastore)?,
            None => journal.datastore.outcome(&Snapshot::default()),
        }
    } else {
        IntentOutcome::NotApplied
    };
    match outcome {
        IntentOutcome::Applied => roll_forward(
            dir,
            format!(
                "to generation {} ({})",
                journal.to,
                if journal.datastore.is_empty() {
                    "its files were complete, the datastore unchanged"
                } else {
                    "the datastore holds its change"
                }
            ),
        )?,
        IntentOutcome::NotApplied | IntentOutcome::Diverged => {
            dir.discard(&journal)?;
            let live = match dir.live() {
                Some(n) => format!("generation {n} stays live"),
                None => "the data dir stays uninitialized".into(),
            };
            let why = if outcome == IntentOutcome::Diverged {
                "the datastore changed under it and does not hold its change"
            } else {
                "the datastore never got its change"
            };
            crate::say!("rotor: recovered {who}: rolled back ({why}); {live}");
        }
    }
    Ok(())
}

/// The configuration of a generation, and the layout it describes.
fn layout_of(dir: &DataDir, generation: u64) -> Result<(ClusterConfig, Layout)> {
    let root = dir.open_generation(generation)?;
    let config = ClusterConfig::read(&root)?.ok_or_else(|| ClusterError::BadFile {
        path: dir.generation_path(generation).join(config::CONFIG_FILE),
        reason: "missing from the generation".into(),
    })?;
    let layout = Layout::for_config(&config);
    Ok((config, layout))
}

fn entries_of(dir: &DataDir, generation: u64) -> Result<Vec<Entry>> {
    Ok(layout_of(dir, generation)?.1.entries())
}

/// The datastore a configuration names: its etcd cluster or kine (connected) or kine's SQLite
/// database (opened), else the directory in the data dir if it exists (reading never creates
/// it).
fn open_store(
    root: &Root,
    config: &ClusterConfig,
    layout: &Layout,
    options: &Options,
) -> Result<Option<Box<dyn Datastore>>> {
    Ok(match &config.datastore {
        Some(store) => {
            store.check().map_err(|e| ClusterError::BadFile {
                path: root.display(Path::new(config::CONFIG_FILE)),
                reason: format!("datastore {}: {}", e.field, e.reason),
            })?;
            Some(store.open(options.datastore_timeout)?)
        }
        None => DirectoryDatastore::existing(root, &layout.datastore_dir)?
            .map(|s| Box::new(s) as Box<dyn Datastore>),
    })
}

/// A leaf's purpose, as the EKU set it must carry.
pub fn purpose_matches(purpose: Purpose, facts: &CertificateFacts) -> bool {
    use crate::facts::ExtendedKeyUsage as E;
    let has = |e: E| facts.extended_key_usages.contains(&e);
    match purpose {
        Purpose::Server => has(E::ServerAuth),
        Purpose::Client => has(E::ClientAuth),
        Purpose::ServerAndClient => has(E::ServerAuth) && has(E::ClientAuth),
    }
}
