//! The CAs of a new cluster: adopted from files in place, generated, or taken from the cluster
//! a server joins.

use std::path::PathBuf;

use time::OffsetDateTime;

use crate::cluster::layout::CaSpec;
use crate::cluster::{Cluster, ClusterError, LoadedCa, Result, load_external_ca};
use crate::datastore::BootstrapData;
use crate::pki::{CaSigner, Subject, Validity, self_signed_ca};

const CA_LIFETIME_DAYS: i64 = 3650;

/// CA material decided for the new cluster: what to write (if generated) and the signer.
pub(super) struct PlannedCa {
    pub(super) spec: CaSpec,
    pub(super) ca: LoadedCa,
    /// Certificate and key PEM to write (`None` when adopted from disk).
    pub(super) write: Option<(Vec<u8>, Vec<u8>)>,
    /// Taken from the shared datastore (a join): its files are written, nothing generated.
    pub(super) joined: bool,
}

/// Decide each CA: adopt files in place, generate missing ones, or fail on a partial set.
pub(super) fn plan_cas(cluster: &Cluster, now: OffsetDateTime) -> Result<Vec<PlannedCa>> {
    let layout = &cluster.layout;
    let present = |p: &PathBuf| cluster.live.exists(p);
    let any_present = layout
        .cas
        .iter()
        .any(|c| present(&c.cert) || present(&c.key));
    let k3s_family = cluster.config.profile.is_k3s_family();
    if k3s_family && any_present {
        // Custom CA: all five pairs must be there (k3s: "the following files are required").
        let missing: Vec<String> = layout
            .cas
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .filter(|p| !present(p))
            .map(|p| cluster.path(p).display().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ClusterError::Refused(format!(
                "custom CA: some CA files are in place but not all; missing:\n  {}\n(put every CA certificate and key in place, \
                 e.g. with 'rotor certificate generate-custom-ca', or remove them all to generate self-signed CAs)",
                missing.join("\n  ")
            )));
        }
    }
    let mut planned = Vec::new();
    for spec in &layout.cas {
        let what = cluster.path(&spec.cert).display().to_string();
        let p = match (present(&spec.cert), present(&spec.key)) {
            (true, true) => {
                let ca = CaSigner::load(
                    &what,
                    &cluster.live.read(&spec.cert)?,
                    &cluster.live.read(&spec.key)?,
                )?;
                if ca.facts.not_after <= now {
                    return Err(ClusterError::BadFile {
                        path: cluster.path(&spec.cert),
                        reason: format!(
                            "the CA expired on {}",
                            crate::clock::rfc3339(ca.facts.not_after)
                        ),
                    });
                }
                PlannedCa {
                    spec: spec.clone(),
                    ca: LoadedCa::Signing(ca),
                    write: None,
                    joined: false,
                }
            }
            (true, false) if spec.name == "ca" && !k3s_family => {
                let ca = load_external_ca(&what, &cluster.live.read(&spec.cert)?)?;
                PlannedCa {
                    spec: spec.clone(),
                    ca,
                    write: None,
                    joined: false,
                }
            }
            (true, false) => {
                return Err(ClusterError::BadFile {
                    path: cluster.path(&spec.cert),
                    reason: format!(
                        "present without its key {}; only kubeadm's ca.crt may come without a key (external-CA mode)",
                        cluster.path(&spec.key).display()
                    ),
                });
            }
            (false, true) => {
                return Err(ClusterError::BadFile {
                    path: cluster.path(&spec.key),
                    reason: format!("a CA key without its certificate {what}"),
                });
            }
            (false, false) => {
                let key = cluster.config.key_type.generate()?;
                let cn = if spec.timestamped_cn {
                    format!("{}@{}", spec.common_name, now.unix_timestamp())
                } else {
                    spec.common_name.clone()
                };
                let backdate = if k3s_family {
                    time::Duration::hours(1)
                } else {
                    time::Duration::ZERO
                };
                let validity = Validity {
                    not_before: now - backdate,
                    not_after: now + time::Duration::days(CA_LIFETIME_DAYS),
                };
                let subject = Subject {
                    common_name: cn,
                    ..Default::default()
                };
                let cert = self_signed_ca(&subject, &key, validity)?;
                let signer = CaSigner::load(spec.name, cert.pem.as_bytes(), key.pem().as_bytes())?;
                PlannedCa {
                    spec: spec.clone(),
                    ca: LoadedCa::Signing(signer),
                    write: Some((cert.pem.into_bytes(), key.pem().as_bytes().to_vec())),
                    joined: false,
                }
            }
        };
        planned.push(p);
    }
    Ok(planned)
}

/// The CAs of the cluster a server joins, from its bootstrap data: written to this data dir as
/// the datastore holds them; a CA without its key there is external here too.
pub(super) fn join_cas(cluster: &mut Cluster, data: &BootstrapData) -> Result<Vec<PlannedCa>> {
    cluster.config.external_cas = cluster
        .layout
        .cas
        .iter()
        .filter(|spec| data.get(spec.key_field).is_none())
        .map(|spec| spec.name.to_string())
        .collect();
    let mut loaded = cluster.cas_from_bootstrap(data)?;
    let mut planned = Vec::new();
    for spec in &cluster.layout.cas {
        let ca = loaded.remove(spec.name).ok_or(ClusterError::Internal(
            "a layout names a CA it does not define",
        ))?;
        let write = data
            .get(spec.key_field)
            .map(|key| (ca.bundle_pem().to_vec(), key.content.clone()));
        planned.push(PlannedCa {
            spec: spec.clone(),
            ca,
            write,
            joined: true,
        });
    }
    Ok(planned)
}
