//! Writes a small CA and two leaves into DIR for the README demo: one expiring in 30 days,
//! one in 300 days (from the current time), plus a kubelet serving CSR for node `demo-node`.
//!
//! `cargo run -p rotor --example demo_certs -- rotor-data/demo`
//!
//! Issuing belongs to rotor itself from `rotor init` on; this example only makes inputs for the
//! policy commands.

#![allow(
    clippy::disallowed_methods,
    reason = "an example that writes demo inputs, not the library"
)]

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: demo_certs DIR")?);
    std::fs::create_dir_all(&dir)?;
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("demo-server-ca@{}", now.unix_timestamp()),
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    for (name, days_left) in [
        ("expires-in-30-days.crt", 30),
        ("expires-in-300-days.crt", 300),
    ] {
        let key = KeyPair::generate()?;
        let mut leaf =
            CertificateParams::new(vec!["kubernetes".into(), "kubernetes.default".into()])?;
        leaf.subject_alt_names
            .push(SanType::IpAddress("10.43.0.1".parse()?));
        leaf.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.not_after = now + Duration::days(days_left);
        leaf.not_before = leaf.not_after - Duration::days(365);
        let cert = leaf.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(name), format!("{}{}", cert.pem(), ca_cert.pem()))?;
    }

    let key = KeyPair::generate()?;
    let mut csr = CertificateParams::new(vec!["demo-node".into()])?;
    csr.subject_alt_names
        .push(SanType::IpAddress("10.0.0.5".parse()?));
    csr.distinguished_name
        .push(DnType::CommonName, "system:node:demo-node");
    csr.distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    std::fs::write(
        dir.join("demo-node.csr"),
        csr.serialize_request(&key)?.pem()?,
    )?;
    println!("wrote demo inputs to {}", dir.display());
    Ok(())
}
