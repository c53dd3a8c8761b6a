//! `rotor certificate rotate-ca --path DIR [--force] [--dry-run]`: validate a staged CA set, then
//! replace the CA material in the datastore in one atomic step.
//!
//! Checks, per staged CA (files not staged keep the current ones, so a partial rotation such as
//! only `service.key` is fine):
//!
//! - k3s's four: the bundle holds more than one certificate; the new CA verifies against the
//!   current roots (certificates of the new bundle, cross-signed ones included, count as
//!   intermediates); certificate and key are a pair; the current service-account signing key is
//!   still in the new key list;
//! - and what k3s misses: the certificate is a CA with keyCertSign; the key type and strength are
//!   acceptable (RSA >= 2048 bits, ECDSA P-256/P-384/P-521, Ed25519); the new CA does not expire
//!   before the current one, nor before the leaves it must sign (365 days from now); a change of
//!   the join token's CA hash is reported, and is disruptive.
//!
//! Without `--force`, any failed check refuses the rotation with every problem listed and nothing
//! changed. `--force` turns those checks into warnings. It does not make unusable material
//! usable: a key that is not its certificate's, a certificate that is not a CA, an unreadable or
//! escaping file are refused even with `--force`, since saving them would break every server at
//! its next start.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::custom_ca::staged;
use super::{Change, Cluster, ClusterError, Result};
use crate::datastore::BootstrapData;
use crate::facts::{KeyAlgorithm, KeyUsageBit, certificate_ders, parse_certificate_der};
use crate::fs::{PRIVATE_FILE, Root, failpoint};
use crate::pki::{CaSigner, PrivateKey, Token, ca_hash, is_self_issued, signed_by};

/// One failed check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The CA name, `service-account key`, or `token`.
    pub subject: String,
    pub message: String,
    /// Whether `--force` may override it.
    pub forceable: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

/// What the rotation did (or would do).
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub staging_dir: PathBuf,
    /// Fields replaced: CA names and `service-account key`.
    pub replaced: Vec<String>,
    /// CAs not staged, kept as they are.
    pub kept: Vec<String>,
    /// Problems overridden by `--force`.
    pub forced: Vec<Problem>,
    /// The token's CA hash: (current, new) when it changes.
    pub hash_change: Option<(String, String)>,
    /// The token to give nodes when the hash changes.
    pub new_token: Option<Token>,
    pub saved: bool,
}

pub(crate) struct Options<'a> {
    pub path: &'a Path,
    pub force: bool,
    pub dry_run: bool,
    pub token: Option<&'a str>,
    pub now: OffsetDateTime,
}

const LEAF_LIFETIME_DAYS: i64 = 365;

/// Find the staged TLS dir under `path`: the dir itself, `tls/`, `server/tls/` (k3s) or `pki/`.
fn staging_root(cluster: &Cluster, path: &Path) -> Result<Root> {
    // Fails early with a clear message when the path itself is missing.
    Root::open_ambient(path)?;
    let candidates: &[&str] = if cluster.layout.profile.is_k3s_family() {
        &[".", "tls", "server/tls"]
    } else {
        &[".", "pki"]
    };
    let layout = &cluster.layout;
    let mut expected: Vec<PathBuf> = layout.cas.iter().map(|c| staged(layout, &c.cert)).collect();
    expected.push(staged(layout, &layout.service_key.adopt));
    let live_tls = PathBuf::from(if layout.profile.is_k3s_family() {
        "server/tls"
    } else {
        "pki"
    });
    let live = cluster.root.identity(&live_tls).ok();
    for c in candidates {
        // Each candidate as the operator's shell would resolve it (symlinks followed), so the
        // live directory is recognized however it is named.
        let candidate = if *c == "." {
            path.to_path_buf()
        } else {
            path.join(c)
        };
        let Ok(root) = Root::open_ambient(&candidate) else {
            continue;
        };
        if !expected.iter().any(|e| root.exists(e)) {
            continue;
        }
        if live.is_some() && root.identity(Path::new(".")).ok() == live {
            return Err(ClusterError::Refused(format!(
                "{}: this is the live TLS directory of the data dir: stage the new CA files in another directory \
                 (never overwrite the data in use)",
                root.path().display()
            )));
        }
        return Ok(root);
    }
    Err(ClusterError::Refused(format!(
        "{}: no staged CA files (expected {} directly, or under tls/ or server/tls/)",
        path.display(),
        expected
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn certs_of(what: &str, pem: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    certificate_ders(what, pem).map_err(|e| e.to_string())
}

fn valid_at(der: &[u8], now: OffsetDateTime) -> bool {
    parse_certificate_der("c", der).is_ok_and(|f| f.not_before <= now && now <= f.not_after)
}

/// Whether `cert` chains to one of `roots` through `intermediates` (signatures and validity at
/// `now`), or is one of the roots.
fn chains_to(
    cert: &[u8],
    roots: &[Vec<u8>],
    intermediates: &[Vec<u8>],
    now: OffsetDateTime,
) -> bool {
    fn walk(
        cert: &[u8],
        roots: &[Vec<u8>],
        inter: &[Vec<u8>],
        now: OffsetDateTime,
        depth: usize,
    ) -> bool {
        if depth > 8 {
            return false;
        }
        if roots
            .iter()
            .any(|r| r.as_slice() == cert || (valid_at(r, now) && signed_by(cert, r)))
        {
            return true;
        }
        inter
            .iter()
            .filter(|i| i.as_slice() != cert && valid_at(i, now) && signed_by(cert, i))
            .any(|i| walk(i, roots, inter, now, depth + 1))
    }
    walk(cert, roots, intermediates, now, 0)
}

fn key_acceptable(alg: KeyAlgorithm, bits: u32) -> Option<String> {
    match alg {
        KeyAlgorithm::Rsa if bits >= 2048 => None,
        KeyAlgorithm::Rsa => Some(format!("RSA-{bits} is too weak (at least 2048 bits)")),
        KeyAlgorithm::EcdsaP256
        | KeyAlgorithm::EcdsaP384
        | KeyAlgorithm::EcdsaP521
        | KeyAlgorithm::Ed25519 => None,
        other => Some(format!(
            "{other} keys are not accepted (RSA >= 2048, ECDSA P-256/P-384/P-521, Ed25519)"
        )),
    }
}

pub(crate) fn rotate_ca(cluster: &mut Cluster, opts: Options<'_>) -> Result<Report> {
    let (token, current) = cluster.open_bootstrap(opts.token, opts.now)?;
    let staging = staging_root(cluster, opts.path)?;
    let layout = &cluster.layout;
    let now = opts.now;
    let mut report = Report {
        staging_dir: staging.path().to_path_buf(),
        ..Report::default()
    };
    let mut problems: Vec<Problem> = Vec::new();
    let mut next = current.clone();
    let written_at = crate::clock::system_now();
    let problem = |subject: &str, message: String, forceable: bool| Problem {
        subject: subject.into(),
        message,
        forceable,
    };

    for spec in &layout.cas {
        let cert_rel = staged(layout, &spec.cert);
        let key_rel = staged(layout, &spec.key);
        let cert_pem = match staging.read(&cert_rel) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                if staging.exists(&key_rel) {
                    problems.push(problem(
                        spec.name,
                        format!(
                            "{} is staged without its certificate",
                            staging.display(&key_rel).display()
                        ),
                        false,
                    ));
                }
                report.kept.push(spec.name.to_string());
                continue;
            }
            Err(e) => {
                problems.push(problem(spec.name, e.to_string(), false));
                continue;
            }
        };
        let what = staging.display(&cert_rel).display().to_string();
        let key_pem = match staging.read(&key_rel) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                problems.push(problem(
                    spec.name,
                    format!(
                        "{what} is staged without its key {}",
                        staging.display(&key_rel).display()
                    ),
                    false,
                ));
                continue;
            }
            Err(e) => {
                problems.push(problem(spec.name, e.to_string(), false));
                continue;
            }
        };
        let new_bundle = match certs_of(&what, &cert_pem) {
            Ok(c) => c,
            Err(e) => {
                problems.push(problem(spec.name, e, false));
                continue;
            }
        };
        // Usable at all: a CA whose key is the certificate's (not forceable).
        let signer = match CaSigner::load(&what, &cert_pem, &key_pem) {
            Ok(s) => s,
            Err(e) => {
                problems.push(problem(spec.name, e.to_string(), false));
                continue;
            }
        };
        let f = &signer.facts;
        if new_bundle.len() < 2 {
            problems.push(problem(
                spec.name,
                "the new CA bundle holds a single certificate; it must include the root or intermediate certificates".into(),
                true,
            ));
        }
        if f.key_usage
            .as_ref()
            .is_some_and(|ku| !ku.contains(&KeyUsageBit::KeyCertSign))
        {
            problems.push(problem(
                spec.name,
                "the new CA certificate lacks the keyCertSign key usage".into(),
                true,
            ));
        }
        if let Some(why) = key_acceptable(f.public_key.algorithm, f.public_key.bits) {
            problems.push(problem(spec.name, why, true));
        }
        let old_field = current.get(spec.cert_field);
        let old_bundle = old_field
            .map(|o| certs_of("current CA", &o.content))
            .transpose()
            .map_err(ClusterError::Refused)?
            .unwrap_or_default();
        if let Some(old) = old_bundle.first() {
            let old_facts = parse_certificate_der("current CA", old)?;
            let (roots, mut inter): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
                old_bundle.iter().cloned().partition(|c| is_self_issued(c));
            inter.extend(new_bundle[1..].iter().cloned());
            if !chains_to(&new_bundle[0], &roots, &inter, now) {
                problems.push(problem(
                    spec.name,
                    "the new CA certificate cannot be verified using the current CA chain (no cross-signed path to a current root)".into(),
                    true,
                ));
            }
            if f.not_after < old_facts.not_after {
                problems.push(problem(
                    spec.name,
                    format!(
                        "the new CA expires on {}, before the current one ({})",
                        crate::clock::rfc3339(f.not_after),
                        crate::clock::rfc3339(old_facts.not_after)
                    ),
                    true,
                ));
            }
        }
        if f.not_after < now + time::Duration::days(LEAF_LIFETIME_DAYS) {
            problems.push(problem(
                spec.name,
                format!("the new CA expires on {}, before the {LEAF_LIFETIME_DAYS}-day leaves it must sign", crate::clock::rfc3339(f.not_after)),
                true,
            ));
        }
        next.set(spec.cert_field, cert_pem.clone(), written_at);
        next.set(spec.key_field, key_pem.clone(), written_at);
        report.replaced.push(spec.name.to_string());
    }

    // Service-account keys: the current signing key must stay in the list.
    let sk = &layout.service_key;
    let sk_rel = staged(layout, &sk.adopt);
    match staging.read(&sk_rel) {
        Ok(pem) => {
            match PrivateKey::all_from_pem(&staging.display(&sk_rel).display().to_string(), &pem) {
                Ok(keys) if keys.is_empty() => problems.push(problem(
                    "service-account key",
                    "no private key in the staged file".into(),
                    false,
                )),
                Ok(keys) => {
                    let current_first = current
                        .get(sk.field)
                        .and_then(|f| {
                            PrivateKey::all_from_pem("current service-account key", &f.content).ok()
                        })
                        .and_then(|v| v.into_iter().next());
                    if let Some(cur) = current_first
                        && !keys
                            .iter()
                            .any(|k| k.public_key_raw() == cur.public_key_raw())
                    {
                        problems.push(problem(
                            "service-account key",
                            "the current signing key is not in the new key list: every existing service-account token would become invalid".into(),
                            true,
                        ));
                    }
                    if keys[0].algorithm() == KeyAlgorithm::Other {
                        problems.push(problem(
                            "service-account key",
                            "unsupported key type".into(),
                            true,
                        ));
                    }
                    next.set(sk.field, pem, written_at);
                    report.replaced.push("service-account key".into());
                }
                Err(e) => problems.push(problem("service-account key", e.to_string(), false)),
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => problems.push(problem("service-account key", e.to_string(), false)),
    }

    if report.replaced.is_empty() && problems.is_empty() {
        return Err(ClusterError::Refused(format!(
            "{}: nothing staged to rotate",
            staging.path().display()
        )));
    }

    // The join token pins the token CA: report (and gate) a change of its hash.
    let token_ca = layout.token_ca();
    let hash_of = |data: &BootstrapData| -> Option<String> {
        let content = &data.get(token_ca.cert_field)?.content;
        let ders = certs_of("bundle", content).ok()?;
        Some(ca_hash(content, &ders, now))
    };
    if let (Some(old), Some(new)) = (hash_of(&current), hash_of(&next))
        && old != new
    {
        problems.push(problem(
                "token",
                format!(
                    "the join token's CA hash changes ({old} -> {new}): disruptive, every node that joined with the token \
                     must be reconfigured with the new token"
                ),
                true,
            ));
        report.new_token = Some(token.with_hash(new.clone()));
        report.hash_change = Some((old, new));
    }

    let hard: Vec<&Problem> = problems.iter().filter(|p| !p.forceable).collect();
    let soft: Vec<&Problem> = problems.iter().filter(|p| p.forceable).collect();
    if !hard.is_empty() || (!soft.is_empty() && !opts.force) {
        let mut lines: Vec<String> = hard.iter().map(|p| format!("{p}")).collect();
        lines.extend(soft.iter().map(|p| {
            format!(
                "{p}{}",
                if opts.force {
                    ""
                } else {
                    " [--force overrides]"
                }
            )
        }));
        return Err(ClusterError::Refused(format!(
            "rotate-ca refused, nothing changed:\n  {}{}",
            lines.join("\n  "),
            if hard.is_empty() {
                ""
            } else {
                "\n(--force does not override unusable material)"
            }
        )));
    }
    report.forced = soft.into_iter().cloned().collect();
    if opts.dry_run {
        return Ok(report);
    }

    failpoint("rotate-ca:validated");
    let format = cluster.record_format(&token.password)?;
    // One change: the record replaced in the datastore, and the token file when its hash
    // follows the new CA, switched together.
    let mut change = Change::default();
    change.ops.push(crate::datastore::bootstrap_put(
        &token.password,
        &next,
        format,
    )?);
    if let Some(t) = &report.new_token {
        change.write(
            layout.token_file.clone(),
            format!("{}\n", t.render()).into_bytes(),
            PRIVATE_FILE,
        );
    }
    cluster.commit(change, false)?;
    failpoint("rotate-ca:saved");
    report.saved = true;
    Ok(report)
}
