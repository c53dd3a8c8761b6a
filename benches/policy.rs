//! Policy evaluation: what one renewal decision costs through the sandbox, against the same
//! rule written in native Rust.
//!
//! `cargo bench --bench policy` (after `make plugins`). Inputs are fixed certificates at a fixed
//! `now`, so runs are comparable.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rotor::facts::{CertificateFacts, parse_certificates_pem};
use rotor::plugin::{EngineOptions, Hook, PluginEngine, SandboxLimits};
use rotor::policy::decision::RenewalDecision;
use rotor::policy::request::RenewalRequest;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn request() -> RenewalRequest {
    let path = repo().join("policies/default/fixtures/inputs/serving-kube-apiserver.crt");
    let certs = parse_certificates_pem("fixture", &std::fs::read(path).unwrap()).unwrap();
    RenewalRequest {
        name: "serving-kube-apiserver".into(),
        certificate: certs[0].clone(),
        issuer_not_after: Some(certs[1].not_after),
        now: OffsetDateTime::parse("2027-10-24T16:08:54Z", &Rfc3339).unwrap(),
    }
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

fn renewal(c: &mut Criterion) {
    let bytes = std::fs::read(repo().join("target/plugins/renewal-window.wasm"))
        .expect("target/plugins/renewal-window.wasm: run `make plugins` first");
    let request = request();
    let limits = SandboxLimits::default();
    let settings = r#"{"mode":"window","renew_before_days":90}"#;
    let mut group = c.benchmark_group("renewal_decision");

    group.bench_function("native_rust", |b| {
        b.iter(|| black_box(native_window_rule(&request.certificate, request.now, 90)))
    });

    for (name, pooling, epoch) in [
        ("fresh_sandbox/pooling+epoch", true, true),
        ("fresh_sandbox/pooling", true, false),
        ("fresh_sandbox/on_demand+epoch", false, true),
    ] {
        let engine = PluginEngine::new(EngineOptions {
            pooling,
            epoch_interruption: epoch,
            ..EngineOptions::default()
        })
        .unwrap();
        let plugin = engine
            .load("renewal-window", Hook::Renewal, &bytes)
            .unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sandbox = plugin.sandbox(Hook::Renewal, settings, &limits).unwrap();
                black_box(sandbox.renewal(&request).unwrap())
            })
        });
    }

    let engine = PluginEngine::new(EngineOptions::default()).unwrap();
    let plugin = engine
        .load("renewal-window", Hook::Renewal, &bytes)
        .unwrap();
    let mut sandbox = plugin.sandbox(Hook::Renewal, settings, &limits).unwrap();
    group.bench_function("warm_sandbox", |b| {
        b.iter(|| black_box(sandbox.renewal(&request).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, renewal);
criterion_main!(benches);
