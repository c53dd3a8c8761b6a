//! What an agent keeps: its certificates (name, subject, files, kubeconfig) and the CA
//! bundles it checks them against.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::pass::AgentError;
use crate::facts::{certificate_ders, parse_certificate_der};
use crate::pki::signed_by;

/// A certificate the agent keeps.
pub(super) struct CertSpec {
    pub(super) name: String,
    pub(super) common_name: String,
    pub(super) serving: bool,
    pub(super) kubeconfig: Option<PathBuf>,
}

impl CertSpec {
    pub(super) fn crt(&self) -> PathBuf {
        Path::new("agent").join(format!("{}.crt", self.name))
    }
    pub(super) fn key(&self) -> PathBuf {
        Path::new("agent").join(format!("{}.key", self.name))
    }
}

/// The certificates, serving first (k3s asks for it first, with the node's addresses).
pub(super) fn specs(program: &str, node: &str) -> Vec<CertSpec> {
    let agent = |f: &str| Some(Path::new("agent").join(f));
    vec![
        CertSpec {
            name: "serving-kubelet".into(),
            common_name: format!("system:node:{node}"),
            serving: true,
            kubeconfig: None,
        },
        CertSpec {
            name: "client-kubelet".into(),
            common_name: format!("system:node:{node}"),
            serving: false,
            kubeconfig: agent("kubelet.kubeconfig"),
        },
        CertSpec {
            name: "client-kube-proxy".into(),
            common_name: "system:kube-proxy".into(),
            serving: false,
            kubeconfig: agent("kubeproxy.kubeconfig"),
        },
        CertSpec {
            name: format!("client-{program}-controller"),
            common_name: format!("system:{program}-controller"),
            serving: false,
            kubeconfig: agent(&format!("{program}controller.kubeconfig")),
        },
    ]
}

/// A CA bundle as the agent holds it.
pub(super) struct CaBundle {
    pub(super) pem: Vec<u8>,
    ders: Vec<Vec<u8>>,
    pub(super) not_after: OffsetDateTime,
}

impl CaBundle {
    pub(super) fn parse(what: &str, pem: Vec<u8>) -> Result<CaBundle, AgentError> {
        let ders = certificate_ders(what, &pem).map_err(|e| AgentError::Trust(e.to_string()))?;
        let first = ders
            .first()
            .ok_or_else(|| AgentError::Trust(format!("{what}: no certificate")))?;
        let facts =
            parse_certificate_der(what, first).map_err(|e| AgentError::Trust(e.to_string()))?;
        Ok(CaBundle {
            pem,
            ders,
            not_after: facts.not_after,
        })
    }

    /// Whether `leaf` was signed by the bundle's first certificate: the CA the servers sign
    /// with now.
    pub(super) fn issued(&self, leaf: &[u8]) -> bool {
        self.ders.first().is_some_and(|ca| signed_by(leaf, ca))
    }
}
