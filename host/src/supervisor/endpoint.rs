//! The certificate endpoints of the supervisor API, and what the host fixes for each: signer,
//! usages, subject and names, whatever the CSR asks for.

use std::net::IpAddr;

use crate::csr::FixedSubject;
use crate::facts::Usage;

/// A certificate endpoint: what the host fixes for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `serving-kubelet.crt`: `CN=system:node:<name>, O=system:nodes`, the node's name and
    /// addresses, server auth, from the server CA (kubelet-serving).
    ServingKubelet,
    /// `client-kubelet.crt`: `CN=system:node:<name>, O=system:nodes`, client auth, from the
    /// client CA (kube-apiserver-client-kubelet).
    ClientKubelet,
    /// `client-kube-proxy.crt`: `CN=system:kube-proxy`, client auth, from the client CA
    /// (signer `rotor.io/node-component`).
    ClientKubeProxy,
    /// `client-<program>-controller.crt`: `CN=system:<program>-controller`, client auth
    /// (signer `rotor.io/node-component`).
    ClientController,
}

impl Endpoint {
    /// The endpoint of a path's last part, for `program`.
    pub fn of(file: &str, program: &str) -> Option<Endpoint> {
        match file {
            "serving-kubelet.crt" => Some(Endpoint::ServingKubelet),
            "client-kubelet.crt" => Some(Endpoint::ClientKubelet),
            "client-kube-proxy.crt" => Some(Endpoint::ClientKubeProxy),
            f if f == format!("client-{program}-controller.crt") => {
                Some(Endpoint::ClientController)
            }
            _ => None,
        }
    }

    /// The file's name, as agents ask for it and keep it.
    pub fn file(self, program: &str) -> String {
        match self {
            Endpoint::ServingKubelet => "serving-kubelet.crt".into(),
            Endpoint::ClientKubelet => "client-kubelet.crt".into(),
            Endpoint::ClientKubeProxy => "client-kube-proxy.crt".into(),
            Endpoint::ClientController => format!("client-{program}-controller.crt"),
        }
    }

    pub(super) fn signer(self) -> &'static str {
        match self {
            Endpoint::ServingKubelet => "kubernetes.io/kubelet-serving",
            Endpoint::ClientKubelet => "kubernetes.io/kube-apiserver-client-kubelet",
            Endpoint::ClientKubeProxy | Endpoint::ClientController => {
                crate::csr::NODE_COMPONENT_SIGNER
            }
        }
    }

    pub(super) fn usages(self) -> Vec<Usage> {
        match self {
            Endpoint::ServingKubelet => vec![Usage::DigitalSignature, Usage::ServerAuth],
            _ => vec![Usage::DigitalSignature, Usage::ClientAuth],
        }
    }

    pub(super) fn fixed(self, program: &str, node: &str, ips: &[IpAddr]) -> FixedSubject {
        let node_subject = |dns: Vec<String>, ips: Vec<IpAddr>| FixedSubject {
            common_name: format!("system:node:{node}"),
            organizations: vec!["system:nodes".into()],
            dns_names: dns,
            ip_addresses: ips,
        };
        let component = |cn: String| FixedSubject {
            common_name: cn,
            organizations: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        };
        match self {
            Endpoint::ServingKubelet => node_subject(vec![node.to_string()], ips.to_vec()),
            Endpoint::ClientKubelet => node_subject(Vec::new(), Vec::new()),
            Endpoint::ClientKubeProxy => component("system:kube-proxy".into()),
            Endpoint::ClientController => component(format!("system:{program}-controller")),
        }
    }
}
