//! Inputs shared by the benches (and by `host/examples/gen_csrs.rs`).

use std::net::{IpAddr, Ipv4Addr};

use rcgen::{CertificateParams, DnType, KeyPair, SanType};

use rotor::contract::CsrContext;
use rotor::facts::Usage;
use serde_json::Value;

/// The address of node `i` (10.x.y.z, never ending in .0).
pub(crate) fn node_address(i: u32) -> IpAddr {
    let n = i + 1;
    IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

/// `n` kubelet-serving `CertificateSigningRequest` objects: node `node-<i>` asks, with a fresh
/// P-256 key, for its name and its address, which every policy approves.
pub(crate) fn kubelet_csr_objects(n: u32) -> Vec<Value> {
    (0..n).map(|i| kubelet_csr_object(i, None)).collect()
}

/// The kubelet-serving CSR object of node `node-<i>` for its name, its address and, when
/// given, `extra` (an address that is not the node's: the SAN policy denies it).
pub(crate) fn kubelet_csr_object(i: u32, extra: Option<IpAddr>) -> Value {
    let node = format!("node-{i}");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params.subject_alt_names = vec![
        SanType::DnsName(node.as_str().try_into().expect("dns")),
        SanType::IpAddress(node_address(i)),
    ];
    params
        .subject_alt_names
        .extend(extra.map(SanType::IpAddress));
    let pem = params
        .serialize_request(&KeyPair::generate().expect("key"))
        .expect("CSR")
        .pem()
        .expect("PEM");
    let ctx = CsrContext {
        signer_name: "kubernetes.io/kubelet-serving".into(),
        username: format!("system:node:{node}"),
        groups: vec!["system:nodes".into(), "system:authenticated".into()],
        usages: vec![
            Usage::DigitalSignature,
            Usage::KeyEncipherment,
            Usage::ServerAuth,
        ],
        ..CsrContext::default()
    };
    rotor::csr::k8s_object_for(&format!("csr-{node}"), &pem, &ctx)
}
