//! The cluster's configuration, fixed at `rotor init` and kept in `<data-dir>/rotor.json`.
//!
//! Nothing secret is in it: the token lives in the token file and the CA keys in the datastore
//! (and on disk, as k3s extracts them).

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ClusterError;
use crate::datastore::RecordFormat;
use crate::fs::Root;
use crate::pki::KeyType;

/// Which distribution's layout and conventions the data dir follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// k3s: `server/tls`, `agent/`, the datastore under `server/db`.
    K3s,
    /// RKE2: k3s's layout with RKE2's names.
    Rke2,
    /// kubeadm: `pki/`, `sa.key`, and kubeconfigs with embedded credentials.
    Kubeadm,
}

impl Profile {
    /// The profile's name: `k3s`, `rke2`, `kubeadm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::K3s => "k3s",
            Profile::Rke2 => "rke2",
            Profile::Kubeadm => "kubeadm",
        }
    }

    /// k3s and RKE2 share everything but names.
    pub fn is_k3s_family(self) -> bool {
        matches!(self, Profile::K3s | Profile::Rke2)
    }

    /// The service network the distribution uses when not told (its API server's first address is a SAN).
    pub fn default_service_cidr(self) -> IpNet {
        match self {
            Profile::K3s | Profile::Rke2 => {
                IpNet::V4("10.43.0.0/16".parse().unwrap_or_else(|_| unreachable!()))
            }
            Profile::Kubeadm => {
                IpNet::V4("10.96.0.0/12".parse().unwrap_or_else(|_| unreachable!()))
            }
        }
    }

    /// The key algorithm the distribution generates: ECDSA P-256 for k3s and RKE2, RSA-2048 for kubeadm.
    pub fn default_key_type(self) -> KeyType {
        match self {
            Profile::K3s | Profile::Rke2 => KeyType::EcdsaP256,
            Profile::Kubeadm => KeyType::Rsa2048,
        }
    }
}

/// The file name of the configuration in the data dir.
pub(crate) const CONFIG_FILE: &str = "rotor.json";
/// The policy bundle `rotor init` recorded (its manifest and the plugins it pins), which later
/// commands on the data dir decide with unless given `--bundle`.
pub const POLICY_DIR: &str = "rotor-policy";

/// What `rotor init` was told, and what it decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Format of this file.
    pub format: u32,
    /// Which distribution's layout the data dir follows.
    pub profile: Profile,
    /// This node's name (leaf subjects and SANs).
    pub node_name: String,
    /// This node's addresses (SANs of its serving certificates).
    #[serde(default)]
    pub node_ips: Vec<IpAddr>,
    /// Extra subject alternative names for the API server (`--tls-san`), as given.
    #[serde(default)]
    pub tls_sans: Vec<String>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// The service network; its first address is the API server's in-cluster address.
    pub service_cidr: IpNet,
    /// Key algorithm of CAs and leaves rotor generates.
    pub key_type: KeyType,
    /// Format of the encrypted bootstrap record.
    pub datastore_format: RecordFormat,
    /// CAs present without their key at init (kubeadm external-CA mode): their leaves are
    /// externally managed.
    #[serde(default)]
    pub external_cas: Vec<String>,
    /// The CAs were found in place at init rather than generated.
    #[serde(default)]
    pub custom_ca: bool,
    /// The datastore outside the data dir this server keeps the CA material in (etcd, kine,
    /// kine's SQLite database); `None`: the directory datastore in the data dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<crate::datastore::DatastoreConfig>,
}

impl ClusterConfig {
    /// The API server's first service IP (first address after the network address).
    pub fn first_service_ip(&self) -> IpAddr {
        match self.service_cidr {
            IpNet::V4(n) => IpAddr::V4(std::net::Ipv4Addr::from(
                u32::from(n.network()).saturating_add(1),
            )),
            IpNet::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(n.network()).saturating_add(1),
            )),
        }
    }

    /// The address generated kubeconfigs point the API server at: the first node IP, else
    /// 127.0.0.1. The API server's certificate always covers it.
    pub fn apiserver_ip(&self) -> IpAddr {
        self.node_ips
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }

    /// `--tls-san` values that are IPs, and those that are names.
    pub fn tls_san_split(&self) -> (Vec<String>, Vec<IpAddr>) {
        let mut names = Vec::new();
        let mut ips = Vec::new();
        for s in &self.tls_sans {
            match s.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip.to_canonical()),
                Err(_) => names.push(s.to_ascii_lowercase()),
            }
        }
        (names, ips)
    }

    /// Whether the CA `ca` is external: its key is not in the data dir.
    pub fn is_external(&self, ca: &str) -> bool {
        self.external_cas.iter().any(|c| c == ca)
    }

    /// Read the configuration of the data dir; `Ok(None)` when the data dir is not initialized.
    pub fn read(root: &Root) -> Result<Option<ClusterConfig>, ClusterError> {
        let path = Path::new(CONFIG_FILE);
        let bytes = match root.read(path) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let config: ClusterConfig =
            serde_json::from_slice(&bytes).map_err(|source| ClusterError::Config {
                path: root.display(path),
                source,
            })?;
        if config.format != 1 {
            return Err(ClusterError::BadFile {
                path: root.display(path),
                reason: format!("unsupported format {}", config.format),
            });
        }
        Ok(Some(config))
    }

    /// The file's bytes.
    pub fn to_json(&self) -> Result<Vec<u8>, ClusterError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| ClusterError::Config {
            path: CONFIG_FILE.into(),
            source,
        })?;
        json.push(b'\n');
        Ok(json)
    }
}
