//! `rotor certificate check`: one row per certificate in every file rotor manages (the CA
//! certificates in each chain included, as k3s does), with its status.
//!
//! Status: `NOT YET VALID`, `EXPIRED`, `WARNING` (a leaf the renewal policy would renew now, or a
//! CA within 365 days of expiry), `ROTATE CA` (a leaf due for renewal whose CA ends too soon for
//! a replacement to outlive it: `start` keeps it), `OK`; `MISSING` and `INVALID` for files that
//! are absent or unreadable. Read-only: needs neither the token nor the datastore.

use std::path::Path;

use serde::Serialize;
use time::OffsetDateTime;

use super::layout::Storage;
use super::start::Pointless;
use super::{Cluster, Result, kubeconfig};
use crate::contract::RenewalRequest;
use crate::facts::{CertificateFacts, ExtendedKeyUsage, parse_certificate_der};
use crate::policy::Bundle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Status {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "WARNING")]
    Warning,
    #[serde(rename = "EXPIRED")]
    Expired,
    #[serde(rename = "NOT YET VALID")]
    NotYetValid,
    /// A leaf the policy would renew, but whose CA ends too soon for a replacement to help.
    #[serde(rename = "ROTATE CA")]
    RotateCa,
    #[serde(rename = "MISSING")]
    Missing,
    #[serde(rename = "INVALID")]
    Invalid,
}

impl Status {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Expired => "EXPIRED",
            Status::NotYetValid => "NOT YET VALID",
            Status::RotateCa => "ROTATE CA",
            Status::Missing => "MISSING",
            Status::Invalid => "INVALID",
        }
    }

    pub(crate) fn needs_attention(self) -> bool {
        self != Status::Ok
    }
}

/// One certificate.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    /// File, relative to the data dir.
    pub file: String,
    /// The certificate's name in the layout (leaf or CA name); chain entries repeat it with
    /// `(chain)`.
    pub certificate: String,
    pub subject: String,
    pub issuer: String,
    pub usages: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// Seconds until notAfter (negative once expired).
    pub residual_seconds: Option<i64>,
    pub residual: String,
    pub status: Status,
    pub is_ca: bool,
    pub externally_managed: bool,
    /// Why, for WARNING, MISSING and INVALID.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

use crate::pki::CA_WARNING;

/// kubeadm's short human duration: `364d`, `9y`, `23h`, `59m`, `<invalid>` once expired.
pub(crate) fn short_duration(d: time::Duration) -> String {
    let s = d.whole_seconds();
    if s <= 0 {
        return "<invalid>".into();
    }
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3600)
    } else if s < 365 * 86_400 {
        format!("{}d", s / 86_400)
    } else {
        format!("{}y", s / (365 * 86_400))
    }
}

fn usages(f: &CertificateFacts) -> String {
    if f.is_ca {
        return "CertSign".into();
    }
    let mut u: Vec<&str> = f
        .extended_key_usages
        .iter()
        .map(|e| match e {
            ExtendedKeyUsage::ServerAuth => "ServerAuth",
            ExtendedKeyUsage::ClientAuth => "ClientAuth",
            _ => "Other",
        })
        .collect();
    u.dedup();
    u.join(",")
}

fn status_by_time(f: &CertificateFacts, now: OffsetDateTime) -> Option<Status> {
    if now < f.not_before {
        Some(Status::NotYetValid)
    } else if now >= f.not_after {
        Some(Status::Expired)
    } else {
        None
    }
}

fn row(
    file: &str,
    name: &str,
    f: &CertificateFacts,
    status: Status,
    external: bool,
    detail: String,
    now: OffsetDateTime,
) -> Row {
    Row {
        file: file.into(),
        certificate: name.into(),
        subject: f.subject.text.clone(),
        issuer: f.issuer.text.clone(),
        usages: usages(f),
        not_before: Some(f.not_before),
        not_after: Some(f.not_after),
        residual_seconds: Some((f.not_after - now).whole_seconds()),
        residual: short_duration(f.not_after - now),
        status,
        is_ca: f.is_ca,
        externally_managed: external,
        detail,
    }
}

fn missing(file: &str, name: &str, status: Status, detail: String, external: bool) -> Row {
    Row {
        file: file.into(),
        certificate: name.into(),
        subject: String::new(),
        issuer: String::new(),
        usages: String::new(),
        not_before: None,
        not_after: None,
        residual_seconds: None,
        residual: String::new(),
        status,
        is_ca: false,
        externally_managed: external,
        detail,
    }
}

fn ca_status(f: &CertificateFacts, now: OffsetDateTime) -> (Status, String) {
    match status_by_time(f, now) {
        Some(s) => (s, String::new()),
        None if f.not_after - now <= CA_WARNING => {
            (Status::Warning, "CA within 365 days of expiry".into())
        }
        None => (Status::Ok, String::new()),
    }
}

/// The certificates of a file, DER, in order. Kubeconfigs yield their client certificate.
fn certificates_in(
    cluster: &Cluster,
    storage: &Storage,
) -> std::result::Result<Option<Vec<Vec<u8>>>, String> {
    let path = storage.cert_path();
    let bytes = match cluster.live.read(path) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let pem = match storage {
        Storage::Files { .. } => bytes,
        Storage::Kubeconfig { .. } => {
            kubeconfig::read_embedded(cluster.path(path), &bytes)
                .map_err(|e| e.to_string())?
                .cert_pem
        }
    };
    let ders = crate::facts::certificate_ders("certificate", &pem).map_err(|e| e.to_string())?;
    Ok(Some(ders))
}

/// Every certificate rotor manages.
pub(crate) fn check(cluster: &Cluster, bundle: &Bundle, now: OffsetDateTime) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // Each CA's notAfter, by name, from its own file (a leaf's chain may not carry it).
    let mut ca_not_after = std::collections::BTreeMap::new();
    let rel = |p: &Path| p.display().to_string();
    for spec in &cluster.layout.cas {
        let external = cluster.config.is_external(spec.name);
        let storage = Storage::Files {
            cert: spec.cert.clone(),
            key: spec.key.clone(),
            with_ca_bundle: false,
        };
        match certificates_in(cluster, &storage) {
            Ok(None) => rows.push(missing(
                &rel(&spec.cert),
                spec.name,
                Status::Missing,
                "file missing".into(),
                external,
            )),
            Err(e) => rows.push(missing(
                &rel(&spec.cert),
                spec.name,
                Status::Invalid,
                e,
                external,
            )),
            Ok(Some(ders)) => {
                for (i, der) in ders.iter().enumerate() {
                    let name = if i == 0 {
                        spec.name.to_string()
                    } else {
                        format!("{} (chain)", spec.name)
                    };
                    match parse_certificate_der("certificate", der) {
                        Ok(f) => {
                            if i == 0 {
                                ca_not_after.insert(spec.name, f.not_after);
                            }
                            let (status, detail) = ca_status(&f, now);
                            rows.push(row(
                                &rel(&spec.cert),
                                &name,
                                &f,
                                status,
                                external,
                                detail,
                                now,
                            ));
                        }
                        Err(e) => rows.push(missing(
                            &rel(&spec.cert),
                            &name,
                            Status::Invalid,
                            e.to_string(),
                            external,
                        )),
                    }
                }
            }
        }
    }
    for spec in &cluster.layout.leaves {
        let external = cluster.config.is_external(spec.ca);
        let file = rel(spec.storage.cert_path());
        let ders = match certificates_in(cluster, &spec.storage) {
            Ok(Some(d)) => d,
            Ok(None) => {
                rows.push(missing(
                    &file,
                    &spec.name,
                    Status::Missing,
                    "file missing: 'rotor start' issues it".into(),
                    external,
                ));
                continue;
            }
            Err(e) => {
                rows.push(missing(&file, &spec.name, Status::Invalid, e, external));
                continue;
            }
        };
        let issuer_not_after = ca_not_after.get(spec.ca).copied().or_else(|| {
            ders.get(1)
                .and_then(|d| parse_certificate_der("ca", d).ok())
                .map(|f| f.not_after)
        });
        for (i, der) in ders.iter().enumerate() {
            let f = match parse_certificate_der("certificate", der) {
                Ok(f) => f,
                Err(e) => {
                    rows.push(missing(
                        &file,
                        &spec.name,
                        Status::Invalid,
                        e.to_string(),
                        external,
                    ));
                    continue;
                }
            };
            if i > 0 {
                let (status, detail) = ca_status(&f, now);
                rows.push(row(
                    &file,
                    &format!("{} (chain)", spec.name),
                    &f,
                    status,
                    external,
                    detail,
                    now,
                ));
                continue;
            }
            let (status, detail) = match status_by_time(&f, now) {
                Some(s) => (s, String::new()),
                None => {
                    let request = RenewalRequest {
                        name: spec.name.clone(),
                        certificate: std::sync::Arc::new(f.clone()),
                        issuer_not_after,
                        now,
                    };
                    match bundle.renewal(&request) {
                        Ok(o) if o.decision.is_renew() => {
                            let lifetime = o.decision.lifetime().map_or(
                                crate::pki::LEAF_LIFETIME.whole_seconds().unsigned_abs(),
                                |l| l.as_secs(),
                            );
                            let pointless = issuer_not_after.and_then(|ca| {
                                super::start::replacement_pointless(
                                    spec.ca,
                                    ca,
                                    f.not_after,
                                    lifetime,
                                    now,
                                )
                            });
                            match pointless {
                                Some(Pointless::RotateCa(why)) if !external => {
                                    (Status::RotateCa, why)
                                }
                                // `start` keeps it until a replacement would outlive it.
                                Some(Pointless::ShorterLifetime(_)) if !external => {
                                    (Status::Ok, String::new())
                                }
                                _ => (Status::Warning, o.decision.reason().to_string()),
                            }
                        }
                        Ok(_) => (Status::Ok, String::new()),
                        Err(e) => (Status::Warning, format!("renewal policy failed: {e}")),
                    }
                }
            };
            rows.push(row(&file, &spec.name, &f, status, external, detail, now));
        }
    }
    Ok(rows)
}
