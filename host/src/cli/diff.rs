//! `rotor policy diff`: what a bundle swap would change, before it happens.

use std::path::Path;

use super::Exit;
use super::args::{DiffArgs, GlobalArgs};
use super::output::outln;
use crate::cluster::{Cluster, ClusterError};
use crate::contract::Hook;
use crate::csr::batch::ItemInput;
use crate::csr::{Evidence, SignerLimits};
use crate::policy::Bundle;
use crate::policy::diff::{self, Change, Report, Verdict};

pub(super) fn run(global: &GlobalArgs, args: DiffArgs) -> anyhow::Result<Exit> {
    let current = super::bundle(global)?;
    let engine = super::engine(global)?;
    if let Err(e) = crate::fs::Root::open_ambient(&args.candidate)
        && e.is_not_found()
    {
        anyhow::bail!(
            "--candidate {}: no such bundle (a directory holding bundle.toml, or the manifest)",
            args.candidate.display()
        );
    }
    let candidate = Bundle::load(&engine, &args.candidate)?;
    super::warn_about(&candidate);
    // A candidate with a plugin that cannot be loaded is refused, not compared: its failure
    // modes would answer for the plugin under review.
    candidate.ensure_loaded()?;
    let now = args
        .from
        .or(args.now)
        .unwrap_or_else(crate::clock::system_now);
    let days = args
        .sweep
        .map(|d| u32::try_from(d.as_secs() / 86_400).unwrap_or(u32::MAX))
        .unwrap_or(0);

    let mut report = Report::default();
    let other_inputs = args.csr_dir.is_some() || args.jsonl.is_some() || !args.fixtures.is_empty();
    let certificates = args.certificates || args.sweep.is_some() || !other_inputs;
    // The data dir's certificates: asked for, or by default when it exists and nothing else is.
    let options = super::datadir_options(global, "policy diff");
    let mut ca_not_after = std::collections::BTreeMap::new();
    let mut layout = None;
    match Cluster::open_read(&global.data_dir, &options) {
        Ok(cluster) => {
            if certificates {
                let subjects = cluster.policy_subjects(now)?;
                diff::certificates(&mut report, &current, &candidate, &subjects, now, days);
            }
            for (name, ca) in cluster.cas_from_disk()? {
                ca_not_after.insert(name, ca.facts().not_after);
            }
            layout = Some(cluster.release().1);
        }
        Err(ClusterError::NotInitialized(dir)) => {
            if certificates {
                anyhow::bail!(
                    "{}: not an initialized data dir: give --data-dir, or compare CSRs \
                     (--csr-dir, --jsonl) or fixtures (--fixtures) instead",
                    dir.display()
                );
            }
        }
        Err(e) => return Err(e.into()),
    }

    for dir in &args.fixtures {
        for (name, request) in crate::policy::fixtures::requests(dir)? {
            let request = request.map_err(|e| anyhow::anyhow!("{}: {name}: {e}", dir.display()))?;
            let hook = request.hook();
            report.compare(
                hook,
                "fixture",
                format!("{}/{name}", dir.display()),
                diff::ask(&current, &request),
                diff::ask(&candidate, &request),
            );
        }
    }

    if args.csr_dir.is_some() || args.jsonl.is_some() {
        let evidence = match &args.node_evidence {
            Some(p) => {
                let bytes = crate::fs::Root::read_ambient_file(p)?;
                Evidence::new(args.node_ips.clone(), Some(&bytes))
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => {
                Evidence::new(args.node_ips.clone(), None).map_err(|e| anyhow::anyhow!("{e}"))?
            }
        };
        let limits = SignerLimits::default();
        for (name, bytes) in csr_inputs(&args)? {
            let item = crate::csr::classify(&name, &bytes, &args.context.pem_context(), &evidence);
            let input = match &item.input {
                ItemInput::Invalid(e) => anyhow::bail!("{e}"),
                ItemInput::Object(o) if o.decided.is_some() => continue,
                ItemInput::Object(o) => &o.input,
                ItemInput::Pem(input) => input,
            };
            let ca = layout
                .as_ref()
                .and_then(|l: &crate::cluster::Layout| l.ca_for_signer(&input.ctx.signer_name))
                .and_then(|spec| ca_not_after.get(spec.name).copied());
            let review = |b: &Bundle| {
                Verdict::of(
                    crate::csr::review(b, input, ca, &limits, now),
                    Verdict::review,
                )
            };
            report.compare(
                Hook::Csr,
                "csr",
                item.name.clone(),
                review(&current),
                review(&candidate),
            );
        }
    }

    if args.json {
        for c in &report.changes {
            outln!("{}", serde_json::to_string(c)?);
        }
    } else {
        print_report(&current, &candidate, &report, days);
    }
    Ok(if report.changes.is_empty() {
        Exit::Success
    } else {
        Exit::Attention
    })
}

/// The CSR files of `--csr-dir` and the lines of `--jsonl`, named.
fn csr_inputs(args: &DiffArgs) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(dir) = &args.csr_dir {
        let root = crate::fs::Root::open_ambient(dir)?;
        let mut names = root.list_dir(Path::new("."))?;
        names.sort();
        for name in names {
            let is_csr = [".json", ".csr", ".pem"].iter().any(|s| name.ends_with(s));
            if is_csr && !name.starts_with('.') {
                out.push((
                    root.display(Path::new(&name)).display().to_string(),
                    root.read(Path::new(&name))?,
                ));
            }
        }
    }
    if let Some(path) = &args.jsonl {
        let text = String::from_utf8(crate::fs::Root::read_ambient_file(path)?)
            .map_err(|_| anyhow::anyhow!("{}: not UTF-8", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                out.push((
                    format!("{}:{}", path.display(), n + 1),
                    line.as_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(out)
}

fn verdict_line(v: &Verdict) -> String {
    let mut s = v.decision.clone();
    if let Some(l) = v.lifetime_seconds {
        // Days when whole (a CA-clamped lifetime is not), else seconds.
        if l % 86_400 == 0 {
            s.push_str(&format!(" for {} days", l / 86_400));
        } else {
            s.push_str(&format!(" for {l} s ({:.1} days)", l as f64 / 86_400.0));
        }
    }
    if !v.codes.is_empty() {
        let codes: Vec<&str> = v.codes.iter().map(String::as_str).collect();
        s.push_str(&format!(" [{}]", codes.join(", ")));
    }
    let words: Vec<&str> = std::iter::once(v.reason.as_str())
        .chain(v.notes.iter().map(String::as_str))
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        format!("{s} ({})", v.source)
    } else {
        format!("{s} ({}): {}", v.source, words.join("; "))
    }
}

fn print_report(current: &Bundle, candidate: &Bundle, report: &Report, days: u32) {
    outln!("current    {} ({})", current.name, current.path.display());
    outln!(
        "candidate  {} ({})",
        candidate.name,
        candidate.path.display()
    );
    if days > 0 {
        outln!("renewal swept daily over {days} days");
    }
    for c in &report.changes {
        print_change(c);
    }
    let count = |h: Hook| report.changes.iter().filter(|c| c.hook == h).count();
    outln!(
        "\n{} of {} decisions change (renewal {}, san {}, csr {})",
        report.changes.len(),
        report.compared,
        count(Hook::Renewal),
        count(Hook::San),
        count(Hook::Csr)
    );
}

fn print_change(c: &Change) {
    let when = match &c.period {
        Some(p) => format!(
            "  {} to {} ({} day{})",
            p.from.date(),
            p.to.date(),
            p.days,
            if p.days == 1 { "" } else { "s" }
        ),
        None => String::new(),
    };
    outln!("\n{:<8} {} {}{when}", c.hook.as_str(), c.input, c.subject);
    outln!("  current    {}", verdict_line(&c.current));
    outln!("  candidate  {}", verdict_line(&c.candidate));
}
