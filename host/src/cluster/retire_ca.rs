//! `rotor certificate retire-old-ca [--force] [--dry-run]`: the end of a CA rotation.
//!
//! After `rotate-default-ca` + `rotate-ca`, each CA file holds the new CA, the new root
//! cross-signed by the old one, the new root, and the old root: clients and servers on either
//! side of the rotation keep trusting each other. Once every node holds certificates of the new
//! CAs, the old root has to leave every bundle, or it is trusted for ever. This command keeps in
//! each CA's bundle only the CA and its own chain up to its self-signed root, and replaces the
//! datastore record in one step (with the token file, whose CA hash follows the new bundle);
//! `rotor start` then writes the files, and the components that reload their CA files (the
//! apiserver's client CA and request-header CA) stop accepting old-CA clients at once.
//!
//! It refuses, changing nothing, while a leaf rotor knows (every certificate of the layout, in
//! the data dir) is still signed by a certificate it would drop: those clients or servers would
//! be cut off. `--force` retires anyway (a node rotor does not know of is the operator's to
//! check in any case).

use time::OffsetDateTime;

use super::{Cluster, ClusterError, Input, LeafOnDisk, Result};
use crate::facts::certificate_ders;
use crate::pki::{is_self_signed, pem_encode, signed_by};

/// How `retire-old-ca` runs.
pub(crate) struct Options<'a> {
    pub token: Option<&'a str>,
    pub now: OffsetDateTime,
    pub force: bool,
    pub dry_run: bool,
}

/// What it did (or would do).
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Per CA whose bundle shrinks: its name, and the subjects of the certificates dropped.
    pub retired: Vec<(String, Vec<String>)>,
    /// Leaves still signed by a dropped certificate (overridden by `--force`).
    pub still_old: Vec<String>,
    /// The new token, when the token CA's hash changes.
    pub new_token: Option<crate::pki::Token>,
    pub saved: bool,
}

/// The CA (first certificate of `bundle`) and its chain within the bundle up to a self-signed
/// root (its own key verifies it), preferring the self-signed root over a cross-signed copy of
/// it; among several other issuers, the first in the file.
fn own_chain(bundle: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut kept = vec![bundle[0].clone()];
    let mut current = bundle[0].clone();
    while !is_self_signed(&current) {
        let issuers: Vec<&Vec<u8>> = bundle
            .iter()
            .filter(|c| !kept.contains(c) && signed_by(&current, c))
            .collect();
        let next = issuers
            .iter()
            .find(|c| is_self_signed(c))
            .or_else(|| issuers.first())
            .map(|c| (*c).clone());
        match next {
            Some(c) => {
                kept.push(c.clone());
                current = c;
            }
            None => break,
        }
    }
    kept
}

fn subject_of(der: &[u8]) -> String {
    crate::facts::parse_certificate_der("certificate", der)
        .ok()
        .and_then(|f| f.subject.common_name)
        .unwrap_or_else(|| "?".into())
}

pub(crate) fn retire_old_ca(cluster: &mut Cluster, opts: Options<'_>) -> Result<Report> {
    let (token, current) = cluster.open_bootstrap(opts.token, opts.now)?;
    let mut next = current.clone();
    let mut report = Report::default();
    let written_at = crate::clock::system_now();
    for spec in &cluster.layout.cas {
        let Some(file) = current.get(spec.cert_field) else {
            continue;
        };
        let what = format!("datastore {}", spec.cert_field);
        let bundle = certificate_ders(&what, &file.content)?;
        if bundle.is_empty() {
            continue;
        }
        let kept = own_chain(&bundle);
        let dropped: Vec<&Vec<u8>> = bundle.iter().filter(|c| !kept.contains(c)).collect();
        if dropped.is_empty() {
            continue;
        }
        // Every leaf of this CA must chain to what stays.
        for leaf in cluster.layout.leaves.iter().filter(|l| l.ca == spec.name) {
            if let LeafOnDisk::Present { der, .. } = cluster.read_leaf(leaf)?
                && !kept.iter().any(|k| signed_by(&der, k))
            {
                report.still_old.push(format!(
                    "{} ({})",
                    cluster.path(leaf.storage.cert_path()).display(),
                    leaf.name
                ));
            }
        }
        let pem: String = kept.iter().map(|d| pem_encode("CERTIFICATE", d)).collect();
        next.set(spec.cert_field, pem.into_bytes(), written_at);
        report.retired.push((
            spec.name.to_string(),
            dropped.iter().map(|d| subject_of(d)).collect(),
        ));
    }
    if report.retired.is_empty() {
        return Ok(report);
    }
    if !report.still_old.is_empty() && !opts.force {
        return Err(ClusterError::Refused(format!(
            "retire-old-ca refused, nothing changed: these certificates are still signed by the old CA \
             (run 'rotor start' on every server, and let every node renew, first; {} overrides):\n  {}",
            Input::Force,
            report.still_old.join("\n  ")
        )));
    }
    let old_hash = cluster.token_ca_hash(&current, opts.now)?;
    let new_hash = cluster.token_ca_hash(&next, opts.now)?;
    if old_hash != new_hash {
        report.new_token = Some(token.with_hash(new_hash));
    }
    if opts.dry_run {
        return Ok(report);
    }
    let change = super::rotate_ca::plan(cluster, &token, &next, report.new_token.as_ref())?;
    cluster.commit(change, false)?;
    report.saved = true;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::pki::{CaSigner, KeyType, Subject, Validity, self_signed_ca};

    fn subject(cn: &str) -> Subject {
        Subject {
            common_name: cn.into(),
            ..Subject::default()
        }
    }

    #[test]
    fn the_own_chain_keeps_the_ca_and_its_self_signed_root_only() {
        let validity = Validity {
            not_before: datetime!(2027-01-01 00:00 UTC),
            not_after: datetime!(2037-01-01 00:00 UTC),
        };
        let old_key = KeyType::EcdsaP256.generate().unwrap();
        let old = self_signed_ca(&subject("old"), &old_key, validity).unwrap();
        let old_signer =
            CaSigner::load("old", old.pem.as_bytes(), old_key.pem().as_bytes()).unwrap();
        let root_key = KeyType::EcdsaP256.generate().unwrap();
        let root = self_signed_ca(&subject("root"), &root_key, validity).unwrap();
        let cross = old_signer
            .issue_ca(&subject("root"), &root_key, validity)
            .unwrap();
        let root_signer =
            CaSigner::load("root", root.pem.as_bytes(), root_key.pem().as_bytes()).unwrap();
        let ca_key = KeyType::EcdsaP256.generate().unwrap();
        let ca = root_signer
            .issue_ca(&subject("ca"), &ca_key, validity)
            .unwrap();
        // rotate-default-ca's order: CA, cross-signed root, root, old root.
        let bundle = vec![
            ca.der.clone(),
            cross.der.clone(),
            root.der.clone(),
            old.der.clone(),
        ];
        assert_eq!(own_chain(&bundle), vec![ca.der.clone(), root.der.clone()]);
        // A self-signed CA alone is its own chain; nothing to retire.
        assert_eq!(own_chain(std::slice::from_ref(&old.der)), vec![old.der]);
    }
}
