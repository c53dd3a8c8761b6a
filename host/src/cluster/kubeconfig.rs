//! Kubeconfig files: kubeadm's, with the client certificate, key and CA embedded, and k3s's,
//! which point at the certificate files.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ClusterError;

#[derive(Debug, Serialize, Deserialize)]
struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    clusters: Vec<NamedCluster>,
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    current_context: String,
    #[serde(default)]
    preferences: serde_yaml_ng::Mapping,
    users: Vec<NamedUser>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NamedCluster {
    cluster: Cluster,
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Cluster {
    #[serde(
        rename = "certificate-authority-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    certificate_authority_data: Option<String>,
    #[serde(
        rename = "certificate-authority",
        skip_serializing_if = "Option::is_none",
        default
    )]
    certificate_authority: Option<String>,
    server: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct NamedContext {
    context: Context,
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Context {
    cluster: String,
    user: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    namespace: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Debug, Serialize, Deserialize)]
struct User {
    #[serde(
        rename = "client-certificate-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    client_certificate_data: Option<String>,
    #[serde(
        rename = "client-key-data",
        skip_serializing_if = "Option::is_none",
        default
    )]
    client_key_data: Option<String>,
    #[serde(
        rename = "client-certificate",
        skip_serializing_if = "Option::is_none",
        default
    )]
    client_certificate: Option<String>,
    #[serde(
        rename = "client-key",
        skip_serializing_if = "Option::is_none",
        default
    )]
    client_key: Option<String>,
}

/// A kubeconfig as kubeadm writes it: cluster `kubernetes`, one user, everything embedded.
pub(crate) fn embedded(
    server: &str,
    ca_pem: &[u8],
    user: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Vec<u8> {
    let context = format!("{user}@kubernetes");
    let config = Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            cluster: Cluster {
                certificate_authority_data: Some(B64.encode(ca_pem)),
                certificate_authority: None,
                server: server.into(),
            },
            name: "kubernetes".into(),
        }],
        contexts: vec![NamedContext {
            context: Context {
                cluster: "kubernetes".into(),
                user: user.into(),
                namespace: None,
            },
            name: context.clone(),
        }],
        current_context: context,
        preferences: Default::default(),
        users: vec![NamedUser {
            name: user.into(),
            user: User {
                client_certificate_data: Some(B64.encode(cert_pem)),
                client_key_data: Some(B64.encode(key_pem)),
                client_certificate: None,
                client_key: None,
            },
        }],
    };
    serde_yaml_ng::to_string(&config)
        .unwrap_or_default()
        .into_bytes()
}

/// A kubeconfig as k3s writes it in `server/cred`: paths to the files.
pub(crate) fn referencing(server: &str, ca_path: &str, cert_path: &str, key_path: &str) -> Vec<u8> {
    let config = Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            cluster: Cluster {
                certificate_authority_data: None,
                certificate_authority: Some(ca_path.into()),
                server: server.into(),
            },
            name: "local".into(),
        }],
        contexts: vec![NamedContext {
            context: Context {
                cluster: "local".into(),
                user: "user".into(),
                namespace: Some("default".into()),
            },
            name: "Default".into(),
        }],
        current_context: "Default".into(),
        preferences: Default::default(),
        users: vec![NamedUser {
            name: "user".into(),
            user: User {
                client_certificate_data: None,
                client_key_data: None,
                client_certificate: Some(cert_path.into()),
                client_key: Some(key_path.into()),
            },
        }],
    };
    serde_yaml_ng::to_string(&config)
        .unwrap_or_default()
        .into_bytes()
}

/// What an embedded kubeconfig holds.
#[derive(Debug)]
pub struct Embedded {
    /// The API server URL of the current context's cluster.
    pub server: String,
    /// The cluster's CA bundle (`certificate-authority-data`).
    pub ca_pem: Vec<u8>,
    /// The user's client certificate (`client-certificate-data`).
    pub cert_pem: Vec<u8>,
    /// Absent in kubeconfigs prepared for an external CA without a key yet.
    pub key_pem: Option<Vec<u8>>,
}

/// Read the current user's embedded certificate and key from the kubeconfig at `path` (named
/// in errors).
pub fn read_embedded(path: impl AsRef<Path>, bytes: &[u8]) -> Result<Embedded, ClusterError> {
    let bad = |reason: String| ClusterError::BadFile {
        path: path.as_ref().to_path_buf(),
        reason,
    };
    let config: Kubeconfig =
        serde_yaml_ng::from_slice(bytes).map_err(|e| bad(format!("not a kubeconfig: {e}")))?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == config.current_context)
        .ok_or_else(|| {
            bad(format!(
                "current-context '{}' is not defined",
                config.current_context
            ))
        })?;
    let user = config
        .users
        .iter()
        .find(|u| u.name == context.context.user)
        .ok_or_else(|| bad(format!("user '{}' is not defined", context.context.user)))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.context.cluster)
        .ok_or_else(|| {
            bad(format!(
                "cluster '{}' is not defined",
                context.context.cluster
            ))
        })?;
    let decode = |field: &str, v: &Option<String>| -> Result<Vec<u8>, ClusterError> {
        let v = v.as_ref().ok_or_else(|| {
            bad(format!(
                "{field} is missing (rotor manages embedded credentials)"
            ))
        })?;
        B64.decode(v.trim())
            .map_err(|e| bad(format!("{field}: invalid base64: {e}")))
    };
    Ok(Embedded {
        server: cluster.cluster.server.clone(),
        ca_pem: decode(
            "certificate-authority-data",
            &cluster.cluster.certificate_authority_data,
        )?,
        cert_pem: decode(
            "client-certificate-data",
            &user.user.client_certificate_data,
        )?,
        key_pem: match &user.user.client_key_data {
            Some(_) => Some(decode("client-key-data", &user.user.client_key_data)?),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_kubeconfigs_round_trip() {
        let y = embedded(
            "https://10.0.0.1:6443",
            b"CA",
            "kubernetes-admin",
            b"CERT",
            b"KEY",
        );
        let text = String::from_utf8(y.clone()).unwrap();
        assert!(
            text.contains("current-context: kubernetes-admin@kubernetes"),
            "{text}"
        );
        let e = read_embedded("admin.conf", &y).unwrap();
        assert_eq!(
            (e.server.as_str(), e.ca_pem, e.cert_pem, e.key_pem),
            (
                "https://10.0.0.1:6443",
                b"CA".to_vec(),
                b"CERT".to_vec(),
                Some(b"KEY".to_vec())
            )
        );
    }

    #[test]
    fn broken_kubeconfigs_are_named() {
        assert!(
            read_embedded("x.conf", b"- not a map")
                .unwrap_err()
                .to_string()
                .starts_with("x.conf: not a kubeconfig")
        );
        let y = referencing("https://127.0.0.1:6443", "/ca", "/c", "/k");
        assert!(
            read_embedded("k.kubeconfig", &y)
                .unwrap_err()
                .to_string()
                .contains("certificate-authority-data is missing")
        );
    }
}
