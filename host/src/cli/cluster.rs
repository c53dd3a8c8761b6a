//! `rotor init`, `rotor start`, `rotor certificate rotate|check`, `rotor certs ...`.

use anyhow::Context;
use time::OffsetDateTime;

use super::Exit;
use super::args::{
    CertificateCommand, CertsCommand, CheckFormat, ExpirationFormat, GlobalArgs, InitArgs,
    StartArgs,
};
use super::output;
use super::output::{out, outln};
use crate::clock;
use crate::clock::rfc3339;
use crate::cluster::start::{self, Action, Mode};
use crate::cluster::{Cluster, check, init, kubeadm_certs, static_pods};

/// `--now` (already parsed and range-checked by clap), else the system clock.
pub(super) fn now(arg: Option<OffsetDateTime>) -> OffsetDateTime {
    arg.unwrap_or_else(clock::system_now)
}

use super::bundle;

/// `rotor init --adopt`: what was taken over, and what was not recognised.
fn adopt(
    global: &GlobalArgs,
    opts: init::InitOptions,
    bundle: &crate::policy::Bundle,
) -> anyhow::Result<Exit> {
    let profile = opts.profile;
    let report = crate::cluster::adopt::adopt(
        &global.data_dir,
        opts,
        bundle,
        &super::datadir_options(global, "init --adopt"),
    )?;
    outln!(
        "adopted {} ({} profile) as it is: nothing issued, no file rewritten",
        global.data_dir.display(),
        profile.as_str()
    );
    if let Some(n) = report.generation {
        outln!("  generation {n}, policy bundle '{}' recorded", bundle.name);
    }
    outln!("  datastore: {}", report.datastore);
    outln!("  CAs: {}", report.cas.join(", "));
    if !report.external_cas.is_empty() {
        outln!(
            "  external CAs (no key here; their certificates are externally managed): {}",
            report.external_cas.join(", ")
        );
    }
    outln!("  certificates taken over: {}", report.certificates.len());
    if report.unrecognised.is_empty() {
        outln!("  every file at a managed path is one rotor knows");
    } else {
        outln!("  not recognised (kept as they are):");
        for p in &report.unrecognised {
            outln!("    {}", p.display());
        }
    }
    if let Some(token) = &report.new_token {
        outln!(
            "  token (rotor's, for its own datastore; in {}):",
            report.token_file.display()
        );
        outln!("{}", token.render());
    }
    Ok(Exit::Success)
}

pub(super) fn init(global: &GlobalArgs, args: InitArgs) -> anyhow::Result<Exit> {
    let bundle = bundle(global)?;
    // init records the bundle: one whose plugin cannot be loaded would decide by its failure
    // modes in every later command, so it is refused here as `policy use` refuses it.
    bundle.ensure_loaded()?;
    let datastore = match &args.datastore_endpoint {
        Some(endpoints) => Some(
            crate::datastore::DatastoreConfig::new(
                endpoints,
                args.datastore_cafile.clone(),
                args.datastore_certfile.clone(),
                args.datastore_keyfile.clone(),
            )
            .map_err(|e| {
                let input = match e.field {
                    "cafile" => crate::input::Input::DatastoreCaFile,
                    "certfile" => crate::input::Input::DatastoreCertFile,
                    "keyfile" => crate::input::Input::DatastoreKeyFile,
                    _ => crate::input::Input::DatastoreEndpoint,
                };
                crate::cluster::ClusterError::BadInput {
                    input,
                    reason: e.reason,
                }
            })?,
        ),
        // A k3s data dir whose server kept its datastore in its managed etcd or in kine's
        // SQLite (k3s's default), with no datastore of rotor's: that one.
        None => crate::cluster::adopt::k3s_default_datastore(&global.data_dir, args.profile)?,
    };
    let opts = init::InitOptions {
        profile: args.profile,
        node_name: args.node_name,
        node_ips: args.node_ips,
        tls_sans: args.tls_sans,
        cluster_domain: args.cluster_domain,
        service_cidr: args.service_cidr,
        token: args.token,
        key_type: args.key_type,
        datastore_format: args.datastore_format,
        datastore,
        now: now(args.now),
    };
    if args.adopt {
        return adopt(global, opts, &bundle);
    }
    let at = opts.now;
    let profile = opts.profile;
    let report = init::init(
        &global.data_dir,
        opts,
        &bundle,
        &super::datadir_options(global, "init"),
    )?;
    outln!(
        "initialized {} ({} profile)",
        global.data_dir.display(),
        profile.as_str()
    );
    if !report.generated_cas.is_empty() {
        outln!("  generated CAs: {}", report.generated_cas.join(", "));
    }
    if !report.joined_cas.is_empty() {
        outln!(
            "  joined the cluster in the shared datastore: its CAs taken from there: {}",
            report.joined_cas.join(", ")
        );
    }
    if !report.adopted_cas.is_empty() {
        outln!(
            "  adopted CAs found in place: {}",
            report.adopted_cas.join(", ")
        );
    }
    if !report.external_cas.is_empty() {
        outln!(
            "  external CAs (no key here; their certificates are externally managed): {}",
            report.external_cas.join(", ")
        );
    }
    outln!(
        "  issued {} certificates with new keys (names checked by bundle '{}')",
        report.issued.len(),
        bundle.name
    );
    if !report.kept.is_empty() {
        outln!(
            "  kept externally signed certificates: {}",
            report.kept.join(", ")
        );
    }
    if report.joined_cas.is_empty() {
        outln!("  CA material stored encrypted in the datastore");
    }
    outln!("token (also in {}):", report.token_file.display());
    outln!("{}", report.token.render());
    if let Some(h) = report.discovery_hash {
        outln!("kubeadm discovery hash: --discovery-token-ca-cert-hash {h}");
    }
    warn_if_future(at, report.issued.len() + report.generated_cas.len());
    Ok(Exit::Success)
}

fn print_plan(plan: &start::Plan, verb: &str) {
    for x in &plan.extractions {
        outln!("  extract  {:<42} {}", x.path.display(), x.why);
    }
    for l in &plan.leaves {
        let action = match l.action {
            Action::Keep => "keep",
            Action::Reissue => verb,
            Action::ExternallyManaged => "external",
        };
        let until = l
            .not_after
            .map(|t| format!(" [expires {}]", rfc3339(t)))
            .unwrap_or_default();
        outln!(
            "  {action:<8} {:<42} {}{until}",
            l.name,
            l.reasons.join("; ")
        );
    }
    for w in &plan.warnings {
        outln!("  warning: {w}");
    }
}

/// Certificates issued at a `--now` later than the system clock are not yet valid at the real
/// time: every consumer refuses them until then. Say so loudly (standard error), once.
pub(super) fn warn_if_future(now: OffsetDateTime, issued: usize) {
    let real = clock::system_now();
    // Backdating (5 minutes for kubeadm, an hour for k3s) covers a small lead.
    if issued == 0 || now - real <= time::Duration::minutes(5) {
        return;
    }
    eprintln!(
        "rotor: WARNING: --now {} is {} after the system clock: the {issued} certificate(s) just written are not valid until about then, and every consumer refuses them until that time (run 'rotor certificate rotate' without --now to replace them)",
        rfc3339(now),
        check::short_duration(now - real),
    );
}

fn run_plan(
    global: &GlobalArgs,
    mode: Mode,
    dry_run: bool,
    now: OffsetDateTime,
    token: Option<String>,
) -> anyhow::Result<Exit> {
    let bundle = bundle(global)?;
    let rotate = matches!(mode, Mode::Rotate { .. });
    let options = super::datadir_options(
        global,
        if rotate {
            "certificate rotate"
        } else {
            "start"
        },
    );
    let mut cluster = if dry_run {
        Cluster::open_read(&global.data_dir, &options)?
    } else {
        Cluster::open_write(&global.data_dir, &options)?
    };
    let prepared = start::prepare(&cluster, &bundle, token.as_deref(), &mode, now)?;
    let verb = if rotate { "rotate" } else { "renew" };
    let checked = prepared.plan.leaves.len();
    outln!(
        "{} {} certificates of {} ({} profile) with bundle '{}' at {}{}",
        if rotate { "rotate:" } else { "start:" },
        checked,
        global.data_dir.display(),
        cluster.config.profile.as_str(),
        bundle.name,
        rfc3339(now),
        if dry_run {
            " (dry run: nothing will change)"
        } else {
            ""
        }
    );
    print_plan(&prepared.plan, verb);
    let pinned = static_pods::pinned(&cluster);
    let sorted = |told| {
        static_pods::sort(
            prepared.plan.restarts(),
            prepared.plan.reloads(),
            &pinned,
            told,
        )
    };
    let restarts = sorted(true).restart;
    if prepared.plan.is_empty() {
        outln!("nothing to do");
        return Ok(Exit::Success);
    }
    if dry_run {
        outln!(
            "dry run: would {} {} certificate(s) and extract {} file(s); restart needed for: {}",
            verb,
            prepared.plan.reissues().count(),
            prepared.plan.extractions.len(),
            restarts.join(", ")
        );
        return Ok(Exit::Success);
    }
    let applied = start::apply(&mut cluster, &prepared, rotate, now)?;
    if let Some(b) = &applied.backup {
        outln!("previous files kept in {}", b.display());
    }
    warn_if_future(now, applied.reissued.len());
    for w in &applied.warnings {
        outln!("  warning: {w}");
    }
    outln!(
        "{} {} certificate(s) with new keys; extracted {} file(s) from the datastore",
        if rotate { "rotated" } else { "renewed" },
        applied.reissued.len(),
        applied.extracted.len()
    );
    let sorted = sorted(applied.watchers_told);
    if !sorted.restart.is_empty() {
        outln!("restart needed for: {}", sorted.restart.join(", "));
        outln!("  {}", cluster.layout.restart_hint);
        print_why(&sorted);
    }
    if !sorted.reload.is_empty() {
        outln!("loaded without a restart by: {}", sorted.reload.join(", "));
    }
    Ok(Exit::Success)
}

pub(super) fn start(global: &GlobalArgs, args: StartArgs) -> anyhow::Result<Exit> {
    run_plan(global, Mode::Start, args.dry_run, now(args.now), args.token)
}

pub(super) fn certificate(global: &GlobalArgs, cmd: CertificateCommand) -> anyhow::Result<Exit> {
    match cmd {
        CertificateCommand::Rotate {
            services,
            dry_run,
            now: at,
            token,
        } => run_plan(global, Mode::Rotate { services }, dry_run, now(at), token),
        CertificateCommand::GenerateCustomCa(args) => super::rotation::generate_custom_ca(*args),
        CertificateCommand::RotateDefaultCa {
            out,
            now: at,
            token,
        } => super::rotation::rotate_default_ca(global, &out, now(at), token),
        CertificateCommand::RotateCa {
            path,
            force,
            dry_run,
            now: at,
            token,
        } => super::rotation::rotate_ca(global, &path, force, dry_run, now(at), token),
        CertificateCommand::RetireOldCa {
            force,
            dry_run,
            now: at,
            token,
        } => super::rotation::retire_old_ca(global, force, dry_run, now(at), token),
        CertificateCommand::RotateServiceKey {
            keep,
            now: at,
            token,
        } => super::rotation::rotate_service_key(global, keep, now(at), token),
        CertificateCommand::Check {
            output: format,
            now: at,
        } => {
            let at = now(at);
            let bundle = bundle(global)?;
            let cluster = Cluster::open_read(
                &global.data_dir,
                &super::datadir_options(global, "certificate check"),
            )?;
            let rows = check::check(&cluster, &bundle, at)?;
            let text = match format {
                CheckFormat::Json => output::json(&rows)?,
                CheckFormat::Yaml => output::yaml(&rows)?,
                CheckFormat::Table => {
                    let cells: Vec<Vec<String>> = rows
                        .iter()
                        .map(|r| {
                            vec![
                                r.file.clone(),
                                r.subject.clone(),
                                r.issuer.clone(),
                                r.usages.clone(),
                                r.not_after.map(rfc3339).unwrap_or_default(),
                                r.residual.clone(),
                                r.status.as_str().into(),
                                if r.externally_managed {
                                    "yes".into()
                                } else {
                                    "no".into()
                                },
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "FILENAME",
                            "SUBJECT",
                            "ISSUER",
                            "USAGES",
                            "EXPIRES",
                            "RESIDUAL TIME",
                            "STATUS",
                            "EXTERNALLY MANAGED",
                        ],
                        &cells,
                    )
                }
                CheckFormat::Text => rows
                    .iter()
                    .map(|r| match r.not_after {
                        Some(na) => format!(
                            "{}: {} is {}{}, expires at {} (in {}){}\n",
                            r.file,
                            r.subject,
                            r.status.as_str(),
                            if r.externally_managed {
                                " (externally managed)"
                            } else {
                                ""
                            },
                            rfc3339(na),
                            r.residual,
                            if r.detail.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", r.detail)
                            }
                        ),
                        None => format!("{}: {} ({})\n", r.file, r.status.as_str(), r.detail),
                    })
                    .collect(),
            };
            out!("{text}");
            Ok(if rows.iter().any(|r| r.status.needs_attention()) {
                Exit::Attention
            } else {
                Exit::Success
            })
        }
    }
}

pub(super) fn certs(global: &GlobalArgs, cmd: CertsCommand) -> anyhow::Result<Exit> {
    match cmd {
        CertsCommand::CheckExpiration {
            output: format,
            now: at,
        } => {
            let at = now(at);
            let cluster = Cluster::open_read(
                &global.data_dir,
                &super::datadir_options(global, "certs check-expiration"),
            )?;
            let exp = kubeadm_certs::check_expiration(&cluster, at)?;
            let text = match format {
                ExpirationFormat::Json => output::json(&exp)?,
                ExpirationFormat::Yaml => output::yaml(&exp)?,
                ExpirationFormat::Text => {
                    let yes_no = |b: bool| {
                        if b {
                            "yes".to_string()
                        } else {
                            "no".to_string()
                        }
                    };
                    let certs: Vec<Vec<String>> = exp
                        .certificates
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                if r.missing {
                                    "-".into()
                                } else {
                                    kubeadm_certs::kubeadm_date(r.expiration_date)
                                },
                                r.residual_time.clone(),
                                r.certificate_authority.clone(),
                                yes_no(r.externally_managed),
                            ]
                        })
                        .collect();
                    let cas: Vec<Vec<String>> = exp
                        .certificate_authorities
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                kubeadm_certs::kubeadm_date(r.expiration_date),
                                r.residual_time.clone(),
                                yes_no(r.externally_managed),
                            ]
                        })
                        .collect();
                    format!(
                        "{}\n{}",
                        output::table(
                            &[
                                "CERTIFICATE",
                                "EXPIRES",
                                "RESIDUAL TIME",
                                "CERTIFICATE AUTHORITY",
                                "EXTERNALLY MANAGED"
                            ],
                            &certs
                        ),
                        output::table(
                            &[
                                "CERTIFICATE AUTHORITY",
                                "EXPIRES",
                                "RESIDUAL TIME",
                                "EXTERNALLY MANAGED"
                            ],
                            &cas
                        )
                    )
                }
            };
            out!("{text}");
            Ok(Exit::Success)
        }
        CertsCommand::Renew { which, now: at } => {
            let at = now(at);
            let bundle = bundle(global)?;
            let mut cluster = Cluster::open_write(
                &global.data_dir,
                &super::datadir_options(global, "certs renew"),
            )?;
            let (results, committed) = kubeadm_certs::renew(&mut cluster, &bundle, &which, at)?;
            if let Some(b) = committed.as_ref().and_then(|c| c.backup.as_ref()) {
                outln!("previous files kept in {}", b.display());
            }
            for w in committed.iter().flat_map(|c| &c.warnings) {
                outln!("  warning: {w}");
            }
            for r in &results {
                match r {
                    kubeadm_certs::Renewed::Done { name, .. } => {
                        outln!("certificate {name} renewed")
                    }
                    kubeadm_certs::Renewed::Skipped { name, why } => {
                        outln!("certificate {name} skipped: {why}")
                    }
                }
            }
            let done = results
                .iter()
                .filter(|r| matches!(r, kubeadm_certs::Renewed::Done { .. }))
                .count();
            warn_if_future(at, done);
            let sorted = static_pods::sort(
                kubeadm_certs::restarts(&results),
                kubeadm_certs::reloads(&results),
                &static_pods::pinned(&cluster),
                committed.as_ref().is_none_or(|c| c.watchers_told),
            );
            if !sorted.restart.is_empty() {
                outln!(
                    "Done renewing certificates. You must restart {}, so that they use the new certificates.",
                    sorted.restart.join(", ")
                );
                outln!("  {}", cluster.layout.restart_hint);
                print_why(&sorted);
            }
            if !sorted.reload.is_empty() {
                outln!(
                    "Loaded without a restart by {} (it reloads these files by itself).",
                    sorted.reload.join(", ")
                );
            }
            Ok(Exit::Success)
        }
        CertsCommand::GenerateCsr { csr_dir } => {
            let cluster = Cluster::open_read(
                &global.data_dir,
                &super::datadir_options(global, "certs generate-csr"),
            )?;
            let written = kubeadm_certs::generate_csr(&cluster, &csr_dir)
                .with_context(|| format!("writing CSRs to {}", csr_dir.display()))?;
            for w in &written {
                outln!("wrote {} (and its key)", w.display());
            }
            outln!(
                "sign them with your CA (server/client usages per the Kubernetes PKI table), then place the certificates in pki/ and the kubeconfigs"
            );
            Ok(Exit::Success)
        }
    }
}

/// Why a component that reloads its files by itself is still asked to restart.
fn print_why(sorted: &static_pods::Sorted) {
    for (component, manifest) in &sorted.pinned {
        outln!(
            "  {component}: its static pod ({}) mounts a directory rotor manages, which keeps the files it \
             started with (mount the data dir above it instead, and it reloads them by itself)",
            manifest.display()
        );
    }
    if !sorted.untold.is_empty() {
        outln!(
            "  {}: would have reloaded by themselves, but rotor could not tell their file watchers (see the warning above)",
            sorted.untold.join(", ")
        );
    }
}
