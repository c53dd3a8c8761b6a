//! `rotor start` (what a server does at every start) and `rotor certificate rotate`.
//!
//! Both build a [`Plan`] without touching anything: CA files to extract from the datastore
//! (the authoritative copy), and for each leaf keep or re-issue, with the reasons. `start`
//! re-issues a leaf when the renewal policy says so, when its subject or names drifted from the
//! layout, when its key does not match it, or when the current CA did not sign it; `rotate`
//! re-issues the leaves of the selected services. Applying a plan backs up the live PKI first,
//! and every re-issue uses a new key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use time::OffsetDateTime;

use super::layout::LeafSpec;
use super::{Change, Cluster, ClusterError, LeafOnDisk, LoadedCa, Result, check, purpose_matches};
use crate::contract::RenewalRequest;
use crate::datastore::BootstrapData;
use crate::facts::CertificateFacts;
use crate::fs::{PRIVATE_FILE, PUBLIC_FILE};
use crate::pki::signed_by;
use crate::policy::Bundle;

/// Tolerated clock skew between a file's mtime and the datastore's timestamp (k3s: 3 s).
const SKEW_SECONDS: i64 = 3;
/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every start: renew what the policy, drift or issuer say.
    Start,
    /// `certificate rotate`: re-issue the leaves of these services (all when `None`).
    Rotate { services: Option<Vec<String>> },
}

/// A file to (re)write from the datastore.
#[derive(Clone, Debug)]
pub(crate) struct Extraction {
    pub path: PathBuf,
    pub content: Vec<u8>,
    pub private: bool,
    pub why: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    Keep,
    Reissue,
    /// Signed by an external CA: rotor reports it and never touches it.
    ExternallyManaged,
}

/// The decision for one leaf.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct LeafPlan {
    pub name: String,
    pub path: PathBuf,
    pub action: Action,
    pub reasons: Vec<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    /// Lifetime of the re-issued certificate, in seconds.
    pub lifetime_seconds: u64,
    pub restart: Vec<&'static str>,
    /// Components that load the new certificate by themselves.
    pub reloads: Vec<&'static str>,
    /// How the renewal hook decided, when it was asked (`rotor serve` logs and exports it).
    #[serde(skip)]
    pub decided: Option<Box<LeafDecision>>,
}

/// The renewal hook's decision on one leaf, with what `rotor serve` needs to log, export and
/// replay it against a shadow bundle.
#[derive(Clone, Debug)]
pub(crate) struct LeafDecision {
    /// The question asked.
    pub request: RenewalRequest,
    /// The answer, after the host's rules.
    pub decision: crate::contract::RenewalDecision,
    /// Who decided.
    pub source: crate::policy::Source,
    /// The plugin asked, with its digest.
    pub plugin: Option<(String, String)>,
    /// The code of the plugin failure that made the failure mode decide.
    pub error: Option<&'static str>,
    /// Notes of the host's rules and the failure, in words.
    pub notes: Vec<String>,
    /// How long the evaluation took.
    pub latency: std::time::Duration,
}
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub extractions: Vec<Extraction>,
    pub leaves: Vec<LeafPlan>,
    pub warnings: Vec<String>,
    /// Touch the dynamic-certificate trigger (`k3s-server` service).
    pub regenerate_dynamic_cert: bool,
}

impl Plan {
    pub(crate) fn reissues(&self) -> impl Iterator<Item = &LeafPlan> {
        self.leaves.iter().filter(|l| l.action == Action::Reissue)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.extractions.is_empty()
            && self.reissues().next().is_none()
            && !self.regenerate_dynamic_cert
    }

    /// Components that load what the plan changes by themselves (and need no restart for it).
    pub(crate) fn reloads(&self) -> BTreeSet<&'static str> {
        // Files from the datastore changed too (CA files, service keys): every control-plane
        // component restarts, whatever it reloads.
        if !self.extractions.is_empty() {
            return BTreeSet::new();
        }
        let restarts = self.restarts();
        self.reissues()
            .flat_map(|l| l.reloads.iter().copied())
            .filter(|c| !restarts.contains(c))
            .collect()
    }

    /// Components that must restart once the plan is applied.
    pub(crate) fn restarts(&self) -> BTreeSet<&'static str> {
        let mut set: BTreeSet<&'static str> = self
            .reissues()
            .flat_map(|l| l.restart.iter().copied())
            .collect();
        if !self.extractions.is_empty() {
            set.insert("every control-plane component (files from the datastore changed)");
        }
        if self.regenerate_dynamic_cert {
            set.insert("supervisor (dynamic serving certificate)");
        }
        set
    }
}

/// A loaded, decided start: the plan and the material to apply it.
pub(crate) struct Prepared {
    pub plan: Plan,
    cas: BTreeMap<&'static str, LoadedCa>,
}

impl Prepared {
    /// The CA named `name`, as this plan loaded it.
    pub(crate) fn ca(&self, name: &str) -> Option<&LoadedCa> {
        self.cas.get(name)
    }
}

/// What applying did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// The generation the change replaced, kept as the backup.
    pub backup: Option<PathBuf>,
    /// The generation now live.
    pub generation: Option<u64>,
    pub reissued: Vec<String>,
    pub extracted: Vec<PathBuf>,
    pub warnings: Vec<String>,
    /// Whether the watchers of the replaced files were told ([`super::Committed::watchers_told`]).
    pub watchers_told: bool,
}

/// Build the plan. Reads the datastore with `token`; changes nothing.
pub(crate) fn prepare(
    cluster: &Cluster,
    bundle: &Bundle,
    token: Option<&str>,
    mode: &Mode,
    now: OffsetDateTime,
) -> Result<Prepared> {
    let (token, data) = cluster.open_bootstrap(token, now)?;
    let mut plan = Plan {
        extractions: extractions(cluster, &data, &token, now)?,
        ..Plan::default()
    };
    let cas = cluster.cas_from_bootstrap(&data)?;

    for spec in &cluster.layout.cas {
        let f = cas[spec.name].facts();
        if now < f.not_before {
            plan.warnings.push(format!(
                "CA {} is not valid until {}: the clock ({}) is earlier than its notBefore (has it moved back?); nothing it signed is trusted before then",
                spec.name,
                crate::clock::rfc3339(f.not_before),
                crate::clock::rfc3339(now)
            ));
        } else if f.not_after <= now {
            plan.warnings.push(format!(
                "CA {} expired on {}: rotate it with 'rotor certificate rotate-ca'",
                spec.name,
                crate::clock::rfc3339(f.not_after)
            ));
        } else if f.not_after - now <= crate::pki::CA_WARNING {
            plan.warnings.push(format!(
                "CA {} expires on {} (in {} days): CAs are never renewed automatically; plan a 'rotor certificate rotate-ca'",
                spec.name,
                crate::clock::rfc3339(f.not_after),
                (f.not_after - now).whole_days()
            ));
        }
    }

    let selected: Option<BTreeSet<&str>> = match mode {
        Mode::Start => None,
        Mode::Rotate { services } => {
            Some(select_services(cluster, services.as_deref(), &mut plan)?)
        }
    };
    // Each leaf is read, parsed, checked against its CA's signature and asked about on its
    // own: spread over the cores (the boot path of every server), results kept in order.
    let decide = |spec: &LeafSpec| -> Result<(LeafPlan, Vec<String>)> {
        let ca = &cas[spec.ca];
        let mut warnings = Vec::new();
        let leaf_plan = match &selected {
            Some(names) => rotate_leaf(cluster, spec, ca, names.contains(spec.name.as_str()))?,
            None => start_leaf(cluster, bundle, spec, ca, now, &mut warnings)?,
        };
        Ok((leaf_plan, warnings))
    };
    let leaves = &cluster.layout.leaves;
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4);
    let chunk = leaves.len().div_ceil(threads).max(1);
    let decided: Vec<Result<(LeafPlan, Vec<String>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = leaves
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(decide).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(ClusterError::Internal("a leaf check panicked"))])
            })
            .collect()
    });
    for d in decided {
        let (leaf_plan, warnings) = d?;
        for w in warnings {
            if !plan.warnings.contains(&w) {
                plan.warnings.push(w);
            }
        }
        plan.leaves.push(leaf_plan);
    }
    Ok(Prepared { plan, cas })
}

fn select_services<'a>(
    cluster: &'a Cluster,
    services: Option<&[String]>,
    plan: &mut Plan,
) -> Result<BTreeSet<&'a str>> {
    let layout = &cluster.layout;
    // kubeadm has no k3s service names: its certificate names select.
    let valid: Vec<String> = if layout.services.is_empty() {
        layout.leaves.iter().map(|l| l.name.clone()).collect()
    } else {
        layout.services.iter().map(|s| s.to_string()).collect()
    };
    let requested: Vec<String> = match services {
        None => valid.clone(),
        Some(list) => list.to_vec(),
    };
    if let Some(bad) = requested.iter().find(|s| !valid.contains(s)) {
        return Err(ClusterError::UnknownService {
            name: bad.clone(),
            valid,
        });
    }
    let mut leaves = BTreeSet::new();
    for leaf in &layout.leaves {
        let by_service = leaf
            .services
            .iter()
            .any(|s| requested.iter().any(|r| r == s));
        let by_name = layout.services.is_empty() && requested.contains(&leaf.name);
        if by_service || by_name {
            leaves.insert(leaf.name.as_str());
        }
    }
    plan.regenerate_dynamic_cert = layout
        .dynamic_cert
        .as_ref()
        .is_some_and(|(service, _)| requested.iter().any(|r| r == service));
    Ok(leaves)
}

fn leaf_path(cluster: &Cluster, spec: &LeafSpec) -> PathBuf {
    cluster.path(spec.storage.cert_path())
}

fn rotate_leaf(
    cluster: &Cluster,
    spec: &LeafSpec,
    ca: &LoadedCa,
    selected: bool,
) -> Result<LeafPlan> {
    let not_after = match cluster.read_leaf(spec) {
        Ok(LeafOnDisk::Present { facts, .. }) => Some(facts.not_after),
        // A corrupt file is exactly what a forced rotation replaces.
        Ok(LeafOnDisk::Missing(_)) | Err(ClusterError::BadFile { .. }) => None,
        Err(e) => return Err(e),
    };
    let (action, reasons) = if ca.signer().is_none() {
        (
            Action::ExternallyManaged,
            vec!["signed by an external CA: not rotated".to_string()],
        )
    } else if selected {
        (Action::Reissue, vec!["rotation requested".to_string()])
    } else {
        (Action::Keep, vec!["not selected".to_string()])
    };
    Ok(LeafPlan {
        name: spec.name.clone(),
        path: leaf_path(cluster, spec),
        action,
        reasons,
        not_after,
        lifetime_seconds: crate::pki::LEAF_LIFETIME.whole_seconds().unsigned_abs(),
        restart: spec.restart.clone(),
        reloads: spec.reloads.clone(),
        decided: None,
    })
}

fn start_leaf(
    cluster: &Cluster,
    bundle: &Bundle,
    spec: &LeafSpec,
    ca: &LoadedCa,
    now: OffsetDateTime,
    warnings: &mut Vec<String>,
) -> Result<LeafPlan> {
    let external = ca.signer().is_none();
    let mut lifetime = crate::pki::LEAF_LIFETIME.whole_seconds().unsigned_abs();
    let mut not_yet_valid = None;
    let mut decided = None;
    let (action, reasons, not_after) = match cluster.read_leaf(spec)? {
        LeafOnDisk::Missing(why) => (
            if external {
                Action::ExternallyManaged
            } else {
                Action::Reissue
            },
            vec![why],
            None,
        ),
        LeafOnDisk::Present {
            der,
            facts,
            key_matches,
        } => {
            if now < facts.not_before {
                not_yet_valid = Some(facts.not_before);
            }
            let request = RenewalRequest {
                name: spec.name.clone(),
                certificate: std::sync::Arc::new((*facts).clone()),
                issuer_not_after: Some(ca.facts().not_after),
                now,
            };
            let started = std::time::Instant::now();
            let outcome = bundle.renewal(&request)?;
            let latency = started.elapsed();
            let mut notes = outcome.notes.clone();
            notes.extend(outcome.error.iter().map(ToString::to_string));
            decided = Some(Box::new(LeafDecision {
                request: request.clone(),
                decision: outcome.decision.clone(),
                source: outcome.source,
                plugin: bundle.plugin_identity(crate::contract::Hook::Renewal),
                error: outcome.error.as_ref().map(|e| e.kind.code()),
                notes,
                latency,
            }));
            warnings.extend(outcome.notes.iter().map(|n| format!("{}: {n}", spec.name)));
            warnings.extend(outcome.error.iter().map(|e| format!("{}: {e}", spec.name)));
            let source = match (&outcome.plugin, outcome.source) {
                (Some(p), crate::policy::Source::Plugin) => format!("policy ({p})"),
                _ => "policy (built-in rule)".to_string(),
            };
            let policy = format!("{source}: {}", outcome.decision.reason());
            let renew = outcome.decision.is_renew();
            let not_after = Some(facts.not_after);
            if external {
                let due = if renew {
                    "; due for renewal: renew it with your CA"
                } else {
                    ""
                };
                (
                    Action::ExternallyManaged,
                    vec![format!("signed by an external CA{due}")],
                    not_after,
                )
            } else {
                let mut forced = Vec::new();
                if !key_matches {
                    forced.push("the private key does not match the certificate".to_string());
                }
                forced.extend(drift(spec, &facts));
                if !signed_by(&der, ca.cert_der()) {
                    forced.push(format!("not signed by the current {}", spec.ca));
                }
                if renew && let Some(l) = outcome.decision.lifetime() {
                    lifetime = l.as_secs();
                }
                let pointless = if renew && forced.is_empty() {
                    replacement_pointless(
                        spec.ca,
                        ca.facts().not_after,
                        facts.not_after,
                        lifetime,
                        now,
                    )
                } else {
                    None
                };
                if let Some(p) = pointless {
                    let why = match p {
                        Pointless::RotateCa(why) => {
                            // Said once per CA (deduplicated in `prepare`), not once per leaf.
                            warnings.push(why.clone());
                            why
                        }
                        Pointless::ShorterLifetime(why) => why,
                    };
                    (
                        Action::Keep,
                        vec![format!("{policy}; kept: {why}")],
                        not_after,
                    )
                } else if renew {
                    let mut reasons = vec![policy];
                    reasons.extend(forced);
                    (Action::Reissue, reasons, not_after)
                } else if !forced.is_empty() {
                    (Action::Reissue, forced, not_after)
                } else {
                    (Action::Keep, vec![policy], not_after)
                }
            }
        }
    };
    // A kept certificate that is not valid yet (the clock moved back, or an earlier `--now`
    // in the future) is what `certificate check` flags: say why nothing changes.
    if let (Some(from), Action::Keep | Action::ExternallyManaged) = (not_yet_valid, action) {
        warnings.push(format!(
            "{} is not valid until {}: the clock ({}) is earlier than its notBefore (has it moved back?); 'rotor certificate rotate' re-issues it",
            spec.name,
            crate::clock::rfc3339(from),
            crate::clock::rfc3339(now)
        ));
    }
    Ok(LeafPlan {
        name: spec.name.clone(),
        path: leaf_path(cluster, spec),
        action,
        reasons,
        not_after,
        lifetime_seconds: lifetime,
        restart: spec.restart.clone(),
        reloads: spec.reloads.clone(),
        decided,
    })
}

/// The least a replacement must outlive the certificate it replaces by: a tenth of its own
/// lifetime, and never less than five minutes.
fn meaningful_gain(replacement_lifetime: time::Duration) -> time::Duration {
    std::cmp::max(replacement_lifetime / 10_i32, time::Duration::minutes(5))
}

/// Why re-issuing a leaf now would be pointless, if it would: its replacement, ending at the
/// earlier of `now + lifetime` and its CA's notAfter, would not outlive the current certificate
/// by [`meaningful_gain`]. When the CA is what cuts it short (the CA has less time left than
/// the renewal window), every start would re-issue every leaf again (new keys, one more
/// backup) for nothing, and the answer is to rotate the CA, which the message says.
pub(crate) fn replacement_pointless(
    ca_name: &str,
    ca_not_after: OffsetDateTime,
    current_not_after: OffsetDateTime,
    lifetime_seconds: u64,
    now: OffsetDateTime,
) -> Option<Pointless> {
    let wanted = time::Duration::seconds(i64::try_from(lifetime_seconds).unwrap_or(i64::MAX));
    let (end, cut_by_ca) = match now.checked_add(wanted) {
        Some(end) if end < ca_not_after => (end, false),
        _ => (ca_not_after, true),
    };
    let replacement_lifetime = end - now;
    if replacement_lifetime > time::Duration::ZERO
        && end - current_not_after >= meaningful_gain(replacement_lifetime)
    {
        return None;
    }
    Some(if cut_by_ca {
        Pointless::RotateCa(format!(
            "CA {ca_name} expires on {}: rotate the CA (a certificate issued now would not outlive this one)",
            crate::clock::rfc3339(ca_not_after)
        ))
    } else {
        Pointless::ShorterLifetime(format!(
            "a certificate issued now for {} would end on {}, not after this one: renewed once a replacement outlives it",
            check::short_duration(wanted),
            crate::clock::rfc3339(end)
        ))
    })
}

/// Why a renewal the policy asked for is not done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pointless {
    /// The CA ends too soon for any replacement to help: rotate the CA.
    RotateCa(String),
    /// The lifetime the policy asks for would end before the current certificate does.
    ShorterLifetime(String),
}

/// How the certificate drifted from what the layout says it must contain (k3s's
/// `fieldsChanged`: CN, O, missing DNS or IP names; extra names are fine), plus its usages.
fn drift(spec: &LeafSpec, facts: &CertificateFacts) -> Vec<String> {
    let mut out = Vec::new();
    let cn = facts.subject.common_name.as_deref().unwrap_or("");
    if cn != spec.subject.common_name {
        out.push(format!(
            "subject CN drifted: '{cn}', expected '{}'",
            spec.subject.common_name
        ));
    }
    let mut have: Vec<&str> = facts
        .subject
        .organizations
        .iter()
        .map(String::as_str)
        .collect();
    let mut want: Vec<&str> = spec
        .subject
        .organizations
        .iter()
        .map(String::as_str)
        .collect();
    have.sort_unstable();
    want.sort_unstable();
    if have != want {
        out.push(format!("subject O drifted: {have:?}, expected {want:?}"));
    }
    let dns: Vec<String> = facts
        .sans
        .dns_names
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    let missing_dns: Vec<&String> = spec
        .subject
        .dns_names
        .iter()
        .filter(|d| !dns.contains(&d.to_ascii_lowercase()))
        .collect();
    let missing_ips: Vec<String> = spec
        .subject
        .ip_addresses
        .iter()
        .filter(|ip| {
            !facts
                .sans
                .ip_addresses
                .iter()
                .any(|have| have.to_canonical() == ip.to_canonical())
        })
        .map(ToString::to_string)
        .collect();
    if !missing_dns.is_empty() || !missing_ips.is_empty() {
        let mut names: Vec<String> = missing_dns.into_iter().cloned().collect();
        names.extend(missing_ips);
        out.push(format!(
            "names missing from the certificate: {}",
            names.join(", ")
        ));
    }
    if !purpose_matches(spec.purpose, facts) {
        out.push(format!(
            "extended key usage does not match its purpose ({:?})",
            spec.purpose
        ));
    }
    out
}

/// CA and service-key files whose disk copy is missing or differs from the datastore.
fn extractions(
    cluster: &Cluster,
    data: &BootstrapData,
    token: &crate::pki::Token,
    now: OffsetDateTime,
) -> Result<Vec<Extraction>> {
    // (path, content, private, conflict-checked): files that are exact copies of a datastore
    // field are checked for newer disk copies; derived files just follow.
    let mut files: Vec<(PathBuf, Vec<u8>, bool, bool)> = Vec::new();
    for spec in &cluster.layout.cas {
        for (path, field, private) in [
            (&spec.cert, spec.cert_field, false),
            (&spec.key, spec.key_field, true),
        ] {
            if let Some(stored) = data.get(field) {
                files.push((path.clone(), stored.content.clone(), private, true));
            }
        }
        let (Some(nochain), Some(stored)) = (&spec.nochain, data.get(spec.cert_field)) else {
            continue;
        };
        let first = crate::facts::certificate_ders("datastore", &stored.content)
            .ok()
            .and_then(|ders| ders.into_iter().next())
            .map(|der| crate::pki::pem_encode("CERTIFICATE", &der));
        if let Some(first) = first {
            files.push((nochain.clone(), first.into_bytes(), false, false));
        }
    }
    let sk = &cluster.layout.service_key;
    if let Some(stored) = data.get(sk.field) {
        for (path, content, private) in
            sk.files_from_pem("datastore service key", &stored.content)?
        {
            let exact = content == stored.content;
            files.push((path, content, private, exact));
        }
    }

    // The token file holds the token that opened the datastore (a `--token` given after a
    // rotation on another server replaces the old one), and pins the token CA: after a CA
    // rotation its hash follows the datastore.
    let token_ca = cluster.layout.token_ca();
    if let (Ok(bytes), Some(stored)) = (
        cluster.live.read(&cluster.layout.token_file),
        data.get(token_ca.cert_field),
    ) && let Ok(on_disk) = crate::pki::Token::parse(String::from_utf8_lossy(&bytes).trim())
    {
        let ders = crate::facts::certificate_ders("datastore", &stored.content).unwrap_or_default();
        let hash = crate::pki::ca_hash(&stored.content, &ders, now);
        let replace = on_disk.password != token.password;
        let token = if replace { token.clone() } else { on_disk };
        if replace || token.ca_hash.as_deref() != Some(hash.as_str()) {
            let text = format!("{}\n", token.with_hash(hash).render());
            files.push((
                cluster.layout.token_file.clone(),
                text.into_bytes(),
                true,
                false,
            ));
        }
    }

    let mut out = Vec::new();
    for (path, content, private, checked) in files {
        let why = match cluster.live.read(&path) {
            Ok(disk) if disk == content => continue,
            Ok(_) if !checked => "derived from the datastore (follows it)",
            Ok(_) => {
                let stored_at = stored_timestamp(cluster, data, &path);
                let disk_time = OffsetDateTime::from(cluster.live.modified(&path)?);
                let newer_by = stored_at
                    .map(|t| (disk_time - t).whole_seconds())
                    .unwrap_or(0);
                if newer_by >= SKEW_SECONDS {
                    return Err(ClusterError::Conflict {
                        path: cluster.path(&path),
                        seconds: newer_by,
                    });
                }
                "differs from the datastore"
            }
            Err(e) if e.is_not_found() => "missing",
            Err(e) => return Err(e.into()),
        };
        out.push(Extraction {
            path,
            content,
            private,
            why,
        });
    }
    Ok(out)
}

/// The datastore timestamp of the field a file copies.
fn stored_timestamp(
    cluster: &Cluster,
    data: &BootstrapData,
    path: &PathBuf,
) -> Option<OffsetDateTime> {
    let field = cluster
        .layout
        .cas
        .iter()
        .find_map(|c| {
            if &c.cert == path {
                Some(c.cert_field)
            } else if &c.key == path {
                Some(c.key_field)
            } else {
                None
            }
        })
        .unwrap_or(cluster.layout.service_key.field);
    data.get(field).map(|f| f.timestamp)
}

/// Apply a prepared plan: every leaf issued in memory first, then the whole change (extracted
/// files, new leaves, triggers) made live in one step. `now` dates the new certificates.
pub(crate) fn apply(
    cluster: &mut Cluster,
    prepared: &Prepared,
    rotate: bool,
    now: OffsetDateTime,
) -> Result<Applied> {
    let plan = &prepared.plan;
    let mut applied = Applied::default();
    if plan.is_empty() {
        return Ok(applied);
    }
    let mut change = Change::default();
    for x in &plan.extractions {
        change.write(
            x.path.clone(),
            x.content.clone(),
            if x.private { PRIVATE_FILE } else { PUBLIC_FILE },
        );
        applied.extracted.push(cluster.path(&x.path));
    }
    for lp in plan.reissues() {
        let Some(spec) = cluster.layout.leaf(&lp.name) else {
            continue;
        };
        let signer = prepared.cas[spec.ca].signer().ok_or_else(|| {
            ClusterError::Refused(format!("{}: its CA has no key here", spec.name))
        })?;
        let lifetime =
            time::Duration::seconds(i64::try_from(lp.lifetime_seconds).unwrap_or(i64::MAX / 2));
        let leaf = cluster.issue(spec, signer, now, lifetime)?;
        cluster.write_leaf(&mut change, spec, signer, &leaf);
        applied.reissued.push(spec.name.clone());
    }
    if plan.regenerate_dynamic_cert
        && let Some((_, trigger)) = &cluster.layout.dynamic_cert
    {
        change.write(trigger.clone(), Vec::new(), PRIVATE_FILE);
    }
    if rotate && let Some(f) = &cluster.layout.force_restart_file {
        change.after.push(f.clone());
    }
    let missing_kubeconfig = cluster
        .layout
        .file_kubeconfigs
        .iter()
        .any(|k| !cluster.live.exists(&k.file));
    if missing_kubeconfig {
        cluster.write_file_kubeconfigs(&mut change);
    }
    let committed = cluster.commit(change, false)?;
    applied.backup = committed.backup;
    applied.generation = committed.generation;
    applied.warnings = committed.warnings;
    applied.watchers_told = committed.watchers_told;
    Ok(applied)
}
