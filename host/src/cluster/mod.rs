//! The cluster PKI: a data dir laid out as k3s, RKE2 or kubeadm lays it out, its CAs kept in the
//! encrypted datastore, its leaves renewed through the policy bundle.
//!
//! Operations, one module each: [`init`] (create or adopt the PKI), [`start`] (what a server
//! does at every start: extract CAs, renew leaves; also `certificate rotate`), [`check`]
//! (expiry report), [`kubeadm_certs`] (`certs renew`, `certs generate-csr`). Shared here: opening
//! a data dir, reading CAs and leaves, issuing and writing a leaf, backups.

pub mod check;
pub mod config;
pub mod custom_ca;
pub mod init;
mod k3s;
pub mod kubeadm;
pub mod kubeadm_certs;
pub mod kubeconfig;
pub mod layout;
pub mod rotate_ca;
pub mod secrets;
pub mod start;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

pub use config::{ClusterConfig, Profile};
pub use layout::{CaSpec, Layout, LeafSpec, Storage};

use crate::datastore::{BootstrapData, BootstrapStore, DatastoreError, DirectoryDatastore};
use crate::facts::{CertificateFacts, PemKind, parse_certificate_der, read_pem_blocks};
use crate::fs::{FsError, PRIVATE_FILE, PUBLIC_FILE, Root};
use crate::pki::{CaSigner, PkiError, PrivateKey, Purpose, Token, Validity};
use crate::plugin::PluginError;

/// A cluster operation failed. Messages start with the file or the input they concern.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("{}: not initialized (no {}): run 'rotor init' first", .0.display(), config::CONFIG_FILE)]
    NotInitialized(PathBuf),
    #[error("{}: already initialized ({what}); refusing to touch it", .path.display())]
    AlreadyInitialized { path: PathBuf, what: String },
    #[error("{}: {reason}", .path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the SAN policy denies names of {certificate}:\n  {}", .violations.join("\n  "))]
    NamesDenied {
        certificate: String,
        violations: Vec<String>,
    },
    #[error(
        "{}: the copy on disk differs from the datastore and is newer (by {seconds} s): it could be a CA \
         rotation in progress or a manual change, and overwriting it could cause an outage; nothing was changed. \
         Load it with 'rotor certificate rotate-ca', or remove the file to restore the datastore's copy",
        .path.display()
    )]
    Conflict { path: PathBuf, seconds: i64 },
    #[error("unknown service '{name}'; valid services: {}", .valid.join(", "))]
    UnknownService { name: String, valid: Vec<String> },
    #[error("{0}")]
    Token(String),
}

pub type Result<T> = std::result::Result<T, ClusterError>;

/// An opened, initialized data dir.
pub struct Cluster {
    pub root: Root,
    pub config: ClusterConfig,
    pub layout: Layout,
}

/// A CA as loaded for an operation.
#[derive(Debug)]
pub enum LoadedCa {
    /// Certificate and key: rotor can sign with it.
    Signing(CaSigner),
    /// Certificate only (kubeadm external-CA mode): its leaves are managed elsewhere.
    External {
        bundle_pem: Vec<u8>,
        bundle_der: Vec<Vec<u8>>,
        facts: CertificateFacts,
    },
}

impl LoadedCa {
    pub fn facts(&self) -> &CertificateFacts {
        match self {
            LoadedCa::Signing(s) => &s.facts,
            LoadedCa::External { facts, .. } => facts,
        }
    }

    pub fn cert_der(&self) -> &[u8] {
        match self {
            LoadedCa::Signing(s) => s.cert_der(),
            LoadedCa::External { bundle_der, .. } => &bundle_der[0],
        }
    }

    pub fn bundle_pem(&self) -> &[u8] {
        match self {
            LoadedCa::Signing(s) => &s.bundle_pem,
            LoadedCa::External { bundle_pem, .. } => bundle_pem,
        }
    }

    pub fn bundle_der(&self) -> &[Vec<u8>] {
        match self {
            LoadedCa::Signing(s) => &s.bundle_der,
            LoadedCa::External { bundle_der, .. } => bundle_der,
        }
    }

    pub fn signer(&self) -> Option<&CaSigner> {
        match self {
            LoadedCa::Signing(s) => Some(s),
            LoadedCa::External { .. } => None,
        }
    }
}

/// Load a CA certificate without its key.
pub fn load_external_ca(what: &str, cert_pem: &[u8]) -> Result<LoadedCa> {
    let blocks =
        read_pem_blocks(what, cert_pem).map_err(|e| ClusterError::Invalid(e.to_string()))?;
    let bundle_der: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.kind == PemKind::Certificate)
        .map(|b| b.der)
        .collect();
    let first = bundle_der
        .first()
        .ok_or_else(|| ClusterError::Invalid(format!("{what}: no CERTIFICATE block")))?;
    let facts =
        parse_certificate_der(what, first).map_err(|e| ClusterError::Invalid(e.to_string()))?;
    if !facts.is_ca {
        return Err(ClusterError::Invalid(format!(
            "{what}: the certificate is not a CA"
        )));
    }
    Ok(LoadedCa::External {
        bundle_pem: cert_pem.to_vec(),
        bundle_der,
        facts,
    })
}

/// A leaf issued in memory, not written yet.
pub struct IssuedLeaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub facts: CertificateFacts,
}

/// Ask the SAN policy about a certificate's names. A denial is an error listing every violation.
pub fn check_names(
    bundle: &crate::policy::Bundle,
    certificate: &str,
    subject: &crate::pki::Subject,
    stage: crate::policy::request::SanStage,
    now: OffsetDateTime,
) -> Result<()> {
    use crate::facts::{DistinguishedName, SubjectAltNames};
    use crate::policy::decision::SanDecision;
    if subject.dns_names.is_empty() && subject.ip_addresses.is_empty() {
        return Ok(());
    }
    let request = crate::policy::request::SanRequest {
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
    };
    match bundle.validate_sans(&request)?.decision {
        SanDecision::Allow => Ok(()),
        SanDecision::Deny { violations } => Err(ClusterError::NamesDenied {
            certificate: certificate.to_string(),
            violations: violations.iter().map(ToString::to_string).collect(),
        }),
    }
}

/// A leaf as found on disk.
#[derive(Debug)]
pub enum LeafOnDisk {
    /// No certificate (or no key): it must be issued.
    Missing(String),
    Present {
        /// The leaf certificate (first of the file).
        der: Vec<u8>,
        facts: Box<CertificateFacts>,
        /// Whether the key on disk is the certificate's key.
        key_matches: bool,
    },
}

impl Cluster {
    /// Open an initialized data dir.
    pub fn open(data_dir: &Path) -> Result<Cluster> {
        let root = Root::open_ambient(data_dir).map_err(|e| {
            if e.is_not_found() {
                ClusterError::NotInitialized(data_dir.to_path_buf())
            } else {
                e.into()
            }
        })?;
        let config = ClusterConfig::read(&root)
            .map_err(|e| ClusterError::Invalid(format!("{e:#}")))?
            .ok_or_else(|| ClusterError::NotInitialized(data_dir.to_path_buf()))?;
        let layout = Layout::for_config(&config);
        Ok(Cluster {
            root,
            config,
            layout,
        })
    }

    pub fn path(&self, rel: &Path) -> PathBuf {
        self.root.display(rel)
    }

    /// The datastore of this data dir.
    pub fn datastore(&self) -> Result<DirectoryDatastore> {
        Ok(DirectoryDatastore::within(
            &self.root,
            &self.layout.datastore_dir,
        )?)
    }

    /// The token: `--token` if given, else the token file.
    pub fn token(&self, given: Option<&str>) -> Result<Token> {
        let text = match given {
            Some(t) => t.to_string(),
            None => {
                let bytes = self.root.read(&self.layout.token_file).map_err(|e| {
                    ClusterError::Token(format!("{e} (give the token with --token)"))
                })?;
                String::from_utf8_lossy(&bytes).trim().to_string()
            }
        };
        Token::parse(&text).map_err(|e| ClusterError::Token(e.to_string()))
    }

    /// Read the bootstrap record with `token`.
    pub fn bootstrap(&self, token: &Token) -> Result<BootstrapData> {
        let store = self.datastore()?;
        BootstrapStore::new(&store, &token.password).load()?.ok_or_else(|| {
            ClusterError::Invalid(format!(
                "{}: no bootstrap data in the datastore: the data dir was not initialized by rotor, or the datastore was removed",
                self.path(&self.layout.datastore_dir).display()
            ))
        })
    }

    /// Load the CAs from bootstrap data (the authoritative copy).
    pub fn cas_from_bootstrap(
        &self,
        data: &BootstrapData,
    ) -> Result<BTreeMap<&'static str, LoadedCa>> {
        let mut cas = BTreeMap::new();
        for spec in &self.layout.cas {
            let what = format!("datastore {}", spec.cert_field);
            let cert = data.get(spec.cert_field).ok_or_else(|| {
                ClusterError::Invalid(format!("{what}: missing from the bootstrap data"))
            })?;
            let ca = match data.get(spec.key_field) {
                Some(key) => LoadedCa::Signing(CaSigner::load(&what, &cert.content, &key.content)?),
                None if self.config.is_external(spec.name) => {
                    load_external_ca(&what, &cert.content)?
                }
                None => {
                    return Err(ClusterError::Invalid(format!(
                        "datastore {}: missing from the bootstrap data",
                        spec.key_field
                    )));
                }
            };
            cas.insert(spec.name, ca);
        }
        Ok(cas)
    }

    /// Load the CAs from their files on disk.
    pub fn cas_from_disk(&self) -> Result<BTreeMap<&'static str, LoadedCa>> {
        let mut cas = BTreeMap::new();
        for spec in &self.layout.cas {
            let what = self.path(&spec.cert).display().to_string();
            let cert = self.root.read(&spec.cert)?;
            let ca = if self.config.is_external(spec.name) {
                load_external_ca(&what, &cert)?
            } else {
                LoadedCa::Signing(CaSigner::load(&what, &cert, &self.root.read(&spec.key)?)?)
            };
            cas.insert(spec.name, ca);
        }
        Ok(cas)
    }

    /// Read a leaf's certificate and key. A file that exists but cannot be parsed is an error
    /// (rotor never silently replaces what it cannot read): `certificate rotate` replaces it.
    pub fn read_leaf(&self, spec: &LeafSpec) -> Result<LeafOnDisk> {
        let (cert_pem, key_pem) = match &spec.storage {
            Storage::Files { cert, key, .. } => {
                let cert_pem = match self.root.read(cert) {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => {
                        return Ok(LeafOnDisk::Missing("certificate missing".into()));
                    }
                    Err(e) => return Err(e.into()),
                };
                let key_pem = match self.root.read(key) {
                    Ok(b) => Some(b),
                    Err(e) if e.is_not_found() => None,
                    Err(e) => return Err(e.into()),
                };
                (cert_pem, key_pem)
            }
            Storage::Kubeconfig { file, .. } => {
                let bytes = match self.root.read(file) {
                    Ok(b) => b,
                    Err(e) if e.is_not_found() => {
                        return Ok(LeafOnDisk::Missing("kubeconfig missing".into()));
                    }
                    Err(e) => return Err(e.into()),
                };
                let what = self.path(file).display().to_string();
                let e = kubeconfig::read_embedded(&what, &bytes).map_err(|reason| {
                    ClusterError::BadFile {
                        path: self.path(file),
                        reason: strip_prefix(&what, reason),
                    }
                })?;
                (e.cert_pem, e.key_pem)
            }
        };
        let path = self.path(spec.storage.cert_path());
        // Errors name the file once: facts errors start with their `what`, dropped here.
        let bad = |reason: String| ClusterError::BadFile {
            path: path.clone(),
            reason: strip_prefix("certificate", reason),
        };
        let blocks = read_pem_blocks("certificate", &cert_pem).map_err(|e| bad(e.to_string()))?;
        let der = blocks
            .into_iter()
            .find(|b| b.kind == PemKind::Certificate)
            .map(|b| b.der)
            .ok_or_else(|| bad("no CERTIFICATE block".into()))?;
        let facts = parse_certificate_der("certificate", &der).map_err(|e| bad(e.to_string()))?;
        let Some(key_pem) = key_pem else {
            return Ok(LeafOnDisk::Missing("private key missing".into()));
        };
        let key_path = match &spec.storage {
            Storage::Files { key, .. } => self.path(key),
            Storage::Kubeconfig { file, .. } => self.path(file),
        };
        let key = PrivateKey::from_pem("key", &key_pem).map_err(|e| ClusterError::BadFile {
            path: key_path,
            reason: strip_prefix("key", e.to_string()),
        })?;
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
        let validity = Validity {
            not_before: now - backdate,
            not_after: now + lifetime,
        };
        let issued = ca.issue_leaf(&spec.subject, spec.purpose, &key, validity)?;
        let facts = parse_certificate_der(&spec.name, &issued.der)
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        Ok(IssuedLeaf {
            cert_pem: issued.pem,
            key_pem: key.pem().to_string(),
            facts,
        })
    }

    /// Write a leaf's certificate and key where its layout keeps them: key first, then the
    /// certificate, each atomically (a crash in between leaves a key that does not match its
    /// certificate, which the next `start` detects and repairs).
    pub fn write_leaf(&self, spec: &LeafSpec, ca: &CaSigner, leaf: &IssuedLeaf) -> Result<()> {
        match &spec.storage {
            Storage::Files {
                cert,
                key,
                with_ca_bundle,
            } => {
                self.ensure_parent(cert)?;
                self.ensure_parent(key)?;
                let mut cert_bytes = leaf.cert_pem.as_bytes().to_vec();
                if *with_ca_bundle {
                    cert_bytes.extend_from_slice(&ca.bundle_pem);
                }
                self.root
                    .write_atomic(key, leaf.key_pem.as_bytes(), PRIVATE_FILE)?;
                self.root.write_atomic(cert, &cert_bytes, PUBLIC_FILE)?;
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
                self.root.write_atomic(file, &bytes, PRIVATE_FILE)?;
            }
        }
        Ok(())
    }

    /// The API server URL written into kubeconfigs.
    pub fn apiserver_url(&self) -> String {
        let host = match self.config.node_ips.first() {
            Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            Some(ip) => ip.to_string(),
            None => "127.0.0.1".into(),
        };
        format!("https://{host}:6443")
    }

    pub fn ensure_parent(&self, rel: &Path) -> Result<()> {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.root.create_dir_all(parent)?;
        }
        Ok(())
    }

    /// Copy the live PKI to `<dir>-<unix time>` (and loose kubeconfigs to `kubeconfigs-<unix time>`)
    /// before changing anything. Returns the backup directories.
    pub fn backup(&self, now: OffsetDateTime) -> Result<Vec<PathBuf>> {
        let stamp = self.free_stamp(now.unix_timestamp());
        let mut made = Vec::new();
        for dir in &self.layout.backup_dirs {
            if !self.root.is_dir(dir) {
                continue;
            }
            let to = PathBuf::from(format!("{}-{stamp}", dir.display()));
            self.root.copy_tree(dir, &to)?;
            made.push(self.path(&to));
        }
        let present: Vec<&PathBuf> = self
            .layout
            .backup_files
            .iter()
            .filter(|f| self.root.exists(f))
            .collect();
        if !present.is_empty() {
            let to = PathBuf::from(format!("kubeconfigs-{stamp}"));
            self.root.create_dir_all(&to)?;
            for f in present {
                let bytes = self.root.read(f)?;
                self.root.write_atomic(
                    &to.join(f.file_name().unwrap_or(f.as_os_str())),
                    &bytes,
                    PRIVATE_FILE,
                )?;
            }
            made.push(self.path(&to));
        }
        Ok(made)
    }

    /// A timestamp suffix no backup uses yet.
    fn free_stamp(&self, unix: i64) -> String {
        let taken = |s: &str| {
            self.layout.backup_dirs.iter().any(|d| {
                self.root
                    .exists(&PathBuf::from(format!("{}-{s}", d.display())))
            }) || self.root.exists(&PathBuf::from(format!("kubeconfigs-{s}")))
        };
        let mut stamp = unix.to_string();
        let mut n = 1;
        while taken(&stamp) {
            stamp = format!("{unix}.{n}");
            n += 1;
        }
        stamp
    }
}

fn strip_prefix(what: &str, reason: String) -> String {
    reason
        .strip_prefix(&format!("{what}: "))
        .map(str::to_string)
        .unwrap_or(reason)
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
