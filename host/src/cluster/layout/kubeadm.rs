//! The kubeadm layout: `pki/` with three CAs and the control-plane certificates, `sa.key` and
//! `sa.pub`, and the kubeconfigs with embedded client certificates (reference §2.4 and the
//! Kubernetes PKI requirements page).

use std::path::PathBuf;

use super::{CLIENT_SIGNER, KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER};
use super::{
    CaSpec, Layout, LeafSpec, ServiceKeySpec, Storage, apiserver_sans, named, node_sans, subject,
};
use crate::cluster::config::{ClusterConfig, POLICY_DIR};
use crate::pki::Purpose;

fn ca(
    name: &'static str,
    file: &str,
    cert_field: &'static str,
    key_field: &'static str,
    cn: &str,
) -> CaSpec {
    CaSpec {
        name,
        cert: PathBuf::from(format!("pki/{file}.crt")),
        key: PathBuf::from(format!("pki/{file}.key")),
        cert_field,
        key_field,
        common_name: cn.into(),
        timestamped_cn: false,
        nochain: None,
    }
}

fn files(
    name: &str,
    file: &str,
    subject: crate::pki::Subject,
    purpose: Purpose,
    ca: &'static str,
    (restart, reloads): (Vec<&'static str>, Vec<&'static str>),
) -> LeafSpec {
    LeafSpec {
        name: name.into(),
        storage: Storage::Files {
            cert: PathBuf::from(format!("pki/{file}.crt")),
            key: PathBuf::from(format!("pki/{file}.key")),
            with_ca_bundle: false,
        },
        subject,
        purpose,
        ca,
        services: vec![],
        restart,
        reloads,
        rotated_by_kubelet: false,
    }
}

/// Restarted to load a new certificate (and not reloaded by anything).
fn restart(components: &[&'static str]) -> (Vec<&'static str>, Vec<&'static str>) {
    (components.to_vec(), vec![])
}

fn kubeconfig(file: &str, cn: &str, orgs: &[&str], restart: Vec<&'static str>) -> LeafSpec {
    LeafSpec {
        name: file.into(),
        storage: Storage::Kubeconfig {
            file: PathBuf::from(file),
            user: cn.into(),
        },
        subject: subject(cn, orgs),
        purpose: Purpose::Client,
        ca: "ca",
        services: vec![],
        restart,
        reloads: vec![],
        rotated_by_kubelet: file == "kubelet.conf",
    }
}

pub(super) fn layout(config: &ClusterConfig) -> Layout {
    let node = &config.node_name;
    let mut apiserver = named("kube-apiserver", apiserver_sans(config));
    // kubeadm's apiserver certificate carries no loopback or 'localhost' names of its own; it
    // keeps every name the operator gave (`--tls-san`) and the address every generated
    // kubeconfig points at (a node IP of 127.0.0.1 included), or kubectl could not connect.
    let (tls_dns, tls_ips) = config.tls_san_split();
    let kubeconfig_ip = config.apiserver_ip();
    apiserver
        .dns_names
        .retain(|d| d != "localhost" || tls_dns.contains(d));
    apiserver
        .ip_addresses
        .retain(|ip| !ip.is_loopback() || tls_ips.contains(ip) || *ip == kubeconfig_ip);
    let leaves = vec![
        files(
            "apiserver",
            "apiserver",
            apiserver,
            Purpose::Server,
            "ca",
            (vec![], vec!["kube-apiserver"]),
        ),
        files(
            "apiserver-kubelet-client",
            "apiserver-kubelet-client",
            subject("kube-apiserver-kubelet-client", &["kubeadm:cluster-admins"]),
            Purpose::Client,
            "ca",
            restart(&["kube-apiserver"]),
        ),
        files(
            "front-proxy-client",
            "front-proxy-client",
            subject("front-proxy-client", &[]),
            Purpose::Client,
            "front-proxy-ca",
            (vec![], vec!["kube-apiserver"]),
        ),
        files(
            "apiserver-etcd-client",
            "apiserver-etcd-client",
            subject("kube-apiserver-etcd-client", &[]),
            Purpose::Client,
            "etcd-ca",
            restart(&["kube-apiserver"]),
        ),
        files(
            "etcd-server",
            "etcd/server",
            named(node, node_sans(config)),
            Purpose::ServerAndClient,
            "etcd-ca",
            (vec![], vec!["etcd"]),
        ),
        files(
            "etcd-peer",
            "etcd/peer",
            named(node, node_sans(config)),
            Purpose::ServerAndClient,
            "etcd-ca",
            (vec![], vec!["etcd"]),
        ),
        files(
            "etcd-healthcheck-client",
            "etcd/healthcheck-client",
            subject("kube-etcd-healthcheck-client", &[]),
            Purpose::Client,
            "etcd-ca",
            (vec![], vec![]),
        ),
        kubeconfig(
            "admin.conf",
            "kubernetes-admin",
            &["kubeadm:cluster-admins"],
            vec![],
        ),
        kubeconfig(
            "super-admin.conf",
            "kubernetes-super-admin",
            &["system:masters"],
            vec![],
        ),
        kubeconfig(
            "controller-manager.conf",
            "system:kube-controller-manager",
            &[],
            vec!["kube-controller-manager"],
        ),
        kubeconfig(
            "scheduler.conf",
            "system:kube-scheduler",
            &[],
            vec!["kube-scheduler"],
        ),
        kubeconfig(
            "kubelet.conf",
            &format!("system:node:{node}"),
            &["system:nodes"],
            vec!["kubelet"],
        ),
    ];
    Layout {
        profile: config.profile,
        cas: vec![
            ca("ca", "ca", "KubeadmCA", "KubeadmCAKey", "kubernetes"),
            ca(
                "front-proxy-ca",
                "front-proxy-ca",
                "FrontProxyCA",
                "FrontProxyCAKey",
                "front-proxy-ca",
            ),
            ca("etcd-ca", "etcd/ca", "EtcdCA", "EtcdCAKey", "etcd-ca"),
        ],
        leaves,
        service_key: ServiceKeySpec {
            adopt: PathBuf::from("pki/sa.key"),
            all_keys: None,
            signing_key: Some(PathBuf::from("pki/sa.key")),
            public_keys: Some(PathBuf::from("pki/sa.pub")),
            field: "ServiceAccountKey",
            key_type: config.key_type,
        },
        signers: vec![
            (CLIENT_SIGNER, "ca"),
            (KUBELET_CLIENT_SIGNER, "ca"),
            (KUBELET_SERVING_SIGNER, "ca"),
        ],
        token_file: PathBuf::from("rotor-token"),
        datastore_dir: PathBuf::from("datastore"),
        file_kubeconfigs: Vec::new(),
        managed_dirs: vec![PathBuf::from("pki"), PathBuf::from(POLICY_DIR)],
        services: vec![],
        dynamic_cert: None,
        force_restart_file: None,
        restart_hint: "restart the static pods of the changed components (move their manifests out of \
                       /etc/kubernetes/manifests and back) and the kubelet",
    }
}

/// kubeadm's certificate names accepted by `rotor certs renew`, in kubeadm's order.
pub(crate) fn renewable_names(layout: &Layout) -> Vec<&str> {
    let mut names: Vec<&str> = layout
        .leaves
        .iter()
        .filter(|l| !l.rotated_by_kubelet)
        .map(|l| l.name.as_str())
        .collect();
    names.sort_unstable();
    names
}
