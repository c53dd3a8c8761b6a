//! kubeadm's certificate commands: `certs check-expiration`, `certs renew all|NAME`,
//! `certs generate-csr`.
//!
//! `renew` follows kubeadm: the existing certificate is the source of truth for its attributes
//! (CN, O, DNS and IP names, usages), a new key is generated, the local CA signs, and certificates
//! of an external CA are skipped with a message. rotor adds a backup and the SAN policy check on
//! the copied names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;

use super::check::short_duration;
use super::layout::{LeafSpec, Storage};
use super::{Change, Cluster, ClusterError, LeafOnDisk, LoadedCa, Result, check_names};
use crate::contract::SanStage;
use crate::facts::ExtendedKeyUsage;
use crate::fs::{PRIVATE_FILE, PUBLIC_FILE, Root};
use crate::pki::{Purpose, Subject};
use crate::policy::Bundle;

fn require_kubeadm(cluster: &Cluster, command: &str) -> Result<()> {
    if cluster.config.profile != super::Profile::Kubeadm {
        return Err(ClusterError::Refused(format!(
            "'rotor certs {command}' is kubeadm's; this data dir uses the {} profile (see 'rotor certificate')",
            cluster.config.profile.as_str()
        )));
    }
    Ok(())
}

/// kubeadm's date format: `Dec 30, 2020 23:36 UTC`.
pub(crate) fn kubeadm_date(t: OffsetDateTime) -> String {
    let fmt =
        time::macros::format_description!("[month repr:short] [day], [year] [hour]:[minute] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

#[derive(Debug, Serialize)]
pub(crate) struct ExpirationRow {
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expiration_date: OffsetDateTime,
    pub residual_time: String,
    pub certificate_authority: String,
    pub externally_managed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Expiration {
    pub certificates: Vec<ExpirationRow>,
    pub certificate_authorities: Vec<ExpirationRow>,
}

/// `certs check-expiration`: the certificates kubeadm manages (kubelet.conf excluded: the
/// kubelet rotates it) and the CAs.
pub(crate) fn check_expiration(cluster: &Cluster, now: OffsetDateTime) -> Result<Expiration> {
    require_kubeadm(cluster, "check-expiration")?;
    let mut certificates = Vec::new();
    for spec in cluster
        .layout
        .leaves
        .iter()
        .filter(|l| !l.rotated_by_kubelet)
    {
        let external = cluster.config.is_external(spec.ca);
        let ca = match spec.storage {
            Storage::Kubeconfig { .. } => String::new(),
            Storage::Files { .. } => spec.ca.to_string(),
        };
        match cluster.read_leaf(spec)? {
            LeafOnDisk::Present { facts, .. } => certificates.push(ExpirationRow {
                name: spec.name.clone(),
                expiration_date: facts.not_after,
                residual_time: short_duration(facts.not_after - now),
                certificate_authority: ca,
                externally_managed: external,
                missing: false,
            }),
            LeafOnDisk::Missing(_) => certificates.push(ExpirationRow {
                name: spec.name.clone(),
                expiration_date: OffsetDateTime::UNIX_EPOCH,
                residual_time: "<missing>".into(),
                certificate_authority: ca,
                externally_managed: external,
                missing: true,
            }),
        }
    }
    certificates.sort_by(|a, b| a.name.cmp(&b.name));
    let mut certificate_authorities = Vec::new();
    for spec in &cluster.layout.cas {
        let what = cluster.path(&spec.cert).display().to_string();
        let bytes = cluster.live.read(&spec.cert)?;
        let ca = super::load_external_ca(&what, &bytes)?;
        let f = ca.facts();
        certificate_authorities.push(ExpirationRow {
            name: spec.name.to_string(),
            expiration_date: f.not_after,
            residual_time: short_duration(f.not_after - now),
            certificate_authority: String::new(),
            externally_managed: cluster.config.is_external(spec.name),
            missing: false,
        });
    }
    Ok(Expiration {
        certificates,
        certificate_authorities,
    })
}

/// What `certs renew` did for one certificate.
#[derive(Debug)]
pub(crate) enum Renewed {
    Done {
        name: String,
        restart: Vec<&'static str>,
        reloads: Vec<&'static str>,
    },
    Skipped {
        name: String,
        why: String,
    },
}

/// `certs renew all|NAME`.
pub(crate) fn renew(
    cluster: &mut Cluster,
    bundle: &Bundle,
    which: &str,
    now: OffsetDateTime,
) -> Result<(Vec<Renewed>, Option<super::Committed>)> {
    require_kubeadm(cluster, "renew")?;
    let names = super::layout::kubeadm::renewable_names(&cluster.layout);
    let selected: Vec<&LeafSpec> = if which == "all" {
        cluster
            .layout
            .leaves
            .iter()
            .filter(|l| !l.rotated_by_kubelet)
            .collect()
    } else {
        match cluster.layout.leaf(which).filter(|l| !l.rotated_by_kubelet) {
            Some(l) => vec![l],
            None => {
                return Err(ClusterError::Refused(format!(
                    "unknown certificate '{which}'; valid: all, {}",
                    names.join(", ")
                )));
            }
        }
    };
    let cas = cluster.cas_from_disk()?;

    // Decide everything first: read each certificate, copy its attributes, check its names.
    let mut work = Vec::new();
    let mut results = Vec::new();
    for spec in selected {
        let ca = &cas[spec.ca];
        let LoadedCa::Signing(signer) = ca else {
            results.push(Renewed::Skipped {
                name: spec.name.clone(),
                why: format!(
                    "signed by an external CA ({}): renew it with that CA",
                    spec.ca
                ),
            });
            continue;
        };
        let facts = match cluster.read_leaf(spec)? {
            LeafOnDisk::Present { facts, .. } => facts,
            LeafOnDisk::Missing(why) => {
                return Err(ClusterError::BadFile {
                    path: cluster.path(spec.storage.cert_path()),
                    reason: format!("cannot renew: {why}"),
                });
            }
        };
        let has = |e: ExtendedKeyUsage| facts.extended_key_usages.contains(&e);
        let purpose = match (
            has(ExtendedKeyUsage::ServerAuth),
            has(ExtendedKeyUsage::ClientAuth),
        ) {
            (true, true) => Purpose::ServerAndClient,
            (true, false) => Purpose::Server,
            _ => Purpose::Client,
        };
        let subject = Subject {
            common_name: facts.subject.common_name.clone().unwrap_or_default(),
            organizations: facts.subject.organizations.clone(),
            dns_names: facts.sans.dns_names.clone(),
            ip_addresses: facts.sans.ip_addresses.clone(),
        };
        check_names(bundle, &spec.name, &subject, SanStage::Template, now)?;
        let copied = LeafSpec {
            subject,
            purpose,
            ..spec.clone()
        };
        work.push((copied, signer));
    }
    if work.is_empty() {
        return Ok((results, None));
    }
    // Every certificate issued in memory, then all of them made live in one step.
    let mut change = Change::default();
    for (spec, signer) in &work {
        let leaf = cluster.issue(spec, signer, now, crate::pki::LEAF_LIFETIME)?;
        cluster.write_leaf(&mut change, spec, signer, &leaf);
        results.push(Renewed::Done {
            name: spec.name.clone(),
            restart: spec.restart.clone(),
            reloads: spec.reloads.clone(),
        });
    }
    let committed = cluster.commit(change, false)?;
    Ok((results, Some(committed)))
}

/// The components that load `renew`'s results by themselves (and need no restart for them).
pub(crate) fn reloads(results: &[Renewed]) -> BTreeSet<&'static str> {
    let restarts = restarts(results);
    results
        .iter()
        .filter_map(|r| match r {
            Renewed::Done { reloads, .. } => Some(reloads.iter().copied()),
            Renewed::Skipped { .. } => None,
        })
        .flatten()
        .filter(|c| !restarts.contains(c))
        .collect()
}

/// The components `renew` results require restarting.
pub(crate) fn restarts(results: &[Renewed]) -> BTreeSet<&'static str> {
    results
        .iter()
        .filter_map(|r| match r {
            Renewed::Done { restart, .. } => Some(restart.iter().copied()),
            Renewed::Skipped { .. } => None,
        })
        .flatten()
        .collect()
}

/// Where `generate-csr` writes a certificate's key and CSR, relative to the CSR dir.
fn csr_base(spec: &LeafSpec) -> PathBuf {
    match &spec.storage {
        Storage::Files { cert, .. } => {
            let rel = cert.strip_prefix("pki").unwrap_or(cert);
            rel.with_extension("")
        }
        Storage::Kubeconfig { file, .. } => file.clone(),
    }
}

/// `certs generate-csr --csr-dir DIR`: a new key and a CSR (subject and names from the layout)
/// for every certificate, for an external CA to sign. Refuses to overwrite anything.
pub(crate) fn generate_csr(cluster: &Cluster, csr_dir: &Path) -> Result<Vec<PathBuf>> {
    require_kubeadm(cluster, "generate-csr")?;
    let out = Root::create_ambient(csr_dir)?;
    let mut planned = Vec::new();
    for spec in &cluster.layout.leaves {
        let base = csr_base(spec);
        let key_path = PathBuf::from(format!("{}.key", base.display()));
        let csr_path = PathBuf::from(format!("{}.csr", base.display()));
        for p in [&key_path, &csr_path] {
            if out.exists(p) {
                return Err(ClusterError::AlreadyInitialized {
                    path: out.display(p),
                    what: "file exists".into(),
                });
            }
        }
        let key = cluster.config.key_type.generate()?;
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for o in &spec.subject.organizations {
            dn.push(rcgen::DnType::OrganizationName, o.as_str());
        }
        dn.push(rcgen::DnType::CommonName, spec.subject.common_name.as_str());
        params.distinguished_name = dn;
        for d in &spec.subject.dns_names {
            let name = d
                .as_str()
                .try_into()
                .map_err(|_| ClusterError::Refused(format!("'{d}' is not an ASCII DNS name")))?;
            params.subject_alt_names.push(rcgen::SanType::DnsName(name));
        }
        for ip in &spec.subject.ip_addresses {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(*ip));
        }
        let csr = params
            .serialize_request(key.pair())
            .and_then(|c| c.pem())
            .map_err(|e| ClusterError::Refused(format!("{}: making the CSR: {e}", spec.name)))?;
        planned.push((key_path, key.pem().to_string(), csr_path, csr));
    }
    let mut written = Vec::new();
    for (key_path, key_pem, csr_path, csr) in planned {
        if let Some(parent) = key_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            out.create_dir_all(parent)?;
        }
        out.write_atomic(&key_path, key_pem.as_bytes(), PRIVATE_FILE)?;
        out.write_atomic(&csr_path, csr.as_bytes(), PUBLIC_FILE)?;
        written.push(out.display(&csr_path));
    }
    Ok(written)
}
