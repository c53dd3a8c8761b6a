//! The `rotor policy` commands as a vendor or operator runs them: real binary, real files.

use crate::common::*;

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn leaf_file(dir: &std::path::Path) -> std::path::PathBuf {
    let ca = Ca::new("k3s-server-ca", t0(), t0() + days(3650));
    let pem = ca.leaf_pem(
        "kube-apiserver",
        &["kubernetes", "127.0.0.1"],
        t0(),
        t0() + days(365),
    );
    let path = dir.join("serving-kube-apiserver.crt");
    std::fs::write(&path, pem).unwrap();
    path
}

#[test]
fn eval_says_renew_at_30_days_and_keep_at_300() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let leaf = leaf_file(dir.path());
    let leaf = leaf.to_str().unwrap();

    let now = rfc3339(t0() + days(335));
    let (code, out, err) = rotor(
        &[
            "policy", "eval", "--hook", "renewal", "--input", leaf, "--now", &now,
        ],
        cache.path(),
    );
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["decision"], "renew", "{out}");
    assert_eq!(json["plugin"], "renewal-window");
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .contains("within the 90-day renewal window"),
        "{out}"
    );

    let now = rfc3339(t0() + days(65));
    let (code, out, err) = rotor(
        &[
            "policy", "eval", "--hook", "renewal", "--input", leaf, "--now", &now,
        ],
        cache.path(),
    );
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["decision"], "keep", "{out}");
    assert_eq!(json["renew_at"], rfc3339(t0() + days(275)));
}

#[test]
fn eval_on_a_failing_plugin_exits_non_zero_naming_plugin_and_hook() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let leaf = leaf_file(dir.path());
    let plugin = test_plugin("hostile-trap");
    let bundle = write_bundle(
        &dir.path().join("b"),
        &[HookSpec {
            hook: "renewal",
            plugin: &plugin,
            extra: "",
            settings: "",
        }],
    );
    let (code, out, err) = rotor(
        &[
            "--bundle",
            bundle.to_str().unwrap(),
            "policy",
            "eval",
            "--hook",
            "renewal",
            "--input",
            leaf.to_str().unwrap(),
            "--now",
            &rfc3339(t0() + days(335)),
        ],
        cache.path(),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.starts_with("rotor: plugin 'hostile-trap' (renewal hook): trapped"),
        "{err}"
    );
    // What the host would do (the built-in rule) is still printed.
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["source"], "failure_mode");
    assert_eq!(json["decision"], "renew");
    assert_eq!(json["error"]["code"], "trap");
}

#[test]
fn check_lists_every_hook() {
    let cache = tempfile::tempdir().unwrap();
    let (code, out, err) = rotor(&["policy", "check"], cache.path());
    assert_eq!(code, 0, "{err}");
    for expected in [
        "bundle default",
        "renewal  plugin renewal-window",
        "san      plugin san-validation",
        "csr      plugin csr-approval",
        "(matches the pin)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in\n{out}");
    }
}

#[test]
fn shipped_fixtures_pass_against_their_bundles() {
    let cache = tempfile::tempdir().unwrap();
    for name in ["default", "strict"] {
        let bundle = format!("policies/{name}");
        let fixtures = format!("policies/{name}/fixtures");
        let (code, out, err) = rotor(
            &["--bundle", &bundle, "policy", "test", &fixtures],
            cache.path(),
        );
        assert_eq!(code, 0, "{name}:\n{out}{err}");
        assert!(out.contains(" 0 failed"), "{out}");
        let passed: usize = out.lines().filter(|l| l.starts_with("ok ")).count();
        assert!(passed >= 10, "only {passed} cases for {name}");
    }
}

#[test]
fn a_failing_fixture_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let leaf = leaf_file(dir.path());
    let case = serde_json::json!({
        "name": "wrong on purpose",
        "hook": "renewal",
        "now": rfc3339(t0() + days(10)),
        "input_file": leaf.file_name().unwrap().to_str().unwrap(),
        "expect": {"decision": "renew"}
    });
    std::fs::write(dir.path().join("case.json"), case.to_string()).unwrap();
    let (code, out, _) = rotor(
        &["policy", "test", dir.path().to_str().unwrap()],
        cache.path(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  case.json: wrong on purpose"), "{out}");
    assert!(
        out.contains("expected decision 'renew', got 'keep'"),
        "{out}"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let leaf = leaf_file(dir.path());
    let leaf = leaf.to_str().unwrap();

    let (code, _, err) = rotor(
        &[
            "policy", "eval", "--hook", "renewal", "--input", leaf, "--now", "tomorrow",
        ],
        cache.path(),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("'--now <NOW>': 'tomorrow' is not an RFC 3339 time"),
        "{err}"
    );

    let missing = dir.path().join("nope.pem");
    let (code, _, err) = rotor(
        &[
            "policy",
            "eval",
            "--hook",
            "renewal",
            "--input",
            missing.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("nope.pem"), "{err}");

    let (code, _, err) = rotor(
        &["policy", "eval", "--hook", "csr", "--input", leaf],
        cache.path(),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("the csr hook needs a CERTIFICATE REQUEST"),
        "{err}"
    );

    let truncated = dir.path().join("truncated.pem");
    let text = std::fs::read_to_string(leaf).unwrap();
    std::fs::write(&truncated, &text[..text.len() / 3]).unwrap();
    let (code, _, err) = rotor(
        &[
            "policy",
            "eval",
            "--hook",
            "renewal",
            "--input",
            truncated.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("truncated.pem: malformed PEM"), "{err}");

    let csr = dir.path().join("node.csr");
    std::fs::write(&csr, kubelet_csr_pem("a", &["a"])).unwrap();
    let (code, _, err) = rotor(
        &[
            "policy",
            "eval",
            "--hook",
            "csr",
            "--input",
            csr.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("needs --signer"), "{err}");
}

#[test]
fn csr_controller_refuses_bad_settings_before_reaching_any_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("none").display().to_string();
    let missing = tmp.path().join("no-such-kubeconfig").display().to_string();
    for (args, says) in [
        (
            vec![
                "csr",
                "controller",
                "--sign",
                "no-slash",
                "--kubeconfig",
                &missing,
            ],
            "--sign no-slash: a signer name is a domain and a path",
        ),
        (
            vec![
                "--data-dir",
                &dir,
                "csr",
                "controller",
                "--sign",
                "example.com/x",
            ],
            "--sign needs the data dir's CAs",
        ),
        (
            vec![
                "csr",
                "controller",
                "--lease-duration",
                "10s",
                "--renew-deadline",
                "10s",
            ],
            "--lease-duration must be longer than --renew-deadline",
        ),
        (
            vec!["csr", "controller", "--no-listen", "--kubeconfig", &missing],
            "no-such-kubeconfig",
        ),
        (
            vec![
                "csr",
                "controller",
                "--signer",
                "bogus",
                "--kubeconfig",
                &missing,
            ],
            "--signer bogus: a signer name is a domain and a path",
        ),
        (
            vec![
                "csr",
                "controller",
                "--identity",
                "",
                "--kubeconfig",
                &missing,
            ],
            "--identity (or POD_NAME) is empty",
        ),
        (
            vec![
                "csr",
                "controller",
                "--max-lifetime",
                "example.com/x=30d",
                "--kubeconfig",
                &missing,
            ],
            "rotor signs only for the signers given with --sign",
        ),
    ] {
        let (code, out, err) = rotor(&args, &shared_cache());
        assert_eq!(code, 2, "{args:?}: {out}\n{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
