//! `rotor certificate generate-custom-ca | rotate-default-ca | rotate-ca | rotate-service-key`
//! and `rotor token rotate`.

use std::path::Path;

use time::OffsetDateTime;

use super::Exit;
use super::args::{GenerateCustomCaArgs, GlobalArgs, TokenCommand};
use super::cluster::now;
use super::output::outln;
use crate::cluster::custom_ca::{self, CustomCaOptions, Parent};
use crate::cluster::{Cluster, retire_ca, rotate_ca, secrets};

pub(super) fn generate_custom_ca(args: GenerateCustomCaArgs) -> anyhow::Result<Exit> {
    let parent = match (
        &args.root_cert,
        &args.root_key,
        &args.intermediate_cert,
        &args.intermediate_key,
    ) {
        (None, None, None, None) => Parent::None,
        (Some(rc), Some(rk), None, None) => Parent::Root {
            cert: crate::fs::Root::read_ambient_file(rc)?,
            key: crate::fs::Root::read_ambient_file(rk)?,
        },
        (Some(rc), None, Some(ic), Some(ik)) => Parent::Intermediate {
            cert: crate::fs::Root::read_ambient_file(ic)?,
            key: crate::fs::Root::read_ambient_file(ik)?,
            root_cert: crate::fs::Root::read_ambient_file(rc)?,
        },
        _ => anyhow::bail!(
            "give either --root-cert with --root-key, or --intermediate-cert with --intermediate-key and --root-cert"
        ),
    };
    let opts = CustomCaOptions {
        profile: args.profile,
        parent,
        root_key_type: args.root_key_type,
        intermediate_key_type: args.intermediate_key_type,
        ca_key_type: args
            .ca_key_type
            .unwrap_or_else(|| args.profile.default_key_type()),
        service_key_type: args.service_key_type,
        now: now(args.now),
    };
    let g = custom_ca::generate_custom_ca(&args.out, opts)?;
    outln!("wrote {} files to {}", g.files.len(), g.dir.display());
    if g.service_key_prepended {
        outln!("  the new service-account key was placed before the existing ones");
    }
    outln!("join token CA hash for these CAs: {}", g.ca_hash);
    if !g.offline_keys.is_empty() {
        outln!(
            "move these keys off the nodes once the cluster is set up (they sign CAs, not certificates):"
        );
        for k in &g.offline_keys {
            outln!("  {}", k.display());
        }
    }
    outln!(
        "next: for a new cluster, 'rotor --data-dir {} init ...' adopts them; for a running one, \
         'rotor certificate rotate-ca --path {}'",
        args.out.display(),
        args.out.display()
    );
    Ok(Exit::Success)
}

pub(super) fn rotate_default_ca(
    global: &GlobalArgs,
    out: &Path,
    at: OffsetDateTime,
    token: Option<String>,
) -> anyhow::Result<Exit> {
    let cluster = Cluster::open_read(
        &global.data_dir,
        &super::datadir_options(global, "certificate rotate-default-ca"),
    )?;
    let r = custom_ca::rotate_default_ca(&cluster, token.as_deref(), out, at)?;
    outln!(
        "staged new CAs in {} ({} files): new roots, cross-signed by the current ones, and new intermediates",
        r.dir.display(),
        r.files.len()
    );
    outln!(
        "the join token's CA hash changes (new root): this rotation is disruptive and needs --force:"
    );
    outln!(
        "  rotor certificate rotate-ca --path {} --force",
        out.display()
    );
    outln!(
        "new token, for nodes that join from now on (its hash is the new self-signed root's, as nodes compute it;"
    );
    outln!(
        "k3s's script prints the new intermediate's fingerprint {} instead, which no node checks):",
        r.intermediate_fingerprint
    );
    outln!("{}", r.new_token.render());
    Ok(Exit::Success)
}

pub(super) fn rotate_ca(
    global: &GlobalArgs,
    path: &Path,
    force: bool,
    dry_run: bool,
    at: OffsetDateTime,
    token: Option<String>,
) -> anyhow::Result<Exit> {
    let options = super::datadir_options(global, "certificate rotate-ca");
    let mut cluster = if dry_run {
        Cluster::open_read(&global.data_dir, &options)?
    } else {
        Cluster::open_write(&global.data_dir, &options)?
    };
    let report = rotate_ca::rotate_ca(
        &mut cluster,
        rotate_ca::Options {
            path,
            force,
            dry_run,
            token: token.as_deref(),
            now: at,
        },
    )?;
    outln!("staged set: {}", report.staging_dir.display());
    outln!(
        "  replace: {}",
        if report.replaced.is_empty() {
            "nothing".into()
        } else {
            report.replaced.join(", ")
        }
    );
    if !report.kept.is_empty() {
        outln!("  keep (not staged): {}", report.kept.join(", "));
    }
    for p in &report.forced {
        outln!("  warning (forced): {p}");
    }
    match &report.hash_change {
        Some((old, new)) => outln!("  token CA hash changes: {old} -> {new} (disruptive)"),
        None => outln!("  token CA hash unchanged (non-disruptive)"),
    }
    if dry_run {
        outln!(
            "dry run: all checks passed{}; nothing changed",
            if report.forced.is_empty() {
                ""
            } else {
                " with --force"
            }
        );
        return Ok(Exit::Success);
    }
    outln!("CA material saved to the datastore in one step");
    if let Some(t) = &report.new_token {
        outln!(
            "new token, for nodes that join from now on (running `rotor agent`s follow the rotation through the cross-signed root by themselves; k3s agents need it and a restart):"
        );
        outln!("{}", t.render());
    }
    outln!(
        "next: 'rotor start' on every server (a running 'rotor serve' takes them at SIGHUP or its next cycle) re-issues the leaves under the new CAs; restart servers first, then k3s agents"
    );
    Ok(Exit::Success)
}

pub(super) fn retire_old_ca(
    global: &GlobalArgs,
    force: bool,
    dry_run: bool,
    at: OffsetDateTime,
    token: Option<String>,
) -> anyhow::Result<Exit> {
    let options = super::datadir_options(global, "certificate retire-old-ca");
    let mut cluster = if dry_run {
        Cluster::open_read(&global.data_dir, &options)?
    } else {
        Cluster::open_write(&global.data_dir, &options)?
    };
    let report = retire_ca::retire_old_ca(
        &mut cluster,
        retire_ca::Options {
            token: token.as_deref(),
            now: at,
            force,
            dry_run,
        },
    )?;
    if report.retired.is_empty() {
        outln!("nothing to retire: every CA bundle holds only its CA and its own root");
        return Ok(Exit::Success);
    }
    for (ca, dropped) in &report.retired {
        outln!("  {ca}: drop {}", dropped.join(", "));
    }
    for leaf in &report.still_old {
        outln!("  warning (forced): still signed by the old CA: {leaf}");
    }
    if dry_run {
        outln!("dry run: nothing changed");
        return Ok(Exit::Success);
    }
    outln!("old CAs retired: the datastore's CA bundles changed in one step");
    if let Some(t) = &report.new_token {
        outln!("new token (the CA hash follows the new bundle), for nodes that join from now on:");
        outln!("{}", t.render());
    }
    outln!(
        "next: 'rotor start' on every server writes the new bundles; kube-apiserver reloads its client and \
         request-header CA files by itself and refuses old-CA certificates from then on"
    );
    Ok(Exit::Success)
}

pub(super) fn rotate_service_key(
    global: &GlobalArgs,
    keep: Option<usize>,
    at: OffsetDateTime,
    token: Option<String>,
) -> anyhow::Result<Exit> {
    let mut cluster = Cluster::open_write(
        &global.data_dir,
        &super::datadir_options(global, "certificate rotate-service-key"),
    )?;
    let r = secrets::rotate_service_key(&mut cluster, token.as_deref(), keep, at)?;
    outln!(
        "new service-account signing key saved to the datastore; {} key(s) in the list{}",
        r.keys,
        if r.dropped > 0 {
            format!(" ({} old key(s) dropped)", r.dropped)
        } else {
            String::new()
        }
    );
    outln!(
        "next: 'rotor start' writes the key files; restart the servers (agents and pods need no restart)"
    );
    Ok(Exit::Success)
}

pub(super) fn token(global: &GlobalArgs, cmd: TokenCommand) -> anyhow::Result<Exit> {
    match cmd {
        TokenCommand::Rotate {
            new_token,
            token,
            now: at,
        } => {
            let mut cluster = Cluster::open_write(
                &global.data_dir,
                &super::datadir_options(global, "token rotate"),
            )?;
            let t = secrets::rotate_token(&mut cluster, token.as_deref(), &new_token, now(at))?;
            outln!(
                "bootstrap data re-encrypted under the new token; the old token no longer decrypts it"
            );
            outln!(
                "new token (also in {}):",
                cluster.path(&cluster.layout.token_file).display()
            );
            outln!("{}", t.render());
            Ok(Exit::Success)
        }
    }
}
