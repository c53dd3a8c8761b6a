//! `rotor policy check | eval | use | test | log`; `new | build | pin` are in `vendor.rs`,
//! `keygen | sign | push | pull` in `publish.rs`, `diff` in `diff.rs`.

use std::path::Path;

use super::Exit;
use super::args::{EvalArgs, GlobalArgs, PolicyCommand};
use super::output::outln;
use crate::clock;
use crate::cluster::Cluster;
use crate::contract::Hook;
use crate::policy::input::{HookRequest, InputContext, build_request};
use crate::policy::{Bundle, fixtures};

pub(super) fn run(global: &GlobalArgs, cmd: PolicyCommand) -> anyhow::Result<Exit> {
    match cmd {
        // These need no bundle (pin makes or edits the one --bundle names).
        PolicyCommand::Log(args) => super::serve::log(*args),
        PolicyCommand::New(args) => super::vendor::new(*args),
        PolicyCommand::Build(args) => super::vendor::build(global, *args),
        PolicyCommand::Pin(args) => super::vendor::pin(global, *args),
        PolicyCommand::Keygen { out } => super::publish::keygen(&out),
        PolicyCommand::Sign(args) => super::publish::sign(global, *args),
        PolicyCommand::Push(args) => super::publish::push(*args),
        PolicyCommand::Pull(args) => super::publish::pull(*args),
        PolicyCommand::Diff(args) => super::diff::run(global, *args),
        PolicyCommand::Check => check(&super::bundle(global)?),
        PolicyCommand::Use => record(global, &super::bundle(global)?),
        PolicyCommand::Eval(args) => eval(&super::bundle(global)?, *args),
        PolicyCommand::Test { dir, json } => {
            // A bundle with a plugin that cannot be loaded never passes its tests, even where
            // its failure mode happens to give the expected answers.
            let bundle = super::bundle(global)?;
            bundle.ensure_loaded()?;
            test(&bundle, &dir, json)
        }
    }
}

/// `rotor policy use`: record the bundle in the data dir, as one change.
fn record(global: &GlobalArgs, bundle: &Bundle) -> anyhow::Result<Exit> {
    if global.bundle.is_none() {
        anyhow::bail!("policy use: give the bundle to record with --bundle DIR");
    }
    // A bundle with a plugin that cannot be loaded is never recorded: it would decide by its
    // failure modes from then on.
    bundle.ensure_loaded()?;
    let options = super::datadir_options(global, "policy use");
    let mut cluster = Cluster::open_write(&global.data_dir, &options)?;
    let committed = cluster.record_bundle(bundle)?;
    outln!(
        "{}: now decides with bundle {} ({}){}",
        global.data_dir.display(),
        bundle.name,
        bundle.path.display(),
        if committed {
            ""
        } else {
            "; it was recorded already"
        }
    );
    Ok(Exit::Success)
}

fn check(bundle: &Bundle) -> anyhow::Result<Exit> {
    outln!("bundle {} ({})", bundle.name, bundle.path.display());
    if let Some(d) = &bundle.description {
        outln!("  {d}");
    }
    for (name, keyid) in &bundle.trusted_keys {
        outln!("trusts   key '{name}' ({keyid})");
    }
    for (name, keyid) in &bundle.trusted_cosign_keys {
        outln!("trusts   cosign key '{name}' ({keyid})");
    }
    for hook in Hook::ALL {
        if let Some(f) = bundle.load_failure(hook) {
            outln!(
                "{:<8} plugin {} ({}) COULD NOT BE LOADED: {}",
                hook.as_str(),
                f.plugin,
                f.file,
                f.error.kind
            );
            outln!("         sha256    {}", f.digest);
            outln!(
                "         on failure: {} (what decides every {} request while it cannot load)",
                f.failure_mode.as_str(),
                hook.as_str()
            );
            continue;
        }
        match bundle.hook(hook) {
            None => {
                let builtin = match hook {
                    Hook::Renewal => format!(
                        "built-in rule (renew when expired or within {} days)",
                        bundle.fallback_window.as_secs() / 86_400
                    ),
                    Hook::San => "no policy: names are not validated".into(),
                    Hook::Csr => "no policy: every CSR is left for manual approval".into(),
                };
                outln!("{:<8} {builtin}", hook.as_str());
            }
            Some(hp) => {
                let exports: Vec<_> = hp.plugin.hooks().iter().map(|h| h.as_str()).collect();
                outln!(
                    "{:<8} plugin {} ({})",
                    hook.as_str(),
                    hp.plugin.name(),
                    hp.file
                );
                match &hp.accepted {
                    crate::policy::Acceptance::Pin => outln!(
                        "         sha256    {} (matches the pin)",
                        hp.plugin.digest()
                    ),
                    crate::policy::Acceptance::Signature {
                        key,
                        keyid,
                        name,
                        version,
                        file,
                    } => {
                        outln!("         sha256    {}", hp.plugin.digest());
                        outln!(
                            "         signed    {name} {version} by trusted key '{key}' ({keyid}), {file}"
                        );
                    }
                    crate::policy::Acceptance::Cosign { key, keyid, file } => {
                        outln!("         sha256    {}", hp.plugin.digest());
                        outln!(
                            "         signed    by trusted cosign key '{key}' ({keyid}), {file} (its bytes only: no name or version signed)"
                        );
                    }
                }
                outln!("         exports   {}", exports.join(", "));
                outln!("         contract  {}", hp.plugin.contract());
                outln!(
                    "         settings  {} (accepted{})",
                    hp.settings,
                    match hp.plugin.contract() {
                        crate::plugin::ContractVersion::V0_1 => "; applied in every decision",
                        crate::plugin::ContractVersion::V0_2
                        | crate::plugin::ContractVersion::V0_3 => "; applied once, snapshotted",
                    }
                );
                outln!(
                    "         limits    {} ms, {} MiB; on failure: {}",
                    hp.limits.timeout.as_millis(),
                    hp.limits.memory / (1024 * 1024),
                    serde_json::to_value(hp.failure_mode)?
                        .as_str()
                        .unwrap_or("?")
                );
            }
        }
    }
    outln!("floor    what no plugin can change (refused by the host on every CSR):");
    for rule in crate::csr::FLOOR_RULES {
        outln!("         - {rule}");
    }
    for door in bundle.floor().warnings() {
        outln!("         DOOR OPEN: {door}");
    }
    for file in bundle.unused_plugins() {
        outln!("unused   {file}: no hook uses it");
    }
    // A broken bundle never passes review: non-zero, naming the plugin.
    bundle.ensure_loaded()?;
    Ok(Exit::Success)
}

fn eval(bundle: &Bundle, args: EvalArgs) -> anyhow::Result<Exit> {
    let now = args.now.unwrap_or_else(clock::system_now);
    let issuer_not_after = args.issuer_not_after;
    let what = args.input.display().to_string();
    let bytes = read_input(&args.input)?;
    let ctx = InputContext {
        name: args.name,
        issuer_not_after,
        profile: args.profile,
        stage: args.stage.map(Into::into),
        node_name: args.node_name,
        node_addresses: args.node_ips,
        signer_name: args.context.signer,
        username: args.context.username,
        uid: args.context.uid,
        groups: args.context.groups,
        usages: args.context.usages,
        expiration_seconds: args.context.expiration_seconds,
    };
    let request = build_request(args.hook.into(), &what, &bytes, &ctx, now)?;
    let (json, failure) = match &request {
        HookRequest::Renewal(r) => {
            let o = bundle.renewal(r)?;
            (
                serde_json::to_string_pretty(&o)?,
                o.error.map(|e| e.to_string()),
            )
        }
        HookRequest::San(r) => {
            let o = bundle.validate_sans(r)?;
            (
                serde_json::to_string_pretty(&o)?,
                o.error.map(|e| e.to_string()),
            )
        }
        HookRequest::Csr(r) => {
            let o = bundle.review_csr(r)?;
            (
                serde_json::to_string_pretty(&o)?,
                o.error.map(|e| e.to_string()),
            )
        }
    };
    outln!("{json}");
    match failure {
        // The failure mode decided, but the plugin failed: that is an evaluation error.
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(Exit::Success),
    }
}

/// Read an input file named on the command line.
fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(crate::fs::Root::read_ambient_file(path)?)
}

fn test(bundle: &Bundle, dir: &Path, json: bool) -> anyhow::Result<Exit> {
    let results = fixtures::run(bundle, dir)?;
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    if json {
        for r in &results {
            let line = serde_json::json!({
                "case": r.name,
                "passed": r.failure.is_none(),
                "failure": r.failure,
                "outcome": r.outcome,
            });
            outln!("{line}");
        }
        return Ok(if failed == 0 {
            Exit::Success
        } else {
            Exit::Attention
        });
    }
    for r in &results {
        match &r.failure {
            None => outln!("ok    {}", r.name),
            Some(why) => outln!("FAIL  {}\n      {why}", r.name),
        }
    }
    outln!(
        "{} passed, {failed} failed ({} cases, bundle {})",
        results.len() - failed,
        results.len(),
        bundle.name
    );
    Ok(if failed == 0 {
        Exit::Success
    } else {
        Exit::Attention
    })
}
