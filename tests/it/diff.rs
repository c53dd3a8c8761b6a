//! `rotor policy diff` between the shipped default and strict bundles, over a real data dir,
//! CSR objects and the default bundle's fixtures: the decisions the documents say differ do,
//! side by side with their reasons; a bundle against itself changes nothing.

use base64::Engine;
use serde_json::Value;

use crate::common::{kubelet_csr_pem, rotor_at, rotor_ok, tree};

/// A kubelet-serving CertificateSigningRequest object for node `a` with `usages`.
fn csr_object(name: &str, usages: &[&str]) -> String {
    let pem = kubelet_csr_pem("a", &["a"]);
    serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": "kubernetes.io/kubelet-serving",
            "username": "system:node:a",
            "groups": ["system:nodes", "system:authenticated"],
            "usages": usages,
        }
    })
    .to_string()
}

fn changes(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn policy_diff_reports_what_strict_changes_over_default_and_nothing_against_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = tmp.path().join("data");
    rotor_ok(
        &dd,
        &[
            "init",
            "--profile",
            "k3s",
            "--node-name",
            "server-1",
            "--node-ip",
            "10.0.0.10",
        ],
    );
    let csrs = tmp.path().join("csrs");
    std::fs::create_dir_all(&csrs).unwrap();
    // ECDSA keys: strict allows 'key encipherment' only for RSA; default does not care.
    std::fs::write(
        csrs.join("with-key-encipherment.json"),
        csr_object(
            "with-key-encipherment",
            &["digital signature", "key encipherment", "server auth"],
        ),
    )
    .unwrap();
    std::fs::write(
        csrs.join("plain.json"),
        csr_object("plain", &["digital signature", "server auth"]),
    )
    .unwrap();
    let evidence = tmp.path().join("nodes.json");
    std::fs::write(&evidence, r#"{"a": ["10.0.0.5"]}"#).unwrap();
    let before = tree(&dd);
    let args = |current: &str, candidate: &str, json: bool| {
        let mut a = vec![
            "policy",
            "diff",
            "--bundle",
            current,
            "--candidate",
            candidate,
            "--certificates",
            "--fixtures",
            "policies/default/fixtures",
            "--csr-dir",
            csrs.to_str().unwrap(),
            "--node-evidence",
            evidence.to_str().unwrap(),
            "--sweep",
            "365d",
        ];
        if json {
            a.push("--json");
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        rotor_at(&dd, &a)
    };

    let (code, out, err) = run(args("policies/default", "policies/strict", true));
    assert_eq!(code, 1, "changes exit 1:\n{out}\n{err}");
    let all = changes(&out);
    let find = |hook: &str, input: &str, subject: &str| -> Vec<&Value> {
        all.iter()
            .filter(|c| c["hook"] == hook && c["input"] == input)
            .filter(|c| c["subject"].as_str().unwrap().contains(subject))
            .collect()
    };

    // Renewal timing: strict renews at 2/3 of the lifetime, default in the last 90 days. A
    // fresh one-year leaf is kept by both today and renewed by both at the end of the year;
    // between, strict renews while default keeps.
    let serving = find("renewal", "certificate", "serving-kube-apiserver");
    assert_eq!(serving.len(), 1, "{out}");
    let c = serving[0];
    assert_eq!(c["current"]["decision"], "keep", "{c}");
    assert_eq!(c["candidate"]["decision"], "renew", "{c}");
    let days = c["period"]["days"].as_u64().unwrap();
    assert!((1..365).contains(&days), "{c}");
    assert!(
        c["current"]["reason"]
            .as_str()
            .unwrap()
            .contains("90-day renewal window"),
        "{c}"
    );
    assert!(
        c["candidate"]["reason"]
            .as_str()
            .unwrap()
            .contains("66.67%"),
        "{c}"
    );
    // Every leaf of the data dir changes the same way.
    assert!(find("renewal", "certificate", "").len() >= 10, "{out}");

    // CSR fixtures: the kubelet-serving request with 'key encipherment' on an ECDSA key, and
    // the bootstrap client request strict leaves to the operator.
    let serving_csr = find(
        "csr",
        "fixture",
        "a kubelet serving CSR from its own node is approved",
    );
    assert_eq!(serving_csr.len(), 1, "{out}");
    assert_eq!(serving_csr[0]["current"]["decision"], "approve");
    assert_eq!(serving_csr[0]["candidate"]["decision"], "deny");
    assert_eq!(
        serving_csr[0]["candidate"]["codes"],
        serde_json::json!(["UsageNotAllowed"])
    );
    let bootstrap = find("csr", "fixture", "bootstrapping kubelet");
    assert_eq!(bootstrap.len(), 1, "{out}");
    assert_eq!(bootstrap[0]["candidate"]["decision"], "abstain");

    // The CSR objects, through the whole review (host checks, SAN and CSR hooks).
    let ke = find("csr", "csr", "with-key-encipherment");
    assert_eq!(ke.len(), 1, "{out}");
    assert_eq!(ke[0]["current"]["decision"], "approve", "{}", ke[0]);
    assert_eq!(ke[0]["candidate"]["decision"], "deny", "{}", ke[0]);
    assert!(find("csr", "csr", "plain").is_empty(), "{out}");

    // The report: side by side, with the count; same exit.
    let (code, text, _) = run(args("policies/default", "policies/strict", false));
    assert_eq!(code, 1);
    assert!(text.contains("candidate  strict"), "{text}");
    assert!(
        text.contains(&format!("{} of ", all.len())) && text.contains("decisions change"),
        "{text}"
    );

    // A bundle against itself: nothing changes, exit 0.
    for b in ["policies/default", "policies/strict"] {
        let (code, out, err) = run(args(b, b, false));
        assert_eq!(code, 0, "{b} against itself:\n{out}\n{err}");
        assert!(out.contains("\n0 of "), "{out}");
    }
    assert_eq!(before, tree(&dd), "diff changed the data dir");
}
