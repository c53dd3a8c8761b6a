//! Writes N kubelet-serving `CertificateSigningRequest` objects as JSON lines, and the address
//! evidence for their nodes, for the batch demo and the benchmark:
//!
//! ```sh
//! cargo run --release -p rotor --example gen_csrs -- 10000 rotor-data/csr-batch
//! rotor csr sign --jsonl rotor-data/csr-batch/csrs.jsonl \
//!     --node-evidence rotor-data/csr-batch/nodes.json > rotor-data/csr-batch/results.jsonl
//! ```
//!
//! Node `node-<i>` asks for DNS `node-<i>` and IP `10.<i / 65536>.<..>.<..>` (offset by one so
//! no address ends in .0), which the evidence file holds for it; every 50th request also claims
//! an address of another node, so the batch shows denials too. Keys are fresh ECDSA P-256.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use rotor::csr::k8s::object_for;
use rotor::facts::Usage;
use rotor::policy::request::CsrContext;

fn address(i: u32) -> IpAddr {
    let n = i + 1;
    IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gen_csrs N DIR";
    let n: u32 = args.next().ok_or(usage)?.parse()?;
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    if n == 0 || n >= 1 << 24 {
        return Err("N must be between 1 and 16777215".into());
    }
    std::fs::create_dir_all(&dir)?;

    let mut lines = std::io::BufWriter::new(std::fs::File::create(dir.join("csrs.jsonl"))?);
    let mut evidence = serde_json::Map::new();
    for i in 0..n {
        let node = format!("node-{i}");
        let ip = address(i);
        evidence.insert(node.clone(), serde_json::json!([ip]));
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("system:node:{node}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        params.subject_alt_names = vec![
            SanType::DnsName(node.as_str().try_into()?),
            SanType::IpAddress(ip),
        ];
        if i % 50 == 49 {
            params
                .subject_alt_names
                .push(SanType::IpAddress(address(i - 1)));
        }
        let pem = params.serialize_request(&KeyPair::generate()?)?.pem()?;
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
        let object = object_for(&format!("csr-{node}"), &pem, &ctx);
        writeln!(lines, "{object}")?;
    }
    lines.flush()?;
    std::fs::write(
        dir.join("nodes.json"),
        serde_json::to_string(&serde_json::Value::Object(evidence))?,
    )?;
    println!(
        "wrote {n} CSR objects to {} and their evidence to {}",
        dir.join("csrs.jsonl").display(),
        dir.join("nodes.json").display()
    );
    Ok(())
}
