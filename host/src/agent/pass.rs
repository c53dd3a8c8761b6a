//! One pass of the agent over its certificates: trust the servers (the token's CA hash, or the
//! CA bundle it keeps), fetch the CA files, decide each certificate (missing, damaged, its key
//! not its own, issued by a CA that is no longer current, names changed, or the renewal
//! policy's verdict, evaluated here on the agent's own certificates), get what must be issued
//! from any live server, check every answer, and make it all live in one generation.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use time::OffsetDateTime;

use super::certs::{CaBundle, CertSpec, specs};
use super::client::{Answered, Call, ClientError, Servers, Trust};
use super::files::{AgentDir, DirError, PASSWORD_FILE, STATE_FILE, file};
use super::metrics::AgentStatus;
use crate::contract::RenewalRequest;
use crate::facts::{CertificateFacts, certificate_ders, parse_certificate_der};
use crate::fs::{PRIVATE_FILE, PUBLIC_FILE};
use crate::pki::{KeyType, PrivateKey, Token, ca_hash};
use crate::policy::Bundle;

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Its data dir (k3s's `agent/` files below it).
    pub data_dir: PathBuf,
    /// How the data dir is held (lock timeout, backups kept).
    pub datadir: crate::datadir::Options,
    /// The servers' supervisor API URLs (`https://host:port`).
    pub servers: Vec<String>,
    /// The join token.
    pub token: Token,
    /// Accept a token without a CA hash: trust the first `/cacerts` answer.
    pub unpinned_token: bool,
    /// The node's name.
    pub node_name: String,
    /// The node's addresses, for its serving certificate.
    pub node_ips: Vec<IpAddr>,
    /// `k3s` or `rke2`: the API's paths and headers.
    pub program: &'static str,
    /// The API server URL the kubeconfigs point at.
    pub apiserver: String,
    /// A new key at every renewal (else keys are kept until they or the CA change).
    pub rotate_keys: bool,
    /// How long each step of one request may take.
    pub request_timeout: Duration,
    /// An existing node password to use (k3s's `/etc/rancher/node/password`), read once.
    pub node_password_file: Option<PathBuf>,
}

/// What an agent pass could not do at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The options or the data dir's own record do not allow it.
    #[error("{0}")]
    Config(String),
    /// The data dir.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The servers could not be trusted.
    #[error("{0}")]
    Trust(String),
    /// The servers did not answer, or refused.
    #[error(transparent)]
    Server(#[from] ClientError),
}

/// What a pass did with one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertAction {
    /// Issued by a server (with a new key, or the one it had).
    Issued {
        /// Whether the key is new.
        new_key: bool,
    },
    /// Kept as it is.
    Kept,
    /// It had to be issued, and was not (the reason says why).
    Failed,
}

/// One certificate's line of a pass.
#[derive(Clone, Debug)]
pub struct CertReport {
    /// `serving-kubelet`, `client-kubelet`, ...
    pub name: String,
    /// What was done.
    pub action: CertAction,
    /// Why.
    pub why: String,
    /// Its notAfter once the pass is done.
    pub not_after: Option<OffsetDateTime>,
}

/// What one pass did.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// The server that answered last.
    pub server: Option<String>,
    /// Each certificate, in the order they are requested.
    pub certificates: Vec<CertReport>,
    /// Things worth saying (a changed CA, a trust decision).
    pub notes: Vec<String>,
    /// The generation made live, when anything changed.
    pub generation: Option<u64>,
    /// The earliest time a renewal plugin asked to be asked again.
    pub renew_at: Option<OffsetDateTime>,
}

impl PassReport {
    /// Whether every certificate is in place (none failed).
    pub fn ok(&self) -> bool {
        self.certificates
            .iter()
            .all(|c| c.action != CertAction::Failed)
    }
}

const SERVER_CA: &str = "agent/server-ca.crt";
const CLIENT_CA: &str = "agent/client-ca.crt";

/// The agent's record in its data dir.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct AgentRecord {
    format: u32,
    node_name: String,
    program: String,
    /// The hash (k3s's `hashCA`) of every server CA bundle this agent has trusted, oldest
    /// first: a token pinning one of them is this cluster's.
    #[serde(default)]
    ca_hashes: Vec<String>,
}

enum Plan {
    Keep {
        why: String,
        not_after: OffsetDateTime,
        renew_at: Option<OffsetDateTime>,
    },
    Issue {
        why: String,
        key: Option<PrivateKey>,
    },
}

/// Put `content` at `rel` in `files` unless the live generation holds it already.
fn changed(
    dir: &AgentDir,
    files: &mut BTreeMap<PathBuf, Option<crate::datadir::NewFile>>,
    rel: &Path,
    content: Vec<u8>,
    mode: u32,
) -> Result<(), AgentError> {
    if dir.read(rel)?.as_deref() != Some(content.as_slice()) {
        files.insert(rel.to_path_buf(), file(content, mode));
    }
    Ok(())
}

/// An agent: its data dir (one agent at a time: `.rotor/agent.lock`; the data dir's own lock
/// only during a pass), its servers, its policy bundle.
pub struct Agent {
    options: AgentOptions,
    _instance: crate::datadir::DirLock,
    servers: Servers,
    bundle: Arc<Bundle>,
    status: Arc<AgentStatus>,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.options.node_name)
            .field("servers", &self.servers.urls())
            .finish_non_exhaustive()
    }
}

/// The agent's record in `dir`, when it is `options`' node's (or holds no certificate yet, so
/// that a first join refused for its name can be retried under another).
fn record_of(dir: &AgentDir, options: &AgentOptions) -> Result<Option<AgentRecord>, AgentError> {
    let Some(bytes) = dir.read(Path::new(STATE_FILE))? else {
        return Ok(None);
    };
    let path = dir.path(Path::new(STATE_FILE));
    let record: AgentRecord = serde_json::from_slice(&bytes)
        .map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))?;
    let issued = specs(&record.program, &record.node_name)
        .iter()
        .any(|s| dir.read(&s.crt()).is_ok_and(|c| c.is_some()));
    if issued && (record.node_name != options.node_name || record.program != options.program) {
        return Err(AgentError::Config(format!(
            "{}: this data dir is the agent of {} node {}, not of {} node {}: give each node a data dir of its own",
            path.display(),
            record.program,
            record.node_name,
            options.program,
            options.node_name
        )));
    }
    Ok(Some(record))
}

impl Agent {
    /// Take the data dir for this agent (refused at once if another agent runs there), recover
    /// it, and check that it is this node's.
    ///
    /// # Errors
    /// A server URL that cannot be used, a data dir that another agent runs on, or that is
    /// locked, damaged, a server's, or another node's.
    pub fn new(
        options: AgentOptions,
        bundle: Arc<Bundle>,
        status: Arc<AgentStatus>,
    ) -> Result<Agent, AgentError> {
        let servers = Servers::new(&options.servers, options.request_timeout)?;
        crate::supervisor::node_name(&options.node_name)
            .map_err(|e| AgentError::Config(format!("--node-name: {e}")))?;
        let root = crate::fs::Root::create_ambient(&options.data_dir).map_err(DirError::from)?;
        let config = Path::new(crate::datadir::META)
            .join("current")
            .join(crate::cluster::config::CONFIG_FILE);
        if root.kind(&config).ok().flatten().is_some() {
            return Err(AgentError::Config(format!(
                "{}: this is a rotor server's data dir (it has {}): an agent needs a data dir of its own",
                options.data_dir.display(),
                crate::cluster::config::CONFIG_FILE
            )));
        }
        root.create_dir_all(Path::new(crate::datadir::META))
            .map_err(DirError::from)?;
        let instance = crate::datadir::DirLock::acquire(
            &root,
            &Path::new(crate::datadir::META).join("agent.lock"),
            crate::datadir::LockMode::Exclusive,
            Duration::ZERO,
            "agent",
            true,
        )
        .map_err(|e| match e {
            crate::datadir::LockError::Timeout { holder, .. } => AgentError::Config(format!(
                "another rotor agent runs on {} already ({holder})",
                options.data_dir.display()
            )),
            e => AgentError::Config(e.to_string()),
        })?;
        let dir = AgentDir::open(&options.data_dir, options.program, options.datadir.clone())?;
        record_of(&dir, &options)?;
        drop(dir);
        for spec in specs(options.program, &options.node_name) {
            status.known(&spec.name);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| AgentError::Config(format!("async runtime: {e}")))?;
        Ok(Agent {
            options,
            _instance: instance,
            servers,
            bundle,
            status,
            runtime,
        })
    }

    /// The agent's status (metrics, readiness).
    pub fn status(&self) -> &Arc<AgentStatus> {
        &self.status
    }

    fn send(&self, trust: &Trust, call: &Call, endpoint: &str) -> Result<Answered, ClientError> {
        let r = self.runtime.block_on(self.servers.send(trust, call));
        let result = match &r {
            Ok(_) => "ok",
            Err(ClientError::Refused { .. }) => "refused",
            Err(_) => "unreachable",
        };
        self.status.request(endpoint, result);
        r
    }

    /// One pass at `now`. Certificates that could not be issued are in the report (and the
    /// rest is still made live); an error means nothing could be done.
    ///
    /// # Errors
    /// The servers cannot be trusted or reached, the data dir cannot be written.
    pub fn pass(&mut self, now: OffsetDateTime) -> Result<PassReport, AgentError> {
        // The data dir's lock is held for the pass only.
        let mut dir = AgentDir::open(
            &self.options.data_dir,
            self.options.program,
            self.options.datadir.clone(),
        )?;
        self.pass_in(&mut dir, now)
    }

    fn pass_in(&self, dir: &mut AgentDir, now: OffsetDateTime) -> Result<PassReport, AgentError> {
        let mut report = PassReport::default();
        let mut files: BTreeMap<PathBuf, Option<crate::datadir::NewFile>> = BTreeMap::new();
        let mut record = record_of(dir, &self.options)?.unwrap_or_default();
        let (server_ca, answered_by, hash) = self.trust(dir, &record, now, &mut report.notes)?;
        report.server = Some(answered_by);
        let trust = Trust::pinned(&server_ca.pem)?;
        if let Some(old) = dir.read(Path::new(SERVER_CA))?
            && old != server_ca.pem
        {
            self.status.ca_changed();
            report
                .notes
                .push("the servers' CA bundle changed (a CA rotation): certificates it did not issue are re-issued".into());
        }
        let auth = Some((
            self.options.token.user.clone(),
            self.options.token.password.clone(),
        ));
        let client_ca = self.send(
            &trust,
            &Call {
                auth: auth.clone(),
                ..Call::get(&format!("/v1-{}/client-ca.crt", self.options.program))
            },
            "client-ca.crt",
        )?;
        report.server = Some(client_ca.url.clone());
        let client_ca = CaBundle::parse("client-ca.crt", client_ca.body.to_vec())?;

        // The servers are trusted: the record (this node, every CA hash it trusted) and a new
        // node password are kept before any server may bind the name to the password, so an
        // agent killed after its first request never comes back with another one.
        record.format = 1;
        record.node_name.clone_from(&self.options.node_name);
        record.program = self.options.program.into();
        if !record.ca_hashes.contains(&hash) {
            record.ca_hashes.push(hash);
        }
        let mut json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        json.push(b'\n');
        changed(dir, &mut files, Path::new(STATE_FILE), json, PUBLIC_FILE)?;
        let password = self.password(dir)?;
        changed(
            dir,
            &mut files,
            Path::new(PASSWORD_FILE),
            format!("{password}\n").into_bytes(),
            PRIVATE_FILE,
        )?;
        if files.contains_key(Path::new(PASSWORD_FILE)) {
            report.generation = dir.commit(std::mem::take(&mut files))?;
        }

        for spec in specs(self.options.program, &self.options.node_name) {
            let ca = if spec.serving { &server_ca } else { &client_ca };
            let line = match self.plan(dir, &spec, ca, now)? {
                Plan::Keep {
                    why,
                    not_after,
                    renew_at,
                } => {
                    if let Some(t) = renew_at {
                        report.renew_at = Some(report.renew_at.map_or(t, |r| r.min(t)));
                    }
                    CertReport {
                        name: spec.name.clone(),
                        action: CertAction::Kept,
                        why,
                        not_after: Some(not_after),
                    }
                }
                Plan::Issue { why, key } => {
                    let new_key = key.is_none();
                    let key = match key {
                        Some(k) => k,
                        None => KeyType::EcdsaP256.generate().map_err(|e| {
                            AgentError::Config(format!("a key for {}: {e}", spec.name))
                        })?,
                    };
                    match self.issue(&spec, &key, ca, &trust, auth.clone(), &password) {
                        Ok((chain, facts, url)) => {
                            report.server = Some(url);
                            self.status.issued(&spec.name);
                            changed(dir, &mut files, &spec.crt(), chain, PUBLIC_FILE)?;
                            changed(
                                dir,
                                &mut files,
                                &spec.key(),
                                key.pem().as_bytes().to_vec(),
                                PRIVATE_FILE,
                            )?;
                            CertReport {
                                name: spec.name.clone(),
                                action: CertAction::Issued { new_key },
                                why,
                                not_after: Some(facts.not_after),
                            }
                        }
                        Err(e) => CertReport {
                            name: spec.name.clone(),
                            action: CertAction::Failed,
                            why: format!("{why}; not issued: {e}"),
                            not_after: None,
                        },
                    }
                }
            };
            if let Some(t) = line.not_after {
                self.status.expires(&line.name, t);
            }
            let in_place = line.action != CertAction::Failed;
            report.certificates.push(line);
            // A kubeconfig only beside its certificate.
            if let Some(kubeconfig) = spec.kubeconfig.as_ref().filter(|_| in_place) {
                let path = |rel: &Path| dir.path(rel).to_string_lossy().into_owned();
                let content = crate::cluster::kubeconfig::referencing(
                    &self.options.apiserver,
                    &path(Path::new(SERVER_CA)),
                    &path(&spec.crt()),
                    &path(&spec.key()),
                );
                changed(dir, &mut files, kubeconfig, content, PRIVATE_FILE)?;
            }
        }
        // The CA files go with the certificates: not for an agent that got none (refused).
        if report
            .certificates
            .iter()
            .any(|c| c.action != CertAction::Failed)
        {
            changed(
                dir,
                &mut files,
                Path::new(SERVER_CA),
                server_ca.pem.clone(),
                PUBLIC_FILE,
            )?;
            changed(
                dir,
                &mut files,
                Path::new(CLIENT_CA),
                client_ca.pem.clone(),
                PUBLIC_FILE,
            )?;
        }
        if let Some(n) = dir.commit(files)? {
            report.generation = Some(n);
        }
        Ok(report)
    }

    /// The node password: the one the data dir keeps, else `--node-password-file`'s, else a
    /// new one.
    fn password(&self, dir: &AgentDir) -> Result<String, AgentError> {
        let read = |what: &str, bytes: Vec<u8>| -> Result<String, AgentError> {
            let text = String::from_utf8(bytes)
                .map_err(|_| AgentError::Config(format!("{what}: not UTF-8 text")))?;
            let p = text.trim().to_string();
            if p.is_empty() || p.len() > 1024 || p.chars().any(char::is_control) {
                return Err(AgentError::Config(format!(
                    "{what}: a node password is one line of 1 to 1024 printable characters"
                )));
            }
            Ok(p)
        };
        if let Some(bytes) = dir.read(Path::new(PASSWORD_FILE))? {
            return read(&dir.path(Path::new(PASSWORD_FILE)).to_string_lossy(), bytes);
        }
        if let Some(f) = &self.options.node_password_file {
            let bytes = crate::fs::Root::read_ambient_file(f)
                .map_err(|e| AgentError::Config(format!("--node-password-file: {e}")))?;
            return read(&f.to_string_lossy(), bytes);
        }
        crate::pki::generate_password().map_err(|e| AgentError::Config(e.to_string()))
    }

    /// The servers' CA bundle, from a server this agent trusts: through the bundle it keeps
    /// (which also accepts a rotated CA cross-signed by the one it knew), else pinned by the
    /// token's hash, as k3s's `getCACerts` does: fetched without trust, hashed, then fetched
    /// again from a server whose certificate that bundle verifies. Returns the bundle, who
    /// answered, and its hash. A token that pins a CA must pin one this agent trusts: the
    /// servers' now, or one it trusted before (the token it joined with still works after
    /// the agent followed a CA rotation).
    fn trust(
        &self,
        dir: &AgentDir,
        record: &AgentRecord,
        now: OffsetDateTime,
        notes: &mut Vec<String>,
    ) -> Result<(CaBundle, String, String), AgentError> {
        let cacerts = Call::get("/cacerts");
        let hash_of = |pem: &[u8]| -> Result<String, AgentError> {
            let ders =
                certificate_ders("/cacerts", pem).map_err(|e| AgentError::Trust(e.to_string()))?;
            Ok(ca_hash(pem, &ders, now))
        };
        if let Some(kept) = dir.read(Path::new(SERVER_CA))? {
            match Trust::pinned(&kept).and_then(|t| self.send(&t, &cacerts, "cacerts")) {
                Ok(a) => {
                    let body = a.body.to_vec();
                    let hash = hash_of(&body)?;
                    if let Some(pinned) = &self.options.token.ca_hash
                        && *pinned != hash
                        && *pinned != hash_of(&kept)?
                        && !record.ca_hashes.contains(pinned)
                    {
                        return Err(AgentError::Trust(format!(
                            "the token pins CA {pinned}, which is neither the servers' CA ({hash}, /cacerts of {}) nor one this agent has trusted: a mistyped token, or another cluster's",
                            a.url
                        )));
                    }
                    return Ok((CaBundle::parse("/cacerts", body)?, a.url, hash));
                }
                Err(e @ ClientError::Refused { .. }) => return Err(e.into()),
                Err(e) if self.options.token.ca_hash.is_none() => {
                    return Err(AgentError::Trust(format!(
                        "no server is trusted by {} ({e}), and the token pins no CA to trust another",
                        dir.path(Path::new(SERVER_CA)).display()
                    )));
                }
                Err(e) => notes.push(format!(
                    "no server is trusted by the CA bundle this agent keeps ({e}): trusting the CA the token pins"
                )),
            }
        }
        let pinned = match &self.options.token.ca_hash {
            Some(h) => Some(h.clone()),
            None if self.options.unpinned_token => {
                notes.push("the token pins no CA: trusted the first /cacerts answer (--insecure-unpinned-token)".into());
                None
            }
            None => {
                return Err(AgentError::Trust(
                    "the token pins no CA (K10<sha256>::user:password): use the token the server printed, or --insecure-unpinned-token to trust whatever /cacerts answers first".into(),
                ));
            }
        };
        let first = self.send(&Trust::any()?, &cacerts, "cacerts")?;
        let body = first.body.to_vec();
        let hash = hash_of(&body)?;
        if let Some(pinned) = pinned
            && hash != pinned
        {
            return Err(AgentError::Trust(format!(
                "token CA hash does not match the Cluster CA certificate hash: the servers' CA is {hash} (/cacerts of {}), the token pins {pinned}: refusing to trust it (after a CA rotation, use the token the servers print now)",
                first.url
            )));
        }
        // The server must also hold a certificate of that CA.
        let again = self.send(&Trust::pinned(&body)?, &cacerts, "cacerts")?;
        if again.body.as_ref() != body.as_slice() {
            return Err(AgentError::Trust(format!(
                "/cacerts changed between two answers ({} and {}): try again",
                first.url, again.url
            )));
        }
        Ok((CaBundle::parse("/cacerts", body)?, again.url, hash))
    }

    /// What to do with one certificate.
    fn plan(
        &self,
        dir: &AgentDir,
        spec: &CertSpec,
        ca: &CaBundle,
        now: OffsetDateTime,
    ) -> Result<Plan, AgentError> {
        let issue = |why: String, key: Option<PrivateKey>| Ok(Plan::Issue { why, key });
        let key = dir
            .read(&spec.key())?
            .and_then(|pem| PrivateKey::from_pem(&spec.name, &pem).ok());
        let Some(cert) = dir.read(&spec.crt())? else {
            return issue("missing".into(), key.filter(|_| !self.options.rotate_keys));
        };
        let Some(key) = key else {
            return issue("its key is missing or unreadable: a new key".into(), None);
        };
        let (der, facts) = match certificate_ders(&spec.name, &cert)
            .ok()
            .and_then(|d| d.into_iter().next())
            .and_then(|der| {
                parse_certificate_der(&spec.name, &der)
                    .ok()
                    .map(|f| (der, f))
            }) {
            Some(x) => x,
            None => return issue("unreadable".into(), Some(key)),
        };
        if !key.matches_certificate(&der) {
            return issue(
                "the key does not match the certificate: a new key".into(),
                None,
            );
        }
        if !ca.issued(&der) {
            let which = if spec.serving { "server" } else { "client" };
            return issue(
                format!("not issued by the current {which} CA (the CA was rotated): a new key"),
                None,
            );
        }
        if let Some(drift) = self.drift(spec, &facts) {
            return issue(drift, Some(key));
        }
        let request = RenewalRequest {
            name: spec.name.clone(),
            certificate: Arc::new(facts.clone()),
            issuer_not_after: Some(ca.not_after),
            now,
        };
        let outcome = match self.bundle.renewal(&request) {
            Ok(o) => o,
            Err(e) => {
                return Ok(Plan::Keep {
                    why: format!("the renewal policy failed ({e}): kept"),
                    not_after: facts.not_after,
                    renew_at: None,
                });
            }
        };
        let source = match (&outcome.plugin, outcome.source) {
            (Some(p), crate::policy::Source::Plugin) => format!("policy ({p})"),
            _ => "policy (built-in rule)".to_string(),
        };
        let policy = format!("{source}: {}", outcome.decision.reason());
        match outcome.decision {
            crate::contract::RenewalDecision::Renew {
                lifetime_seconds, ..
            } => {
                let lifetime = lifetime_seconds
                    .unwrap_or(crate::pki::LEAF_LIFETIME.whole_seconds().unsigned_abs());
                match crate::cluster::start::replacement_pointless(
                    if spec.serving {
                        "server-ca"
                    } else {
                        "client-ca"
                    },
                    ca.not_after,
                    facts.not_after,
                    lifetime,
                    now,
                ) {
                    Some(
                        crate::cluster::start::Pointless::RotateCa(why)
                        | crate::cluster::start::Pointless::ShorterLifetime(why),
                    ) => Ok(Plan::Keep {
                        why: format!("{policy}; kept: {why}"),
                        not_after: facts.not_after,
                        renew_at: None,
                    }),
                    None => issue(policy, Some(key).filter(|_| !self.options.rotate_keys)),
                }
            }
            crate::contract::RenewalDecision::Keep { renew_at, .. } => Ok(Plan::Keep {
                why: policy,
                not_after: facts.not_after,
                renew_at,
            }),
        }
    }

    /// How `facts` differ from what the servers would issue now, if they do.
    fn drift(&self, spec: &CertSpec, facts: &CertificateFacts) -> Option<String> {
        if facts.subject.common_name.as_deref() != Some(spec.common_name.as_str()) {
            return Some(format!(
                "its subject is not CN={} (node name changed?)",
                spec.common_name
            ));
        }
        if spec.serving {
            let mut want = self.options.node_ips.clone();
            want.sort();
            want.dedup();
            let mut have = facts.sans.ip_addresses.clone();
            have.sort();
            have.dedup();
            if want != have || facts.sans.dns_names != [self.options.node_name.clone()] {
                return Some("the node's addresses changed".into());
            }
        }
        None
    }

    /// Ask the servers for `spec`'s certificate for `key`; check the answer: the key's, issued
    /// by `ca`, for the subject the endpoint fixes.
    fn issue(
        &self,
        spec: &CertSpec,
        key: &PrivateKey,
        ca: &CaBundle,
        trust: &Trust,
        auth: Option<(String, String)>,
        password: &str,
    ) -> Result<(Vec<u8>, CertificateFacts, String), String> {
        let program = self.options.program;
        let csr = key.empty_csr_pem().map_err(|e| e.to_string())?;
        let mut headers = vec![
            (
                format!("{program}-Node-Name"),
                self.options.node_name.clone(),
            ),
            (format!("{program}-Node-Password"), password.to_string()),
        ];
        if !self.options.node_ips.is_empty() {
            let ips: Vec<String> = self
                .options
                .node_ips
                .iter()
                .map(ToString::to_string)
                .collect();
            headers.push((format!("{program}-Node-IP"), ips.join(",")));
        }
        let file = format!("{}.crt", spec.name);
        let call = Call {
            method: Method::POST,
            path: format!("/v1-{program}/{file}"),
            auth,
            headers,
            body: csr.into_bytes(),
        };
        let answer = self.send(trust, &call, &file).map_err(|e| e.to_string())?;
        let bad = |why: &str| format!("{} answered a certificate that {why}", answer.url);
        let ders = certificate_ders(&file, &answer.body).map_err(|e| bad(&e.to_string()))?;
        let leaf = ders.first().ok_or_else(|| bad("is empty"))?;
        let facts = parse_certificate_der(&file, leaf).map_err(|e| bad(&e.to_string()))?;
        if !key.matches_certificate(leaf) {
            return Err(bad("is not for this agent's key"));
        }
        if !ca.issued(leaf) {
            return Err(bad("the current CA did not issue"));
        }
        if facts.subject.common_name.as_deref() != Some(spec.common_name.as_str()) {
            return Err(bad(&format!("is not for CN={}", spec.common_name)));
        }
        Ok((answer.body.to_vec(), facts, answer.url))
    }
}
