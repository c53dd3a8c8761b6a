//! Hostile plugins: each misbehaves, each yields the typed error, and the process stays up
//! (every test ends by evaluating a healthy plugin in the same engine).

use std::time::{Duration, Instant};

use rotor::contract::Hook;
use rotor::contract::{CsrContext, CsrRequest, RenewalRequest, SanRequest, SanStage};
use rotor::contract::{CsrDecision, RenewalDecision, SanDecision};
use rotor::facts::parse_certificates_pem;
use rotor::plugin::{PluginEngine, PluginErrorKind, SandboxLimits};
use rotor::policy::{Bundle, BundleError, Source};

use crate::common::*;

fn renewal_request(ca_days: i64) -> RenewalRequest {
    let ca = Ca::new("test-ca", t0(), t0() + days(ca_days));
    let pem = ca.leaf_pem("kube-apiserver", &["kubernetes"], t0(), t0() + days(365));
    let certs = parse_certificates_pem("leaf.pem", pem.as_bytes()).unwrap();
    RenewalRequest {
        name: "serving-kube-apiserver".into(),
        certificate: certs[0].clone().into(),
        issuer_not_after: Some(certs[1].not_after),
        now: t0() + days(100),
    }
}

fn load(engine: &PluginEngine, name: &str, hook: Hook) -> rotor::plugin::LoadedPlugin {
    let bytes = std::fs::read(test_plugin(name)).unwrap();
    engine.load(name, hook, &bytes).unwrap()
}

/// A bundle whose renewal hook is the test plugin `name` (and the temporary directories it
/// lives in, kept alive by the caller).
fn renewal_bundle(name: &str) -> ((tempfile::TempDir, tempfile::TempDir), Bundle) {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let plugin = test_plugin(name);
    let bundle_dir = write_bundle(
        dir.path(),
        &[HookSpec {
            hook: "renewal",
            plugin: &plugin,
            extra: "",
            settings: "",
        }],
    );
    let bundle = Bundle::load(&engine(cache.path()), &bundle_dir).unwrap();
    ((dir, cache), bundle)
}

/// The engine still works: a healthy default plugin answers.
fn still_healthy(engine: &PluginEngine) {
    let bytes = std::fs::read(default_plugin("renewal-window")).unwrap();
    let plugin = engine
        .load("renewal-window", Hook::Renewal, &bytes)
        .unwrap();
    let mut sandbox = plugin
        .sandbox(Hook::Renewal, "{}", &SandboxLimits::default())
        .unwrap();
    let d = sandbox.renewal(&renewal_request(3650)).unwrap();
    assert!(matches!(d, RenewalDecision::Keep { .. }), "{d:?}");
}

#[test]
fn an_infinite_loop_is_stopped_by_the_deadline() {
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let plugin = load(&engine, "hostile-loop", Hook::Renewal);
    let limits = SandboxLimits {
        timeout: Duration::from_millis(100),
        ..SandboxLimits::default()
    };
    let mut sandbox = plugin.sandbox(Hook::Renewal, "{}", &limits).unwrap();
    let start = Instant::now();
    let err = sandbox.renewal(&renewal_request(3650)).unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err.kind, PluginErrorKind::Timeout(d) if d == Duration::from_millis(100)),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_millis(90),
        "stopped before the deadline: {elapsed:?}"
    );
    assert!(elapsed < DEADLINE_SLACK, "took {elapsed:?}");
    assert_eq!(
        err.to_string(),
        "plugin 'hostile-loop' (renewal hook): timed out: still running after its 100-ms deadline"
    );
    // The trapped sandbox refuses further calls; a fresh one is needed.
    let again = sandbox.renewal(&renewal_request(3650)).unwrap_err();
    assert!(
        again
            .to_string()
            .contains("unusable after an earlier failure"),
        "{again}"
    );
    still_healthy(&engine);
}

#[test]
fn unbounded_memory_growth_is_stopped_by_the_cap() {
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let plugin = load(&engine, "hostile-memory", Hook::Renewal);
    let limits = SandboxLimits {
        memory: 16 * 1024 * 1024,
        timeout: Duration::from_secs(10),
    };
    let mut sandbox = plugin.sandbox(Hook::Renewal, "{}", &limits).unwrap();
    let err = sandbox.renewal(&renewal_request(3650)).unwrap_err();
    assert!(
        matches!(err.kind, PluginErrorKind::MemoryExhausted { limit } if limit == 16 * 1024 * 1024),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("exceeded its memory limit of 16 MiB"),
        "{err}"
    );
    still_healthy(&engine);
}

#[test]
fn a_panic_is_a_trap() {
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let plugin = load(&engine, "hostile-trap", Hook::Renewal);
    let mut sandbox = plugin
        .sandbox(Hook::Renewal, "{}", &SandboxLimits::default())
        .unwrap();
    let err = sandbox.renewal(&renewal_request(3650)).unwrap_err();
    assert!(matches!(err.kind, PluginErrorKind::Trap { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("plugin 'hostile-trap' (renewal hook): trapped:"),
        "{err}"
    );
    still_healthy(&engine);
}

#[test]
fn a_wasi_plugin_is_refused_at_load_with_the_import_named() {
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let bytes = std::fs::read(test_plugin("hostile-wasi")).unwrap();
    let err = engine
        .load("hostile-wasi", Hook::Renewal, &bytes)
        .unwrap_err();
    let PluginErrorKind::ForbiddenImport { imports } = &err.kind else {
        panic!("{err}")
    };
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:filesystem/")),
        "{imports:?}"
    );
    assert!(
        err.to_string()
            .contains("plugins may import only rotor:policy/host"),
        "{err}"
    );
    still_healthy(&engine);
}

#[test]
fn a_lifetime_beyond_the_ca_is_clamped_and_reported() {
    let (_dirs, bundle) = renewal_bundle("hostile-lifetime");
    // The CA expires 400 days after t0; the request is evaluated at t0 + 100 days.
    let request = renewal_request(400);
    let outcome = bundle.renewal(&request).unwrap();
    let RenewalDecision::Renew {
        lifetime_seconds: Some(lifetime),
        ..
    } = outcome.decision
    else {
        panic!("{:?}", outcome.decision)
    };
    assert_eq!(lifetime, 300 * 86_400, "clamped to the CA's notAfter");
    assert!(
        outcome
            .notes
            .iter()
            .any(|n| n.contains("lifetime clamped from 3153600000 to 25920000")),
        "{:?}",
        outcome.notes
    );
    assert_eq!(outcome.source, Source::Plugin);
}

/// A plugin that renews everything is still never obeyed for a CA: the host keeps it. (The
/// default plugin keeps CAs by itself, so only a plugin that says "renew" tests the host.)
#[test]
fn a_plugin_that_renews_everything_never_renews_a_ca() {
    let (_dirs, bundle) = renewal_bundle("hostile-lifetime");
    let ca = Ca::new("k3s-client-ca", t0(), t0() + days(10));
    let certs = parse_certificates_pem("client-ca.crt", ca.cert.pem().as_bytes()).unwrap();
    let mut request = RenewalRequest {
        name: "client-ca".into(),
        certificate: certs[0].clone().into(),
        issuer_not_after: None,
        now: t0() + days(20),
    };
    let outcome = bundle.renewal(&request).unwrap();
    assert!(!outcome.decision.is_renew(), "{:?}", outcome.decision);
    assert_eq!(outcome.source, Source::Plugin);
    assert!(
        outcome.notes[0].contains("CA certificates are never renewed automatically"),
        "{:?}",
        outcome.notes
    );
    // The same plugin asked about the same certificate as a leaf renews it.
    std::sync::Arc::make_mut(&mut request.certificate).is_ca = false;
    assert!(bundle.renewal(&request).unwrap().decision.is_renew());
}

#[test]
fn malformed_answers_are_typed_errors_and_fail_safe() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let plugin = test_plugin("hostile-answers");
    let bundle_dir = write_bundle(
        dir.path(),
        &[
            HookSpec {
                hook: "renewal",
                plugin: &plugin,
                extra: "",
                settings: "",
            },
            HookSpec {
                hook: "san",
                plugin: &plugin,
                extra: "",
                settings: "",
            },
            HookSpec {
                hook: "csr",
                plugin: &plugin,
                extra: "",
                settings: "",
            },
        ],
    );
    let bundle = Bundle::load(&engine, &bundle_dir).unwrap();

    // Renewal: the empty reason is refused; the built-in rule decides (fallback).
    let outcome = bundle.renewal(&renewal_request(3650)).unwrap();
    assert_eq!(outcome.source, Source::FailureMode);
    let err = outcome.error.as_ref().unwrap();
    assert!(
        matches!(err.kind, PluginErrorKind::InvalidAnswer { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("empty reason"), "{err}");
    assert!(
        matches!(outcome.decision, RenewalDecision::Keep { .. }),
        "265 days left, outside 90"
    );
    // The plugin's log line was kept, with the escape sequence neutralized.
    assert!(
        outcome
            .logs
            .iter()
            .any(|l| l.message.starts_with("configured with {}") && !l.message.contains('\u{1b}'))
    );

    // SAN: a denial without violations is malformed; the failure mode denies (fail closed).
    let san = SanRequest {
        profile: "default".into(),
        stage: SanStage::Csr,
        subject: Default::default(),
        sans: Default::default(),
        node: None,
        now: t0(),
    };
    let outcome = bundle.validate_sans(&san).unwrap();
    let SanDecision::Deny { violations } = &outcome.decision else {
        panic!()
    };
    assert_eq!(violations[0].code, "PolicyPluginFailed");
    assert!(
        violations[0].message.contains("at least one violation"),
        "{}",
        violations[0].message
    );

    // CSR: approving a usage nobody asked for is refused; the CSR stays pending, never approved.
    let csr =
        rotor::facts::parse_csr_pem("node.csr", kubelet_csr_pem("a", &["a"]).as_bytes()).unwrap();
    let ctx = CsrContext {
        signer_name: "kubernetes.io/kubelet-serving".into(),
        username: "system:node:a".into(),
        usages: vec![rotor::facts::Usage::ServerAuth],
        ..Default::default()
    };
    let outcome = bundle
        .review_csr(&CsrRequest::new(&csr, ctx, t0()))
        .unwrap();
    assert!(
        matches!(outcome.decision, CsrDecision::Abstain { .. }),
        "{:?}",
        outcome.decision
    );
    assert!(
        outcome
            .error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("grants usage 'cert sign'")
    );
}

#[test]
fn failure_mode_error_stops_the_operation_with_the_plugin_named() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let plugin = test_plugin("hostile-trap");
    let bundle_dir = write_bundle(
        dir.path(),
        &[HookSpec {
            hook: "renewal",
            plugin: &plugin,
            extra: "failure_mode = \"error\"",
            settings: "",
        }],
    );
    let bundle = Bundle::load(&engine, &bundle_dir).unwrap();
    let err = bundle.renewal(&renewal_request(3650)).unwrap_err();
    assert_eq!(
        (err.plugin.as_str(), err.hook),
        ("hostile-trap", Hook::Renewal)
    );
}

/// A plugin that refuses its settings cannot be loaded: the bundle loads, the hook fails
/// closed at every decision (the SAN hook denies), and the strict check names the plugin.
#[test]
fn settings_refused_by_the_plugin_fail_the_hook_and_the_strict_check() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let plugin = test_plugin("hostile-answers");
    let bundle_dir = write_bundle(
        dir.path(),
        &[HookSpec {
            hook: "san",
            plugin: &plugin,
            extra: "",
            settings: "refuse = true",
        }],
    );
    let bundle = Bundle::load(&engine, &bundle_dir).unwrap();
    let failure = bundle.load_failure(Hook::San).expect("a load failure");
    assert!(
        matches!(failure.error.kind, PluginErrorKind::InvalidSettings { .. }),
        "{:?}",
        failure.error
    );
    let err = bundle.ensure_loaded().unwrap_err();
    assert!(matches!(err, BundleError::Plugin { .. }), "{err}");
    assert!(err.to_string().ends_with("plugin 'hostile-answers' (san hook): rejected its settings: 'refuse' is set, so I refuse"), "{err}");
    assert!(
        bundle.warnings()[0].contains("[san] plugins/hostile-answers.wasm could not be loaded"),
        "{:?}",
        bundle.warnings()
    );
    let san = SanRequest {
        profile: "default".into(),
        stage: SanStage::Csr,
        subject: Default::default(),
        sans: Default::default(),
        node: None,
        now: t0(),
    };
    let outcome = bundle.validate_sans(&san).unwrap();
    assert_eq!(outcome.source, Source::FailureMode);
    let SanDecision::Deny { violations } = &outcome.decision else {
        panic!("a name is never allowed by a plugin that cannot load")
    };
    assert!(
        violations[0].message.contains("could not be loaded"),
        "{violations:?}"
    );
}

/// 100,000 violations are refused from the list's length, before any is lifted out of the
/// plugin: the SAN hook fails closed and the CSR stays pending, each saying why.
#[test]
fn a_flood_of_violations_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let plugin = test_plugin("hostile-answers");
    let bundle_dir = write_bundle(
        dir.path(),
        &[
            HookSpec {
                hook: "san",
                plugin: &plugin,
                extra: "",
                settings: "flood = true",
            },
            HookSpec {
                hook: "csr",
                plugin: &plugin,
                extra: "",
                settings: "flood = true",
            },
        ],
    );
    let bundle = Bundle::load(&engine, &bundle_dir).unwrap();
    let san = SanRequest {
        profile: "default".into(),
        stage: SanStage::Csr,
        subject: Default::default(),
        sans: Default::default(),
        node: None,
        now: t0(),
    };
    let outcome = bundle.validate_sans(&san).unwrap();
    let err = outcome.error.as_ref().expect("a malformed answer");
    assert!(
        matches!(err.kind, PluginErrorKind::InvalidAnswer { .. }),
        "{err}"
    );
    // Said by the bounded lift (plugin/answer.rs), not by the check after a whole lift.
    assert!(
        err.to_string()
            .contains("100000 violations (at most 1000), refused before reading them"),
        "{err}"
    );
    assert!(matches!(outcome.decision, SanDecision::Deny { .. }));

    let csr =
        rotor::facts::parse_csr_pem("node.csr", kubelet_csr_pem("a", &["a"]).as_bytes()).unwrap();
    let ctx = CsrContext {
        signer_name: "kubernetes.io/kubelet-serving".into(),
        username: "system:node:a".into(),
        usages: vec![rotor::facts::Usage::ServerAuth],
        ..Default::default()
    };
    let outcome = bundle
        .review_csr(&CsrRequest::new(&csr, ctx, t0()))
        .unwrap();
    assert!(
        matches!(outcome.decision, CsrDecision::Abstain { .. }),
        "{:?}",
        outcome.decision
    );
    assert!(
        outcome
            .error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("refused before reading them")
    );
}

#[test]
fn the_precompiled_cache_is_used_and_survives_corruption() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(default_plugin("renewal-window")).unwrap();
    let engine1 = engine(cache.path());
    engine1
        .load("renewal-window", Hook::Renewal, &bytes)
        .unwrap();
    let mut entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 2, "the artifact and its digest: {entries:?}");
    let cwasm = entries[0].clone();
    let recorded = entries[1].clone();
    assert!(cwasm.to_string_lossy().ends_with(".cwasm"));
    assert!(recorded.to_string_lossy().ends_with(".cwasm.sha256"));
    let digest_of = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
    let original = std::fs::read(&cwasm).unwrap();
    assert_eq!(
        std::fs::read_to_string(&recorded).unwrap().trim(),
        digest_of(&original)
    );
    for p in [&cwasm, &recorded] {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    // A corrupt artifact (garbage, or one bit flipped anywhere, header included) is never
    // deserialized: it is recompiled and replaced, and the record vouches for the new one.
    let flips = [
        0usize,
        7,
        100,
        original.len() / 3,
        original.len() / 2,
        original.len() - 1,
    ];
    for (i, at) in flips.iter().enumerate() {
        let mut corrupt = std::fs::read(&cwasm).unwrap();
        corrupt[*at] ^= 1 << (i % 8);
        std::fs::write(&cwasm, &corrupt).unwrap();
        let engine2 = engine(cache.path());
        let plugin = engine2
            .load("renewal-window", Hook::Renewal, &bytes)
            .unwrap();
        let now = std::fs::read(&cwasm).unwrap();
        assert_ne!(now, corrupt, "flip at {at} was kept");
        assert_eq!(
            std::fs::read_to_string(&recorded).unwrap().trim(),
            digest_of(&now)
        );
        plugin
            .sandbox(Hook::Renewal, "{}", &SandboxLimits::default())
            .unwrap();
    }
    // A damaged or missing record also means recompiling, never trusting the artifact.
    std::fs::write(&recorded, "0000\n").unwrap();
    engine(cache.path())
        .load("renewal-window", Hook::Renewal, &bytes)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&recorded).unwrap().trim(),
        digest_of(&std::fs::read(&cwasm).unwrap())
    );
    std::fs::remove_file(&recorded).unwrap();
    engine(cache.path())
        .load("renewal-window", Hook::Renewal, &bytes)
        .unwrap();
    assert!(recorded.exists());
    std::fs::write(&cwasm, b"garbage").unwrap();
    engine(cache.path())
        .load("renewal-window", Hook::Renewal, &bytes)
        .unwrap();
    assert_ne!(std::fs::read(&cwasm).unwrap(), b"garbage");

    // A cache directory others can write to is not trusted (compiles in memory instead).
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let engine3 = engine(open.path());
    engine3
        .load("renewal-window", Hook::Renewal, &bytes)
        .unwrap();
    assert_eq!(std::fs::read_dir(open.path()).unwrap().count(), 0);
}

/// rotor:policy 0.3's `facts.details()`: the certificate of the decision being made, to that
/// decision only. Asked for in `configure` it traps (the plugin does not load); kept past its
/// call it no longer reads; a fresh instance per decision never sees an earlier one.
#[test]
fn a_certificate_handle_is_good_only_during_its_own_decision() {
    let cache = tempfile::tempdir().unwrap();
    let engine = engine(cache.path());
    let plugin = load(&engine, "hostile-details", Hook::Renewal);
    let limits = SandboxLimits::default();

    let err = plugin
        .configure(Hook::Renewal, r#"{"in_configure":true}"#, &limits)
        .unwrap_err();
    assert!(matches!(err.kind, PluginErrorKind::Trap { .. }), "{err}");
    assert!(err.to_string().contains("outside renewal.decide"), "{err}");

    let configured = plugin.configure(Hook::Renewal, "{}", &limits).unwrap();
    let first = renewal_request(3650);
    let mut second = renewal_request(3650);
    second.name = "serving-kubelet".into();
    assert_ne!(first.certificate.serial, second.certificate.serial);
    // A fresh instance per decision, as rotor decides: each sees its own certificate.
    for r in [&first, &second] {
        let d = configured.sandbox().unwrap().renewal(r).unwrap();
        let RenewalDecision::Keep { reason, .. } = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            reason,
            format!(
                "this decision's certificate: {} {}",
                r.name, r.certificate.serial
            )
        );
    }
    // One instance reused: the handle the first decision kept expired when its call ended.
    let mut reused = configured.sandbox().unwrap();
    reused.renewal(&first).unwrap();
    let err = reused.renewal(&second).unwrap_err();
    assert!(matches!(err.kind, PluginErrorKind::Trap { .. }), "{err}");
    assert!(
        !err.to_string().contains(&first.certificate.serial),
        "{err}"
    );
    // Handles are host memory: a decision that asks for them without end is stopped.
    let flood = plugin
        .configure(Hook::Renewal, r#"{"flood":true}"#, &limits)
        .unwrap();
    let err = flood.sandbox().unwrap().renewal(&first).unwrap_err();
    assert!(matches!(err.kind, PluginErrorKind::Trap { .. }), "{err}");
    assert!(err.to_string().contains("more than 16 times"), "{err}");
}
