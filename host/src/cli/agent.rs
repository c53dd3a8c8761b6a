//! `rotor agent`: its flags, and what it prints.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::Exit;
use super::args::GlobalArgs;
use super::output::outln;
use crate::agent::{
    Agent, AgentError, AgentOptions, AgentStatus, CertAction, PassReport, Schedule, Stopped,
};
use crate::clock::rfc3339;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum ProgramArg {
    K3s,
    Rke2,
}

#[derive(Debug, Args)]
pub(super) struct AgentArgs {
    /// A server's supervisor API, https://host:port (k3s: 6443, RKE2: 9345); repeat it, or
    /// separate with commas, for an HA set: any live server will do.
    #[arg(
        long = "server",
        required = true,
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub servers: Vec<String>,
    /// The join token the server printed (its `server/token`: K10<ca-hash>::server:<password>;
    /// K10<ca-hash>::node:<password> works too).
    #[arg(
        long,
        env = "ROTOR_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the join token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Accept a token that pins no CA (K10::node:<password>, or a bare password): the first
    /// answer of /cacerts is trusted, which anyone between the node and the server could give.
    #[arg(long)]
    pub insecure_unpinned_token: bool,
    /// The node's name [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The node's address, put in its serving certificate; repeat for more [default: the
    /// address this host reaches the first server from, unless that is loopback].
    #[arg(long = "node-ip", value_delimiter = ',', value_name = "IP")]
    pub node_ips: Vec<IpAddr>,
    /// The API's flavour: paths /v1-<program>/ and headers <program>-Node-Name.
    #[arg(long, value_enum, default_value = "k3s")]
    pub program: ProgramArg,
    /// The API server the kubeconfigs point at [default: k3s's agent load balancer,
    /// https://127.0.0.1:6444].
    #[arg(long, value_name = "URL", default_value = "https://127.0.0.1:6444")]
    pub apiserver: String,
    /// An existing node password to use at the first join (k3s keeps it in
    /// /etc/rancher/node/password); without it the agent makes one. Kept in the data dir after.
    #[arg(long, value_name = "FILE")]
    pub node_password_file: Option<PathBuf>,
    /// A new key at every renewal (by default a key is kept until it, or the CA, changes).
    #[arg(long)]
    pub rotate_keys: bool,
    /// One pass, then exit: 0 when every certificate is in place, 1 when some could not be
    /// issued.
    #[arg(long)]
    pub once: bool,
    /// The longest time between two passes (each wait is shortened at random by --jitter).
    #[arg(long, default_value = "1h", value_parser = super::args::parse_interval, value_name = "DURATION")]
    pub check_interval: Duration,
    /// The part of each wait taken off at random (0 to 1), so a fleet spreads its requests.
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction, value_name = "FRACTION")]
    pub jitter: f64,
    /// The longest wait after failed passes (the first is 1s, doubled at each failure).
    #[arg(long, default_value = "5m", value_parser = super::args::parse_interval, value_name = "DURATION")]
    pub max_backoff: Duration,
    /// How long each step of one request (connect, TLS, answer) may take before the next
    /// server is tried.
    #[arg(long, default_value = "10s", value_parser = super::args::parse_interval, value_name = "DURATION")]
    pub request_timeout: Duration,
    /// Serve /metrics, /healthz and /readyz (ready once a pass put every certificate in
    /// place) here.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "once")]
    pub listen: Option<std::net::SocketAddr>,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("'{s}' is not a fraction from 0 to 1")),
    }
}

pub(super) fn run(global: &GlobalArgs, args: AgentArgs) -> anyhow::Result<Exit> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => String::from_utf8(
            crate::fs::Root::read_ambient_file(f)
                .map_err(|e| anyhow::anyhow!("--token-file: {e}"))?,
        )
        .map_err(|_| anyhow::anyhow!("--token-file {}: not UTF-8 text", f.display()))?,
        (None, None) => {
            anyhow::bail!("a join token is needed: --token, --token-file or ROTOR_TOKEN")
        }
    };
    let token = crate::pki::Token::parse(&token).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    };
    let node_name = crate::supervisor::node_name(&node_name)
        .map_err(|e| anyhow::anyhow!("--node-name {node_name}: {e}"))?;
    let mut node_ips = args.node_ips.clone();
    if node_ips.is_empty()
        && let Some(ip) = args.servers.first().and_then(|s| local_address_towards(s))
    {
        node_ips.push(ip);
    }
    let options = AgentOptions {
        data_dir: global.data_dir.clone(),
        datadir: super::datadir_options(global, "agent"),
        servers: args.servers.clone(),
        token,
        unpinned_token: args.insecure_unpinned_token,
        node_name,
        node_ips,
        program: match args.program {
            ProgramArg::K3s => "k3s",
            ProgramArg::Rke2 => "rke2",
        },
        apiserver: args.apiserver.clone(),
        rotate_keys: args.rotate_keys,
        request_timeout: args.request_timeout,
        node_password_file: args.node_password_file.clone(),
    };
    let clock = crate::serve::clock::Clock::from_env().map_err(anyhow::Error::msg)?;
    // The agent's policy: --bundle, else the default bundle built into rotor (an agent's data
    // dir records none).
    let engine = super::engine(global)?;
    let bundle = match &global.bundle {
        Some(path) => crate::policy::Bundle::load(&engine, path)?,
        None => crate::policy::Bundle::builtin(&engine)?,
    };
    super::warn_about(&bundle);
    let mut agent = Agent::new(options, Arc::new(bundle), Arc::new(AgentStatus::new()))?;
    if let Some(addr) = args.listen {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("--listen {addr}: {e}"))?;
        let bound = crate::agent::serve_status(listener, &agent)
            .map_err(|e| anyhow::anyhow!("--listen {addr}: {e}"))?;
        crate::say!("rotor agent: listening on {bound}");
    }
    let schedule = Schedule {
        check_interval: args.check_interval,
        jitter: args.jitter,
        max_backoff: args.max_backoff,
        ..Schedule::default()
    };
    let mut said = |result: &Result<PassReport, AgentError>, next: Option<time::OffsetDateTime>| {
        match (result, next) {
            (Ok(report), _) => {
                print_report(report);
                if let Some(next) = next {
                    outln!("  next check at {}", rfc3339(next));
                }
            }
            (Err(e), Some(next)) => {
                crate::say!("rotor agent: {e}; trying again at {}", rfc3339(next));
            }
            // With --once the error is the command's, said once when it exits.
            (Err(_), None) => {}
        }
    };
    match crate::agent::run(&mut agent, &clock, schedule, args.once, &mut said)? {
        Stopped::Done | Stopped::Signal => Ok(Exit::Success),
        Stopped::Incomplete => Ok(Exit::Attention),
    }
}

fn print_report(report: &PassReport) {
    outln!(
        "rotor agent: pass through {}",
        report.server.as_deref().unwrap_or("(no server)")
    );
    for note in &report.notes {
        outln!("  note: {note}");
    }
    for c in &report.certificates {
        let action = match c.action {
            CertAction::Issued { new_key: true } => "issued",
            CertAction::Issued { new_key: false } => "renewed",
            CertAction::Kept => "keep",
            CertAction::Failed => "FAILED",
        };
        let until = c
            .not_after
            .map(|t| format!(" [expires {}]", rfc3339(t)))
            .unwrap_or_default();
        outln!("  {action:<8} {:<28} {}{until}", c.name, c.why);
    }
    let issued = report
        .certificates
        .iter()
        .any(|c| matches!(c.action, CertAction::Issued { .. }));
    match report.generation {
        Some(n) if issued => outln!("  written: generation {n} is live"),
        Some(n) => outln!("  written: the node password and record (generation {n})"),
        None => outln!("  nothing changed on disk"),
    }
}

/// The address this host would reach `url`'s host from (a UDP socket connected there: no
/// packet is sent), unless it is loopback.
fn local_address_towards(url: &str) -> Option<IpAddr> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(6443);
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .ok()?
        .next()?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
