//! Building CA sets to stage for `rotor certificate rotate-ca` (or to put in place before the
//! first `rotor init`):
//!
//! - [`generate_custom_ca`]: the custom topology root → intermediate → the cluster's CAs (k3s's
//!   `generate-custom-ca-certs.sh`);
//! - [`rotate_default_ca`]: for a cluster on self-signed CAs, per CA a new self-signed root, the
//!   same root cross-signed by the current root, and a new intermediate under the new root, so
//!   that trust is continuous from old to new (k3s's `rotate-default-ca-certs.sh`).
//!
//! Both write into `<out>/server/tls/` (k3s, RKE2) or `<out>/pki/` (kubeadm), the layout that
//! `init` adopts and `rotate-ca --path` reads. Nothing is overwritten: an existing CA file is an
//! error; an existing service-account key file gets the new key prepended.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::config::{ClusterConfig, Profile};
use super::layout::{CaSpec, Layout};
use super::{Cluster, ClusterError, Input, Result};
use crate::datastore::RecordFormat;
use crate::fs::{PRIVATE_FILE, PUBLIC_FILE, Root};
use crate::pki::{
    CaSigner, KeyType, PrivateKey, Subject, Token, Validity, ca_hash, self_signed_ca, signed_by,
};

/// Lifetimes of the k3s scripts.
const ROOT_DAYS: i64 = 7300;
const INTERMEDIATE_DAYS: i64 = 3700;

/// Where CA files go in a staging or data dir, and the name of a CA's file stem there.
fn tls_dir(profile: Profile) -> &'static str {
    if profile == Profile::Kubeadm {
        "pki"
    } else {
        "server/tls"
    }
}

/// A CA's certificate path relative to the TLS dir (`server-ca.crt`, `etcd/peer-ca.crt`).
pub(crate) fn staged(layout: &Layout, path: &Path) -> PathBuf {
    let tls = tls_dir(layout.profile);
    path.strip_prefix(tls)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

/// A layout for a profile without a cluster (only the CA and service-key parts matter here).
fn bare_layout(profile: Profile) -> Layout {
    let config = ClusterConfig {
        format: 1,
        profile,
        node_name: "staging".into(),
        node_ips: Vec::new(),
        tls_sans: Vec::new(),
        cluster_domain: "cluster.local".into(),
        service_cidr: profile.default_service_cidr(),
        key_type: profile.default_key_type(),
        datastore_format: RecordFormat::RotorV1,
        external_cas: Vec::new(),
        custom_ca: true,
        datastore: None,
    };
    Layout::for_config(&config)
}

fn product(profile: Profile) -> &'static str {
    match profile {
        Profile::K3s => "k3s",
        Profile::Rke2 => "rke2",
        Profile::Kubeadm => "kubernetes",
    }
}

/// The CA's type in k3s's script naming: `server`, `etcd-peer`, ...
fn ca_type(spec: &CaSpec) -> String {
    spec.name.trim_end_matches("-ca").to_string()
}

/// An existing root (and intermediate) to build under.
pub(crate) enum Parent {
    /// Generate root and intermediate.
    None,
    /// An existing root: generate the intermediate under it.
    Root { cert: Vec<u8>, key: Vec<u8> },
    /// An existing intermediate (and its root certificate).
    Intermediate {
        cert: Vec<u8>,
        key: Vec<u8>,
        root_cert: Vec<u8>,
    },
}

pub(crate) struct CustomCaOptions {
    pub profile: Profile,
    pub parent: Parent,
    pub root_key_type: KeyType,
    pub intermediate_key_type: KeyType,
    pub ca_key_type: KeyType,
    /// The new service-account key's type (`None`: the layout's, RSA-2048).
    pub service_key_type: Option<KeyType>,
    pub now: OffsetDateTime,
}

/// What was written.
#[derive(Debug)]
pub(crate) struct Generated {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// Root and intermediate keys written here, which belong off the nodes.
    pub offline_keys: Vec<PathBuf>,
    /// The CA hash a join token will carry for these CAs.
    pub ca_hash: String,
    /// Whether an existing service-account key file had the new key prepended.
    pub service_key_prepended: bool,
}

fn pem_certs(what: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    Ok(crate::facts::certificate_ders(what, bytes)?)
}

/// Files to write, checked for conflicts before anything is written.
struct Staging {
    root: Root,
    writes: Vec<(PathBuf, Vec<u8>, u32)>,
}

impl Staging {
    fn add(&mut self, rel: PathBuf, content: Vec<u8>, mode: u32) {
        self.writes.push((rel, content, mode));
    }

    fn commit(self, allow_existing: &[PathBuf]) -> Result<Vec<PathBuf>> {
        let existing: Vec<String> = self
            .writes
            .iter()
            .filter(|(rel, _, _)| self.root.exists(rel) && !allow_existing.contains(rel))
            .map(|(rel, _, _)| self.root.display(rel).display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(ClusterError::Refused(format!(
                "refusing to overwrite existing CA files:\n  {}\n(stage into an empty directory)",
                existing.join("\n  ")
            )));
        }
        let mut written = Vec::new();
        for (rel, content, mode) in &self.writes {
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                self.root.create_dir_all(parent)?;
            }
            self.root.write_atomic(rel, content, *mode)?;
            written.push(self.root.display(rel));
        }
        Ok(written)
    }
}

/// The directory to stage CA files in: never a data dir rotor manages (its files change only
/// through its lock and generations: stage elsewhere, then `rotate-ca --path`).
fn staging_dir(out: &Path) -> Result<Root> {
    let root = Root::create_ambient(out)?;
    if root.kind(Path::new(crate::datadir::META))?.is_some() {
        return Err(ClusterError::Refused(format!(
            "{}: this is a rotor data dir; stage the CA files in another directory, then load them \
             with 'rotor certificate rotate-ca --path DIR'",
            out.display()
        )));
    }
    Ok(root)
}

/// A service-account key file: a new key first, then the keys already in `existing`.
/// A new ECDSA key is written as SEC1 (`EC PRIVATE KEY`): kube-apiserver's reader of
/// `--service-account-key-file` skips PKCS#8 EC keys, so tokens signed with one would not verify.
fn prepend_service_key(key_type: KeyType, existing: Option<&[u8]>) -> Result<Vec<u8>> {
    let key = key_type.generate()?;
    let mut out = key
        .sec1_pem()
        .unwrap_or_else(|| key.pem().to_string())
        .into_bytes();
    if let Some(old) = existing {
        let keys = PrivateKey::all_from_pem("existing service-account key", old)?;
        for k in keys {
            out.extend_from_slice(k.pem().as_bytes());
        }
    }
    Ok(out)
}

/// `rotor certificate generate-custom-ca --out DIR`.
pub(crate) fn generate_custom_ca(out: &Path, opts: CustomCaOptions) -> Result<Generated> {
    let layout = bare_layout(opts.profile);
    let tls = PathBuf::from(tls_dir(opts.profile));
    let stamp = opts.now.unix_timestamp();
    let prod = product(opts.profile);
    let validity = |days: i64| Validity {
        not_before: opts.now - time::Duration::hours(1),
        not_after: opts.now + time::Duration::days(days),
    };
    let subject = |cn: String| Subject {
        common_name: cn,
        ..Default::default()
    };

    let mut staging = Staging {
        root: staging_dir(out)?,
        writes: Vec::new(),
    };
    let mut offline_keys = Vec::new();

    // Root.
    let (root_pem, root_signer): (Vec<u8>, Option<CaSigner>) = match &opts.parent {
        Parent::None => {
            let key = opts.root_key_type.generate()?;
            let cert = self_signed_ca(
                &subject(format!("{prod}-root-ca@{stamp}")),
                &key,
                validity(ROOT_DAYS),
            )?;
            staging.add(
                tls.join("root-ca.key"),
                key.pem().as_bytes().to_vec(),
                PRIVATE_FILE,
            );
            offline_keys.push(tls.join("root-ca.key"));
            let signer = CaSigner::load("new root", cert.pem.as_bytes(), key.pem().as_bytes())?;
            (cert.pem.into_bytes(), Some(signer))
        }
        Parent::Root { cert, key } => (
            cert.clone(),
            Some(CaSigner::load(Input::RootCert.describe(), cert, key)?),
        ),
        Parent::Intermediate { root_cert, .. } => (root_cert.clone(), None),
    };
    let root_der = pem_certs("root certificate", &root_pem)?.remove(0);
    staging.add(tls.join("root-ca.pem"), root_pem.clone(), PUBLIC_FILE);
    staging.add(tls.join("root-ca.crt"), root_pem.clone(), PUBLIC_FILE);

    // Intermediate.
    let (int_pem, int_signer) = match &opts.parent {
        Parent::Intermediate { cert, key, .. } => {
            let signer = CaSigner::load(Input::IntermediateCert.describe(), cert, key)?;
            if !signed_by(signer.cert_der(), &root_der) {
                return Err(ClusterError::BadInput {
                    input: Input::IntermediateCert,
                    reason: "it is not signed by the root certificate".into(),
                });
            }
            (
                crate::pki::pem_encode("CERTIFICATE", signer.cert_der()).into_bytes(),
                signer,
            )
        }
        _ => {
            let parent = root_signer
                .as_ref()
                .ok_or_else(|| ClusterError::Refused("no root to sign with".into()))?;
            let key = opts.intermediate_key_type.generate()?;
            let cert = parent.issue_ca(
                &subject(format!("{prod}-intermediate-ca@{stamp}")),
                &key,
                validity(INTERMEDIATE_DAYS),
            )?;
            staging.add(
                tls.join("intermediate-ca.key"),
                key.pem().as_bytes().to_vec(),
                PRIVATE_FILE,
            );
            offline_keys.push(tls.join("intermediate-ca.key"));
            let signer = CaSigner::load(
                "new intermediate",
                cert.pem.as_bytes(),
                key.pem().as_bytes(),
            )?;
            (cert.pem.into_bytes(), signer)
        }
    };
    staging.add(
        tls.join("intermediate-ca.pem"),
        int_pem.clone(),
        PUBLIC_FILE,
    );
    let mut int_bundle = int_pem.clone();
    int_bundle.extend_from_slice(&root_pem);
    staging.add(
        tls.join("intermediate-ca.crt"),
        int_bundle.clone(),
        PUBLIC_FILE,
    );

    // The cluster's CAs, each bundled with its chain.
    let mut token_bundle = Vec::new();
    for spec in &layout.cas {
        let key = opts.ca_key_type.generate()?;
        let cn = if opts.profile == Profile::Kubeadm {
            spec.common_name.clone()
        } else {
            format!("{prod}-{}-ca@{stamp}", ca_type(spec))
        };
        let cert = int_signer.issue_ca(&subject(cn), &key, validity(INTERMEDIATE_DAYS))?;
        let rel = staged(&layout, &spec.cert);
        let mut bundle = cert.pem.clone().into_bytes();
        bundle.extend_from_slice(&int_bundle);
        staging.add(
            tls.join(rel.with_extension("pem")),
            cert.pem.into_bytes(),
            PUBLIC_FILE,
        );
        staging.add(tls.join(&rel), bundle.clone(), PUBLIC_FILE);
        staging.add(
            tls.join(staged(&layout, &spec.key)),
            key.pem().as_bytes().to_vec(),
            PRIVATE_FILE,
        );
        if spec.name == layout.token_ca().name {
            token_bundle = bundle;
        }
    }

    // Service-account key: a new key, before any existing ones.
    let sk_rel = tls.join(staged(&layout, &layout.service_key.adopt));
    let existing = match staging.root.read(&sk_rel) {
        Ok(b) => Some(b),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let service_key_prepended = existing.is_some();
    staging.add(
        sk_rel.clone(),
        prepend_service_key(
            opts.service_key_type.unwrap_or(layout.service_key.key_type),
            existing.as_deref(),
        )?,
        PRIVATE_FILE,
    );

    let dir = staging.root.display(&tls);
    let offline_keys = offline_keys
        .iter()
        .map(|p| staging.root.display(p))
        .collect();
    let files = staging.commit(&[sk_rel])?;
    let ders = pem_certs("bundle", &token_bundle)?;
    Ok(Generated {
        dir,
        files,
        offline_keys,
        ca_hash: ca_hash(&token_bundle, &ders, opts.now),
        service_key_prepended,
    })
}

/// What `rotate-default-ca` wrote.
#[derive(Debug)]
pub(crate) struct RotatedDefault {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The token nodes must use once the new CAs are loaded.
    pub new_token: Token,
    /// The SHA-256 fingerprint of the new intermediate server CA: what k3s's script prints as the
    /// token hash, and what nodes will *not* compute.
    pub intermediate_fingerprint: String,
}

/// `rotor certificate rotate-default-ca --out DIR`.
pub(crate) fn rotate_default_ca(
    cluster: &Cluster,
    token: Option<&str>,
    out: &Path,
    now: OffsetDateTime,
) -> Result<RotatedDefault> {
    use sha2::Digest;
    let (token, data) = cluster.open_bootstrap(token, now)?;
    let layout = &cluster.layout;
    let tls = PathBuf::from(tls_dir(layout.profile));
    let stamp = now.unix_timestamp();
    let prod = product(layout.profile);
    let key_type = cluster.config.key_type;
    let validity = Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(ROOT_DAYS),
    };

    let mut staging = Staging {
        root: staging_dir(out)?,
        writes: Vec::new(),
    };
    let mut new_token_bundle = Vec::new();
    let mut intermediate_fingerprint = String::new();
    for spec in &layout.cas {
        let what = format!("datastore {}", spec.cert_field);
        let cert = data
            .get(spec.cert_field)
            .ok_or_else(|| ClusterError::Refused(format!("{what}: missing")))?;
        let key_file = data.get(spec.key_field).ok_or_else(|| {
            ClusterError::Refused(format!(
                "{}: the CA key is not available (external CA)",
                spec.name
            ))
        })?;
        let bundle = pem_certs(&what, &cert.content)?;
        let keys =
            PrivateKey::all_from_pem(&format!("datastore {}", spec.key_field), &key_file.content)?;
        // The current root: the self-issued certificate the CA chains to (itself for a default CA).
        let current = &bundle[0];
        let old_root = if crate::pki::is_self_issued(current) {
            current.clone()
        } else {
            bundle[1..]
                .iter()
                .find(|c| {
                    crate::pki::is_self_issued(c)
                        && (signed_by(current, c)
                            || bundle
                                .iter()
                                .any(|i| signed_by(current, i) && signed_by(i, c)))
                })
                .cloned()
                .ok_or_else(|| {
                    ClusterError::Refused(format!(
                        "{}: cannot find the root of the current CA in its bundle",
                        spec.name
                    ))
                })?
        };
        let old_root_key = keys.iter().find(|k| k.matches_certificate(&old_root)).ok_or_else(|| {
            ClusterError::Refused(format!(
                "{}: the key of the current root is not in the CA key file: this cluster's CAs are not rotor/k3s self-signed \
                 CAs (use 'rotor certificate generate-custom-ca' with your root instead)",
                spec.name
            ))
        })?;
        let old_root_pem = crate::pki::pem_encode("CERTIFICATE", &old_root);
        let old_signer = CaSigner::load(
            &format!("{} (current root)", spec.name),
            old_root_pem.as_bytes(),
            old_root_key.pem().as_bytes(),
        )?;

        let ty = ca_type(spec);
        let root_subject = Subject {
            common_name: format!("{prod}-{ty}-root@{stamp}"),
            ..Default::default()
        };
        let root_key = key_type.generate()?;
        let ssigned = self_signed_ca(&root_subject, &root_key, validity)?;
        let xsigned = old_signer.issue_ca(&root_subject, &root_key, validity)?;
        let root_signer = CaSigner::load(
            "new root",
            ssigned.pem.as_bytes(),
            root_key.pem().as_bytes(),
        )?;
        let ca_key = key_type.generate()?;
        let ca_cn = if layout.profile == Profile::Kubeadm {
            spec.common_name.clone()
        } else {
            format!("{prod}-{ty}-ca@{stamp}")
        };
        let ca = root_signer.issue_ca(
            &Subject {
                common_name: ca_cn,
                ..Default::default()
            },
            &ca_key,
            validity,
        )?;

        // The cross-signed root comes before the self-signed one: OpenSSL takes the first
        // matching issuer among untrusted certificates without backtracking, so with k3s's
        // order (self-signed first) a client trusting only the old CA fails to verify. Go and
        // webpki search every path, and the token hash (roots first) is the same either way.
        let mut bundle_pem = ca.pem.clone().into_bytes();
        bundle_pem.extend_from_slice(xsigned.pem.as_bytes());
        bundle_pem.extend_from_slice(ssigned.pem.as_bytes());
        bundle_pem.extend_from_slice(old_root_pem.as_bytes());
        let mut key_pem = ca_key.pem().as_bytes().to_vec();
        key_pem.extend_from_slice(root_key.pem().as_bytes());

        let rel = staged(layout, &spec.cert);
        let stem = rel.with_extension("");
        let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", stem.display()));
        staging.add(tls.join(&rel), bundle_pem.clone(), PUBLIC_FILE);
        staging.add(tls.join(staged(layout, &spec.key)), key_pem, PRIVATE_FILE);
        staging.add(
            tls.join(side("-root-ssigned.pem")),
            ssigned.pem.into_bytes(),
            PUBLIC_FILE,
        );
        staging.add(
            tls.join(side("-root-xsigned.pem")),
            xsigned.pem.into_bytes(),
            PUBLIC_FILE,
        );
        staging.add(
            tls.join(side("-root-old.pem")),
            old_root_pem.into_bytes(),
            PUBLIC_FILE,
        );
        if spec.name == layout.token_ca().name {
            intermediate_fingerprint = hex::encode(sha2::Sha256::digest(&ca.der));
            new_token_bundle = bundle_pem;
        }
    }
    let service = data
        .get(layout.service_key.field)
        .map(|f| f.content.clone());
    let sk_rel = tls.join(staged(layout, &layout.service_key.adopt));
    staging.add(
        sk_rel,
        prepend_service_key(layout.service_key.key_type, service.as_deref())?,
        PRIVATE_FILE,
    );

    let dir = staging.root.display(&tls);
    let files = staging.commit(&[])?;
    let ders = pem_certs("new bundle", &new_token_bundle)?;
    let new_token = token.with_hash(ca_hash(&new_token_bundle, &ders, now));
    Ok(RotatedDefault {
        dir,
        files,
        new_token,
        intermediate_fingerprint,
    })
}
