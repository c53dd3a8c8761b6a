//! Command-line arguments (clap derive). These structs mirror the flags and do nothing else;
//! the commands in the sibling modules turn them into work.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;

use crate::cluster::Profile;
use crate::contract::Hook;
use crate::contract::SanStage;
use crate::datastore::RecordFormat;
use crate::facts::Usage;
use crate::pki::KeyType;

/// rotor: certificate rotation for k3s, RKE2 and kubeadm clusters, decided by sandboxed
/// WebAssembly policy plugins.
#[derive(Debug, Parser)]
#[command(name = "rotor", version, about, long_about = None)]
#[command(
    after_help = "Exit status: 0 success, 1 done but needs attention (e.g. failing policy tests), 2 error."
)]
pub(super) struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes; `--help` lists them under their own heading.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub(super) struct GlobalArgs {
    /// The data dir: k3s/RKE2 `server/` and `agent/`, or kubeadm's `pki/` and kubeconfigs.
    #[arg(
        long,
        global = true,
        env = "ROTOR_DATA_DIR",
        default_value = "rotor-data"
    )]
    pub data_dir: PathBuf,

    /// Policy bundle: a directory holding bundle.toml, or the manifest file [default: the
    /// bundle `rotor init` recorded in the data dir, else the installed default bundle
    /// (<prefix>/share/rotor/policies/default beside <prefix>/bin/rotor), else the one built in].
    #[arg(long, global = true, env = "ROTOR_BUNDLE")]
    pub bundle: Option<PathBuf>,

    /// Directory for precompiled plugins [default: $XDG_CACHE_HOME/rotor/plugins or
    /// ~/.cache/rotor/plugins].
    #[arg(long, global = true, env = "ROTOR_PLUGIN_CACHE")]
    pub plugin_cache: Option<PathBuf>,

    /// Compile plugins in memory on every run instead of caching them.
    #[arg(long, global = true)]
    pub no_plugin_cache: bool,

    /// Seconds to wait for another rotor command on the same data dir to finish (one writer at a
    /// time; readers wait for writers), then fail naming it.
    #[arg(
        long,
        global = true,
        env = "ROTOR_LOCK_TIMEOUT",
        default_value_t = 30,
        value_name = "SECONDS"
    )]
    pub lock_timeout: u64,

    /// Seconds one request to a shared datastore (etcd) may take on one member before the next
    /// member is tried (1 to 3600).
    #[arg(
        long,
        global = true,
        env = "ROTOR_DATASTORE_TIMEOUT",
        default_value_t = 10,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub datastore_timeout: u64,

    /// Earlier generations of the data dir's files kept as backups (.rotor/generations/N).
    #[arg(
        long,
        global = true,
        env = "ROTOR_BACKUP_KEEP",
        default_value_t = 5,
        value_name = "N"
    )]
    pub backup_keep: usize,

    /// More logging: -v info, -vv debug (plugin log messages and wasm backtraces), -vvv
    /// everything, wasmtime included. ROTOR_LOG overrides (tracing filter syntax). Coloured
    /// only when standard error is a terminal and NO_COLOR is unset.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Create the cluster PKI (or adopt CAs already in place) in the data dir.
    #[command(after_help = "Examples:\n  \
        rotor init --profile k3s --node-name server-1 --node-ip 192.168.1.10 --tls-san k8s.example.com\n  \
        rotor --data-dir /etc/kubernetes init --profile kubeadm --node-name cp-1 --node-ip 10.0.0.10 --key-type ecdsa-p256")]
    Init(Box<InitArgs>),

    /// What a server does at every start: extract the CAs from the datastore, renew the leaves the
    /// policy, drift or a new CA call for (new keys), after backing up the live PKI.
    #[command(
        after_help = "Examples:\n  rotor start --dry-run\n  rotor start --now 2027-10-01T00:00:00Z"
    )]
    Start(StartArgs),

    /// Rotate and check certificates (k3s/RKE2 style).
    #[command(subcommand)]
    Certificate(CertificateCommand),

    /// kubeadm's certificate commands.
    #[command(subcommand)]
    Certs(CertsCommand),

    /// Rotate the join token.
    #[command(subcommand)]
    Token(TokenCommand),

    /// Review and sign certificate signing requests through the policy plugins.
    #[command(subcommand)]
    Csr(CsrCommand),

    /// Load, inspect, evaluate and test policy bundles and their plugins.
    #[command(subcommand)]
    Policy(PolicyCommand),

    /// Nodes bound to a node password by the supervisor API: list them, or free a name.
    #[command(subcommand)]
    Node(NodeCommand),

    /// Keep the data dir's certificates fresh until stopped: renew what the policy says when it
    /// says, run post-renewal actions, hot-swap the policy bundle (SIGHUP or a change of its
    /// files), shadow a candidate bundle, export Prometheus metrics, log every decision.
    #[command(after_help = "Examples:\n  \
        rotor --data-dir /var/lib/rancher/k3s serve\n  \
        rotor serve --listen 127.0.0.1:9464 --decision-log /var/log/rotor/decisions.jsonl\n  \
        rotor serve --shadow-bundle /etc/rotor/candidate --actions /etc/rotor/actions.toml\n  \
        rotor serve --tls-ca server-ca   # HTTPS with a certificate from the cluster's server CA\n  \
        rotor serve --supervisor-listen 0.0.0.0:9345   # the supervisor API agents join through\n\n\
        SIGTERM or SIGINT: stop after the change in progress. SIGHUP: reload the policy bundle.")]
    Serve(Box<ServeArgs>),

    /// Run a node's agent: join through the servers' supervisor API (the join token pins their
    /// CA), keep the kubelet, kube-proxy and controller certificates (keys made here) fresh in
    /// k3s's agent layout, renewing as the policy says, through any live server.
    #[command(after_help = "Examples:\n  \
        rotor --data-dir /var/lib/rancher/k3s agent --server https://10.0.0.1:6443 --server https://10.0.0.2:6443 \\\n      \
            --token-file /etc/rotor/token --node-name worker-1 --node-ip 10.0.0.21\n  \
        rotor --data-dir /tmp/agent agent --once --server https://127.0.0.1:9345 --token K10...::node:... --node-name w1\n\n\
        Exit status with --once: 0 every certificate in place, 1 some could not be issued, 2 error.\n\
        SIGTERM or SIGINT: stop between passes.")]
    Agent(Box<super::agent::AgentArgs>),

    /// Print the shell completion script for bash, zsh, fish, elvish or PowerShell.
    #[command(after_help = "Examples:\n  \
        source <(rotor completion bash)\n  \
        rotor completion bash > /etc/bash_completion.d/rotor\n  \
        rotor completion zsh > \"${fpath[1]}/_rotor\"\n  \
        rotor completion fish > ~/.config/fish/completions/rotor.fish\n\n\
        The Debian package installs the bash, zsh and fish scripts already.")]
    Completion {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Write the man pages, rotor(1) and one per subcommand (rotor-policy-pin(1), ...), into
    /// DIR: how the package makes them from these very definitions.
    #[command(hide = true)]
    Manpages {
        /// Directory to write the pages into (created when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum NodeCommand {
    /// Every node name bound to a password: when it was first seen, when a certificate was
    /// last issued to it, and when each of its certificates expires.
    #[command(after_help = "Examples:\n  rotor node list\n  rotor node list -o json")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: NodeOutput,
    },
    /// Remove a node's binding, so the name can join again with a new node password.
    #[command(after_help = "Examples:\n  rotor node delete worker-3")]
    Delete {
        /// The node name.
        name: String,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum NodeOutput {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Serve no HTTP endpoint.
    #[arg(long, conflicts_with_all = ["listen", "tls_ca"])]
    pub no_listen: bool,
    /// Serve HTTPS with a certificate issued (and renewed) by this CA of the layout, e.g.
    /// server-ca (k3s, RKE2) or ca (kubeadm); scrapers trust that CA's certificate file.
    #[arg(long, value_name = "CA")]
    pub tls_ca: Option<String>,
    /// A candidate bundle: it decides alongside the active one and never acts; its decisions
    /// and disagreements are logged and counted.
    #[arg(long, value_name = "DIR")]
    pub shadow_bundle: Option<PathBuf>,
    /// Write every decision as a JSON line to this file [default: standard output].
    #[arg(long, value_name = "FILE")]
    pub decision_log: Option<PathBuf>,
    /// Rotate the decision log (to FILE.1, FILE.1 to FILE.2, ...) when it would exceed this
    /// many bytes.
    #[arg(long, default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(4096..), value_name = "BYTES")]
    pub decision_log_max_bytes: u64,
    /// Rotated decision logs to keep.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub decision_log_keep: u32,
    /// Post-renewal actions (TOML): commands or signals per component.
    #[arg(long, value_name = "FILE")]
    pub actions: Option<PathBuf>,
    /// The longest sleep between two cycles (e.g. 30m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = parse_interval)]
    pub max_interval: std::time::Duration,
    /// Wake this long before the next certificate expires, whatever the policy hints.
    #[arg(long, default_value = "1h", value_parser = parse_interval)]
    pub expiry_margin: std::time::Duration,
    /// How often the policy bundle's files are checked for changes.
    #[arg(long, default_value = "2s", value_parser = parse_watch_interval)]
    pub watch_interval: std::time::Duration,
    /// The token [default: the token file in the data dir].
    #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve the supervisor API here (HTTPS, k3s's paths: /cacerts, /v1-k3s/...): agents join
    /// and get their kubelet, kube-proxy and controller certificates, each request decided by
    /// the policy bundle (k3s and RKE2 data dirs; k3s uses port 6443, RKE2 9345).
    #[arg(long, value_name = "ADDR:PORT")]
    pub supervisor_listen: Option<std::net::SocketAddr>,
    /// Also serve /v1-<program>/server-bootstrap (every CA key of the cluster, for joining
    /// servers) to the server token; agents hold the same token, so it is off by default.
    #[arg(long, requires = "supervisor_listen")]
    pub supervisor_server_bootstrap: bool,
    /// Supervisor API: connections served at once (more wait in the kernel's backlog).
    #[arg(long, default_value_t = 2048, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub supervisor_max_connections: u32,
    /// Supervisor API: connections one client address may hold at once.
    #[arg(long, default_value_t = 1024, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub supervisor_max_connections_per_address: u32,
    /// Supervisor API: the largest request body (a CSR), in bytes.
    #[arg(long, default_value_t = 65536, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub supervisor_max_body: u32,
    /// Supervisor API: the time a client has for its TLS handshake, then its headers, then
    /// its body.
    #[arg(long, default_value = "10s", value_parser = parse_interval, value_name = "DURATION")]
    pub supervisor_client_timeout: std::time::Duration,
    /// Supervisor API: certificate requests a node name may make in a burst.
    #[arg(long, default_value_t = 20.0, value_name = "N", value_parser = parse_rate)]
    pub supervisor_node_burst: f64,
    /// Supervisor API: certificate requests per second a node name gets back after its burst.
    #[arg(long, default_value_t = 2.0, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub supervisor_node_rate: f64,
    /// Supervisor API: decisions (password check, policy, signing) run at once; more wait,
    /// then get 503 [default: twice the CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub supervisor_decisions: Option<u32>,
    /// Supervisor API: new node names one client address may bind in a burst.
    #[arg(long, default_value_t = 1000.0, value_name = "N", value_parser = parse_rate)]
    pub supervisor_new_nodes_burst: f64,
    /// Supervisor API: new node names per second an address gets back after its burst.
    #[arg(long, default_value_t = 10.0, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub supervisor_new_nodes_rate: f64,
}

/// A positive rate or count (at most a million).
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1_000_000.0 => Ok(f),
        _ => Err(format!("'{s}' is not a number above 0 and at most 1000000")),
    }
}

/// How often to look at the bundle's files: 100ms to 1h.
fn parse_watch_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 500ms, 2s or 1m ({e})"))?;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600) {
        return Err(format!("'{s}' is outside 100ms to 1h"));
    }
    Ok(d)
}

/// A duration such as `90s`, `30m`, `1h`, `7d` (1 second to 365 days).
pub(super) fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 30s, 15m, 1h or 7d ({e})"))?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(365 * 86_400) {
        return Err(format!("'{s}' is outside 1s to 365d"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// The distribution whose layout and conventions to follow.
    #[arg(long, value_enum, default_value = "k3s")]
    pub profile: Profile,
    /// Take over a data dir another tool made (a k3s or RKE2 server's, found in its datastore
    /// by its token file; a kubeadm /etc/kubernetes) as it is: nothing issued, no file
    /// rewritten; refused, with the list of what is wrong, unless every CA, key, certificate
    /// and the bootstrap record is in place. Give the server's --node-name and --node-ip.
    #[arg(long)]
    pub adopt: bool,
    /// This node's name (lowercase RFC 1123 subdomain).
    #[arg(long)]
    pub node_name: String,
    /// An address of this node (repeatable).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// An extra name or IP for the API server certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// The cluster's DNS domain, in the API server's and kubelets' names.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Service network [default: 10.43.0.0/16 for k3s and RKE2, 10.96.0.0/12 for kubeadm].
    #[arg(long)]
    pub service_cidr: Option<ipnet::IpNet>,
    /// Use this token (K10<hash>::server:<password>, or a bare password) instead of generating one.
    #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Key algorithm (kubeadm; k3s and RKE2 always use ECDSA P-256) [default: rsa-2048].
    #[arg(long, value_enum)]
    pub key_type: Option<KeyType>,
    /// How the bootstrap record is encrypted: rotor-v1 (PBKDF2-SHA256, 600k iterations,
    /// authenticated header) or k3s (k3s's own format: PBKDF2-SHA1, 4096 iterations).
    #[arg(long, value_enum, default_value = "rotor-v1")]
    pub datastore_format: RecordFormat,
    /// Keep the CA material in a datastore shared by every server, instead of the data dir:
    /// etcd's or kine's comma-separated client URLs (https://HOST:2379 or http://), or a
    /// stopped k3s server's SQLite database, sqlite:///var/lib/rancher/k3s/server/db/state.db
    /// (the default for a k3s data dir that holds server/db/state.db). Recorded in the data
    /// dir: later commands use it. With an initialized cluster in it, init joins that cluster
    /// (give its --token).
    #[arg(
        long,
        env = "ROTOR_DATASTORE_ENDPOINT",
        value_name = "URL[,URL...]",
        help_heading = "Shared datastore (etcd, kine)"
    )]
    pub datastore_endpoint: Option<String>,
    /// The CA that signed etcd's serving certificates (PEM; needed for https).
    #[arg(
        long,
        env = "ROTOR_DATASTORE_CAFILE",
        value_name = "FILE",
        requires = "datastore_endpoint",
        help_heading = "Shared datastore (etcd, kine)"
    )]
    pub datastore_cafile: Option<PathBuf>,
    /// A client certificate for etcd (PEM), with --datastore-keyfile.
    #[arg(
        long,
        env = "ROTOR_DATASTORE_CERTFILE",
        value_name = "FILE",
        requires = "datastore_endpoint",
        help_heading = "Shared datastore (etcd, kine)"
    )]
    pub datastore_certfile: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(
        long,
        env = "ROTOR_DATASTORE_KEYFILE",
        value_name = "FILE",
        requires = "datastore_endpoint",
        help_heading = "Shared datastore (etcd, kine)"
    )]
    pub datastore_keyfile: Option<PathBuf>,
    /// Act at this instant (RFC 3339) instead of the system clock.
    #[arg(long, value_parser = crate::clock::parse_now)]
    pub now: Option<OffsetDateTime>,
}

#[derive(Debug, Args)]
pub(super) struct StartArgs {
    /// Print the plan (each certificate, the decision, the reason) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Act at this instant (RFC 3339) instead of the system clock.
    #[arg(long, value_parser = crate::clock::parse_now)]
    pub now: Option<OffsetDateTime>,
    /// The token [default: the token file in the data dir].
    #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum CertificateCommand {
    /// Re-issue client and serving certificates (new keys), all or those of some services.
    #[command(
        after_help = "Examples:\n  rotor certificate rotate\n  rotor certificate rotate --service api-server,kubelet --dry-run"
    )]
    Rotate {
        /// Comma-separated services (k3s/RKE2 names; kubeadm: certificate names).
        #[arg(long = "service", value_delimiter = ',')]
        services: Option<Vec<String>>,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
        /// The token [default: the token file in the data dir].
        #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Build the custom CA topology (root -> intermediate -> the cluster's CAs) and a new
    /// service-account key, for 'init' (before the first start) or 'rotate-ca'.
    #[command(
        after_help = "Key algorithms [defaults]: root and intermediate RSA-4096 (as k3s's script), the cluster's CAs\n\
        ECDSA P-256 for k3s and RKE2 (RSA-2048 for kubeadm), service-account key RSA-2048.\n\n\
        Examples:\n  rotor certificate generate-custom-ca --out /opt/k3s\n  \
        rotor certificate generate-custom-ca --out /opt/k3s --root-cert root.pem --root-key root.key"
    )]
    GenerateCustomCa(Box<GenerateCustomCaArgs>),

    /// For a cluster on self-signed CAs: new roots cross-signed by the current ones and new
    /// intermediates, staged in DIR for 'rotate-ca'. Prints the token nodes will need.
    #[command(
        after_help = "Example:\n  rotor certificate rotate-default-ca --out /tmp/rotate\n  rotor certificate rotate-ca --path /tmp/rotate --force"
    )]
    RotateDefaultCa {
        /// The staging dir to write the new CA set into, for `rotate-ca --path` (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
        /// The token [default: the token file in the data dir].
        #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },

    /// Validate a staged CA set and replace the CA material in the datastore in one atomic step.
    #[command(
        after_help = "Files missing from DIR keep the current ones (e.g. stage only service.key).\n\
        Then run 'rotor start' on every server (restart servers first, then agents)."
    )]
    RotateCa {
        /// The staging dir (the files directly, or under tls/, server/tls/ or pki/).
        #[arg(long)]
        path: PathBuf,
        /// Turn the integrity checks into warnings (never for unusable material).
        #[arg(long)]
        force: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
        /// The token [default: the token file in the data dir].
        #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },

    /// End a CA rotation: keep in each CA's bundle only the CA and its own root (the old root and
    /// the cross-signed one go), in the datastore in one step; refused while a leaf is still
    /// signed by the old CA.
    #[command(
        after_help = "Run it once every server ran 'rotor start' after 'rotate-ca' and every node renewed.\n\
        rotor checks the certificates of its data dir only: nodes it did not issue (kubeadm's kubelet\n\
        keeps its own, /var/lib/kubelet/pki/kubelet-client-current.pem) must hold new-CA certificates first.\n\
        Then run 'rotor start' on every server: kube-apiserver reloads its client and request-header\n\
        CA files by itself and from then on refuses certificates of the old CA."
    )]
    RetireOldCa {
        /// Retire even though leaves still signed by the old CA are listed (they stop working).
        #[arg(long)]
        force: bool,
        /// Print what would be retired and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
        /// The token [default: the token file in the data dir].
        #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },

    /// A new service-account signing key; previous keys stay after it so their tokens remain valid.
    RotateServiceKey {
        /// Keep at most N previous keys [default: all].
        #[arg(long)]
        keep: Option<usize>,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
        /// The token [default: the token file in the data dir].
        #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },

    /// One row per certificate (CAs included) with its expiry and status.
    #[command(
        after_help = "Exit status 1 when any certificate needs attention (WARNING, EXPIRED, ...)."
    )]
    Check {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: CheckFormat,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
    },
}

#[derive(Debug, Args)]
pub(super) struct GenerateCustomCaArgs {
    /// Output dir: files go to DIR/server/tls (k3s, RKE2) or DIR/pki (kubeadm).
    #[arg(long)]
    pub out: PathBuf,
    /// Whose CA set to build.
    #[arg(long, value_enum, default_value = "k3s")]
    pub profile: Profile,
    /// An existing root certificate (with --root-key, or with --intermediate-cert/--intermediate-key).
    #[arg(long)]
    pub root_cert: Option<PathBuf>,
    /// The root certificate's private key (PEM), to sign a new intermediate with.
    #[arg(long, requires = "root_cert", conflicts_with = "intermediate_key")]
    pub root_key: Option<PathBuf>,
    /// An existing intermediate CA to sign the cluster's CAs.
    #[arg(long, requires_all = ["intermediate_key", "root_cert"])]
    pub intermediate_cert: Option<PathBuf>,
    /// The intermediate certificate's private key (PEM).
    #[arg(long, requires = "intermediate_cert")]
    pub intermediate_key: Option<PathBuf>,
    /// Key algorithm of a new root CA.
    #[arg(long, value_enum, default_value = "rsa-4096")]
    pub root_key_type: KeyType,
    /// Key algorithm of a new intermediate CA.
    #[arg(long, value_enum, default_value = "rsa-4096")]
    pub intermediate_key_type: KeyType,
    /// [default: ecdsa-p256 for k3s and RKE2, rsa-2048 for kubeadm]
    #[arg(long, value_enum)]
    pub ca_key_type: Option<KeyType>,
    /// The new service-account signing key. Kubernetes signs service-account tokens with RS256
    /// for RSA keys and ES256/ES384 for ECDSA keys; kube-apiserver verifies tokens of every key
    /// in the file, so existing tokens stay valid whatever the new key's type [default: rsa-2048,
    /// what k3s, RKE2 and kubeadm generate].
    #[arg(long, value_enum)]
    pub service_key_type: Option<KeyType>,
    /// Act at this instant (RFC 3339) instead of the system clock.
    #[arg(long, value_parser = crate::clock::parse_now)]
    pub now: Option<OffsetDateTime>,
}

#[derive(Debug, Subcommand)]
pub(super) enum CsrCommand {
    /// The decision on a CSR: approve, deny (every reason) or abstain (pending).
    #[command(
        after_help = "Exit status: 0 approved, 1 denied, 3 pending (abstained), 2 error.\n\n\
        Examples:\n  rotor csr review --csr node.csr --signer kubernetes.io/kubelet-serving \\\n    \
        --username system:node:a --group system:nodes --usage 'digital signature' --usage 'server auth' --node-ip 10.0.0.5\n  \
        kubectl get csr csr-x1 -o json | rotor csr review --csr -"
    )]
    Review(Box<CsrArgs>),
    /// Review, and on approval sign with the CA the signer maps to. A Kubernetes object comes
    /// back with its Approved/Denied condition and status.certificate.
    #[command(
        after_help = "Exit status: 0 approved and signed, 1 denied, 3 pending, 2 error (batches: 0, or 1 if any CSR errored).\n\n\
        Examples:\n  rotor csr sign --csr node.csr --signer kubernetes.io/kubelet-serving --username system:node:a \\\n    \
        --group system:nodes --usage 'digital signature' --usage 'server auth' --node-ip 10.0.0.5 --out node.crt\n  \
        kubectl get csr csr-x1 -o json | rotor csr sign --csr - > signed.json\n  \
        rotor csr sign --dir csrs/ --node-evidence nodes.json --out-dir signed/"
    )]
    Sign(Box<CsrArgs>),
    /// Run as the cluster's CSR approver: watch CertificateSigningRequests through the API,
    /// decide each pending one of the given signers by policy (the path of `csr review`, with
    /// the requesting node's Node object as evidence), approve or deny it through /approval,
    /// and sign approved ones of the signers given with --sign. Replicas elect a leader
    /// through a Lease.
    #[command(
        after_help = "Runs until SIGTERM or SIGINT (then gives the Lease up).\n\n\
        Examples:\n  rotor csr controller --kubeconfig admin.conf\n  \
        rotor csr controller --signer kubernetes.io/kubelet-serving --sign example.com/node-serving=server-ca \\\n    \
        --data-dir /var/lib/rancher/k3s --listen 0.0.0.0:9464\n\n\
        In a cluster: kubectl apply -f deploy/ (see docs/csr-controller.md)."
    )]
    Controller(Box<ControllerArgs>),
}

#[derive(Debug, Args)]
pub(super) struct ControllerArgs {
    /// The kubeconfig to reach the API server with [default: KUBECONFIG, ~/.kube/config, else
    /// the pod's service account].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Decide pending CSRs of this signer (repeatable) [default: kubernetes.io/kubelet-serving].
    #[arg(long = "signer", value_name = "SIGNER")]
    pub signers: Vec<String>,
    /// Also sign approved CSRs of SIGNER with a CA of the data dir: CA names it (server-ca,
    /// client-ca, ca, ...); without it, the CA the layout uses for SIGNER (repeatable). rotor
    /// decides this signer's CSRs too.
    #[arg(long = "sign", value_name = "SIGNER[=CA]")]
    pub sign: Vec<String>,
    /// A fixed evidence list instead of the Node objects: a JSON map {"node-name": ["10.0.0.5", ...]}.
    #[arg(long, value_name = "FILE")]
    pub node_evidence: Option<PathBuf>,
    /// The longest lifetime rotor issues when it signs: `[SIGNER=]DURATION`, SIGNER one given
    /// with --sign (repeatable) [default: 365d for every signer].
    #[arg(long = "max-lifetime", value_parser = parse_any_max_lifetime, value_name = "[SIGNER=]DURATION")]
    pub max_lifetimes: Vec<(Option<String>, u64)>,
    /// The namespace of the Lease replicas elect a leader with.
    #[arg(long, env = "POD_NAMESPACE", default_value = "rotor-system")]
    pub lease_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "rotor-csr-controller")]
    pub lease_name: String,
    /// This replica's name in the Lease [default: POD_NAME, else the host name and process id].
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a standby waits, after the Lease last changed, before taking it.
    #[arg(long, default_value = "15s", value_parser = parse_interval, value_name = "DURATION")]
    pub lease_duration: std::time::Duration,
    /// How long the leader keeps trying to renew the Lease before it steps down.
    #[arg(long, default_value = "10s", value_parser = parse_interval, value_name = "DURATION")]
    pub renew_deadline: std::time::Duration,
    /// How often standbys try to take the Lease and the leader renews it.
    #[arg(long, default_value = "2s", value_parser = parse_interval, value_name = "DURATION")]
    pub retry_period: std::time::Duration,
    /// CSRs handled at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// Serve no HTTP endpoint.
    #[arg(long, conflicts_with = "listen")]
    pub no_listen: bool,
    /// A candidate bundle: it decides every CSR alongside the active one and never acts; its
    /// decisions and disagreements are logged and counted.
    #[arg(long, value_name = "DIR")]
    pub shadow_bundle: Option<PathBuf>,
    /// Write every decision as a JSON line to this file [default: standard output].
    #[arg(long, value_name = "FILE")]
    pub decision_log: Option<PathBuf>,
    /// Rotate the decision log when it would exceed this many bytes.
    #[arg(long, default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(4096..), value_name = "BYTES")]
    pub decision_log_max_bytes: u64,
    /// Rotated decision logs to keep.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub decision_log_keep: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum CsrFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub(super) struct CsrArgs {
    /// A PEM CSR, or a CertificateSigningRequest object as JSON (`-` for standard input).
    #[arg(long)]
    pub csr: Option<PathBuf>,
    /// Batch: every *.json (objects), *.csr and *.pem file of DIR.
    #[arg(long, conflicts_with = "csr")]
    pub dir: Option<PathBuf>,
    /// Batch: one CertificateSigningRequest object per line (`-` for standard input).
    #[arg(long, conflicts_with = "csr")]
    pub jsonl: Option<PathBuf>,
    #[command(flatten)]
    pub context: CsrContextArgs,
    /// An address the host holds as evidence for the requesting node (repeatable).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Evidence for many nodes: a JSON map {"node-name": ["10.0.0.5", ...]}.
    #[arg(long)]
    pub node_evidence: Option<PathBuf>,
    /// Output of a single PEM review.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: CsrFormat,
    /// Write the certificate (or the object) here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Batch: write each signed certificate or updated object into DIR.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Batch: worker threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// The longest lifetime rotor issues, whatever the policy approves: `[SIGNER=]DURATION`
    /// (`30d`, `12h`, `90m`, `600s`), for one signer or, without `SIGNER=`, for every signer
    /// (repeatable) [default: 365d for every signer].
    #[arg(long = "max-lifetime", value_parser = parse_max_lifetime, value_name = "[SIGNER=]DURATION")]
    pub max_lifetimes: Vec<(Option<String>, u64)>,
    /// Review and sign at this instant (RFC 3339) instead of the system clock.
    #[arg(long, value_parser = crate::clock::parse_now)]
    pub now: Option<OffsetDateTime>,
}

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Re-encrypt the bootstrap data under a new token; the old one no longer decrypts it.
    Rotate {
        /// The new token (K10<hash>::server:<password>, or a bare password).
        #[arg(long)]
        new_token: String,
        /// The current token [default: the token file].
        #[arg(long, env = "ROTOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum CheckFormat {
    Text,
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub(super) enum CertsCommand {
    /// kubeadm's expiry tables: certificates, then certificate authorities.
    CheckExpiration {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: ExpirationFormat,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
    },
    /// Renew a certificate (or all) from its current attributes, with a new key.
    Renew {
        /// `all`, or a certificate name (admin.conf, apiserver, etcd-server, ...).
        which: String,
        /// Act at this instant (RFC 3339) instead of the system clock.
        #[arg(long, value_parser = crate::clock::parse_now)]
        now: Option<OffsetDateTime>,
    },
    /// Write a key and a CSR per certificate, for an external CA to sign.
    GenerateCsr {
        /// Directory to write each key and CSR into (created if missing).
        #[arg(long)]
        csr_dir: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum ExpirationFormat {
    Text,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Load every plugin of the bundle, validate its settings, and print what was loaded.
    #[command(after_help = "Example:\n  rotor policy check --bundle policies/strict")]
    Check,

    /// Ask one hook about a certificate, a CSR or a JSON fact record; print the decision as JSON.
    #[command(after_help = "Examples:\n  \
        rotor policy eval --hook renewal --input server.crt --now 2027-01-01T00:00:00Z\n  \
        rotor policy eval --hook san --input node.csr --profile kubelet-serving --node-name a --node-ip 10.0.0.5\n  \
        rotor policy eval --hook csr --input node.csr --signer kubernetes.io/kubelet-serving \\\n    \
        --username system:node:a --group system:nodes --usage 'digital signature' --usage 'server auth'")]
    Eval(Box<EvalArgs>),

    /// Record the bundle (--bundle) in the data dir: later commands there decide with it.
    #[command(
        after_help = "Example:\n  rotor policy use --bundle policies/strict --data-dir /var/lib/rancher/k3s"
    )]
    Use,

    /// Run fixture cases (*.json: input and expected decision) against the bundle.
    #[command(
        after_help = "Example:\n  rotor policy test --bundle policies/default policies/default/fixtures"
    )]
    Test {
        /// Directory of fixture files.
        dir: PathBuf,
        /// Print one JSON object per case (its name, whether it passed, and the whole
        /// decision: source, notes, plugin logs) instead of the table.
        #[arg(long)]
        json: bool,
    },

    /// Write a new plugin crate for one hook: its own copy of the WIT contract, build settings,
    /// a rule with unit tests, and fixtures. Nothing is overwritten.
    #[command(after_help = "Example:\n  \
        rotor policy new ~/src/acme-renewal --hook renewal\n  \
        rotor policy new acme-csr --hook csr --sdk https://example.com/rotor.git#v0.3.0")]
    New(Box<NewArgs>),

    /// Build a plugin crate into a component (wasm32-unknown-unknown, 64 KiB stack, imports
    /// nothing but rotor:policy), print its sha256, and check that rotor loads it.
    #[command(after_help = "Example:\n  rotor policy build ~/src/acme-renewal")]
    Build(Box<BuildArgs>),

    /// Pin a component into the bundle given with --bundle (created if it does not exist):
    /// copy it into the bundle's plugins/ and write its path and sha256 into the hook's section.
    /// The component must load, export the hook and accept the section's settings first.
    #[command(
        after_help = "Examples:\n  rotor policy pin --bundle my-bundle --hook renewal acme-renewal.wasm\n  \
        rotor policy pin --bundle my-bundle --hook renewal acme-renewal.wasm --settings acme-settings.toml"
    )]
    Pin(Box<PinArgs>),

    /// Make an Ed25519 key pair for signing plugins: KEY (private, PKCS#8 PEM, mode 0600) and
    /// KEY.pub (public, the file operators trust in a bundle's [trust.keys]).
    #[command(
        after_help = "Example:\n  rotor policy keygen --out ~/.config/rotor/acme-signing.key"
    )]
    Keygen {
        /// The private key file (created; never overwritten). The public key goes to KEY.pub.
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
    },

    /// Sign a component: a DSSE envelope (PLUGIN.wasm.sig) over its sha256, size, name,
    /// version, WIT package version and hooks. The component must load in rotor.
    #[command(after_help = "Example:\n  \
        rotor policy sign --key acme-signing.key --plugin-version 1.2.0 acme-renewal.wasm")]
    Sign(Box<SignArgs>),

    /// Push a signed component (with its signature and fixtures) as one OCI artifact to a
    /// registry (plain HTTP only to loopback) or an OCI image-layout directory.
    #[command(after_help = "Examples:\n  \
        rotor policy push acme-renewal.wasm oci://registry.example.com/acme/renewal:1.2.0 --fixtures fixtures\n  \
        rotor policy push acme-renewal.wasm oci-layout:/media/usb/rotor-plugins:acme-renewal-1.2.0\n\n\
        Credentials: ROTOR_REGISTRY_USERNAME and ROTOR_REGISTRY_PASSWORD (HTTP basic), else the login\n\
        docker, podman, oras or crane stored ($REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json or\n\
        ~/.docker/config.json, $XDG_RUNTIME_DIR/containers/auth.json; credential helpers too), else anonymous.")]
    Push(Box<PushArgs>),

    /// Pull a plugin artifact from a registry or an OCI image layout: write NAME.wasm,
    /// NAME.wasm.sig and NAME-fixtures/ into a directory, or copy the artifact into a layout.
    #[command(after_help = "Examples:\n  \
        rotor policy pull oci://registry.example.com/acme/renewal:1.2.0 --out /etc/rotor/candidate/plugins --key acme.pub\n  \
        rotor policy pull oci://registry.example.com/acme/renewal@sha256:3f9a... --out oci-layout:/media/usb/rotor-plugins\n  \
        rotor policy pull oci-layout:/media/usb/rotor-plugins:acme-renewal-1.2.0 --out plugins\n\n\
        Credentials: as for push: ROTOR_REGISTRY_USERNAME and ROTOR_REGISTRY_PASSWORD, else the login\n\
        docker, podman, oras or crane stored, else anonymous.")]
    Pull(Box<PullArgs>),

    /// Every decision that differs between the bundle (--bundle, the current one) and a
    /// candidate, over a data dir's certificates, CSRs and fixture cases. Exit 1 when anything
    /// changes, 0 when nothing does.
    #[command(after_help = "Examples:\n  \
        rotor policy diff --bundle /etc/rotor/bundle --candidate /etc/rotor/candidate --data-dir /var/lib/rancher/k3s --sweep 365d\n  \
        rotor policy diff --bundle policies/default --candidate policies/strict --fixtures policies/default/fixtures --csr-dir csrs/")]
    Diff(Box<DiffArgs>),

    /// Filter and pretty-print a decision log written by `rotor serve --decision-log`.
    #[command(after_help = "Examples:\n  \
        rotor policy log /var/log/rotor/decisions.jsonl --decision renew\n  \
        rotor policy log decisions.jsonl --disagreements --rotated\n  \
        rotor policy log decisions.jsonl --certificate serving-kube-apiserver --since 2027-01-01T00:00:00Z")]
    Log(Box<LogArgs>),
}

#[derive(Debug, Args)]
pub(super) struct NewArgs {
    /// Directory of the new crate (created; must be empty). Its name is the crate's name.
    pub dir: PathBuf,
    /// The hook the plugin serves.
    #[arg(long, value_enum)]
    pub hook: HookArg,
    /// The crate's name [default: the directory's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Where rotor-policy-sdk comes from: a path to rotor's guest-plugins/sdk, or a git URL with
    /// an optional #REV [default: the SDK of the checkout this rotor was built from].
    #[arg(long, value_name = "PATH|URL[#REV]")]
    pub sdk: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct BuildArgs {
    /// The plugin crate (a directory holding Cargo.toml).
    pub dir: PathBuf,
    /// Where to write the component [default: DIR/<crate name>.wasm].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Cargo's target directory [default: $CARGO_TARGET_DIR, else DIR/target].
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
    /// Refuse to change the crate's Cargo.lock (cargo --locked): for reproducible builds.
    #[arg(long)]
    pub locked: bool,
}

#[derive(Debug, Args)]
pub(super) struct PinArgs {
    /// The hook the component serves in the bundle.
    #[arg(long, value_enum)]
    pub hook: HookArg,
    /// The component file.
    pub file: PathBuf,
    /// Replace the section's settings with FILE's: a TOML table, or a JSON object when FILE ends
    /// in .json [default: keep the section's settings, if the new component accepts them].
    #[arg(long, value_name = "FILE", conflicts_with = "no_settings")]
    pub settings: Option<PathBuf>,
    /// Drop the section's settings: the component runs with its own defaults.
    #[arg(long)]
    pub no_settings: bool,
}

#[derive(Debug, Args)]
pub(super) struct SignArgs {
    /// The private key (from rotor policy keygen).
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// The component.
    pub file: PathBuf,
    /// The plugin's release (semver), e.g. the crate's version. `--version` is an old
    /// spelling kept working (it read like rotor's own --version).
    #[arg(long = "plugin-version", alias = "version", value_name = "SEMVER")]
    pub plugin_version: String,
    /// The plugin's name [default: the file's name without .wasm].
    #[arg(long)]
    pub name: Option<String>,
    /// Where to write the envelope [default: FILE.sig].
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// How to reach a registry.
#[derive(Debug, Args)]
pub(super) struct RegistryArgs {
    /// CA certificate(s) (PEM) that issued the registry's TLS certificate. With a loopback
    /// registry, it also makes rotor use TLS (loopback is otherwise plain HTTP).
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct PushArgs {
    /// The signed component (its signature is FILE.sig unless --signature says).
    pub file: PathBuf,
    /// oci://HOST[:PORT]/REPO:TAG or oci-layout:DIR[:TAG].
    pub to: String,
    /// The signature envelope [default: FILE.sig].
    #[arg(long)]
    pub signature: Option<PathBuf>,
    /// A directory of fixtures (every file, recursively) shipped with the plugin.
    #[arg(long, value_name = "DIR")]
    pub fixtures: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub(super) struct PullArgs {
    /// oci://HOST[:PORT]/REPO(:TAG|@sha256:DIGEST) or oci-layout:DIR(:TAG|@sha256:DIGEST).
    pub from: String,
    /// A directory for the files, or oci-layout:DIR[:TAG] to copy the artifact into a layout.
    #[arg(long, value_name = "DIR|oci-layout:DIR")]
    pub out: String,
    /// Verify the signature with this public key (repeatable: any one may have signed) before
    /// writing anything.
    #[arg(long, value_name = "PUB")]
    pub key: Vec<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, Args)]
pub(super) struct DiffArgs {
    /// The candidate bundle (the current one is --bundle, else the data dir's recorded bundle,
    /// else the built-in default).
    #[arg(long, value_name = "DIR")]
    pub candidate: PathBuf,
    /// Compare the renewal and SAN decisions on the data dir's certificates (--data-dir). On by
    /// default when the data dir exists and no other input is given.
    #[arg(long)]
    pub certificates: bool,
    /// CSRs to review with both bundles: every *.json (objects), *.csr and *.pem of DIR (PEMs
    /// take their context from the flags below).
    #[arg(long, value_name = "DIR")]
    pub csr_dir: Option<PathBuf>,
    /// CSRs to review: one CertificateSigningRequest object per line.
    #[arg(long, value_name = "FILE")]
    pub jsonl: Option<PathBuf>,
    /// Fixture cases (`rotor policy test` files) to ask both bundles.
    #[arg(long, value_name = "DIR")]
    pub fixtures: Vec<PathBuf>,
    /// Decide at this time (RFC 3339) [default: now].
    #[arg(long, value_name = "TIME", value_parser = crate::clock::parse_now, conflicts_with = "sweep")]
    pub now: Option<OffsetDateTime>,
    /// Ask the renewal hook about the data dir's certificates once a day over this period
    /// (e.g. 365d), to catch timing changes (implies --certificates).
    #[arg(long, value_name = "PERIOD", value_parser = parse_sweep)]
    pub sweep: Option<std::time::Duration>,
    /// Start the sweep here (RFC 3339) [default: now].
    #[arg(long, value_name = "TIME", value_parser = crate::clock::parse_now, requires = "sweep")]
    pub from: Option<OffsetDateTime>,
    /// One JSON object per change instead of the report.
    #[arg(long)]
    pub json: bool,
    /// An address the host holds as evidence for the requesting node (repeatable).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Evidence for the CSRs' nodes: a JSON map {"node-name": ["10.0.0.5", ...]}.
    #[arg(long, value_name = "FILE")]
    pub node_evidence: Option<PathBuf>,
    #[command(flatten)]
    pub context: CsrContextArgs,
}

/// A sweep period: 1 day to 10 years.
fn parse_sweep(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 90d or 365d ({e})"))?;
    if d < std::time::Duration::from_secs(86_400)
        || d > std::time::Duration::from_secs(3650 * 86_400)
    {
        return Err(format!("'{s}' is outside 1d to 3650d"));
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub(super) struct LogArgs {
    /// The decision log.
    pub file: PathBuf,
    /// Read its rotated files (FILE.N ... FILE.1) first.
    #[arg(long)]
    pub rotated: bool,
    /// Only this hook's decisions.
    #[arg(long, value_enum)]
    pub hook: Option<HookArg>,
    /// Only decisions about this certificate (or CSR).
    #[arg(long, value_name = "NAME")]
    pub certificate: Option<String>,
    /// Only these decisions.
    #[arg(long, value_parser = ["keep", "renew", "allow", "deny", "approve", "abstain", "error"])]
    pub decision: Option<String>,
    /// Only the decisions acted on (the active bundle's) or only the shadow bundle's.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Only shadow decisions that disagree with the active bundle.
    #[arg(long)]
    pub disagreements: bool,
    /// Only decisions at or after this time (RFC 3339).
    #[arg(long, value_parser = crate::clock::parse_rfc3339)]
    pub since: Option<OffsetDateTime>,
    /// Only decisions before this time (RFC 3339).
    #[arg(long, value_parser = crate::clock::parse_rfc3339)]
    pub until: Option<OffsetDateTime>,
    /// Print the matching records as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(super) enum RoleArg {
    Acted,
    Shadow,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HookArg {
    Renewal,
    San,
    Csr,
}

impl From<HookArg> for Hook {
    fn from(h: HookArg) -> Hook {
        match h {
            HookArg::Renewal => Hook::Renewal,
            HookArg::San => Hook::San,
            HookArg::Csr => Hook::Csr,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StageArg {
    Configuration,
    Csr,
    Template,
}

impl From<StageArg> for SanStage {
    fn from(s: StageArg) -> SanStage {
        match s {
            StageArg::Configuration => SanStage::Configuration,
            StageArg::Csr => SanStage::Csr,
            StageArg::Template => SanStage::Template,
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct EvalArgs {
    /// Which hook to ask.
    #[arg(long, value_enum)]
    pub hook: HookArg,

    /// PEM certificate (a leaf followed by its CA bundle is fine), PEM CSR, DER, or a JSON fact
    /// record in the shape of the hook's request.
    #[arg(long)]
    pub input: PathBuf,

    /// Evaluate at this instant (RFC 3339) instead of the system clock.
    #[arg(long, value_parser = crate::clock::parse_now)]
    pub now: Option<OffsetDateTime>,

    /// Renewal: the certificate's name in its layout (default: its CN).
    #[arg(long)]
    pub name: Option<String>,

    /// Renewal: the issuing CA's notAfter (default: the next certificate in the PEM bundle).
    #[arg(long, value_parser = crate::clock::parse_now)]
    pub issuer_not_after: Option<OffsetDateTime>,

    /// SAN: rule profile (kubelet-serving, a certificate name, ...).
    #[arg(long)]
    pub profile: Option<String>,

    /// SAN: where the names come from.
    #[arg(long, value_enum)]
    pub stage: Option<StageArg>,

    /// SAN: the node the names must belong to.
    #[arg(long)]
    pub node_name: Option<String>,

    /// SAN and CSR: an address the host holds as evidence for the node (repeatable).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,

    #[command(flatten)]
    pub context: CsrContextArgs,
}

/// The Kubernetes context of a PEM CSR (a CertificateSigningRequest object carries its own):
/// the same flags for `csr review`, `csr sign` and `policy eval --hook csr`.
#[derive(Debug, Args)]
#[command(next_help_heading = "CSR context (PEM CSRs)")]
pub(super) struct CsrContextArgs {
    /// The signer name (spec.signerName).
    #[arg(long)]
    pub signer: Option<String>,
    /// The requesting user (spec.username).
    #[arg(long)]
    pub username: Option<String>,
    /// The requesting user's uid (spec.uid).
    #[arg(long)]
    pub uid: Option<String>,
    /// A group of the requesting user (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// A requested usage, Kubernetes spelling (repeatable) [default: the usages the CSR
    /// requests in its own extensions, else the signer's standard usages].
    #[arg(long = "usage", value_parser = parse_usage)]
    pub usages: Vec<Usage>,
    /// The requested lifetime in seconds (spec.expirationSeconds).
    #[arg(long)]
    pub expiration_seconds: Option<u64>,
}

impl CsrContextArgs {
    /// The flags as the library's PEM context.
    pub(super) fn pem_context(&self) -> crate::csr::PemContext {
        crate::csr::PemContext {
            signer: self.signer.clone(),
            username: self.username.clone(),
            uid: self.uid.clone(),
            groups: self.groups.clone(),
            usages: self.usages.clone(),
            expiration_seconds: self.expiration_seconds,
        }
    }
}

fn parse_usage(s: &str) -> Result<Usage, String> {
    s.parse()
}

/// `[SIGNER=]DURATION` for `--max-lifetime`: a whole number of seconds, minutes, hours or days,
/// from the Kubernetes signer's 10-minute floor to 100 years.
fn parse_max_lifetime(s: &str) -> Result<(Option<String>, u64), String> {
    if let Some((signer, _)) = s.rsplit_once('=')
        && crate::csr::required_usage(signer).is_none()
    {
        return Err(format!(
            "'{signer}' is not a signer rotor signs for (kubernetes.io/kubelet-serving, kubernetes.io/kube-apiserver-client-kubelet, kubernetes.io/kube-apiserver-client)"
        ));
    }
    parse_any_max_lifetime(s)
}

/// `[SIGNER=]DURATION` for `csr controller --max-lifetime`: any signer name (the controller
/// checks it is one it signs for).
fn parse_any_max_lifetime(s: &str) -> Result<(Option<String>, u64), String> {
    let (signer, duration) = match s.rsplit_once('=') {
        Some((signer, d)) => (Some(signer.to_string()), d),
        None => (None, s),
    };
    let split = duration
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(duration.len());
    let (number, unit) = duration.split_at(split);
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "'{duration}' is not a duration like 30d, 12h, 90m or 600s"
            ));
        }
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_seconds))
        .ok_or_else(|| format!("'{duration}' is not a duration like 30d, 12h, 90m or 600s"))?;
    let (min, max) = (crate::csr::MIN_LIFETIME_SECONDS, 36_500 * 86_400);
    if !(min..=max).contains(&seconds) {
        return Err(format!(
            "'{duration}' must be between {min} seconds and 36500 days"
        ));
    }
    Ok((signer, seconds))
}
