//! The `rotor` command line: parse, run, map the result to an exit status.
//!
//! Exit status: 0 success; 1 completed but needs attention (failing policy tests); 2 error. Data
//! goes to stdout, diagnostics to stderr as one `rotor: ...` line per failure.

mod agent;
mod args;
mod cluster;
mod completion;
mod controller;
mod csr;
mod diff;
mod node;
mod output;
mod policy;
mod publish;
mod rotation;
mod serve;
mod vendor;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use args::Cli;
use args::{Command, GlobalArgs};

use crate::plugin::{EngineOptions, PluginEngine};

/// How a command ended when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Done; nothing needs attention (exit status 0).
    Success,
    /// Done, but something needs the operator's attention (exit status 1).
    Attention,
    /// A CSR left pending: a policy abstained (exit status 3).
    Pending,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    crate::input::name_inputs(flag);
    init_logging(cli.global.verbose);
    match run(cli) {
        Ok(Exit::Success) => ExitCode::SUCCESS,
        Ok(Exit::Attention) => ExitCode::from(1),
        Ok(Exit::Pending) => ExitCode::from(3),
        Err(e) => {
            // Never a panic, even with standard error closed.
            let _ = writeln!(std::io::stderr(), "rotor: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// The whole command line as clap knows it, with the long version: what is parsed, and what
/// the man pages and shell completions are made from.
pub(crate) fn command() -> clap::Command {
    Cli::command()
        .version(short_version())
        .long_version(long_version())
}

/// `rotor -V`: the release and the commit it was built from.
fn short_version() -> String {
    format!(
        "{} (commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("ROTOR_GIT_COMMIT")
    )
}

/// `rotor --version`: the release, the commit, and every plugin contract this build loads.
fn long_version() -> String {
    use crate::plugin::ContractVersion;
    let loads: Vec<&str> = ContractVersion::ALL.iter().map(|v| v.version()).collect();
    format!(
        "{}\nplugin contracts: rotor:policy {} (current {}; `rotor policy new` writes it)",
        short_version(),
        loads.join(", "),
        ContractVersion::CURRENT.version()
    )
}

/// The error as the operator should read it: the whole chain of causes, and an input the
/// library names in words (`node name`) named by its flag (`'--node-name'`).
fn describe(e: &anyhow::Error) -> String {
    use crate::cluster::ClusterError;
    let Some((input, problem)) = e
        .downcast_ref::<ClusterError>()
        .and_then(ClusterError::input_problem)
    else {
        return format!("{e:#}");
    };
    format!("'{}': {problem}", flag(input))
}

/// The flag that gives each input: how the library's messages name inputs in this CLI.
fn flag(input: crate::input::Input) -> &'static str {
    use crate::input::Input;
    match input {
        Input::NodeName => "--node-name",
        Input::KeyType => "--key-type",
        Input::ClusterDomain => "--cluster-domain",
        Input::Token => "--token",
        Input::NewToken => "--new-token",
        Input::KeepKeys => "--keep",
        Input::RootCert => "--root-cert",
        Input::IntermediateCert => "--intermediate-cert",
        Input::Force => "--force",
        Input::LockTimeout => "--lock-timeout",
        Input::NodeIp => "--node-ip",
        Input::NodeEvidence => "--node-evidence",
        Input::Bundle => "--bundle DIR (or ROTOR_BUNDLE)",
        Input::Signer => "--signer",
        Input::Username => "--username",
        Input::DatastoreEndpoint => "--datastore-endpoint",
        Input::DatastoreCaFile => "--datastore-cafile",
        Input::DatastoreCertFile => "--datastore-certfile",
        Input::DatastoreKeyFile => "--datastore-keyfile",
    }
}

fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Init(args) => cluster::init(&cli.global, *args),
        Command::Start(args) => cluster::start(&cli.global, args),
        Command::Certificate(cmd) => cluster::certificate(&cli.global, cmd),
        Command::Certs(cmd) => cluster::certs(&cli.global, cmd),
        Command::Token(cmd) => rotation::token(&cli.global, cmd),
        Command::Csr(args::CsrCommand::Review(args)) => csr::run(&cli.global, *args, false),
        Command::Csr(args::CsrCommand::Sign(args)) => csr::run(&cli.global, *args, true),
        Command::Csr(args::CsrCommand::Controller(args)) => controller::run(&cli.global, *args),
        Command::Policy(cmd) => policy::run(&cli.global, cmd),
        Command::Serve(args) => serve::run(&cli.global, *args),
        Command::Node(cmd) => node::run(&cli.global, cmd),
        Command::Agent(args) => agent::run(&cli.global, *args),
        Command::Completion { shell } => completion::completion(shell),
        Command::Manpages { out } => completion::manpages(&out),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "rotor=info,warn",
        2 => "rotor=debug,warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed write to standard error (gone) must not panic a long-running server.
        .log_internal_errors(false)
        .with_target(false)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .without_time()
        .try_init();
}

/// Whether diagnostics on standard error are coloured: only on a terminal, and never when
/// `NO_COLOR` is set to anything but the empty string (no-color.org).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// How this command holds the data dir (lock timeout, backups kept, its name for others).
fn datadir_options(global: &GlobalArgs, command: &str) -> crate::datadir::Options {
    crate::datadir::Options {
        lock_timeout: std::time::Duration::from_secs(global.lock_timeout),
        backup_keep: global.backup_keep,
        command: command.to_string(),
        datastore_timeout: std::time::Duration::from_secs(global.datastore_timeout.max(1)),
    }
}

/// The bundle a command decides with: `--bundle` (or `ROTOR_BUNDLE`), else the bundle
/// `rotor init` recorded in the data dir, else the default bundle (installed beside the binary,
/// else built into rotor: [`crate::policy::Bundle::builtin`]). What the
/// operator must hear about it (a plugin that could not be loaded, a door opened in the host
/// floor) is said on standard error, at every command.
fn bundle(global: &GlobalArgs) -> anyhow::Result<crate::policy::Bundle> {
    let bundle = resolve_bundle(global)?;
    warn_about(&bundle);
    Ok(bundle)
}

/// Say a bundle's warnings, one `rotor: warning:` line each.
fn warn_about(bundle: &crate::policy::Bundle) {
    for w in bundle.warnings() {
        crate::say!("rotor: warning: {w}");
    }
}

fn resolve_bundle(global: &GlobalArgs) -> anyhow::Result<crate::policy::Bundle> {
    use crate::policy::Bundle;
    let engine = engine(global)?;
    if let Some(path) = &global.bundle {
        return Ok(Bundle::load(&engine, path)?);
    }
    // The recorded bundle is read like everything else of the data dir: under its lock, after
    // recovery and the permission checks, from the live generation.
    let options = datadir_options(global, "reading the recorded policy bundle");
    match crate::cluster::Cluster::open_read(&global.data_dir, &options) {
        Ok(cluster) => {
            if let Some(root) = cluster.recorded_bundle()? {
                return Ok(Bundle::load_root(&engine, root)?);
            }
        }
        Err(crate::cluster::ClusterError::NotInitialized(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Bundle::builtin(&engine)?)
}

/// The plugin engine for this run, with the precompiled cache unless disabled.
fn engine(global: &GlobalArgs) -> anyhow::Result<PluginEngine> {
    let cache_dir = if global.no_plugin_cache {
        None
    } else {
        global.plugin_cache.clone().or_else(default_cache_dir)
    };
    Ok(PluginEngine::new(EngineOptions {
        cache_dir,
        ..EngineOptions::default()
    })?)
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("rotor").join("plugins"))
}

#[cfg(test)]
mod tests {
    /// Every flag and argument of every command says what it is: `--help`, the man pages and
    /// the completions are made from these words.
    #[test]
    fn every_argument_of_every_command_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !arg.is_hide_set() && !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = super::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "rotor", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some(OsStr::new(""))));
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        assert!(!super::colour(false, None));
    }
}
