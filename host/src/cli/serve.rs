//! `rotor serve` and `rotor policy log`.

use std::sync::Arc;

use super::Exit;
use super::args::{GlobalArgs, LogArgs, RoleArg, ServeArgs};
use super::output::outln;
use crate::clock::rfc3339;
use crate::serve::{Clock, Role, ServeOptions, Service};

pub(super) fn run(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<Exit> {
    let clock = Clock::from_env().map_err(anyhow::Error::msg)?;
    let engine = Arc::new(super::engine(global)?);
    let options = ServeOptions {
        data_dir: global.data_dir.clone(),
        datadir: super::datadir_options(global, "serve"),
        bundle: global.bundle.clone(),
        shadow_bundle: args.shadow_bundle,
        token: args.token,
        listen: (!args.no_listen).then_some(args.listen),
        tls_ca: args.tls_ca,
        decision_log: args.decision_log,
        decision_log_max_bytes: args.decision_log_max_bytes,
        decision_log_keep: args.decision_log_keep,
        actions: args.actions,
        max_interval: args.max_interval,
        expiry_margin: args.expiry_margin,
        watch_interval: args.watch_interval,
        supervisor_listen: args.supervisor_listen,
        supervisor_limits: crate::supervisor::Limits {
            connections: args.supervisor_max_connections as usize,
            connections_per_address: args.supervisor_max_connections_per_address as usize,
            body: args.supervisor_max_body as usize,
            client_timeout: args.supervisor_client_timeout,
            node_burst: args.supervisor_node_burst,
            node_rate: args.supervisor_node_rate,
            decisions: args
                .supervisor_decisions
                .map(|n| n as usize)
                .unwrap_or_else(|| crate::supervisor::Limits::default().decisions),
            server_bootstrap: args.supervisor_server_bootstrap,
            new_nodes_burst: args.supervisor_new_nodes_burst,
            new_nodes_rate: args.supervisor_new_nodes_rate,
            ..crate::supervisor::Limits::default()
        },
    };
    let service = Service::new(options, engine, clock)?;
    if let Some(addr) = service.listening() {
        // Tests and scripts that ask for port 0 read the port here.
        crate::say!("rotor serve: listening on {addr}");
    }
    if let Some(addr) = service.supervisor_listening() {
        crate::say!("rotor serve: supervisor API on https://{addr}");
    }
    service.run()?;
    Ok(Exit::Success)
}

pub(super) fn log(args: LogArgs) -> anyhow::Result<Exit> {
    let hook = args.hook.map(|h| crate::contract::Hook::from(h).as_str());
    let role = args.role.map(|r| match r {
        RoleArg::Acted => Role::Acted,
        RoleArg::Shadow => Role::Shadow,
    });
    let (mut shown, mut total) = (0usize, 0usize);
    let mut failed = None;
    crate::serve::log::read(&args.file, args.rotated, |r| {
        total += 1;
        let selected = hook.is_none_or(|h| r.hook == h)
            && args.certificate.as_ref().is_none_or(|c| {
                r.subject.certificate.as_ref() == Some(c) || r.subject.csr.as_ref() == Some(c)
            })
            && args.decision.as_ref().is_none_or(|d| &r.decision == d)
            && role.is_none_or(|x| r.role == x)
            && (!args.disagreements || r.disagrees == Some(true))
            && args.since.is_none_or(|t| r.time >= t)
            && args.until.is_none_or(|t| r.time < t);
        if !selected || failed.is_some() {
            return;
        }
        shown += 1;
        if args.json {
            match serde_json::to_string(&r) {
                Ok(line) => outln!("{line}"),
                Err(e) => failed = Some(e),
            }
        } else {
            print_record(&r);
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    if !args.json {
        outln!("{shown} of {total} decisions shown");
    }
    Ok(Exit::Success)
}

fn print_record(r: &crate::serve::DecisionRecord) {
    let subject = match (&r.subject.certificate, &r.subject.serial, &r.subject.csr) {
        (Some(c), Some(s), _) => format!("{c} (serial {s})"),
        (Some(c), None, _) => c.clone(),
        (None, _, Some(csr)) => format!("CSR {csr}"),
        _ => "-".into(),
    };
    let who = match (&r.plugin, &r.digest) {
        (Some(p), Some(d)) => format!("{p} {}", short_digest(d)),
        (Some(p), None) => p.clone(),
        _ => "built-in rule".into(),
    };
    let role = match (r.role, r.disagrees) {
        (Role::Acted, _) => "acted".to_string(),
        (Role::Shadow, Some(true)) => "shadow DISAGREES".to_string(),
        (Role::Shadow, _) => "shadow".to_string(),
    };
    outln!(
        "{}  {:<7} {:<8} {}  [{role}; bundle {}; {who}; {:.2} ms]",
        rfc3339(r.time),
        r.hook,
        r.decision,
        subject,
        r.bundle,
        r.latency_ms
    );
    for reason in &r.reasons {
        outln!("    {reason}");
    }
    if let Some(t) = r.renew_at {
        outln!("    ask again at {}", rfc3339(t));
    }
    if let Some(e) = &r.error {
        outln!("    plugin error: {e}");
    }
}

fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    format!("sha256:{}", hex.chars().take(12).collect::<String>())
}
