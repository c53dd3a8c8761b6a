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
use super::{Change, Cluster, ClusterError, Input, Layout, Result};
use crate::datastore::BootstrapData;
use crate::facts::{KeyAlgorithm, KeyUsageBit, certificate_ders, parse_certificate_der};
use crate::fs::{PRIVATE_FILE, Root, failpoint};
use crate::pki::{CaSigner, LEAF_LIFETIME, PrivateKey, Token, ca_hash, is_self_issued, signed_by};

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

/// `rotate-ca`: check the staged set against the current record, refuse or go on (`--force`),
/// plan the change, commit it.
pub(crate) fn rotate_ca(cluster: &mut Cluster, opts: Options<'_>) -> Result<Report> {
    let (token, current) = cluster.open_bootstrap(opts.token, opts.now)?;
    let staging = staging_root(cluster, opts.path)?;
    let Checked {
        next,
        problems,
        mut report,
    } = check(&cluster.layout, &staging, &current, &token, opts.now)?;
    report.forced = gate(problems, opts.force)?;
    if opts.dry_run {
        return Ok(report);
    }
    failpoint("rotate-ca:validated");
    let change = plan(cluster, &token, &next, report.new_token.as_ref())?;
    cluster.commit(change, false)?;
    failpoint("rotate-ca:saved");
    report.saved = true;
    Ok(report)
}

/// The staged set read and checked: the record it would make, and every problem found.
struct Checked {
    next: BootstrapData,
    problems: Vec<Problem>,
    report: Report,
}

fn problem(subject: &str, message: String, forceable: bool) -> Problem {
    Problem {
        subject: subject.into(),
        message,
        forceable,
    }
}

/// Read every staged file of `layout` in `staging`, check it against `current`, and build the
/// next record. Nothing is written.
fn check(
    layout: &Layout,
    staging: &Root,
    current: &BootstrapData,
    token: &Token,
    now: OffsetDateTime,
) -> Result<Checked> {
    let mut report = Report {
        staging_dir: staging.path().to_path_buf(),
        ..Report::default()
    };
    let mut problems: Vec<Problem> = Vec::new();
    let mut next = current.clone();
    let written_at = crate::clock::system_now();

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
        let found = check_ca(
            spec.name,
            &what,
            &cert_pem,
            &key_pem,
            current.get(spec.cert_field).map(|f| f.content.as_slice()),
            now,
        )?;
        let usable = found.iter().all(|p| p.forceable);
        problems.extend(found);
        if usable {
            next.set(spec.cert_field, cert_pem, written_at);
            next.set(spec.key_field, key_pem, written_at);
            report.replaced.push(spec.name.to_string());
        }
    }

    // Service-account keys: the current signing key must stay in the list.
    let sk = &layout.service_key;
    let sk_rel = staged(layout, &sk.adopt);
    match staging.read(&sk_rel) {
        Ok(pem) => {
            let what = staging.display(&sk_rel).display().to_string();
            let found = check_service_keys(
                &what,
                &pem,
                current.get(sk.field).map(|f| f.content.as_slice()),
            );
            let usable = found.iter().all(|p| p.forceable);
            problems.extend(found);
            if usable {
                next.set(sk.field, pem, written_at);
                report.replaced.push("service-account key".into());
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
    if let (Some(old), Some(new)) = (hash_of(current), hash_of(&next))
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
    Ok(Checked {
        next,
        problems,
        report,
    })
}

/// Every check of one staged CA (certificate file `what` and its key) against the current CA
/// file, if any. Unusable material (not a CA, not its key, unreadable) is a problem `--force`
/// cannot override.
fn check_ca(
    name: &str,
    what: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
    current_pem: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<Vec<Problem>> {
    let new_bundle = match certs_of(what, cert_pem) {
        Ok(c) => c,
        Err(e) => return Ok(vec![problem(name, e, false)]),
    };
    // Usable at all: a CA whose key is the certificate's (not forceable).
    let signer = match CaSigner::load(what, cert_pem, key_pem) {
        Ok(s) => s,
        Err(e) => return Ok(vec![problem(name, e.to_string(), false)]),
    };
    let mut problems = Vec::new();
    let f = &signer.facts;
    if new_bundle.len() < 2 {
        problems.push(problem(
            name,
            "the new CA bundle holds a single certificate; it must include the root or intermediate certificates".into(),
            true,
        ));
    }
    if f.key_usage
        .as_ref()
        .is_some_and(|ku| !ku.contains(&KeyUsageBit::KeyCertSign))
    {
        problems.push(problem(
            name,
            "the new CA certificate lacks the keyCertSign key usage".into(),
            true,
        ));
    }
    if let Some(why) = key_acceptable(f.public_key.algorithm, f.public_key.bits) {
        problems.push(problem(name, why, true));
    }
    let old_bundle = current_pem
        .map(|pem| certs_of("current CA", pem))
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
                name,
                "the new CA certificate cannot be verified using the current CA chain (no cross-signed path to a current root)".into(),
                true,
            ));
        }
        if f.not_after < old_facts.not_after {
            problems.push(problem(
                name,
                format!(
                    "the new CA expires on {}, before the current one ({})",
                    crate::clock::rfc3339(f.not_after),
                    crate::clock::rfc3339(old_facts.not_after)
                ),
                true,
            ));
        }
    }
    if f.not_after < now + LEAF_LIFETIME {
        problems.push(problem(
            name,
            format!(
                "the new CA expires on {}, before the {}-day leaves it must sign",
                crate::clock::rfc3339(f.not_after),
                LEAF_LIFETIME.whole_days()
            ),
            true,
        ));
    }
    Ok(problems)
}

/// The checks of a staged service-account key file against the current one.
fn check_service_keys(what: &str, pem: &[u8], current_pem: Option<&[u8]>) -> Vec<Problem> {
    const SUBJECT: &str = "service-account key";
    let keys = match PrivateKey::all_from_pem(what, pem) {
        Ok(keys) if keys.is_empty() => {
            return vec![problem(
                SUBJECT,
                "no private key in the staged file".into(),
                false,
            )];
        }
        Ok(keys) => keys,
        Err(e) => return vec![problem(SUBJECT, e.to_string(), false)],
    };
    let mut problems = Vec::new();
    let current_first = current_pem
        .and_then(|pem| PrivateKey::all_from_pem("current service-account key", pem).ok())
        .and_then(|v| v.into_iter().next());
    if let Some(cur) = current_first
        && !keys
            .iter()
            .any(|k| k.public_key_raw() == cur.public_key_raw())
    {
        problems.push(problem(
            SUBJECT,
            "the current signing key is not in the new key list: every existing service-account token would become invalid".into(),
            true,
        ));
    }
    if keys[0].algorithm() == KeyAlgorithm::Other {
        problems.push(problem(SUBJECT, "unsupported key type".into(), true));
    }
    problems
}

/// Refuse, listing every problem, unless all are forceable and `force` is given; the problems
/// forced otherwise.
fn gate(problems: Vec<Problem>, force: bool) -> Result<Vec<Problem>> {
    let (soft, hard): (Vec<Problem>, Vec<Problem>) =
        problems.into_iter().partition(|p| p.forceable);
    if hard.is_empty() && (soft.is_empty() || force) {
        return Ok(soft);
    }
    let mut lines: Vec<String> = hard.iter().map(ToString::to_string).collect();
    lines.extend(soft.iter().map(|p| {
        if force {
            p.to_string()
        } else {
            format!("{p} [{} overrides]", Input::Force)
        }
    }));
    let unusable = if hard.is_empty() {
        String::new()
    } else {
        format!("\n({} does not override unusable material)", Input::Force)
    };
    Err(ClusterError::Refused(format!(
        "rotate-ca refused, nothing changed:\n  {}{unusable}",
        lines.join("\n  "),
    )))
}

/// The change: the record replaced in the datastore, and the token file when its hash follows
/// the new CA, switched together.
pub(super) fn plan(
    cluster: &Cluster,
    token: &Token,
    next: &BootstrapData,
    new_token: Option<&Token>,
) -> Result<Change> {
    let format = cluster.record_format(&token.password)?;
    let mut change = Change::default();
    change.ops.push(crate::datastore::bootstrap_put(
        &token.password,
        next,
        format,
    )?);
    if let Some(t) = new_token {
        change.write(
            cluster.layout.token_file.clone(),
            format!("{}\n", t.render()).into_bytes(),
            PRIVATE_FILE,
        );
    }
    Ok(change)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::pki::{KeyType, Subject, Validity, self_signed_ca};

    const NOW: OffsetDateTime = datetime!(2027-01-01 00:00 UTC);

    fn subject(cn: &str) -> Subject {
        Subject {
            common_name: cn.into(),
            ..Subject::default()
        }
    }

    /// From a day before NOW to `days` after it.
    fn validity(days: i64) -> Validity {
        Validity {
            not_before: NOW - time::Duration::days(1),
            not_after: NOW + time::Duration::days(days),
        }
    }

    /// A self-signed CA valid for `days`: (certificate PEM, its key).
    fn root_with_key(cn: &str, days: i64) -> (String, PrivateKey) {
        let key = KeyType::EcdsaP256.generate().unwrap();
        let issued = self_signed_ca(&subject(cn), &key, validity(days)).unwrap();
        (issued.pem, key)
    }

    /// A self-signed CA valid for `days`: (certificate PEM, key PEM).
    fn root(cn: &str, days: i64) -> (String, String) {
        let (pem, key) = root_with_key(cn, days);
        (pem, key.pem().to_string())
    }

    fn messages(problems: &[Problem]) -> Vec<(String, bool)> {
        problems
            .iter()
            .map(|p| (p.message.clone(), p.forceable))
            .collect()
    }

    #[test]
    fn a_staged_ca_is_checked_against_the_current_one() {
        let (old, _) = root("old", 3650);
        // A new root alone: one certificate, and no path to the current root.
        let (new, new_key) = root("new", 7300);
        let found = check_ca(
            "server-ca",
            "new.crt",
            new.as_bytes(),
            new_key.as_bytes(),
            Some(old.as_bytes()),
            NOW,
        )
        .unwrap();
        let m = messages(&found);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].0.contains("single certificate") && m[0].1, "{m:?}");
        assert!(m[1].0.contains("cannot be verified") && m[1].1, "{m:?}");

        // Bundled with the current root and cross-signed by it: no problem left but the
        // bundle's chain, which now verifies.
        let (old_pem, old_key) = root_with_key("old", 3650);
        let old_signer =
            CaSigner::load("old", old_pem.as_bytes(), old_key.pem().as_bytes()).unwrap();
        let (new_root_pem, new_key) = root_with_key("new", 7300);
        let cross = old_signer
            .issue_ca(&subject("new"), &new_key, validity(3000))
            .unwrap();
        let bundle = format!("{new_root_pem}{}", cross.pem);
        let found = check_ca(
            "server-ca",
            "new.crt",
            bundle.as_bytes(),
            new_key.pem().as_bytes(),
            Some(old_pem.as_bytes()),
            NOW,
        )
        .unwrap();
        assert!(found.is_empty(), "{:?}", messages(&found));

        // Expiring before the current CA and before a leaf's lifetime: forceable problems.
        let (short, short_key) = root("short", 30);
        let found = check_ca(
            "server-ca",
            "s.crt",
            short.as_bytes(),
            short_key.as_bytes(),
            Some(old_pem.as_bytes()),
            NOW,
        )
        .unwrap();
        let m = messages(&found);
        assert!(
            m.iter()
                .any(|(s, f)| s.contains("before the current one") && *f),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|(s, f)| s.contains("before the 365-day leaves") && *f),
            "{m:?}"
        );

        // A key that is not the certificate's: unusable, whatever --force says.
        let (_, other_key) = root("other", 3650);
        let found = check_ca(
            "server-ca",
            "new.crt",
            new.as_bytes(),
            other_key.as_bytes(),
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(found.len(), 1);
        assert!(!found[0].forceable, "{:?}", messages(&found));
    }

    #[test]
    fn the_current_service_account_key_must_stay_in_the_list() {
        let current = KeyType::EcdsaP256.generate().unwrap();
        let other = KeyType::EcdsaP256.generate().unwrap();
        let found = check_service_keys(
            "sa.key",
            other.pem().as_bytes(),
            Some(current.pem().as_bytes()),
        );
        assert_eq!(found.len(), 1);
        assert!(found[0].forceable && found[0].message.contains("current signing key"));
        let both = format!("{}{}", other.pem(), current.pem());
        assert!(
            check_service_keys("sa.key", both.as_bytes(), Some(current.pem().as_bytes()))
                .is_empty()
        );
        let none = check_service_keys("sa.key", b"not pem", None);
        assert!(!none[0].forceable, "{:?}", messages(&none));
    }

    #[test]
    fn force_overrides_only_forceable_problems() {
        let soft = problem("server-ca", "expires early".into(), true);
        let hard = problem("client-ca", "not its key".into(), false);
        assert!(gate(vec![], false).unwrap().is_empty());
        let err = gate(vec![soft.clone()], false).unwrap_err().to_string();
        assert!(
            err.contains(&format!("expires early [{} overrides]", Input::Force)),
            "{err}"
        );
        assert_eq!(gate(vec![soft.clone()], true).unwrap(), vec![soft.clone()]);
        let err = gate(vec![soft, hard], true).unwrap_err().to_string();
        assert!(
            err.contains("client-ca: not its key") && err.contains("does not override"),
            "{err}"
        );
    }
}
