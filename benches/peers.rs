//! Policy evaluation beside the engines a reader would use instead, in one run (issue 28): the
//! default bundle's three decisions (renewal on the apiserver's serving certificate; SAN and CSR
//! on a kubelet-serving CSR) by
//! - rotor, warm (one instance, one call per decision) and fresh (a new instance per decision,
//!   as rotor decides);
//! - the native twin: the default plugins' own rules (`guest-plugins/*/src/rules.rs`) compiled
//!   natively into this bench, converting the request as the plugin does;
//! - regorus (Microsoft's Rego interpreter, in process) and OPA (`opa bench`, in process; and
//!   `opa run --server` over HTTP on loopback with a keep-alive client), on the same rules
//!   written in Rego (`benches/rego/`).
//!
//! Before anything is timed, every engine's answer is checked equal to rotor's on a set of
//! cases (approve, deny with each reason, keep, renew, the 2/3-of-lifetime rule), so the Rego
//! is the same policy, not a cheaper one. After the run, the table (ratios to the native twin
//! and to rotor fresh) and a plot are written to `target/peers/` (or `$ROTOR_PEERS_OUT`):
//! `peers.md`, `peers.svg`.
//!
//! `make bench-deps` (OPA into `~/.cache/rotor-tools/bin`), then
//! `cargo bench -p rotor --bench peers`. Without OPA the OPA rows are left out with a message
//! (an error when `CI` is set). Figures: docs/performance.md.

#![allow(clippy::disallowed_methods, reason = "benches set up inputs directly")]

#[path = "settings.rs"]
mod settings;

// The default plugins' rules, compiled natively: the same source the plugins are built from.
#[allow(
    dead_code,
    unreachable_pub,
    reason = "only the decision functions are used here"
)]
#[path = "../guest-plugins/csr-approval/src/rules.rs"]
mod csr_rules;
#[allow(
    dead_code,
    unreachable_pub,
    reason = "only the decision functions are used here"
)]
#[path = "../guest-plugins/renewal-window/src/rules.rs"]
mod renewal_rules;
#[allow(
    dead_code,
    unreachable_pub,
    reason = "only the decision functions are used here"
)]
#[path = "../guest-plugins/san-validation/src/rules.rs"]
mod san_rules;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rotor::contract::{
    CsrContext, CsrDecision, CsrRequest, Hook, NodeIdentity, RenewalDecision, RenewalRequest,
    SanDecision, SanRequest, SanStage,
};
use rotor::facts::{CertificateFacts, Usage, parse_certificates_pem, parse_csr_pem};
use rotor::plugin::{ConfiguredPlugin, EngineOptions, PluginEngine, SandboxLimits};
use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::parse("2027-10-24T16:08:54Z", &Rfc3339).expect("valid RFC 3339")
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

// ---- the inputs ---------------------------------------------------------------------------

/// The apiserver's serving certificate of the default fixtures and its CA.
fn fixture_certificates() -> (CertificateFacts, CertificateFacts) {
    let path = repo().join("policies/default/fixtures/inputs/serving-kube-apiserver.crt");
    let certs = parse_certificates_pem("fixture", &std::fs::read(path).expect("fixture"))
        .expect("fixture parses");
    (certs[0].clone(), certs[1].clone())
}

fn renewal_request(
    cert: &CertificateFacts,
    ca: &CertificateFacts,
    now: OffsetDateTime,
) -> RenewalRequest {
    RenewalRequest {
        name: "serving-kube-apiserver".into(),
        certificate: cert.clone().into(),
        issuer_not_after: Some(ca.not_after),
        now,
    }
}

/// Renewal cases: the timed one first (the fixture at the bench's `now`), then keep, expired,
/// a CA, and a 30-day leaf (the window is longer than its life: 2/3 of the lifetime).
fn renewal_cases() -> Vec<(&'static str, RenewalRequest)> {
    let (cert, ca) = fixture_certificates();
    let mut short = cert.clone();
    short.not_before = now() - time::Duration::days(10);
    short.not_after = now() + time::Duration::days(20);
    let mut short_due = short.clone();
    short_due.not_before = now() - time::Duration::days(25);
    short_due.not_after = now() + time::Duration::days(5);
    vec![
        ("apiserver serving", renewal_request(&cert, &ca, now())),
        (
            "fresh leaf",
            renewal_request(&cert, &ca, cert.not_before + time::Duration::days(2)),
        ),
        (
            "expired",
            renewal_request(&cert, &ca, cert.not_after + time::Duration::days(3)),
        ),
        ("CA", renewal_request(&ca, &ca, now())),
        ("30-day leaf, kept", renewal_request(&short, &ca, now())),
        ("30-day leaf, due", renewal_request(&short_due, &ca, now())),
    ]
}

fn kubelet_csr_pem() -> String {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(DnType::CommonName, "system:node:demo-node");
    params.subject_alt_names = vec![
        SanType::DnsName("demo-node".try_into().expect("dns")),
        SanType::IpAddress("10.0.0.5".parse().expect("ip")),
    ];
    let key = KeyPair::generate().expect("key");
    params
        .serialize_request(&key)
        .expect("CSR")
        .pem()
        .expect("PEM")
}

/// The kubelet-serving CSR of `system:node:demo-node` for its name and address, with the
/// address as the host's evidence (as `rotor csr review --node-ip` asks).
fn kubelet_csr() -> CsrRequest {
    let pem = kubelet_csr_pem();
    let facts = parse_csr_pem("bench.csr", pem.as_bytes()).expect("CSR parses");
    let ctx = CsrContext {
        signer_name: "kubernetes.io/kubelet-serving".into(),
        username: "system:node:demo-node".into(),
        groups: vec!["system:nodes".into(), "system:authenticated".into()],
        usages: vec![
            Usage::DigitalSignature,
            Usage::KeyEncipherment,
            Usage::ServerAuth,
        ],
        node_addresses: vec!["10.0.0.5".parse().expect("ip")],
        ..CsrContext::default()
    };
    CsrRequest::new(&facts, ctx, now())
}

/// SAN cases (the kubelet-serving profile): the timed one first (the CSR's names), then
/// another node's name, an address without evidence, a denied address, too many names, and
/// a node nobody vouched for.
fn san_cases() -> Vec<(&'static str, SanRequest)> {
    let base = kubelet_csr().san_request("kubelet-serving", SanStage::Csr);
    let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
    let with = |f: &dyn Fn(&mut SanRequest)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    vec![
        ("kubelet CSR's names", base.clone()),
        (
            "another node's name",
            with(&|r| r.sans.dns_names = vec!["other-node".into()]),
        ),
        (
            "address without evidence",
            with(&|r| r.sans.ip_addresses = vec![ip("10.0.0.6")]),
        ),
        (
            "loopback address",
            with(&|r| r.sans.ip_addresses.push(ip("127.0.0.1"))),
        ),
        (
            "three names",
            with(&|r| r.sans.dns_names = vec!["demo-node".into(), "a.example".into(), "b".into()]),
        ),
        (
            "no evidence",
            with(&|r| {
                r.node = Some(NodeIdentity {
                    name: "demo-node".into(),
                    addresses: Vec::new(),
                })
            }),
        ),
    ]
}

/// CSR cases (kubernetes.io/kubelet-serving): the timed one first, then another node's
/// request, a client usage, too short a lifetime, a requester outside system:nodes.
fn csr_cases() -> Vec<(&'static str, CsrRequest)> {
    let base = kubelet_csr();
    let with = |f: &dyn Fn(&mut CsrRequest)| {
        let mut r = base.clone();
        f(&mut r);
        r
    };
    vec![
        ("kubelet-serving CSR", base.clone()),
        (
            "another node asks",
            with(&|r| r.username = "system:node:other-node".into()),
        ),
        ("client usage", with(&|r| r.usages.push(Usage::ClientAuth))),
        ("60 s lifetime", with(&|r| r.expiration_seconds = Some(60))),
        (
            "not in system:nodes",
            with(&|r| r.groups = vec!["system:authenticated".into()]),
        ),
    ]
}

// ---- answers in one comparable form ---------------------------------------------------------

/// A decision reduced to what every engine must agree on: the action, the reason text where
/// the rule words one, the renewal instant, and the sorted violation codes (with the name each
/// concerns, for SANs).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Answer {
    action: String,
    reason: String,
    renew_at: Option<i64>,
    codes: Vec<String>,
}

fn answer(action: &str, reason: &str, renew_at: Option<i64>, mut codes: Vec<String>) -> Answer {
    codes.sort();
    codes.dedup();
    Answer {
        action: action.into(),
        reason: reason.into(),
        renew_at,
        codes,
    }
}

fn renewal_answer(d: &RenewalDecision) -> Answer {
    match d {
        RenewalDecision::Keep { reason, renew_at } => {
            answer("keep", reason, renew_at.map(unix), Vec::new())
        }
        RenewalDecision::Renew { reason, .. } => answer("renew", reason, None, Vec::new()),
    }
}

fn san_answer(d: &SanDecision) -> Answer {
    match d {
        SanDecision::Allow => answer("allow", "", None, Vec::new()),
        SanDecision::Deny { violations } => answer(
            "deny",
            "",
            None,
            violations
                .iter()
                .map(|v| format!("{}:{}", v.code, v.field))
                .collect(),
        ),
    }
}

fn csr_answer(d: &CsrDecision) -> Answer {
    match d {
        CsrDecision::Approve { reason, .. } => answer("approve", reason, None, Vec::new()),
        CsrDecision::Deny { violations } => answer(
            "deny",
            "",
            None,
            violations.iter().map(|v| v.code.clone()).collect(),
        ),
        CsrDecision::Abstain { reason } => answer("abstain", reason, None, Vec::new()),
    }
}

/// A Rego result (`decision` of renewal and CSR, `violations` of SAN) in the same form.
fn rego_answer(hook: Hook, v: &Json) -> Answer {
    let s = |k: &str| {
        v.get(k)
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match hook {
        Hook::Renewal => answer(
            &s("action"),
            &s("reason"),
            v.get("renew_at").and_then(Json::as_i64),
            Vec::new(),
        ),
        Hook::San => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                answer("allow", "", None, Vec::new())
            } else {
                let codes = list
                    .iter()
                    .map(|x| {
                        format!(
                            "{}:{}",
                            x["code"].as_str().unwrap_or_default(),
                            x["field"].as_str().unwrap_or_default()
                        )
                    })
                    .collect();
                answer("deny", "", None, codes)
            }
        }
        Hook::Csr => answer(
            &s("action"),
            &s("reason"),
            None,
            v.get("codes")
                .and_then(Json::as_array)
                .map(|c| {
                    c.iter()
                        .map(|x| x.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        ),
    }
}

// ---- the Rego inputs ------------------------------------------------------------------------

/// What the renewal plugin is given (the lean 0.2 request), as Rego input.
fn renewal_input(r: &RenewalRequest) -> Json {
    json!({
        "is_ca": r.certificate.is_ca,
        "not_before": unix(r.certificate.not_before),
        "not_after": unix(r.certificate.not_after),
        "now": unix(r.now),
    })
}

fn san_input(r: &SanRequest) -> Json {
    serde_json::to_value(r).expect("SAN request serializes")
}

fn csr_input(r: &CsrRequest) -> Json {
    serde_json::to_value(r).expect("CSR request serializes")
}

const RULES: [(Hook, &str); 3] = [
    (Hook::Renewal, "data.rotor.renewal.decision"),
    (Hook::San, "data.rotor.san.violations"),
    (Hook::Csr, "data.rotor.csr.decision"),
];

fn rule_of(hook: Hook) -> &'static str {
    RULES
        .iter()
        .find(|(h, _)| *h == hook)
        .map(|(_, r)| *r)
        .expect("a rule per hook")
}

// ---- the engines ----------------------------------------------------------------------------

/// The default bundle's settings for one hook, as the JSON its plugin's `configure` gets.
fn bundle_settings(hook: Hook) -> String {
    let text = std::fs::read_to_string(repo().join("policies/default/bundle.toml"))
        .expect("policies/default/bundle.toml");
    let manifest: toml::Value = toml::from_str(&text).expect("bundle.toml parses");
    let section = match hook {
        Hook::Renewal => "renewal",
        Hook::San => "san",
        Hook::Csr => "csr",
    };
    let settings = manifest[section]
        .get("settings")
        .cloned()
        .unwrap_or(toml::Value::Table(Default::default()));
    serde_json::to_string(&settings).expect("settings as JSON")
}

/// rotor's three plugins, configured with the default bundle's settings.
struct Rotor {
    renewal: ConfiguredPlugin,
    san: ConfiguredPlugin,
    csr: ConfiguredPlugin,
}

impl Rotor {
    fn load(engine: &PluginEngine) -> Rotor {
        let limits = SandboxLimits::default();
        let load = |file: &str, hook: Hook| {
            let bytes = std::fs::read(repo().join("policies/default/plugins").join(file))
                .unwrap_or_else(|e| panic!("{file}: {e}: run `make plugins` first"));
            engine
                .load(file, hook, &bytes)
                .expect("plugin loads")
                .configure(hook, &bundle_settings(hook), &limits)
                .expect("settings accepted")
        };
        Rotor {
            renewal: load("renewal-window.wasm", Hook::Renewal),
            san: load("san-validation.wasm", Hook::San),
            csr: load("csr-approval.wasm", Hook::Csr),
        }
    }
}

/// The plugins' rules, natively, with the same settings.
struct Native {
    renewal: renewal_rules::Settings,
    san: san_rules::Settings,
    csr: csr_rules::Settings,
}

impl Native {
    fn new() -> Native {
        Native {
            renewal: renewal_rules::Settings::from_json(&bundle_settings(Hook::Renewal))
                .expect("renewal settings"),
            san: san_rules::Settings::from_json(&bundle_settings(Hook::San)).expect("SAN settings"),
            csr: csr_rules::Settings::from_json(&bundle_settings(Hook::Csr)).expect("CSR settings"),
        }
    }

    /// As the plugin's `decide` and the host together: the lean request's fields, the rule, and
    /// a coded reason in the host's words.
    fn renewal(&self, r: &RenewalRequest) -> RenewalDecision {
        let c = &r.certificate;
        let cert = renewal_rules::Certificate {
            is_ca: c.is_ca,
            not_before: unix(c.not_before),
            not_after: unix(c.not_after),
            serial: if self.renewal.needs_serial() {
                c.serial.clone()
            } else {
                String::new()
            },
        };
        let words = |reason: renewal_rules::Reason| {
            use rotor::contract::RenewalReason as R;
            let code = match reason {
                renewal_rules::Reason::Text(text) => return text,
                renewal_rules::Reason::CaCertificate => R::CaCertificate,
                renewal_rules::Reason::InvalidValidity => R::InvalidValidity,
                renewal_rules::Reason::Expired => R::Expired,
                renewal_rules::Reason::WithinWindow(days) => R::WithinWindow { days },
                renewal_rules::Reason::OutsideWindow(days) => R::OutsideWindow { days },
            };
            code.words(c.not_before, c.not_after, r.now)
        };
        match renewal_rules::decide(
            &self.renewal,
            &cert,
            r.issuer_not_after.map(unix),
            unix(r.now),
        ) {
            renewal_rules::Decision::Keep { reason, renew_at } => RenewalDecision::Keep {
                reason: words(reason),
                renew_at: renew_at.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok()),
            },
            renewal_rules::Decision::Renew {
                reason,
                lifetime_seconds,
            } => RenewalDecision::Renew {
                reason: words(reason),
                lifetime_seconds,
            },
        }
    }

    /// As the plugin's `validate`: the names copied out of the request, then the rules.
    fn san(&self, r: &SanRequest) -> SanDecision {
        let req = san_rules::Request {
            profile: r.profile.clone(),
            common_name: r.subject.common_name.clone(),
            dns_names: r.sans.dns_names.clone(),
            ips: r.sans.ip_addresses.clone(),
            uris: r.sans.uris.clone(),
            emails: r.sans.emails.clone(),
            others: r.sans.others.clone(),
            node: r.node.as_ref().map(|n| san_rules::Node {
                name: n.name.clone(),
                addresses: n.addresses.clone(),
            }),
        };
        let violations = san_rules::validate(&self.san, &req);
        if violations.is_empty() {
            SanDecision::Allow
        } else {
            SanDecision::Deny {
                violations: violations
                    .into_iter()
                    .map(|v| rotor::facts::Violation::new(v.code, v.field, v.message))
                    .collect(),
            }
        }
    }

    /// As the plugin's `review`: the request's facts, then the rules.
    fn csr(&self, r: &CsrRequest) -> CsrDecision {
        use rotor::facts::KeyAlgorithm as K;
        let key = match r.public_key.algorithm {
            K::Rsa => csr_rules::KeyKind::Rsa,
            K::EcdsaP256 => csr_rules::KeyKind::EcdsaP256,
            K::EcdsaP384 => csr_rules::KeyKind::EcdsaP384,
            K::EcdsaP521 => csr_rules::KeyKind::EcdsaP521,
            K::Ed25519 => csr_rules::KeyKind::Ed25519,
            K::Ed448 => csr_rules::KeyKind::Ed448,
            K::Other => csr_rules::KeyKind::Other,
        };
        let req = csr_rules::Request {
            signer_name: r.signer_name.clone(),
            username: r.username.clone(),
            groups: r.groups.clone(),
            common_name: r.subject.common_name.clone(),
            organizations: r.subject.organizations.clone(),
            organizational_units: r.subject.organizational_units.clone(),
            other_subject_attributes: r.subject.other_attributes.clone(),
            dns_names: r.sans.dns_names.len(),
            ips: r.sans.ip_addresses.len(),
            emails: r.sans.emails.len(),
            uris: r.sans.uris.len(),
            other_sans: r.sans.others.len(),
            key,
            key_bits: r.public_key.bits,
            usages: r.usages.iter().map(|u| u.as_str()).collect(),
            expiration_seconds: r.expiration_seconds,
            requests_ca: r.requests_ca,
        };
        match csr_rules::review(&self.csr, &req) {
            csr_rules::Decision::Approve {
                reason,
                lifetime_seconds,
            } => CsrDecision::Approve {
                reason,
                lifetime_seconds,
                usages: None,
            },
            csr_rules::Decision::Deny(list) => CsrDecision::Deny {
                violations: list
                    .into_iter()
                    .map(|v| rotor::facts::Violation::new(v.code, v.field, v.message))
                    .collect(),
            },
            csr_rules::Decision::Abstain(reason) => CsrDecision::Abstain { reason },
        }
    }
}

/// regorus with the three Rego policies loaded.
fn regorus_engine() -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    for file in ["renewal.rego", "san.rego", "csr.rego"] {
        let path = repo().join("benches/rego").join(file);
        let text = std::fs::read_to_string(&path).expect("Rego policy");
        engine
            .add_policy(path.display().to_string(), text)
            .unwrap_or_else(|e| panic!("regorus refuses {file}: {e}"));
    }
    engine
}

fn regorus_eval(engine: &mut regorus::Engine, rule: &str, input: &regorus::Value) -> Json {
    engine.set_input(input.clone());
    let v = engine
        .eval_rule(rule.to_string())
        .unwrap_or_else(|e| panic!("regorus: {rule}: {e}"));
    serde_json::from_str(&v.to_json_str().expect("regorus value as JSON")).expect("JSON")
}

fn regorus_value(input: &Json) -> regorus::Value {
    regorus::Value::from_json_str(&input.to_string()).expect("regorus parses the input")
}

/// The OPA binary `make bench-deps` installs (or one on the PATH).
fn opa_binary() -> Option<PathBuf> {
    let tools = std::env::var_os("ROTOR_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("rotor-tools"))
        })
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/rotor-tools")));
    let candidates = tools.map(|t| t.join("bin/opa")).into_iter().chain(
        std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("opa"))
                .collect::<Vec<_>>()
        }),
    );
    for c in candidates {
        let ok = Command::new(&c)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(c);
        }
    }
    None
}

/// `opa run --server` on a loopback port, serving `benches/rego`.
struct OpaServer {
    child: Child,
    port: u16,
}

impl OpaServer {
    fn start(opa: &Path) -> OpaServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new(opa)
            .args([
                "run",
                "--server",
                "--skip-version-check",
                "--log-level",
                "error",
            ])
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg(repo().join("benches/rego"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("opa run --server");
        let server = OpaServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "opa run --server did not listen in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OpaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive HTTP/1.1 connection to OPA's REST decision API (hyper's client).
struct OpaClient {
    runtime: tokio::runtime::Runtime,
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

impl OpaClient {
    fn connect(port: u16) -> OpaClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let sender = runtime.block_on(async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect to OPA");
            stream.set_nodelay(true).expect("nodelay");
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("HTTP/1.1 handshake");
            tokio::spawn(conn);
            sender
        });
        OpaClient { runtime, sender }
    }

    /// POST /v1/data/<rule> with `{"input": ...}`; the `result`.
    fn decide(&mut self, path: &str, body: &bytes::Bytes) -> Json {
        use http_body_util::BodyExt;
        let request = hyper::Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(body.clone()))
            .expect("request");
        let sender = &mut self.sender;
        let bytes = self.runtime.block_on(async {
            sender.ready().await.expect("connection ready");
            let response = sender.send_request(request).await.expect("OPA answers");
            assert!(response.status().is_success(), "OPA: {}", response.status());
            response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
        });
        let mut v: Json = serde_json::from_slice(&bytes).expect("OPA answers JSON");
        v["result"].take()
    }
}

fn opa_path(hook: Hook) -> String {
    format!("/v1/{}", rule_of(hook).replace('.', "/"))
}

fn opa_body(input: &Json) -> bytes::Bytes {
    bytes::Bytes::from(json!({ "input": input }).to_string())
}

/// `opa bench`: OPA's own in-process benchmark of one query on one input; ns per evaluation.
fn opa_bench(opa: &Path, hook: Hook, input: &Json) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("input.json");
    std::fs::write(&file, input.to_string()).expect("input file");
    let out = Command::new(opa)
        .args(["bench", "--format", "json", "--count", "1", "-d"])
        .arg(repo().join("benches/rego"))
        .arg("-i")
        .arg(&file)
        .arg(rule_of(hook))
        .output()
        .expect("opa bench");
    assert!(
        out.status.success(),
        "opa bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Json = serde_json::from_slice(&out.stdout).expect("opa bench prints JSON");
    let n = v["N"].as_f64().expect("N");
    let t = v["T"].as_f64().expect("T");
    t / n
}

// ---- the run ----------------------------------------------------------------------------------

const ENGINES: [&str; 6] = [
    "native twin",
    "rotor warm",
    "rotor fresh",
    "regorus",
    "OPA in process",
    "OPA over HTTP",
];

fn id(engine: &str) -> String {
    engine.replace(' ', "_")
}

fn main() {
    let out_dir = std::env::var_os("ROTOR_PEERS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("peers"));
    let criterion_dir = target_dir().join("criterion");
    let mut c = settings::config()
        .output_directory(&criterion_dir)
        .configure_from_args();

    let engine = PluginEngine::new(EngineOptions::default()).expect("engine");
    let rotor = Rotor::load(&engine);
    let native = Native::new();
    let mut rego = regorus_engine();
    let opa = opa_binary();
    if opa.is_none() {
        let msg = "OPA is missing (`make bench-deps` installs it into ~/.cache/rotor-tools/bin)";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("peers: {msg}: the OPA rows are left out");
    }
    let server = opa.as_deref().map(OpaServer::start);
    let mut client = server.as_ref().map(|s| OpaClient::connect(s.port));

    // 1. Every engine answers every case as rotor does.
    let renewal = renewal_cases();
    let san = san_cases();
    let csr = csr_cases();
    let mut checked = 0;
    let mut check = |hook: Hook, case: &str, input: &Json, expected: Answer, native: Answer| {
        assert_eq!(native, expected, "native twin, {hook:?} {case}");
        let got = rego_answer(
            hook,
            &regorus_eval(&mut rego, rule_of(hook), &regorus_value(input)),
        );
        assert_eq!(got, expected, "regorus, {hook:?} {case}: input {input}");
        if let Some(client) = client.as_mut() {
            let got = rego_answer(hook, &client.decide(&opa_path(hook), &opa_body(input)));
            assert_eq!(got, expected, "OPA, {hook:?} {case}: input {input}");
        }
        checked += 1;
    };
    for (case, r) in &renewal {
        let expected = renewal_answer(
            &rotor
                .renewal
                .sandbox()
                .expect("sandbox")
                .renewal(r)
                .expect("decision"),
        );
        check(
            Hook::Renewal,
            case,
            &renewal_input(r),
            expected,
            renewal_answer(&native.renewal(r)),
        );
    }
    for (case, r) in &san {
        let expected = san_answer(
            &rotor
                .san
                .sandbox()
                .expect("sandbox")
                .validate_sans(r)
                .expect("decision"),
        );
        check(
            Hook::San,
            case,
            &san_input(r),
            expected,
            san_answer(&native.san(r)),
        );
    }
    for (case, r) in &csr {
        let expected = csr_answer(
            &rotor
                .csr
                .sandbox()
                .expect("sandbox")
                .review_csr(r)
                .expect("decision"),
        );
        check(
            Hook::Csr,
            case,
            &csr_input(r),
            expected,
            csr_answer(&native.csr(r)),
        );
    }
    let engines = if client.is_some() {
        "native twin, regorus and OPA"
    } else {
        "native twin and regorus"
    };
    eprintln!("peers: {checked} cases, the same answer from rotor, {engines}");

    // 2. The timed decisions: the first case of each hook.
    let mut opa_inproc: BTreeMap<&str, f64> = BTreeMap::new();
    for (hook, label) in [
        (Hook::Renewal, "renewal"),
        (Hook::San, "san"),
        (Hook::Csr, "csr"),
    ] {
        let mut group = c.benchmark_group(format!("peers_{label}"));
        let input = match hook {
            Hook::Renewal => renewal_input(&renewal[0].1),
            Hook::San => san_input(&san[0].1),
            Hook::Csr => csr_input(&csr[0].1),
        };
        match hook {
            Hook::Renewal => {
                let r = &renewal[0].1;
                group.bench_function(id(ENGINES[0]), |b| b.iter(|| black_box(native.renewal(r))));
                let mut warm = rotor.renewal.sandbox().expect("sandbox");
                group.bench_function(id(ENGINES[1]), |b| {
                    b.iter(|| black_box(warm.renewal(r).expect("decision")))
                });
                group.bench_function(id(ENGINES[2]), |b| {
                    b.iter(|| {
                        black_box(
                            rotor
                                .renewal
                                .sandbox()
                                .expect("sandbox")
                                .renewal(r)
                                .expect("decision"),
                        )
                    })
                });
            }
            Hook::San => {
                let r = &san[0].1;
                group.bench_function(id(ENGINES[0]), |b| b.iter(|| black_box(native.san(r))));
                let mut warm = rotor.san.sandbox().expect("sandbox");
                group.bench_function(id(ENGINES[1]), |b| {
                    b.iter(|| black_box(warm.validate_sans(r).expect("decision")))
                });
                group.bench_function(id(ENGINES[2]), |b| {
                    b.iter(|| {
                        black_box(
                            rotor
                                .san
                                .sandbox()
                                .expect("sandbox")
                                .validate_sans(r)
                                .expect("decision"),
                        )
                    })
                });
            }
            Hook::Csr => {
                let r = &csr[0].1;
                group.bench_function(id(ENGINES[0]), |b| b.iter(|| black_box(native.csr(r))));
                let mut warm = rotor.csr.sandbox().expect("sandbox");
                group.bench_function(id(ENGINES[1]), |b| {
                    b.iter(|| black_box(warm.review_csr(r).expect("decision")))
                });
                group.bench_function(id(ENGINES[2]), |b| {
                    b.iter(|| {
                        black_box(
                            rotor
                                .csr
                                .sandbox()
                                .expect("sandbox")
                                .review_csr(r)
                                .expect("decision"),
                        )
                    })
                });
            }
        }
        let value = regorus_value(&input);
        let rule = rule_of(hook).to_string();
        group.bench_function(id(ENGINES[3]), |b| {
            b.iter(|| {
                rego.set_input(value.clone());
                black_box(rego.eval_rule(rule.clone()).expect("regorus"))
            })
        });
        if let Some(client) = client.as_mut() {
            let path = opa_path(hook);
            let body = opa_body(&input);
            group.bench_function(id(ENGINES[5]), |b| {
                b.iter(|| black_box(client.decide(&path, &body)))
            });
        }
        group.finish();
        if let Some(opa) = &opa
            && c_is_benchmarking()
        {
            opa_inproc.insert(label, opa_bench(opa, hook, &input));
        }
    }
    c.final_summary();
    drop(client);
    drop(server);

    // 3. The table and the plot, from criterion's estimates of this run.
    let mut rows: Vec<(&str, BTreeMap<&str, f64>)> = Vec::new();
    for label in ["renewal", "san", "csr"] {
        let mut m = BTreeMap::new();
        for e in ENGINES {
            if e == "OPA in process" {
                if let Some(ns) = opa_inproc.get(label) {
                    m.insert(e, *ns);
                }
            } else if let Some(ns) = median_ns(&criterion_dir, &format!("peers_{label}"), &id(e)) {
                m.insert(e, ns);
            }
        }
        rows.push((label, m));
    }
    if !c_is_benchmarking() || rows.iter().all(|(_, m)| m.is_empty()) {
        return;
    }
    std::fs::create_dir_all(&out_dir).expect("output dir");
    let table = markdown(&rows);
    println!("{table}");
    std::fs::write(out_dir.join("peers.md"), &table).expect("peers.md");
    std::fs::write(out_dir.join("peers.svg"), svg(&rows)).expect("peers.svg");
    eprintln!(
        "peers: {} and peers.svg written",
        out_dir.join("peers.md").display()
    );
}

/// Whether this is a measuring run (not `--test`, `--list` or `--profile-time`): `opa bench`
/// takes seconds, and only a measuring run writes the report.
fn c_is_benchmarking() -> bool {
    !std::env::args().any(|a| a == "--test" || a == "--list" || a == "--profile-time")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
}

/// Criterion's median estimate (ns) of one function of this run.
fn median_ns(dir: &Path, group: &str, function: &str) -> Option<f64> {
    let path = dir.join(group).join(function).join("new/estimates.json");
    let v: Json = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn hook_title(label: &str) -> &'static str {
    match label {
        "renewal" => "renewal (apiserver serving certificate)",
        "san" => "SAN (kubelet-serving CSR, node-bound)",
        _ => "CSR (kubelet-serving)",
    }
}

fn human(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn markdown(rows: &[(&str, BTreeMap<&str, f64>)]) -> String {
    let mut s = String::from(
        "| decision | engine | time per decision | vs native twin | vs rotor fresh |\n\
         | -------- | ------ | ----------------- | -------------- | -------------- |\n",
    );
    for (label, m) in rows {
        let native = m.get("native twin").copied();
        let fresh = m.get("rotor fresh").copied();
        for e in ENGINES {
            let Some(ns) = m.get(e) else { continue };
            let ratio = |base: Option<f64>| {
                base.map(|b| ratio_text(ns / b))
                    .unwrap_or_else(|| "".into())
            };
            s.push_str(&format!(
                "| {} | {e} | {} | {} | {} |\n",
                hook_title(label),
                human(*ns),
                ratio(native),
                ratio(fresh)
            ));
        }
    }
    s
}

fn axis_label(ns: f64) -> String {
    match ns {
        n if n >= 1_000_000.0 => format!("{} ms", n / 1_000_000.0),
        n if n >= 1_000.0 => format!("{} µs", n / 1_000.0),
        n => format!("{n} ns"),
    }
}

fn ratio_text(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else if r >= 0.95 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

/// A horizontal bar chart, one panel per decision, log-scaled time axis.
fn svg(rows: &[(&str, BTreeMap<&str, f64>)]) -> String {
    let colours = [
        "#6b7280", "#2563eb", "#1d4ed8", "#d97706", "#059669", "#047857",
    ];
    let (left, width, bar, gap, panel_gap) = (150.0, 520.0, 16.0, 4.0, 34.0);
    let all: Vec<f64> = rows.iter().flat_map(|(_, m)| m.values().copied()).collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::MAX, f64::min)
        .max(1.0)
        .log10()
        .floor();
    let hi = all.iter().copied().fold(1.0, f64::max).log10().ceil();
    let x = |ns: f64| left + (ns.max(1.0).log10() - lo) / (hi - lo).max(1.0) * width;
    let mut body = String::new();
    let mut y = 40.0;
    for (label, m) in rows {
        body.push_str(&format!(
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">{}</text>\n",
            hook_title(label)
        ));
        y += 8.0;
        for (i, e) in ENGINES.iter().enumerate() {
            let Some(ns) = m.get(e) else { continue };
            body.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{e}</text>\
                 <rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{bar}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{}</text>\n",
                left - 6.0,
                y + bar - 4.0,
                (x(*ns) - left).max(1.0),
                colours[i],
                x(*ns) + 4.0,
                y + bar - 4.0,
                human(*ns)
            ));
            y += bar + gap;
        }
        y += panel_gap;
    }
    let height = y;
    let mut axis = String::new();
    let mut p = lo;
    while p <= hi {
        let ns = 10f64.powf(p);
        let xp = x(ns);
        axis.push_str(&format!(
            "<line x1=\"{xp:.1}\" y1=\"24\" x2=\"{xp:.1}\" y2=\"{:.1}\" stroke=\"#e5e7eb\"/>\
             <text x=\"{xp:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#6b7280\">{}</text>\n",
            height - 20.0,
            height - 6.0,
            axis_label(ns)
        ));
        p += 1.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">Time per policy decision, one run (log scale; shorter is faster)</text>\n\
         {axis}{body}</svg>\n",
        left + width + 90.0
    )
}
