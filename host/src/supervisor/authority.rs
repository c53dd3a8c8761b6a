//! What the supervisor API signs and serves with, read from the cluster's datastore: the server
//! and client CAs (certificate files as stored, keys), the join token's password, the
//! bootstrap JSON a joining server is given, and this server's names. `rotor serve` reads it at
//! start and again after every cycle (a CA rotation reaches the endpoint at the next cycle).

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::cluster::{Cluster, Profile};
use crate::pki::CaSigner;

/// One CA the endpoint signs with.
pub struct SigningCa {
    /// The CA file as stored (a bundle for a cross-signed CA): what certificates are sent with.
    pub pem: Vec<u8>,
    /// Its key, ready to sign.
    pub signer: CaSigner,
    /// Its notAfter (a certificate never outlives it).
    pub not_after: OffsetDateTime,
}

/// Everything the endpoint needs from the cluster, as of one read.
pub struct Authority {
    /// `k3s` or `rke2`: the paths' and headers' prefix (`/v1-k3s/...`, `k3s-Node-Name`).
    pub program: &'static str,
    /// The join token's password (agents and servers authenticate with it).
    pub password: String,
    /// The server CA file, exactly as stored: `/cacerts`, whose hash a token pins.
    pub cacerts: Vec<u8>,
    /// Signs kubelet serving certificates.
    pub server_ca: SigningCa,
    /// Signs client certificates.
    pub client_ca: SigningCa,
    /// The bootstrap record's JSON (`/v1-<program>/server-bootstrap`).
    pub bootstrap: Vec<u8>,
    /// This server's node name, addresses and `--tls-san` names (the endpoint's certificate).
    pub node_name: String,
    /// This server's addresses.
    pub node_ips: Vec<IpAddr>,
    /// Extra names of the endpoint's certificate.
    pub tls_sans: Vec<String>,
    /// The cluster's service network (its addresses are the API server's and services').
    pub service_cidr: ipnet::IpNet,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
}

impl Authority {
    /// Why `name` is no name a node may take or put in a serving certificate: the server's own
    /// names (its node name, `--tls-san`), `localhost`, and the API server's in-cluster names.
    pub fn reserved_name(&self, name: &str) -> Option<String> {
        let kubernetes = [
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            format!("kubernetes.default.svc.{}", self.cluster_domain),
        ];
        if name == self.node_name {
            Some(format!("{name} is this server's own node name"))
        } else if self.tls_sans.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            Some(format!("{name} is one of this server's names (--tls-san)"))
        } else if name == "localhost" || kubernetes.iter().any(|k| k == name) {
            Some(format!("{name} is a name of the API server or of loopback"))
        } else {
            None
        }
    }

    /// Why `ip` is no address a node may put in a serving certificate: the server's own
    /// addresses, loopback and unspecified addresses, and the service network.
    pub fn reserved_ip(&self, ip: IpAddr) -> Option<String> {
        let own = self.node_ips.contains(&ip)
            || self
                .tls_sans
                .iter()
                .filter_map(|s| s.parse::<IpAddr>().ok())
                .any(|s| s == ip);
        if own {
            Some(format!("{ip} is one of this server's addresses"))
        } else if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            Some(format!(
                "{ip} is a loopback, unspecified or multicast address"
            ))
        } else if self.service_cidr.contains(&ip) {
            Some(format!(
                "{ip} is in the service network {}",
                self.service_cidr
            ))
        } else {
            None
        }
    }
}

impl Authority {
    /// Read it from `cluster` (opened for reading), with the data dir's token or `token`.
    ///
    /// # Errors
    /// A kubeadm data dir (no supervisor API there), a token that does not open the
    /// datastore, or CA material missing or unusable.
    pub fn load(cluster: &Cluster, token: Option<&str>) -> Result<Authority, String> {
        let program = match cluster.config.profile {
            Profile::K3s => "k3s",
            Profile::Rke2 => "rke2",
            Profile::Kubeadm => {
                return Err(
                    "kubeadm clusters have no supervisor API: nodes join through the Kubernetes \
                     CSR API"
                        .into(),
                );
            }
        };
        let now = crate::clock::system_now();
        let (token, data) = cluster
            .open_bootstrap(token, now)
            .map_err(|e| e.to_string())?;
        let ca = |cert: &str, key: &str| -> Result<SigningCa, String> {
            let pem = data
                .get(cert)
                .ok_or_else(|| format!("the bootstrap record has no {cert}"))?
                .content
                .clone();
            let key = data
                .get(key)
                .ok_or_else(|| format!("the bootstrap record has no {key}"))?;
            let signer = CaSigner::load(cert, &pem, &key.content).map_err(|e| e.to_string())?;
            let der = crate::facts::certificate_ders(cert, &pem)
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .ok_or_else(|| format!("{cert}: no certificate"))?;
            let not_after = crate::facts::parse_certificate_der(cert, &der)
                .map_err(|e| e.to_string())?
                .not_after;
            Ok(SigningCa {
                pem,
                signer,
                not_after,
            })
        };
        let server_ca = ca("ServerCA", "ServerCAKey")?;
        let client_ca = ca("ClientCA", "ClientCAKey")?;
        Ok(Authority {
            program,
            password: token.password,
            cacerts: server_ca.pem.clone(),
            server_ca,
            client_ca,
            bootstrap: data.to_json(),
            node_name: cluster.config.node_name.clone(),
            node_ips: cluster.config.node_ips.clone(),
            tls_sans: cluster.config.tls_sans.clone(),
            service_cidr: cluster.config.service_cidr,
            cluster_domain: cluster.config.cluster_domain.clone(),
        })
    }
}
