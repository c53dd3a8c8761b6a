//! Issue 11's acceptance findings, one test (or more) per item: each failed before its fix.
//! Real data dirs, real compiled plugins (the default bundle and `hostile-stateful`), real CSRs
//! and a rustls handshake; the release binary under `make test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rotor::facts::{ExtendedKeyUsage, parse_certificates_pem};
use serde_json::{Value, json};

use crate::common::*;

const SERVING: &str = "kubernetes.io/kubelet-serving";
const SERVING_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

/// An initialized data dir (k3s unless `extra` says otherwise) at `t0()`.
fn init(tmp: &Path, extra: &[&str]) -> PathBuf {
    let data = tmp.join("data");
    let now = rfc3339(t0());
    let mut args = vec![
        "init",
        "--node-name",
        "server-1",
        "--node-ip",
        "192.168.1.10",
        "--now",
        &now,
    ];
    args.extend_from_slice(extra);
    rotor_ok(&data, &args);
    data
}

/// `rotor --data-dir DATA --bundle B ARGS` (the default bundle when `bundle` is `None`).
fn rotor_with(data: &Path, bundle: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--data-dir", data.to_str().unwrap()];
    if let Some(b) = bundle {
        all.extend(["--bundle", b.to_str().unwrap()]);
    }
    all.extend_from_slice(args);
    rotor(&all, &shared_cache())
}

/// A bundle whose CSR and SAN hooks (and renewal hook) are `hostile-stateful`: it approves
/// everything on an instance's first decision and panics on any later one.
fn stateful_bundle(dir: &Path) -> PathBuf {
    let plugin = test_plugin("hostile-stateful");
    write_bundle(
        dir,
        &[
            HookSpec {
                hook: "renewal",
                plugin: &plugin,
                extra: "failure_mode = \"error\"",
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
    )
}

fn leaf_not_after(pem_path: &Path) -> time::OffsetDateTime {
    parse_certificates_pem("cert", &std::fs::read(pem_path).unwrap()).unwrap()[0].not_after
}

/// `csr CMD --csr CSR --signer kubelet-serving --username system:node:NODE --group
/// system:nodes --usage U... --node-ip IP... --now NOW`.
fn serving_csr_args(
    cmd: &str,
    csr: &Path,
    node: &str,
    usages: &[&str],
    ips: &[&str],
    now: &str,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "csr",
        cmd,
        "--csr",
        csr.to_str().unwrap(),
        "--signer",
        SERVING,
        "--username",
        &format!("system:node:{node}"),
        "--group",
        "system:nodes",
        "--now",
        now,
    ]
    .map(String::from)
    .to_vec();
    for u in usages {
        args.extend(["--usage".into(), u.to_string()]);
    }
    for ip in ips {
        args.extend(["--node-ip".into(), ip.to_string()]);
    }
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

// 1. Renewal loops ---------------------------------------------------------------------------

/// (a) A 30-day leaf (shorter than the 90-day window) is not renewed again a minute after it was
/// issued, by the default plugin at every start.
#[test]
fn renewal_a_short_leaf_is_not_renewed_at_every_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let bundle = tmp.path().join("bundle");
    write_bundle(
        &bundle,
        &[HookSpec {
            hook: "renewal",
            plugin: &default_plugin("renewal-window"),
            extra: "",
            settings: "mode = \"window\"\nrenew_before_days = 90\nlifetime_days = 30",
        }],
    );
    // Day 300: inside the window, but a 30-day replacement would end before the 65 days the
    // leaves have left: kept until a replacement outlives them.
    let day300 = rfc3339(t0() + days(300));
    let (code, out, err) = rotor_with(&data, Some(&bundle), &["start", "--now", &day300]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to do"), "{out}");
    assert!(
        out.contains("renewed once a replacement outlives it"),
        "{out}"
    );
    // Day 340: 25 days left: every leaf renewed, for 30 days.
    let day340 = rfc3339(t0() + days(340));
    let (code, out, err) = rotor_with(&data, Some(&bundle), &["start", "--now", &day340]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("renewed 17 certificate(s)"), "{out}");
    let serving = data.join("server/tls/serving-kube-apiserver.crt");
    let first = leaf_not_after(&serving);
    assert_eq!(first, t0() + days(370));
    // A minute later: nothing to do (before the fix: all 17 again, new keys, one more backup).
    let later = rfc3339(t0() + days(340) + time::Duration::minutes(1));
    let (code, out, err) = rotor_with(&data, Some(&bundle), &["start", "--now", &later]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(leaf_not_after(&serving), first);
    // At 2/3 of the 30 days, they are renewed.
    let due = rfc3339(t0() + days(361));
    let (_, out, _) = rotor_with(&data, Some(&bundle), &["start", "--now", &due]);
    assert!(out.contains("renewed 17 certificate(s)"), "{out}");
}

/// (b) When the CA has less time left than the window, leaves clamped to its notAfter are kept
/// (a replacement could not outlive them) and `start` says to rotate the CA, once per CA;
/// `certificate check` shows it as a status.
#[test]
fn renewal_leaves_are_not_reissued_when_only_a_ca_rotation_helps() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    // The k3s CAs live 10 years (from t0 - 1 h); 60 days before their end the leaves expired
    // long ago: renewed, clamped to the CAs' notAfter.
    let near_end = t0() + days(3650 - 60);
    let (code, out, err) = rotor_at(&data, &["start", "--now", &rfc3339(near_end)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("renewed 17 certificate(s)"), "{out}");
    // The renewed leaves end with their CAs, 60 days on; the policy keeps them to 2/3 of that.
    let (code, out, _) = rotor_at(
        &data,
        &[
            "start",
            "--now",
            &rfc3339(near_end + time::Duration::minutes(1)),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to do"), "{out}");
    assert!(!out.contains(": rotate the CA"), "{out}");
    let generations = || {
        std::fs::read_dir(data.join(".rotor/generations"))
            .unwrap()
            .count()
    };
    let before = generations();
    // From then on the policy says renew, but a replacement would end when they do: kept, and
    // the operator told to rotate the CAs (before the fix: all 17 again at every start).
    for day in [41, 42, 59] {
        let at = rfc3339(near_end + days(day));
        let (code, out, err) = rotor_at(&data, &["start", "--now", &at]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("nothing to do"), "{out}");
        let rotate: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("warning:") && l.contains(": rotate the CA"))
            .collect();
        // Said once per CA that signs leaves (5 k3s CAs), not once per leaf.
        assert_eq!(rotate.len(), 5, "{out}");
        assert!(rotate[0].contains("expires on 2035-12-"), "{out}");
    }
    assert_eq!(generations(), before, "no generation was added");
    let at = rfc3339(near_end + days(41));
    let (code, out, _) = rotor_at(&data, &["certificate", "check", "--now", &at, "-o", "json"]);
    assert_eq!(code, 1, "{out}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    let serving = rows
        .iter()
        .find(|r| r["certificate"] == "serving-kube-apiserver")
        .unwrap();
    assert_eq!(serving["status"], "ROTATE CA", "{serving}");
    assert!(
        serving["detail"]
            .as_str()
            .unwrap()
            .starts_with("CA server-ca expires on"),
        "{serving}"
    );
}

// 2. State between decisions -------------------------------------------------------------------

/// `csr review` (three plugin decisions: CSR, SAN on the request, SAN on the template), a
/// 40-CSR `csr sign --jsonl` batch on one thread, and `start` (17 renewal decisions) each run
/// every decision in a fresh instance: a plugin that panics on its second decision in one
/// instance never fails.
#[test]
fn every_decision_runs_in_a_fresh_plugin_instance() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let bundle = stateful_bundle(&tmp.path().join("bundle"));
    let now = rfc3339(t0() + days(1));

    let csr = tmp.path().join("a.csr");
    std::fs::write(&csr, kubelet_csr_pem("a", &["a"])).unwrap();
    let args = serving_csr_args("review", &csr, "a", SERVING_USAGES, &[], &now);
    let (code, out, err) = rotor_with(&data, Some(&bundle), &strs(&args));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("approve:"), "{out}");
    assert!(!out.contains("panicked"), "{out}");

    let mut lines = String::new();
    for i in 0..40 {
        let node = format!("n{i}");
        let obj = csr_object(
            &format!("csr-{i}"),
            &kubelet_csr_pem(&node, &[&node]),
            &format!("system:node:{node}"),
            SERVING_USAGES,
        );
        lines.push_str(&format!("{obj}\n"));
    }
    let jsonl = tmp.path().join("batch.jsonl");
    std::fs::write(&jsonl, lines).unwrap();
    let (code, out, err) = rotor_with(
        &data,
        Some(&bundle),
        &[
            "csr",
            "sign",
            "--jsonl",
            jsonl.to_str().unwrap(),
            "--threads",
            "1",
            "--now",
            &now,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let results: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 40);
    for r in &results {
        // Approved by the CSR hook's own snapshot, names allowed by the SAN hook's (a SAN
        // decision from another hook's snapshot denies): each hook has its own `configure`.
        assert_eq!(r["decision"], "approve", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .unwrap_or("")
                .contains("configured for csr"),
            "{r}"
        );
    }

    // 17 renewal decisions, each the first of its instance (failure_mode = error: a panic
    // would fail the command).
    let (code, out, err) = rotor_with(&data, Some(&bundle), &["start", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    // hostile-stateful is a 0.3 plugin (as since 0.2): `configure` ran once, before the snapshot every
    // decision starts from, and never again.
    assert_eq!(
        out.matches("decision #1 of this instance, after 1 configure")
            .count(),
        17,
        "{out}"
    );
    assert!(!out.contains("decision #2"), "{out}");
}

/// A Kubernetes CertificateSigningRequest object as `kubectl get csr -o json` prints it.
fn csr_object(name: &str, pem: &str, user: &str, usages: &[&str]) -> Value {
    use base64::Engine;
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": SERVING,
            "username": user,
            "groups": ["system:nodes", "system:authenticated"],
            "usages": usages,
        }
    })
}

// 3. Signer usages and lifetimes ---------------------------------------------------------------

/// With a plugin that approves everything, the host still issues nothing outside the signer's
/// usages and caps the lifetime with its own per-signer maximum (365 days, or `--max-lifetime`).
#[test]
fn the_host_owns_each_signers_usages_and_longest_lifetime() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let bundle = stateful_bundle(&tmp.path().join("bundle"));
    let now_t = t0() + days(1);
    let now = rfc3339(now_t);
    let csr = tmp.path().join("a.csr");
    std::fs::write(&csr, kubelet_csr_pem("a", &["a"])).unwrap();
    let out_crt = tmp.path().join("a.crt");
    let sign = |usages: &[&str], extra: &[&str]| {
        let mut args = serving_csr_args("sign", &csr, "a", usages, &["10.0.0.5"], &now);
        args.extend(["--out", out_crt.to_str().unwrap(), "--output", "json"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        rotor_with(&data, Some(&bundle), &strs(&args))
    };

    // `any` (anyExtendedKeyUsage) and `client auth` on a serving signer: denied by the host,
    // before any plugin, with each reason; nothing written.
    let (code, out, err) = sign(
        &["digital signature", "server auth", "any", "client auth"],
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let codes: Vec<&str> = v["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["UsageNotPermittedForSigner", "UsageNotPermittedForSigner"],
        "{out}"
    );
    assert!(!out_crt.exists());

    // The plugin asks for 100 years: capped to 365 days (the CA would have allowed ~10 years).
    let (code, out, err) = sign(SERVING_USAGES, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let cert = &parse_certificates_pem("c", &std::fs::read(&out_crt).unwrap()).unwrap()[0];
    assert_eq!(cert.not_after, now_t + days(365));
    assert_eq!(cert.extended_key_usages, vec![ExtendedKeyUsage::ServerAuth]);
    assert!(
        out.contains("the most rotor issues for kubernetes.io/kubelet-serving"),
        "{out}"
    );
    std::fs::remove_file(&out_crt).unwrap();

    // A configured maximum for this signer wins over the default for all.
    let (code, out, err) = sign(
        SERVING_USAGES,
        &[
            "--max-lifetime",
            "90d",
            "--max-lifetime",
            "kubernetes.io/kubelet-serving=30d",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let cert = &parse_certificates_pem("c", &std::fs::read(&out_crt).unwrap()).unwrap()[0];
    assert_eq!(cert.not_after, now_t + days(30));
    let (code, _, err) = sign(SERVING_USAGES, &["--max-lifetime", "5m"]);
    assert_eq!(code, 2);
    assert!(err.contains("between 600 seconds and 36500 days"), "{err}");
    let (code, _, err) = sign(SERVING_USAGES, &["--max-lifetime", "example.com/x=30d"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a signer rotor signs for"), "{err}");
    std::fs::remove_file(&out_crt).unwrap();

    // Without the signer's own extended key usage, a certificate would be good for any purpose:
    // denied, however willing the plugin.
    let (code, out, _) = sign(&["digital signature", "key encipherment"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("UsageRequiredForSigner"), "{out}");
    assert!(!out_crt.exists());

    // The client signers: client auth only, never server auth.
    let client_csr = tmp.path().join("client.csr");
    std::fs::write(
        &client_csr,
        kubelet_csr_pem("a", &[]), // CN=system:node:a, O=system:nodes, no SANs
    )
    .unwrap();
    let client = |signer: &str, usages: &[&str]| {
        let mut args = vec![
            "csr",
            "sign",
            "--csr",
            client_csr.to_str().unwrap(),
            "--signer",
            signer,
            "--username",
            "system:node:a",
            "--output",
            "json",
            "--out",
            out_crt.to_str().unwrap(),
            "--now",
            &now,
        ];
        for u in usages {
            args.extend(["--usage", u]);
        }
        rotor_with(&data, Some(&bundle), &args)
    };
    for signer in [
        "kubernetes.io/kube-apiserver-client-kubelet",
        "kubernetes.io/kube-apiserver-client",
    ] {
        let (code, out, _) = client(signer, &["digital signature", "server auth", "client auth"]);
        assert_eq!(code, 1, "{signer}: {out}");
        assert!(out.contains("UsageNotPermittedForSigner"), "{out}");
        assert!(!out_crt.exists());
    }
    let (code, out, err) = client(
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "client auth"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let cert = &parse_certificates_pem("c", &std::fs::read(&out_crt).unwrap()).unwrap()[0];
    assert_eq!(cert.extended_key_usages, vec![ExtendedKeyUsage::ClientAuth]);
    std::fs::remove_file(&out_crt).unwrap();
    // legacy-unknown (refused by the v1 API, no usage rules): approved by this plugin, never
    // signed.
    let (code, _, err) = client("kubernetes.io/legacy-unknown", &["any"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no CA of this data dir signs for 'kubernetes.io/legacy-unknown'"),
        "{err}"
    );
    assert!(!out_crt.exists());
}

// 4. Evidence ----------------------------------------------------------------------------------

/// A DNS-only kubelet-serving CSR for a node the host holds no evidence for is left pending
/// (exit 3), as the README says; with evidence it is approved.
#[test]
fn a_dns_only_serving_csr_without_node_evidence_is_left_pending() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let csr = tmp.path().join("a.csr");
    std::fs::write(&csr, kubelet_csr_pem("a", &["a"])).unwrap();
    let now = rfc3339(t0() + days(1));
    let review = |ips: &[&str]| {
        let args = serving_csr_args("review", &csr, "a", SERVING_USAGES, ips, &now);
        rotor_at(&data, &strs(&args))
    };
    let (code, out, _) = review(&[]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with("abstain: the host holds no addresses"),
        "{out}"
    );
    let (code, out, _) = review(&["10.0.0.5"]);
    assert_eq!(code, 0, "{out}");
}

// 5. kubeadm loopback names --------------------------------------------------------------------

/// `init --profile kubeadm --node-ip 127.0.0.1`: the apiserver certificate covers the address
/// admin.conf points at (a rustls handshake as kubectl makes it succeeds), and an explicit
/// `--tls-san localhost` is kept.
#[test]
fn kubeadm_apiserver_covers_the_address_its_kubeconfigs_point_at() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let now = rfc3339(t0());
    rotor_ok(
        &data,
        &[
            "init",
            "--profile",
            "kubeadm",
            "--node-name",
            "cp-1",
            "--node-ip",
            "127.0.0.1",
            "--tls-san",
            "localhost",
            "--tls-san",
            "::1",
            "--now",
            &now,
        ],
    );
    let admin = rotor::cluster::read_kubeconfig_credential(
        "admin.conf",
        &std::fs::read(data.join("admin.conf")).unwrap(),
    )
    .unwrap();
    assert_eq!(admin.server, "https://127.0.0.1:6443");
    let apiserver =
        &parse_certificates_pem("c", &std::fs::read(data.join("pki/apiserver.crt")).unwrap())
            .unwrap()[0];
    let names = apiserver.sans.all_names();
    for want in ["127.0.0.1", "localhost", "::1"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    // A real handshake: the client (admin.conf's credentials) asks for 127.0.0.1 and trusts
    // only the cluster CA.
    let cert = tmp.path().join("admin.crt");
    let key = tmp.path().join("admin.key");
    std::fs::write(&cert, &admin.cert_pem).unwrap();
    std::fs::write(&key, admin.key_pem.unwrap()).unwrap();
    let ca = pem_certs(&data.join("pki/ca.crt"));
    let cn = tls_handshake_named(
        "127.0.0.1",
        (
            &data.join("pki/apiserver.crt"),
            &data.join("pki/apiserver.key"),
        ),
        &ca,
        (&cert, &key),
        &ca,
    )
    .unwrap();
    assert_eq!(cn, "kubernetes-admin");
}

// 6. No panics ---------------------------------------------------------------------------------

/// Every subcommand that takes `--now`, with times no clock can show: a clear error naming the
/// flag, exit 2, never a panic, and nothing changed on disk.
#[test]
fn hostile_now_values_are_clear_errors_for_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let kubeadm = tmp.path().join("kubeadm");
    rotor_ok(
        &kubeadm,
        &[
            "init",
            "--profile",
            "kubeadm",
            "--node-name",
            "cp-1",
            "--now",
            &rfc3339(t0()),
        ],
    );
    let csr = tmp.path().join("a.csr");
    std::fs::write(&csr, kubelet_csr_pem("a", &["a"])).unwrap();
    let csr = csr.to_str().unwrap();
    let out_dir = tmp.path().join("out");
    let out_dir = out_dir.to_str().unwrap();
    let fresh = tmp.path().join("fresh");
    let k3s_cmds: Vec<Vec<&str>> = vec![
        vec!["start"],
        vec!["start", "--dry-run"],
        vec!["certificate", "rotate"],
        vec!["certificate", "check"],
        vec!["certificate", "rotate-ca", "--path", out_dir],
        vec!["certificate", "rotate-default-ca", "--out", out_dir],
        vec!["certificate", "rotate-service-key"],
        vec!["token", "rotate", "--new-token", "K10::server:abcdefabcdef"],
        vec![
            "csr",
            "review",
            "--csr",
            csr,
            "--signer",
            SERVING,
            "--username",
            "system:node:a",
        ],
        vec![
            "csr",
            "sign",
            "--csr",
            csr,
            "--signer",
            SERVING,
            "--username",
            "system:node:a",
        ],
    ];
    let kubeadm_cmds: Vec<Vec<&str>> = vec![
        vec!["certs", "check-expiration"],
        vec!["certs", "renew", "all"],
    ];
    let before = (tree(&data), tree(&kubeadm));
    for now in [
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "1969-12-31T23:59:59Z",
        "9000-01-01T00:00:01Z",
    ] {
        let mut runs: Vec<(PathBuf, Vec<&str>)> = Vec::new();
        runs.extend(k3s_cmds.iter().map(|c| (data.clone(), c.clone())));
        runs.extend(kubeadm_cmds.iter().map(|c| (kubeadm.clone(), c.clone())));
        runs.push((fresh.clone(), vec!["init", "--node-name", "n"]));
        runs.push((
            fresh.clone(),
            vec!["init", "--profile", "kubeadm", "--node-name", "n"],
        ));
        for (dir, cmd) in runs {
            let mut args = cmd.clone();
            args.extend(["--now", now]);
            let (code, out, err) = rotor_at(&dir, &args);
            assert_eq!(code, 2, "{args:?}: {out}{err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(
                err.contains("'--now") && err.contains("outside the times rotor can act at"),
                "{args:?}: {err}"
            );
        }
    }
    let (code, _, err) = rotor(
        &[
            "policy",
            "eval",
            "--bundle",
            "policies/default",
            "--hook",
            "renewal",
            "--input",
            "policies/default/fixtures/renewal.json",
            "--now",
            "9999-12-31T23:59:59Z",
        ],
        &shared_cache(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        (tree(&data), tree(&kubeadm)),
        before,
        "nothing changed on disk"
    );
    assert!(!fresh.exists());
    // At the edges themselves every command runs to its end: a clean exit or a clear error,
    // never a panic.
    for (i, now) in ["1970-01-01T00:00:00Z", "9000-01-01T00:00:00Z"]
        .iter()
        .enumerate()
    {
        let k3s_edge = tmp.path().join(format!("edge-k3s-{i}"));
        let kubeadm_edge = tmp.path().join(format!("edge-kubeadm-{i}"));
        let runs: Vec<(&Path, Vec<&str>)> = vec![
            (&k3s_edge, vec!["init", "--node-name", "n"]),
            (
                &kubeadm_edge,
                vec!["init", "--profile", "kubeadm", "--node-name", "n"],
            ),
            (&kubeadm_edge, vec!["certs", "renew", "all"]),
            (&kubeadm_edge, vec!["certs", "check-expiration"]),
            (&data, vec!["certificate", "check"]),
            (&data, vec!["start", "--dry-run"]),
            (&data, vec!["start"]),
            (&data, vec!["certificate", "rotate"]),
            (
                &data,
                vec!["certificate", "rotate-default-ca", "--out", out_dir],
            ),
            (
                &data,
                vec![
                    "csr",
                    "sign",
                    "--csr",
                    csr,
                    "--signer",
                    SERVING,
                    "--username",
                    "system:node:a",
                    "--group",
                    "system:nodes",
                    "--node-ip",
                    "10.0.0.5",
                ],
            ),
        ];
        for (dir, cmd) in runs {
            let mut args = cmd.clone();
            args.extend(["--now", now]);
            let (code, out, err) = rotor_at(dir, &args);
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!((0..=3).contains(&code), "{args:?}: {code}: {out}{err}");
        }
        let _ = std::fs::remove_dir_all(out_dir);
    }
}

/// Certificates in the data dir with times at the ends of what X.509 can write (years 1 and
/// 9999): `start` and `certificate check` report them, never panic.
#[test]
fn certificates_dated_at_the_ends_of_time_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let ancient = time::macros::datetime!(0001-01-01 00:00 UTC);
    let last = time::macros::datetime!(9999-12-31 23:59:59 UTC);
    let ca = Ca::new("odd-ca", ancient, last);
    for (name, nb, na) in [
        ("serving-kube-apiserver", ancient, last),
        ("client-admin", ancient, ancient + days(1)),
        ("client-controller", last - days(1), last),
    ] {
        let pem = ca.leaf_pem(name, &["localhost"], nb, na);
        std::fs::write(data.join(format!("server/tls/{name}.crt")), pem).unwrap();
    }
    for now in [
        t0(),
        time::macros::datetime!(1970-01-01 00:00 UTC),
        clock_edge(),
    ] {
        let now = rfc3339(now);
        for args in [
            vec!["start", "--dry-run", "--now", &now],
            vec!["certificate", "check", "--now", &now],
            vec!["start", "--now", &now],
        ] {
            let (code, out, err) = rotor_at(&data, &args);
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!((0..=2).contains(&code), "{args:?}: {code}: {out}{err}");
        }
    }
}

fn clock_edge() -> time::OffsetDateTime {
    time::macros::datetime!(9000-01-01 00:00 UTC)
}

/// Every subcommand with its standard output closed before it prints (`| head -0`): no panic,
/// the exit status it would have had, and a writing command still makes its change.
#[test]
fn a_closed_stdout_never_panics_in_any_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let csr = tmp.path().join("a.csr");
    std::fs::write(&csr, kubelet_csr_pem("a", &["a"])).unwrap();
    let csr = csr.to_str().unwrap();
    let now = rfc3339(t0() + days(300));
    let fresh = tmp.path().join("fresh");
    let kubeadm = tmp.path().join("kubeadm");
    let jsonl = tmp.path().join("csrs.jsonl");
    let mut lines = String::new();
    for i in 0..3 {
        let node = format!("n{i}");
        let obj = csr_object(
            &format!("csr-{i}"),
            &kubelet_csr_pem(&node, &[&node]),
            &format!("system:node:{node}"),
            SERVING_USAGES,
        );
        lines.push_str(&format!("{obj}\n"));
    }
    std::fs::write(&jsonl, lines).unwrap();
    let evidence = tmp.path().join("nodes.json");
    std::fs::write(
        &evidence,
        json!({"n0": ["10.0.0.1"], "n1": ["10.0.0.2"], "n2": ["10.0.0.3"]}).to_string(),
    )
    .unwrap();
    let (jsonl, evidence) = (
        jsonl.to_str().unwrap().to_string(),
        evidence.to_str().unwrap().to_string(),
    );
    let review = serving_csr_args("review", Path::new(csr), "a", &[], &["10.0.0.5"], &now);
    let sign = serving_csr_args("sign", Path::new(csr), "a", &[], &["10.0.0.5"], &now);
    let runs: Vec<(&Path, Vec<&str>, i32)> = vec![
        (&fresh, vec!["init", "--node-name", "n", "--now", &now], 0),
        (
            &kubeadm,
            vec![
                "init",
                "--profile",
                "kubeadm",
                "--node-name",
                "n",
                "--now",
                &now,
            ],
            0,
        ),
        (
            &kubeadm,
            vec!["certs", "check-expiration", "--now", &now],
            0,
        ),
        (&data, vec!["start", "--dry-run", "--now", &now], 0),
        (&data, vec!["start", "--now", &now], 0),
        (&data, vec!["certificate", "check", "--now", &now], 0),
        (&data, vec!["certificate", "rotate", "--now", &now], 0),
        (&data, strs(&review), 0),
        (&data, strs(&sign), 0),
        (
            &data,
            vec![
                "csr",
                "sign",
                "--jsonl",
                &jsonl,
                "--node-evidence",
                &evidence,
                "--now",
                &now,
            ],
            0,
        ),
        (
            &data,
            vec![
                "token",
                "rotate",
                "--new-token",
                "K10::server:0123456789abcdef0123",
            ],
            0,
        ),
        (
            &data,
            vec!["certificate", "rotate-service-key", "--now", &now],
            0,
        ),
        (&kubeadm, vec!["certs", "renew", "all", "--now", &now], 0),
        (
            &data,
            vec![
                "policy",
                "eval",
                "--hook",
                "renewal",
                "--input",
                "policies/default/fixtures/inputs/serving-kube-apiserver.crt",
                "--now",
                &now,
            ],
            0,
        ),
        (&data, vec!["policy", "check"], 0),
        (
            &data,
            vec!["policy", "test", "policies/default/fixtures"],
            0,
        ),
        (&data, vec!["--help"], 0),
        (&data, vec!["--version"], 0),
    ];
    for (dir, args, want) in runs {
        let mut child = Command::new(rotor_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(&args)
            .env("ROTOR_PLUGIN_CACHE", shared_cache())
            .env_remove("ROTOR_BUNDLE")
            .current_dir(repo_root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(o.status.code(), Some(want), "{args:?}: {err}");
    }
    // The writing commands made their changes.
    assert!(fresh.join("server/tls/server-ca.crt").exists());
    assert!(kubeadm.join("pki/ca.crt").exists());
    let token = std::fs::read_to_string(data.join("server/token")).unwrap();
    assert!(token.trim().ends_with(":0123456789abcdef0123"), "{token}");
    let (_, out, _) = rotor_at(&data, &["start", "--dry-run", "--now", &now]);
    assert!(
        out.contains("service.key"),
        "the new service key waits for start: {out}"
    );
    assert!(
        !out.contains("  renew "),
        "the rotation renewed every leaf: {out}"
    );
}

// 7. Lost results ------------------------------------------------------------------------------

/// `csr sign --jsonl F --out-dir D` writes one file per CSR, named by the object's name (else
/// the line number), and never overwrites.
#[test]
fn a_jsonl_batch_writes_one_output_per_csr_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let mut lines = String::new();
    for (i, name) in ["csr-a", "csr-b", "csr-a", ""].iter().enumerate() {
        let node = format!("n{i}");
        let mut obj = csr_object(
            name,
            &kubelet_csr_pem(&node, &[&node]),
            &format!("system:node:{node}"),
            SERVING_USAGES,
        );
        if name.is_empty() {
            obj["metadata"] = json!({});
        }
        lines.push_str(&format!("{obj}\n"));
    }
    let jsonl = tmp.path().join("csrs.jsonl");
    std::fs::write(&jsonl, lines).unwrap();
    let evidence = tmp.path().join("nodes.json");
    std::fs::write(
        &evidence,
        json!({"n0": ["10.0.0.1"], "n1": ["10.0.0.2"], "n2": ["10.0.0.3"], "n3": ["10.0.0.4"]})
            .to_string(),
    )
    .unwrap();
    let out_dir = tmp.path().join("signed");
    let now = rfc3339(t0() + days(1));
    let sign = || {
        rotor_at(
            &data,
            &[
                "csr",
                "sign",
                "--jsonl",
                jsonl.to_str().unwrap(),
                "--node-evidence",
                evidence.to_str().unwrap(),
                "--out-dir",
                out_dir.to_str().unwrap(),
                "--now",
                &now,
            ],
        )
    };
    let (code, out, err) = sign();
    assert_eq!(code, 0, "{out}{err}");
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "csr-a-2.json",
            "csr-a.json",
            "csr-b.json",
            "csrs-line-4.json"
        ]
    );
    // Each file holds its own signed object.
    let mut certs = std::collections::BTreeSet::new();
    for f in &files {
        let v: Value = serde_json::from_slice(&std::fs::read(out_dir.join(f)).unwrap()).unwrap();
        certs.insert(v["status"]["certificate"].as_str().unwrap().to_string());
    }
    assert_eq!(certs.len(), 4);
    let before = tree(&out_dir);
    let (code, _, err) = sign();
    assert_eq!(code, 2);
    assert!(
        err.contains("already exists; --out-dir never overwrites"),
        "{err}"
    );
    assert_eq!(tree(&out_dir), before);
}

// 8. Smaller ones ------------------------------------------------------------------------------

/// `start`, `token rotate` (and every command taking `--token`) refuse a token whose CA hash is
/// not the cluster's, as `init` and `--new-token` do; nothing changes.
#[test]
fn a_token_pinning_another_ca_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let token = std::fs::read_to_string(data.join("server/token")).unwrap();
    let (_, rest) = token.trim().split_once("::").unwrap();
    let wrong = format!("K10{}::{rest}", "ab".repeat(32));
    let before = tree(&data);
    let later = rfc3339(t0() + days(300));
    for args in [
        vec!["start", "--token", &wrong, "--now", &later],
        vec![
            "token",
            "rotate",
            "--token",
            &wrong,
            "--new-token",
            "K10::server:0123456789abcdef",
        ],
        vec!["certificate", "rotate-service-key", "--token", &wrong],
    ] {
        let (code, out, err) = rotor_at(&data, &args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("does not match the cluster CA"), "{err}");
    }
    assert_eq!(tree(&data), before);
    // The right token (and a bare password) still work.
    rotor_ok(&data, &["start", "--token", token.trim(), "--now", &later]);
    let password = rest.rsplit_once(':').unwrap().1;
    rotor_ok(&data, &["start", "--dry-run", "--token", password]);
}

/// Clock errors are named as such: a `--now` before a CA's notBefore says "not valid until",
/// `start` warns about certificates not yet valid (the clock moved back) and about writing
/// certificates dated after the system clock.
#[test]
fn clock_problems_are_named_and_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    // Two years before the CAs: a leaf issued then would end before they begin.
    let (code, out, err) = rotor_at(
        &data,
        &["certificate", "rotate", "--now", &rfc3339(t0() - days(730))],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("is not valid until"), "{err}");
    assert!(!err.contains("expired"), "{err}");
    // The clock moved back a day: everything is kept, and start says why check is unhappy.
    let (code, out, _) = rotor_at(&data, &["start", "--now", &rfc3339(t0() - days(1))]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: CA server-ca is not valid until"),
        "{out}"
    );
    assert!(out.contains("has it moved back?"), "{out}");
    // `--now` in the future writes certificates not valid yet at the real time: loudly said.
    let future = time::OffsetDateTime::now_utc() + days(400);
    let (code, out, err) = rotor_at(&data, &["certificate", "rotate", "--now", &rfc3339(future)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("WARNING: --now"), "{err}");
    assert!(err.contains("after the system clock"), "{err}");
}

/// A bundle that fails to load says its plugin error once; `--help` lists the global options
/// under their own heading; a PEM CSR without `--usage` gets its signer's standard usages.
#[test]
fn smaller_findings_messages_help_and_usage_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let data = init(tmp.path(), &[]);
    let bundle = tmp.path().join("bundle");
    write_bundle(
        &bundle,
        &[HookSpec {
            hook: "renewal",
            plugin: &default_plugin("renewal-window"),
            extra: "",
            settings: "",
        }],
    );
    let manifest = bundle.join("bundle.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let pinned = text.split("sha256 = \"").nth(1).unwrap()[..64].to_string();
    std::fs::write(&manifest, text.replace(&pinned, &"0".repeat(64))).unwrap();
    let (code, _, err) = rotor_with(&data, Some(&bundle), &["start", "--dry-run"]);
    assert_eq!(code, 2);
    assert_eq!(err.matches("does not match the pinned").count(), 1, "{err}");

    let (_, help, _) = rotor_at(&data, &["start", "--help"]);
    let global = help.find("Global options:").expect(&help);
    assert!(help.find("--dry-run").unwrap() < global, "{help}");
    assert!(help.find("--data-dir").unwrap() > global, "{help}");

    let csr = tmp.path().join("a.csr");
    std::fs::write(&csr, kubelet_csr_pem("a", &["a"])).unwrap();
    let (code, out, err) = rotor_at(
        &data,
        &[
            "csr",
            "review",
            "--csr",
            csr.to_str().unwrap(),
            "--signer",
            SERVING,
            "--username",
            "system:node:a",
            "--group",
            "system:nodes",
            "--node-ip",
            "10.0.0.5",
            "--now",
            &rfc3339(t0() + days(1)),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("no --usage given: using 'digital signature', 'key encipherment', 'server auth' (the signer's standard usages)"),
        "{err}"
    );
}
