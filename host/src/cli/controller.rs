//! `rotor csr controller`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::Exit;
use super::args::{ControllerArgs, GlobalArgs};
use crate::cluster::{Cluster, LoadedCa};
use crate::controller::{ControllerOptions, LeaseTimings, default_identity};
use crate::csr::{Evidence, SignerLimits};
use crate::pki::CaSigner;

/// The CAs `--sign SIGNER[=CA]` names, read from the data dir once.
fn signing_cas(
    global: &GlobalArgs,
    sign: &[String],
) -> anyhow::Result<BTreeMap<String, Arc<CaSigner>>> {
    if sign.is_empty() {
        return Ok(BTreeMap::new());
    }
    let specs: Vec<(&str, Option<&str>)> = sign
        .iter()
        .map(|spec| {
            let (signer, ca) = match spec.split_once('=') {
                Some((s, ca)) => (s.trim(), Some(ca.trim())),
                None => (spec.trim(), None),
            };
            signer_name("--sign", spec, signer)?;
            Ok((signer, ca))
        })
        .collect::<anyhow::Result<_>>()?;
    let options = super::datadir_options(global, "csr controller");
    let cluster = Cluster::open_read(&global.data_dir, &options)
        .map_err(|e| anyhow::anyhow!("--sign needs the data dir's CAs: {e}"))?;
    let mut cas = cluster.cas_from_disk()?;
    let (_, layout) = cluster.release();
    let mut loaded: BTreeMap<&'static str, Arc<CaSigner>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (spec, (signer, ca)) in sign.iter().zip(specs) {
        let name = match ca {
            Some(ca) => layout
                .cas
                .iter()
                .find(|c| c.name == ca)
                .map(|c| c.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = layout.cas.iter().map(|c| c.name).collect();
                    anyhow::anyhow!(
                        "--sign {spec}: the data dir has no CA named '{ca}' (its CAs: {})",
                        names.join(", ")
                    )
                })?,
            None => layout.ca_for_signer(signer).map(|c| c.name).ok_or_else(|| {
                anyhow::anyhow!(
                    "--sign {spec}: the layout has no CA for '{signer}'; name one: --sign {signer}=CA"
                )
            })?,
        };
        let signer_ca = match loaded.get(name) {
            Some(s) => Arc::clone(s),
            None => {
                let ca = match cas.remove(name) {
                    Some(LoadedCa::Signing(s)) => Arc::new(s),
                    Some(LoadedCa::External(_)) => anyhow::bail!(
                        "--sign {spec}: the CA '{name}' has no key in {} (an external CA)",
                        global.data_dir.display()
                    ),
                    None => anyhow::bail!("--sign {spec}: the CA '{name}' could not be read"),
                };
                loaded.insert(name, Arc::clone(&ca));
                ca
            }
        };
        out.insert(signer.to_string(), signer_ca);
    }
    Ok(out)
}

/// A signer name as the API takes it: a domain, a slash, a path.
fn signer_name(flag: &str, given: &str, name: &str) -> anyhow::Result<()> {
    match name.split_once('/') {
        Some((domain, path)) if domain.contains('.') && !path.is_empty() => Ok(()),
        _ => anyhow::bail!(
            "{flag} {given}: a signer name is a domain and a path (example.com/node-serving)"
        ),
    }
}

pub(super) fn run(global: &GlobalArgs, args: ControllerArgs) -> anyhow::Result<Exit> {
    for signer in &args.signers {
        signer_name("--signer", signer, signer)?;
    }
    if args
        .identity
        .as_deref()
        .is_some_and(|i| i.trim().is_empty())
    {
        anyhow::bail!(
            "--identity (or POD_NAME) is empty: each replica needs a name of its own in the Lease"
        );
    }
    let timings = LeaseTimings {
        duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    timings.check().map_err(anyhow::Error::msg)?;
    let bundle = Arc::new(super::bundle(global)?);
    let shadow_bundle = match &args.shadow_bundle {
        Some(p) => {
            let engine = super::engine(global)?;
            Some(Arc::new(crate::policy::Bundle::load(&engine, p).map_err(
                |e| anyhow::anyhow!("--shadow-bundle {}: {e}", p.display()),
            )?))
        }
        None => None,
    };
    let fixed_evidence = match &args.node_evidence {
        Some(p) => {
            let bytes = crate::fs::Root::read_ambient_file(p)?;
            Some(
                Evidence::new(Vec::new(), Some(&bytes))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let signs = signing_cas(global, &args.sign)?;
    let mut limits = SignerLimits::default();
    for (signer, seconds) in &args.max_lifetimes {
        if let Some(s) = signer
            && !signs.contains_key(s)
        {
            anyhow::bail!(
                "--max-lifetime {s}=...: rotor signs only for the signers given with --sign here{}",
                if signs.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({})",
                        signs.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                }
            );
        }
        limits.set_max_lifetime(signer.as_deref(), *seconds);
    }
    let mut decides: BTreeSet<String> = args.signers.iter().cloned().collect();
    if decides.is_empty() {
        decides.insert("kubernetes.io/kubelet-serving".into());
    }
    crate::controller::run(ControllerOptions {
        bundle,
        shadow_bundle,
        decision_log: args.decision_log,
        decision_log_max_bytes: args.decision_log_max_bytes,
        decision_log_keep: args.decision_log_keep,
        kubeconfig: args.kubeconfig,
        decides,
        signs,
        limits,
        fixed_evidence,
        lease_namespace: args.lease_namespace,
        lease_name: args.lease_name,
        identity: args.identity.unwrap_or_else(default_identity),
        timings,
        listen: (!args.no_listen).then_some(args.listen),
        workers: args.workers as usize,
    })?;
    Ok(Exit::Success)
}
