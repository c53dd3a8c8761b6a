//! Policy evaluation: what a decision costs through the sandbox, against the same rule written
//! in native Rust; what each engine choice costs (pooling vs on-demand, epochs on vs off); the
//! SAN and CSR hooks with realistic inputs; how the cost grows with the number of decisions;
//! and what verifying a vendor's signature adds to loading a bundle.
//!
//! `cargo bench --bench policy` (after `make plugins`). Inputs are fixed certificates and CSRs
//! at a fixed `now`, so runs are comparable. Figures: docs/performance.md.

#![allow(clippy::disallowed_methods, reason = "benches set up inputs directly")]

#[path = "settings.rs"]
mod settings;

use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rotor::contract::Hook;
use rotor::contract::RenewalDecision;
use rotor::contract::{CsrContext, CsrRequest, RenewalRequest, SanRequest, SanStage};
use rotor::facts::{
    CertificateFacts, DistinguishedName, SubjectAltNames, Usage, parse_certificates_pem,
    parse_csr_pem,
};
use rotor::plugin::{EngineOptions, PluginEngine, SandboxLimits};
use rotor::policy::Bundle;
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

fn renewal_request() -> RenewalRequest {
    let path = repo().join("policies/default/fixtures/inputs/serving-kube-apiserver.crt");
    let certs = parse_certificates_pem("fixture", &std::fs::read(path).expect("fixture"))
        .expect("fixture parses");
    RenewalRequest {
        name: "serving-kube-apiserver".into(),
        certificate: certs[0].clone().into(),
        issuer_not_after: Some(certs[1].not_after),
        now: now(),
    }
}

/// The names of an apiserver certificate with 12 SANs, as `rotor init` checks them.
fn apiserver_san_request() -> SanRequest {
    let dns = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster",
        "kubernetes.default.svc.cluster.local",
        "localhost",
        "server-1",
        "k8s.example.com",
    ];
    let ips = ["127.0.0.1", "::1", "10.43.0.1", "192.168.1.10"];
    SanRequest {
        profile: "serving-kube-apiserver".into(),
        stage: SanStage::Configuration,
        subject: DistinguishedName {
            text: "CN=kube-apiserver".into(),
            common_name: Some("kube-apiserver".into()),
            ..Default::default()
        },
        sans: SubjectAltNames {
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.parse().expect("ip")).collect(),
            ..Default::default()
        },
        node: None,
        now: now(),
    }
}

/// A kubelet-serving CSR from `system:node:demo-node` for its name and address, as the CSR
/// path sees it (the CSR hook's request, and the SAN hook's request for the CSR's names).
fn kubelet_csr() -> (CsrRequest, SanRequest) {
    let pem = kubelet_csr_pem();
    let facts = parse_csr_pem("bench.csr", pem.as_bytes()).expect("CSR parses");
    let address: IpAddr = "10.0.0.5".parse().expect("ip");
    let ctx = CsrContext {
        signer_name: "kubernetes.io/kubelet-serving".into(),
        username: "system:node:demo-node".into(),
        groups: vec!["system:nodes".into(), "system:authenticated".into()],
        usages: vec![
            Usage::DigitalSignature,
            Usage::KeyEncipherment,
            Usage::ServerAuth,
        ],
        node_addresses: vec![address],
        ..CsrContext::default()
    };
    let request = CsrRequest::new(&facts, ctx, now());
    // Bound to node `demo-node` with the host's evidence for it, as `rotor csr` asks.
    let san = request.san_request("kubelet-serving", SanStage::Csr);
    (request, san)
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

/// The renewal-window plugin's window rule, written natively, doing the same work (the
/// decision and its reason text).
fn native_window_rule(
    cert: &CertificateFacts,
    now: OffsetDateTime,
    window_days: i64,
) -> RenewalDecision {
    let left = cert.not_after - now;
    let date = cert.not_after.format(&Rfc3339).unwrap_or_default();
    if left <= time::Duration::ZERO {
        RenewalDecision::Renew {
            reason: format!("expired on {date}"),
            lifetime_seconds: None,
        }
    } else if left <= time::Duration::days(window_days) {
        RenewalDecision::Renew {
            reason: format!(
                "expires on {date} (in {} days), within the {window_days}-day renewal window",
                left.whole_days()
            ),
            lifetime_seconds: None,
        }
    } else {
        RenewalDecision::Keep {
            reason: format!(
                "expires on {date} (in {} days), outside the {window_days}-day renewal window",
                left.whole_days()
            ),
            renew_at: Some(cert.not_after - time::Duration::days(window_days)),
        }
    }
}

/// renewal-window as built on the 0.1 contract (tests/compat).
fn compat_renewal_plugin() -> Vec<u8> {
    std::fs::read(repo().join("tests/compat/rotor-policy-0.1/renewal-window.wasm"))
        .expect("tests/compat/rotor-policy-0.1/renewal-window.wasm")
}

/// renewal-window as built on the 0.2 contract (tests/compat): text reasons, name and serial in
/// the request.
fn compat_v02_renewal_plugin() -> Vec<u8> {
    std::fs::read(repo().join("tests/compat/rotor-policy-0.2/renewal-window.wasm"))
        .expect("tests/compat/rotor-policy-0.2/renewal-window.wasm")
}

fn engine(pooling: bool, epoch_interruption: bool) -> PluginEngine {
    PluginEngine::new(EngineOptions {
        pooling,
        epoch_interruption,
        ..EngineOptions::default()
    })
    .expect("engine")
}

/// rotor's engine but resetting memory without `PAGEMAP_SCAN` (the whole keep-resident span).
fn engine_without_pagemap_scan() -> PluginEngine {
    PluginEngine::new(EngineOptions {
        pagemap_scan: false,
        ..EngineOptions::default()
    })
    .expect("engine")
}

fn default_bundle(engine: &PluginEngine) -> Bundle {
    Bundle::load(engine, &repo().join("policies/default"))
        .expect("policies/default loads: run `make plugins` first")
}

/// 1 and 2: one renewal decision, native vs warm sandbox vs fresh sandbox per decision (of the
/// configured snapshot: settings parsed once), for each engine choice, and the 0.1 build.
fn renewal(c: &mut Criterion) {
    let bytes = std::fs::read(repo().join("policies/default/plugins/renewal-window.wasm"))
        .expect("policies/default/plugins/renewal-window.wasm: run `make plugins` first");
    let request = renewal_request();
    let limits = SandboxLimits::default();
    let settings = r#"{"mode":"window","renew_before_days":90}"#;
    let mut group = c.benchmark_group("renewal_decision");

    group.bench_function("native_rust", |b| {
        b.iter(|| black_box(native_window_rule(&request.certificate, request.now, 90)))
    });

    // The plugin alone: one warm instance, one call (no host rules).
    let default_engine = engine(true, true);
    let plugin = default_engine
        .load("renewal-window", Hook::Renewal, &bytes)
        .expect("plugin loads");
    let mut sandbox = plugin
        .sandbox(Hook::Renewal, settings, &limits)
        .expect("sandbox");
    group.bench_function("warm_sandbox", |b| {
        b.iter(|| black_box(sandbox.renewal(&request).expect("decision")))
    });

    // The floor: a 0.2 plugin that takes the same request and answers a constant `keep` at
    // once (tests/plugins/renewal-floor, built by `make test-plugins`): what the contract's
    // call costs with no rule and no formatting.
    let floor_bytes = std::fs::read(repo().join("target/test-plugins/renewal-floor.wasm"))
        .expect("target/test-plugins/renewal-floor.wasm: run `make test-plugins` first");
    let floor = default_engine
        .load("renewal-floor", Hook::Renewal, &floor_bytes)
        .expect("floor plugin loads")
        .configure(Hook::Renewal, "{}", &limits)
        .expect("configure");
    let mut floor_sandbox = floor.sandbox().expect("sandbox");
    group.bench_function("warm_sandbox/floor", |b| {
        b.iter(|| black_box(floor_sandbox.renewal(&request).expect("decision")))
    });
    group.bench_function("fresh_sandbox/floor", |b| {
        b.iter(|| {
            black_box(
                floor
                    .sandbox()
                    .expect("sandbox")
                    .renewal(&request)
                    .expect("decision"),
            )
        })
    });

    // The same plugin as rotor shipped it on the 0.2 contract: what 0.3's coded reasons and
    // string-free request changed, measured.
    let v02 = default_engine
        .load(
            "renewal-window-0.2",
            Hook::Renewal,
            &compat_v02_renewal_plugin(),
        )
        .expect("0.2 plugin loads")
        .configure(Hook::Renewal, settings, &limits)
        .expect("configure");
    let mut v02_sandbox = v02.sandbox().expect("sandbox");
    group.bench_function("warm_sandbox/contract_0.2", |b| {
        b.iter(|| black_box(v02_sandbox.renewal(&request).expect("decision")))
    });
    group.bench_function("fresh_sandbox/pooling+epoch,contract_0.2", |b| {
        b.iter(|| {
            black_box(
                v02.sandbox()
                    .expect("sandbox")
                    .renewal(&request)
                    .expect("decision"),
            )
        })
    });

    // The same plugin as rotor shipped it on the 0.1 contract (the whole certificate in every
    // request; `configure` in every fresh instance): what 0.2 changed, measured.
    let v01 = default_engine
        .load(
            "renewal-window-0.1",
            Hook::Renewal,
            &compat_renewal_plugin(),
        )
        .expect("0.1 plugin loads");
    let mut v01_sandbox = v01
        .sandbox(Hook::Renewal, settings, &limits)
        .expect("sandbox");
    group.bench_function("warm_sandbox/contract_0.1", |b| {
        b.iter(|| black_box(v01_sandbox.renewal(&request).expect("decision")))
    });
    let v01_configured = v01
        .configure(Hook::Renewal, settings, &limits)
        .expect("configure");
    group.bench_function("fresh_sandbox/pooling+epoch,contract_0.1", |b| {
        b.iter(|| {
            let mut sandbox = v01_configured.sandbox().expect("sandbox");
            black_box(sandbox.renewal(&request).expect("decision"))
        })
    });

    let bundle = default_bundle(&default_engine);

    // A fresh Store + instance (+ configure) per decision, for each engine choice.
    for (name, pooling, epoch) in [
        ("fresh_sandbox/pooling+epoch", true, true),
        ("fresh_sandbox/pooling", true, false),
        ("fresh_sandbox/on_demand+epoch", false, true),
        ("fresh_sandbox/on_demand", false, false),
        ("fresh_sandbox/pooling+epoch,no_pagemap_scan", true, true),
    ] {
        let engine = if name.ends_with("no_pagemap_scan") {
            engine_without_pagemap_scan()
        } else {
            engine(pooling, epoch)
        };
        let plugin = engine
            .load("renewal-window", Hook::Renewal, &bytes)
            .expect("plugin loads")
            .configure(Hook::Renewal, settings, &limits)
            .expect("settings accepted");
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sandbox = plugin.sandbox().expect("sandbox");
                black_box(sandbox.renewal(&request).expect("decision"))
            })
        });
    }
    group.bench_function("fresh_bundle_evaluation", |b| {
        b.iter(|| black_box(bundle.renewal(&request).expect("decision")))
    });
    group.finish();
}

/// 3: the SAN hook on an apiserver certificate's 12 names, and on a kubelet CSR; the CSR hook
/// on the same CSR, each in a fresh sandbox as rotor runs every decision.
fn san_and_csr_hooks(c: &mut Criterion) {
    let engine = engine(true, true);
    let bundle = default_bundle(&engine);
    let apiserver = apiserver_san_request();
    let (csr, csr_names) = kubelet_csr();
    assert!(
        matches!(
            bundle.validate_sans(&csr_names).expect("SAN").decision,
            rotor::contract::SanDecision::Allow
        ),
        "the bench CSR's names must be allowed, or the bench measures a denial"
    );

    let mut group = c.benchmark_group("san_hook");
    group.bench_function("apiserver_12_sans/fresh", |b| {
        b.iter(|| black_box(bundle.validate_sans(&apiserver).expect("SAN")))
    });
    group.bench_function("kubelet_serving_csr/fresh", |b| {
        b.iter(|| black_box(bundle.validate_sans(&csr_names).expect("SAN")))
    });
    group.finish();

    let mut group = c.benchmark_group("csr_hook");
    group.bench_function("kubelet_serving/fresh", |b| {
        b.iter(|| black_box(bundle.review_csr(&csr).expect("CSR")))
    });
    group.finish();
}

/// Issue 28's levers on a fresh instance per decision, one at a time against rotor's engine:
/// the fresh renewal decision and the fresh CSR hook on the kubelet CSR, the plugin alone.
fn fresh_levers(c: &mut Criterion) {
    let default = EngineOptions::default();
    let variants: Vec<(&str, EngineOptions)> = vec![
        ("rotor_default", default.clone()),
        (
            "keep_resident_64k",
            EngineOptions {
                keep_resident: 64 * 1024,
                ..default.clone()
            },
        ),
        (
            "keep_resident_256k",
            EngineOptions {
                keep_resident: 256 * 1024,
                ..default.clone()
            },
        ),
        (
            "keep_resident_4m",
            EngineOptions {
                keep_resident: 4 * 1024 * 1024,
                ..default.clone()
            },
        ),
        (
            "table_keep_resident_0",
            EngineOptions {
                table_keep_resident: 0,
                ..default.clone()
            },
        ),
        (
            "table_keep_resident_8k",
            EngineOptions {
                table_keep_resident: 8 * 1024,
                ..default.clone()
            },
        ),
        (
            "table_keep_resident_1m",
            EngineOptions {
                table_keep_resident: 1024 * 1024,
                ..default.clone()
            },
        ),
        (
            "warm_slots_0",
            EngineOptions {
                max_unused_warm_slots: Some(0),
                ..default.clone()
            },
        ),
        (
            "warm_slots_8",
            EngineOptions {
                max_unused_warm_slots: Some(8),
                ..default.clone()
            },
        ),
        (
            "decommit_batch_16",
            EngineOptions {
                decommit_batch_size: 16,
                ..default.clone()
            },
        ),
        (
            "no_memory_init_cow",
            EngineOptions {
                memory_init_cow: false,
                ..default.clone()
            },
        ),
        (
            "reservation_32m_guard_64k",
            EngineOptions {
                memory_reservation: Some((32 * 1024 * 1024, 64 * 1024)),
                ..default.clone()
            },
        ),
    ];
    let renewal_bytes = std::fs::read(repo().join("policies/default/plugins/renewal-window.wasm"))
        .expect("policies/default/plugins/renewal-window.wasm: run `make plugins` first");
    let csr_bytes = std::fs::read(repo().join("policies/default/plugins/csr-approval.wasm"))
        .expect("policies/default/plugins/csr-approval.wasm: run `make plugins` first");
    let csr_settings =
        r#"{"profiles":{"kubernetes.io/kubelet-serving":{"kind":"kubelet-serving"}}}"#;
    let request = renewal_request();
    let (csr, _) = kubelet_csr();
    let limits = SandboxLimits::default();
    let mut group = c.benchmark_group("fresh_levers");
    for (name, options) in variants {
        let engine = PluginEngine::new(options).expect("engine");
        let renewal = engine
            .load("renewal-window", Hook::Renewal, &renewal_bytes)
            .expect("plugin loads")
            .configure(
                Hook::Renewal,
                r#"{"mode":"window","renew_before_days":90}"#,
                &limits,
            )
            .expect("settings accepted");
        let review = engine
            .load("csr-approval", Hook::Csr, &csr_bytes)
            .expect("plugin loads")
            .configure(Hook::Csr, csr_settings, &limits)
            .expect("settings accepted");
        group.bench_function(format!("renewal/{name}"), |b| {
            b.iter(|| {
                black_box(
                    renewal
                        .sandbox()
                        .expect("sandbox")
                        .renewal(&request)
                        .expect("decision"),
                )
            })
        });
        group.bench_function(format!("csr/{name}"), |b| {
            b.iter(|| {
                black_box(
                    review
                        .sandbox()
                        .expect("sandbox")
                        .review_csr(&csr)
                        .expect("decision"),
                )
            })
        });
    }
    group.finish();
}

/// 8: time per renewal decision for 1, 100 and 10,000 certificates (a fresh sandbox for each,
/// as rotor decides): the cost per decision stays flat.
fn scaling(c: &mut Criterion) {
    let engine = engine(true, true);
    let bundle = default_bundle(&engine);
    let request = renewal_request();
    let mut group = c.benchmark_group("renewal_scaling");
    for n in [1u64, 100, 10_000] {
        group.throughput(Throughput::Elements(n));
        if n == 10_000 {
            group.sample_size(20);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                for _ in 0..n {
                    black_box(bundle.renewal(&request).expect("decision"));
                }
            })
        });
    }
    group.finish();
}

/// A copy of `policies/default` in `dir` whose renewal plugin is accepted by a vendor signature
/// (a trusted Ed25519 key, a DSSE envelope) instead of its pin.
fn signed_default_bundle(dir: &Path) {
    use rotor::policy::{SigningKey, Statement};
    use sha2::Digest;
    let default = repo().join("policies/default");
    std::fs::create_dir_all(dir.join("plugins")).expect("mkdir");
    for p in [
        "renewal-window.wasm",
        "san-validation.wasm",
        "csr-approval.wasm",
    ] {
        std::fs::copy(default.join("plugins").join(p), dir.join("plugins").join(p))
            .expect("copy: run `make plugins` first");
    }
    let component = std::fs::read(dir.join("plugins/renewal-window.wasm")).expect("read");
    let (_, public, key) = SigningKey::generate().expect("key");
    let envelope = key
        .sign(&Statement {
            name: "renewal-window".into(),
            version: "1.0.0".into(),
            contract: "rotor:policy@0.2.0".into(),
            hooks: vec![Hook::Renewal],
            sha256: hex::encode(sha2::Sha256::digest(&component)),
            size: component.len() as u64,
        })
        .expect("sign");
    std::fs::write(
        dir.join("plugins/renewal-window.wasm.sig"),
        envelope.to_json(),
    )
    .expect("sig");
    std::fs::write(dir.join("acme.pub"), public).expect("pub");
    let manifest = std::fs::read_to_string(default.join("bundle.toml")).expect("manifest");
    let pin = manifest
        .lines()
        .skip_while(|l| *l != "[renewal]")
        .find(|l| l.starts_with("sha256 = "))
        .expect("renewal pin")
        .to_string();
    let manifest = manifest
        .replacen(&format!("{pin}\n"), "signed_by = \"acme\"\n", 1)
        .replacen(
            "[bundle]",
            "[trust.keys]\nacme = \"acme.pub\"\n\n[bundle]",
            1,
        );
    std::fs::write(dir.join("bundle.toml"), manifest).expect("manifest");
}

/// Loading a bundle (every plugin read, checked, taken from the precompiled cache, configured
/// and snapshotted) when the renewal plugin is accepted by a trusted signature instead of its
/// pin: the cost of verifying a vendor signature at every load.
fn bundle_load(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let signed = tmp.path().join("signed");
    signed_default_bundle(&signed);
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: Some(tmp.path().join("cache")),
        ..EngineOptions::default()
    })
    .expect("engine");
    let pinned = repo().join("policies/default");
    // Warm the precompiled cache for both (same components).
    Bundle::load(&engine, &pinned).expect("pinned bundle loads");
    Bundle::load(&engine, &signed).expect("signed bundle loads");
    let mut group = c.benchmark_group("bundle_load");
    group.bench_function("pinned", |b| {
        b.iter(|| black_box(Bundle::load(&engine, &pinned).expect("load")))
    });
    group.bench_function("renewal_plugin_signed", |b| {
        b.iter(|| black_box(Bundle::load(&engine, &signed).expect("load")))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = settings::config();
    targets = renewal, san_and_csr_hooks, fresh_levers, scaling, bundle_load
}
criterion_main!(benches);
