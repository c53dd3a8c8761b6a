//! Where each distribution keeps which certificate, and what each certificate must contain.
//!
//! A [`Layout`] is computed from the [`ClusterConfig`]: the CAs, every leaf with its subject,
//! names, purpose and issuing CA, the service-account key, the token file, the services
//! and components each leaf belongs to, and which CA signs for each Kubernetes signer. The
//! children [`k3s`] and [`kubeadm`] each answer the same questions for their distribution.

use std::path::PathBuf;

pub(super) mod k3s;
pub(super) mod kubeadm;

use super::config::{ClusterConfig, Profile};
use crate::pki::{KeyType, Purpose, Subject};

/// The client-certificate signer of the Kubernetes API (`kube-apiserver-client`).
pub(crate) const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The kubelet's client-certificate signer.
pub(crate) const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The kubelet's serving-certificate signer.
pub(crate) const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// A CA of the cluster.
#[derive(Clone, Debug)]
pub struct CaSpec {
    /// `server-ca`, `client-ca`, ... (k3s) or `ca`, `front-proxy-ca`, `etcd-ca` (kubeadm).
    pub name: &'static str,
    /// The CA certificate file (relative to the data dir).
    pub cert: PathBuf,
    /// The CA key file (relative to the data dir).
    pub key: PathBuf,
    /// Bootstrap record fields of the certificate and the key.
    pub cert_field: &'static str,
    /// Bootstrap record field of the key.
    pub key_field: &'static str,
    /// Common name of a generated CA (k3s appends `@<unix time>`).
    pub common_name: String,
    /// Whether a generated CA's common name ends in `@<unix time>` (k3s).
    pub timestamped_cn: bool,
    /// k3s also writes the first certificate alone (`server-ca.nochain.crt`).
    pub nochain: Option<PathBuf>,
}

/// Where a leaf's certificate and key are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// A certificate file and a key file. k3s writes the leaf followed by its CA bundle.
    Files {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Whether the CA bundle follows the leaf in the file.
        with_ca_bundle: bool,
    },
    /// Embedded in a kubeconfig (kubeadm's `admin.conf`, ...).
    Kubeconfig {
        /// The kubeconfig file.
        file: PathBuf,
        /// The kubeconfig user whose credentials hold the certificate.
        user: String,
    },
}

impl Storage {
    /// The file that holds the certificate.
    pub fn cert_path(&self) -> &PathBuf {
        match self {
            Storage::Files { cert, .. } => cert,
            Storage::Kubeconfig { file, .. } => file,
        }
    }
}

/// A leaf certificate of the cluster.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// Stable name: the file stem for k3s (`serving-kube-apiserver`), kubeadm's certificate
    /// name (`apiserver`, `admin.conf`). Also the SAN policy profile for its names.
    pub name: String,
    /// Where its certificate and key are.
    pub storage: Storage,
    /// Its subject and subject alternative names.
    pub subject: Subject,
    /// Server, client or both (key usages and extended key usages).
    pub purpose: Purpose,
    /// Name of the issuing CA.
    pub ca: &'static str,
    /// `rotor certificate rotate --service` names that select it.
    pub services: Vec<&'static str>,
    /// Components that must restart to load a new certificate.
    pub restart: Vec<&'static str>,
    /// Components that load a new certificate by themselves, with no restart: kube-apiserver
    /// watches its serving certificate and proxy-client files (inotify, which rotor's
    /// generation switch reaches: [`crate::datadir::DataDir::notify_watchers`]); etcd reads its
    /// serving and peer files at every handshake.
    pub reloads: Vec<&'static str>,
    /// kubeadm's `kubelet.conf`: the kubelet rotates it; `renew` and `check-expiration` skip it.
    pub rotated_by_kubelet: bool,
}

/// The service-account signing key(s). The datastore holds every key, the signing key first;
/// each distribution keeps them on disk in its own forms.
#[derive(Clone, Debug)]
pub struct ServiceKeySpec {
    /// The file `init` adopts and `rotate-ca` stages (k3s `service.key`, kubeadm `sa.key`);
    /// it may hold several keys, the signing key first.
    pub adopt: PathBuf,
    /// Every private key (k3s `service.key`).
    pub all_keys: Option<PathBuf>,
    /// The signing key alone (k3s `service.current.key`, kubeadm `sa.key`).
    pub signing_key: Option<PathBuf>,
    /// Every public key (kubeadm `sa.pub`, which the API server verifies tokens with).
    pub public_keys: Option<PathBuf>,
    pub field: &'static str,
    pub key_type: KeyType,
}

impl ServiceKeySpec {
    /// The files to write for the keys of `pem` (signing key first): (path, content, private).
    /// The private-key files are the PEM blocks as they are; only the public-key file (kubeadm
    /// `sa.pub`) needs the keys parsed, which for RSA costs milliseconds on every start.
    pub fn files_from_pem(
        &self,
        what: &str,
        pem: &[u8],
    ) -> Result<Vec<(PathBuf, Vec<u8>, bool)>, crate::pki::PkiError> {
        let blocks: Vec<crate::facts::PemBlock> = crate::facts::read_pem_blocks(what, pem)
            .map_err(|e| crate::pki::PkiError::Invalid {
                what: what.into(),
                reason: e.to_string(),
            })?
            .into_iter()
            .filter(|b| b.kind.is_private_key())
            .collect();
        let Some(first) = blocks.first() else {
            return Err(crate::pki::PkiError::Invalid {
                what: what.into(),
                reason: "no private key".into(),
            });
        };
        let encode = |b: &crate::facts::PemBlock| crate::pki::pem_encode(b.kind.label(), &b.der);
        let mut out = Vec::new();
        if let Some(p) = &self.all_keys {
            let all: String = blocks.iter().map(encode).collect();
            out.push((p.clone(), all.into_bytes(), true));
        }
        if let Some(p) = &self.signing_key {
            out.push((p.clone(), encode(first).into_bytes(), true));
        }
        if let Some(p) = &self.public_keys {
            let all: String = crate::pki::PrivateKey::all_from_pem(what, pem)?
                .iter()
                .map(|k| crate::pki::pem_encode("PUBLIC KEY", &k.public_key_der()))
                .collect();
            out.push((p.clone(), all.into_bytes(), false));
        }
        Ok(out)
    }
}

/// A kubeconfig that points at certificate files (k3s `server/cred/*.kubeconfig`).
#[derive(Clone, Debug)]
pub struct FileKubeconfig {
    pub file: PathBuf,
    /// The leaf whose certificate and key it uses.
    pub leaf: &'static str,
    pub ca: &'static str,
    pub server: String,
}

/// Everything rotor manages in one data dir.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The distribution.
    pub profile: Profile,
    /// Every CA; the first is the one the join token pins.
    pub cas: Vec<CaSpec>,
    /// Every leaf certificate rotor issues.
    pub leaves: Vec<LeafSpec>,
    /// The service-account signing key.
    pub service_key: ServiceKeySpec,
    /// The file holding the join token.
    pub token_file: PathBuf,
    /// The directory of the directory datastore (`server/db`, `datastore`).
    pub datastore_dir: PathBuf,
    /// Kubeconfigs that point at certificate files (k3s).
    pub file_kubeconfigs: Vec<FileKubeconfig>,
    /// Which CA signs for each Kubernetes signer this layout signs for (`csr sign`). k3s and
    /// RKE2 point the controller manager's client signers at `client-ca` and
    /// `kubelet-serving` at `server-ca`; kubeadm uses `ca` for all three. `legacy-unknown` has
    /// no CA: the `certificates.k8s.io/v1` API refuses that signer, the controller manager
    /// never signs for it, and it has no usage rules, so an approval for it is never signed.
    pub signers: Vec<(&'static str, &'static str)>,
    /// Directories rotor owns whole (k3s `server/tls`, kubeadm `pki`): each is one link into
    /// the live generation. Every other managed file is linked on its own.
    pub managed_dirs: Vec<PathBuf>,
    /// Every `--service` name, in order.
    pub services: Vec<&'static str>,
    /// The `<product>-server` service and the file whose presence asks k3s/RKE2 to regenerate
    /// the dynamic serving certificate (`tls/dynamic-cert-regenerate`), touched when that
    /// service is rotated.
    pub dynamic_cert: Option<(&'static str, PathBuf)>,
    /// RKE2: a file asking the next start to recreate the control-plane static pods.
    pub force_restart_file: Option<PathBuf>,
    /// How to restart, for messages.
    pub restart_hint: &'static str,
}

impl Layout {
    /// The layout of a data dir with this configuration.
    pub fn for_config(config: &ClusterConfig) -> Layout {
        match config.profile {
            Profile::K3s | Profile::Rke2 => k3s::layout(config),
            Profile::Kubeadm => kubeadm::layout(config),
        }
    }

    /// The CA named `name` (`server-ca`, `ca`, ...).
    pub fn ca(&self, name: &str) -> Option<&CaSpec> {
        self.cas.iter().find(|c| c.name == name)
    }

    /// The leaf named `name` (`serving-kube-apiserver`, `apiserver`, ...).
    pub fn leaf(&self, name: &str) -> Option<&LeafSpec> {
        self.leaves.iter().find(|l| l.name == name)
    }

    /// Every file the layout names: CA certificates and keys, certificates and keys (or the
    /// kubeconfigs that embed them), service-account keys, kubeconfigs, the token file and
    /// `rotor.json`.
    pub fn known_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = Vec::new();
        for ca in &self.cas {
            files.push(ca.cert.clone());
            files.push(ca.key.clone());
            files.extend(ca.nochain.iter().cloned());
        }
        for leaf in &self.leaves {
            match &leaf.storage {
                Storage::Files { cert, key, .. } => {
                    files.push(cert.clone());
                    files.push(key.clone());
                }
                Storage::Kubeconfig { file, .. } => files.push(file.clone()),
            }
        }
        let sk = &self.service_key;
        files.extend(
            [&sk.all_keys, &sk.signing_key, &sk.public_keys]
                .into_iter()
                .flatten()
                .cloned(),
        );
        files.extend(self.file_kubeconfigs.iter().map(|k| k.file.clone()));
        files.push(self.token_file.clone());
        files.push(PathBuf::from(super::config::CONFIG_FILE));
        files.extend(self.dynamic_cert.iter().map(|(_, p)| p.clone()));
        files
    }

    /// Every path rotor manages, as the data dir's write model links it into the live
    /// generation: the owned directories, then each file outside them.
    pub fn entries(&self) -> Vec<crate::datadir::Entry> {
        use crate::datadir::Entry;
        let files = self.known_files();
        let mut out: Vec<Entry> = self.managed_dirs.iter().cloned().map(Entry::Dir).collect();
        for f in files {
            if !self.managed_dirs.iter().any(|d| f.starts_with(d))
                && !out.iter().any(|e| e.path() == f)
            {
                out.push(Entry::File(f));
            }
        }
        out
    }

    /// The CA that signs for a Kubernetes signer (`kubernetes.io/kubelet-serving`, ...), or
    /// `None` for a signer this layout never signs for.
    pub fn ca_for_signer(&self, signer: &str) -> Option<&CaSpec> {
        let (_, ca) = self.signers.iter().find(|(s, _)| *s == signer)?;
        self.ca(ca)
    }

    /// The CA whose hash the join token pins (k3s: server CA; kubeadm: `ca`).
    pub fn token_ca(&self) -> &CaSpec {
        // Both layouts define it first.
        &self.cas[0]
    }
}

/// The SANs every server certificate of a node carries: loopback and the node itself.
pub(super) fn node_sans(config: &ClusterConfig) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let mut dns = vec!["localhost".to_string(), config.node_name.clone()];
    let mut ips: Vec<std::net::IpAddr> = vec![
        std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::Ipv6Addr::LOCALHOST.into(),
    ];
    ips.extend(config.node_ips.iter().copied());
    dedup(&mut dns);
    dedup(&mut ips);
    (dns, ips)
}

/// The API server's names: the in-cluster service names, the first service IP, the node, and
/// every `--tls-san`.
pub(super) fn apiserver_sans(config: &ClusterConfig) -> (Vec<String>, Vec<std::net::IpAddr>) {
    let (mut dns, mut ips) = node_sans(config);
    dns.extend([
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster".to_string(),
        format!("kubernetes.default.svc.{}", config.cluster_domain),
    ]);
    ips.push(config.first_service_ip());
    let (san_names, san_ips) = config.tls_san_split();
    dns.extend(san_names);
    ips.extend(san_ips);
    dedup(&mut dns);
    dedup(&mut ips);
    (dns, ips)
}

fn dedup<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::new();
    v.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(x.clone());
            true
        }
    });
}

/// A subject without names.
pub(super) fn subject(cn: &str, orgs: &[&str]) -> Subject {
    Subject {
        common_name: cn.to_string(),
        organizations: orgs.iter().map(|s| s.to_string()).collect(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
    }
}

/// A subject with names.
pub(super) fn named(cn: &str, (dns, ips): (Vec<String>, Vec<std::net::IpAddr>)) -> Subject {
    Subject {
        common_name: cn.to_string(),
        organizations: Vec::new(),
        dns_names: dns,
        ip_addresses: ips,
    }
}
