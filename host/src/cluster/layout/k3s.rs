//! The k3s and RKE2 layout: `server/tls` with five CAs, the client and serving certificates of
//! the server, the agent certificates of the node, `service.key`, and the join token.
//!
//! Names, subjects and issuers follow k3s's `deps.go` (reference §2.1-2.2). RKE2 differs only by
//! the product name in common names, file names and service names.

use std::path::PathBuf;

use super::{CLIENT_SIGNER, KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER};
use super::{
    CaSpec, FileKubeconfig, Layout, LeafSpec, ServiceKeySpec, Storage, apiserver_sans, named,
    node_sans, subject,
};
use crate::cluster::config::{ClusterConfig, POLICY_DIR, Profile};
use crate::pki::{KeyType, Purpose};

const TLS: &str = "server/tls";
const AGENT: &str = "agent";

fn p(dir: &str, file: &str) -> PathBuf {
    PathBuf::from(dir).join(file)
}

fn ca(
    name: &'static str,
    file: &str,
    cert_field: &'static str,
    key_field: &'static str,
    cn: String,
) -> CaSpec {
    let nochain =
        matches!(name, "server-ca" | "client-ca").then(|| p(TLS, &format!("{file}.nochain.crt")));
    CaSpec {
        name,
        cert: p(TLS, &format!("{file}.crt")),
        key: p(TLS, &format!("{file}.key")),
        cert_field,
        key_field,
        common_name: cn,
        timestamped_cn: true,
        nochain,
    }
}

struct Leaf<'a> {
    dir: &'a str,
    file: String,
    subject: crate::pki::Subject,
    purpose: Purpose,
    ca: &'static str,
    services: Vec<&'static str>,
    restart: Vec<&'static str>,
    reloads: Vec<&'static str>,
}

impl Leaf<'_> {
    fn build(self) -> LeafSpec {
        // Files in subdirectories of server/tls are named with it: `etcd/client`.
        let name = match self.dir.strip_prefix("server/tls/") {
            Some(sub) => format!("{sub}/{}", self.file),
            None => self.file.clone(),
        };
        LeafSpec {
            name,
            storage: Storage::Files {
                cert: p(self.dir, &format!("{}.crt", self.file)),
                key: p(self.dir, &format!("{}.key", self.file)),
                with_ca_bundle: true,
            },
            subject: self.subject,
            purpose: self.purpose,
            ca: self.ca,
            services: self.services,
            restart: self.restart,
            reloads: self.reloads,
            rotated_by_kubelet: false,
        }
    }
}

pub(super) fn layout(config: &ClusterConfig) -> Layout {
    let (product, controller_service, server_service): (&str, &'static str, &'static str) =
        match config.profile {
            Profile::Rke2 => ("rke2", "rke2-controller", "rke2-server"),
            _ => ("k3s", "k3s-controller", "k3s-server"),
        };
    let cas = vec![
        ca(
            "server-ca",
            "server-ca",
            "ServerCA",
            "ServerCAKey",
            format!("{product}-server-ca"),
        ),
        ca(
            "client-ca",
            "client-ca",
            "ClientCA",
            "ClientCAKey",
            format!("{product}-client-ca"),
        ),
        ca(
            "request-header-ca",
            "request-header-ca",
            "RequestHeaderCA",
            "RequestHeaderCAKey",
            format!("{product}-request-header-ca"),
        ),
        ca(
            "etcd-server-ca",
            "etcd/server-ca",
            "ETCDServerCA",
            "ETCDServerCAKey",
            "etcd-server-ca".into(),
        ),
        ca(
            "etcd-peer-ca",
            "etcd/peer-ca",
            "ETCDPeerCA",
            "ETCDPeerCAKey",
            "etcd-peer-ca".into(),
        ),
    ];

    let node = &config.node_name;
    let etcd_sans = || {
        let (mut dns, ips) = node_sans(config);
        dns.push("kine.sock".into());
        (dns, ips)
    };
    let loopback = || {
        (
            vec!["localhost".to_string()],
            vec![
                std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::Ipv6Addr::LOCALHOST.into(),
            ],
        )
    };
    let leaves = vec![
        Leaf {
            dir: TLS,
            file: "client-admin".into(),
            subject: subject("system:admin", &["system:masters"]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec!["admin"],
            restart: vec![],
            reloads: vec![],
        },
        Leaf {
            dir: TLS,
            file: "client-supervisor".into(),
            subject: subject(&format!("system:{product}-supervisor"), &["system:masters"]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec!["supervisor"],
            restart: vec!["supervisor"],
            reloads: vec![],
        },
        Leaf {
            dir: TLS,
            file: "client-controller".into(),
            subject: subject("system:kube-controller-manager", &[]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec!["controller-manager"],
            restart: vec!["kube-controller-manager"],
            reloads: vec![],
        },
        Leaf {
            dir: TLS,
            file: "client-scheduler".into(),
            subject: subject("system:kube-scheduler", &[]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec!["scheduler"],
            restart: vec!["kube-scheduler"],
            reloads: vec![],
        },
        Leaf {
            dir: TLS,
            file: "client-kube-apiserver".into(),
            subject: subject("system:apiserver", &["system:masters"]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec!["api-server"],
            restart: vec!["kube-apiserver"],
            reloads: vec![],
        },
        Leaf {
            dir: TLS,
            file: format!("client-{product}-cloud-controller"),
            subject: subject(&format!("{product}-cloud-controller-manager"), &[]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec!["cloud-controller"],
            restart: vec!["cloud-controller-manager"],
            reloads: vec![],
        },
        Leaf {
            dir: TLS,
            file: "client-auth-proxy".into(),
            subject: subject("system:auth-proxy", &[]),
            purpose: Purpose::Client,
            ca: "request-header-ca",
            services: vec!["auth-proxy"],
            restart: vec![],
            reloads: vec!["kube-apiserver"],
        },
        Leaf {
            dir: TLS,
            file: "serving-kube-apiserver".into(),
            subject: named("kube-apiserver", apiserver_sans(config)),
            purpose: Purpose::Server,
            ca: "server-ca",
            services: vec!["api-server"],
            restart: vec![],
            reloads: vec!["kube-apiserver"],
        },
        Leaf {
            dir: "server/tls/kube-scheduler",
            file: "kube-scheduler".into(),
            subject: named("kube-scheduler", loopback()),
            purpose: Purpose::Server,
            ca: "server-ca",
            services: vec!["scheduler"],
            restart: vec!["kube-scheduler"],
            reloads: vec![],
        },
        Leaf {
            dir: "server/tls/kube-controller-manager",
            file: "kube-controller-manager".into(),
            subject: named("kube-controller-manager", loopback()),
            purpose: Purpose::Server,
            ca: "server-ca",
            services: vec!["controller-manager"],
            restart: vec!["kube-controller-manager"],
            reloads: vec![],
        },
        Leaf {
            dir: "server/tls/etcd",
            file: "client".into(),
            subject: subject("etcd-client", &[]),
            purpose: Purpose::Client,
            ca: "etcd-server-ca",
            services: vec!["etcd"],
            restart: vec!["etcd", "kube-apiserver"],
            reloads: vec![],
        },
        Leaf {
            dir: "server/tls/etcd",
            file: "server-client".into(),
            subject: named("etcd-server", etcd_sans()),
            purpose: Purpose::ServerAndClient,
            ca: "etcd-server-ca",
            services: vec!["etcd"],
            restart: vec![],
            reloads: vec!["etcd"],
        },
        Leaf {
            dir: "server/tls/etcd",
            file: "peer-server-client".into(),
            subject: named("etcd-peer", etcd_sans()),
            purpose: Purpose::ServerAndClient,
            ca: "etcd-peer-ca",
            services: vec!["etcd"],
            restart: vec![],
            reloads: vec!["etcd"],
        },
        Leaf {
            dir: AGENT,
            file: format!("client-{product}-controller"),
            subject: subject(&format!("system:{product}-controller"), &[]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec![controller_service],
            restart: vec![controller_service],
            reloads: vec![],
        },
        Leaf {
            dir: AGENT,
            file: "client-kube-proxy".into(),
            subject: subject("system:kube-proxy", &[]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec!["kube-proxy"],
            restart: vec!["kube-proxy"],
            reloads: vec![],
        },
        Leaf {
            dir: AGENT,
            file: "client-kubelet".into(),
            subject: subject(&format!("system:node:{node}"), &["system:nodes"]),
            purpose: Purpose::Client,
            ca: "client-ca",
            services: vec!["kubelet"],
            restart: vec!["kubelet"],
            reloads: vec![],
        },
        Leaf {
            dir: AGENT,
            file: "serving-kubelet".into(),
            subject: named(node, node_sans(config)),
            purpose: Purpose::Server,
            ca: "server-ca",
            services: vec!["kubelet"],
            restart: vec!["kubelet"],
            reloads: vec![],
        },
    ];
    let leaves: Vec<LeafSpec> = leaves.into_iter().map(Leaf::build).collect();

    let supervisor_port = if config.profile == Profile::Rke2 {
        9345
    } else {
        6443
    };
    let kc = |file: &str, leaf: &'static str, port: u16| FileKubeconfig {
        file: p("server/cred", &format!("{file}.kubeconfig")),
        leaf,
        ca: "server-ca",
        server: format!("https://127.0.0.1:{port}"),
    };
    let mut file_kubeconfigs = vec![
        kc("admin", "client-admin", 6443),
        kc("supervisor", "client-supervisor", supervisor_port),
        kc("controller", "client-controller", 6443),
        kc("scheduler", "client-scheduler", 6443),
        kc("api-server", "client-kube-apiserver", 6443),
    ];
    // The cloud controller's leaf name carries the product; FileKubeconfig wants a 'static name.
    file_kubeconfigs.push(FileKubeconfig {
        leaf: if product == "rke2" {
            "client-rke2-cloud-controller"
        } else {
            "client-k3s-cloud-controller"
        },
        ..kc("cloud-controller", "client-admin", 6443)
    });

    Layout {
        profile: config.profile,
        cas,
        leaves,
        service_key: ServiceKeySpec {
            adopt: p(TLS, "service.key"),
            all_keys: Some(p(TLS, "service.key")),
            signing_key: Some(p(TLS, "service.current.key")),
            public_keys: None,
            field: "ServiceKey",
            key_type: KeyType::Rsa2048,
        },
        signers: vec![
            (CLIENT_SIGNER, "client-ca"),
            (KUBELET_CLIENT_SIGNER, "client-ca"),
            (KUBELET_SERVING_SIGNER, "server-ca"),
        ],
        token_file: PathBuf::from("server/token"),
        datastore_dir: PathBuf::from("server/db"),
        file_kubeconfigs,
        managed_dirs: vec![PathBuf::from(TLS), PathBuf::from(POLICY_DIR)],
        services: vec![
            "admin",
            "api-server",
            "controller-manager",
            "scheduler",
            "supervisor",
            controller_service,
            server_service,
            "cloud-controller",
            "etcd",
            "auth-proxy",
            "kubelet",
            "kube-proxy",
        ],
        dynamic_cert: Some((server_service, p(TLS, "dynamic-cert-regenerate"))),
        force_restart_file: (config.profile == Profile::Rke2)
            .then(|| PathBuf::from("force-restart")),
        restart_hint: if config.profile == Profile::Rke2 {
            "restart rke2 on this node (systemctl restart rke2-server): servers first, then agents"
        } else {
            "restart k3s on this node (systemctl restart k3s): servers first, then agents"
        },
    }
}
