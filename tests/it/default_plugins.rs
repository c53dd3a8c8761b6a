//! The default plugins through the shipped bundles, on real certificates and CSRs.

use rotor::contract::{CsrContext, CsrRequest, RenewalRequest, SanStage};
use rotor::contract::{CsrDecision, RenewalDecision, SanDecision};
use rotor::facts::{Usage, parse_certificates_pem, parse_csr_pem};
use rotor::policy::{Bundle, Source};

use crate::common::*;

fn bundle(name: &str) -> Bundle {
    let cache = tempfile::tempdir().unwrap();
    Bundle::load(
        &engine(cache.path()),
        &repo_root().join("policies").join(name),
    )
    .unwrap()
}

fn leaf_request(now_days: i64) -> RenewalRequest {
    let ca = Ca::new("k3s-server-ca", t0(), t0() + days(3650));
    let pem = ca.leaf_pem(
        "kube-apiserver",
        &["kubernetes", "10.43.0.1"],
        t0(),
        t0() + days(365),
    );
    let certs = parse_certificates_pem("serving-kube-apiserver.crt", pem.as_bytes()).unwrap();
    RenewalRequest {
        name: "serving-kube-apiserver".into(),
        certificate: certs[0].clone().into(),
        issuer_not_after: Some(certs[1].not_after),
        now: t0() + days(now_days),
    }
}

#[test]
fn default_renewal_renews_inside_90_days_and_keeps_outside() {
    let b = bundle("default");
    let renew = b.renewal(&leaf_request(335)).unwrap();
    assert_eq!(renew.source, Source::Plugin);
    let RenewalDecision::Renew { reason, .. } = &renew.decision else {
        panic!("{:?}", renew.decision)
    };
    assert!(
        reason.contains("in 30 days") && reason.contains("90-day renewal window"),
        "{reason}"
    );

    let keep = b.renewal(&leaf_request(65)).unwrap();
    let RenewalDecision::Keep { reason, renew_at } = &keep.decision else {
        panic!("{:?}", keep.decision)
    };
    assert!(reason.contains("in 300 days"), "{reason}");
    assert_eq!(*renew_at, Some(t0() + days(365 - 90)));

    let expired = b.renewal(&leaf_request(400)).unwrap();
    assert!(expired.decision.is_renew());
    assert!(
        expired.decision.reason().starts_with("expired on"),
        "{}",
        expired.decision.reason()
    );
}

#[test]
fn cas_are_never_renewed_even_when_expired() {
    let b = bundle("default");
    let ca = Ca::new("k3s-client-ca", t0(), t0() + days(10));
    let certs = parse_certificates_pem("client-ca.crt", ca.cert.pem().as_bytes()).unwrap();
    let request = RenewalRequest {
        name: "client-ca".into(),
        certificate: certs[0].clone().into(),
        issuer_not_after: None,
        now: t0() + days(20),
    };
    let o = b.renewal(&request).unwrap();
    assert!(!o.decision.is_renew(), "{:?}", o.decision);
}

#[test]
fn strict_renewal_is_two_thirds_with_deterministic_jitter() {
    let b = bundle("strict");
    let request = leaf_request(10);
    let o = b.renewal(&request).unwrap();
    let RenewalDecision::Keep {
        renew_at: Some(at), ..
    } = o.decision
    else {
        panic!("{:?}", o.decision)
    };
    let start = request.certificate.not_before;
    let lifetime = request.certificate.not_after - start;
    let fraction = (at - start) / lifetime;
    assert!(
        (0.5666..=0.6668).contains(&fraction),
        "renews at {fraction} of the lifetime"
    );
    // Same certificate, same instant: restarts do not move the renewal.
    let again = b.renewal(&request).unwrap();
    assert_eq!(
        again.decision,
        RenewalDecision::Keep {
            renew_at: Some(at),
            reason: again.decision.reason().into()
        }
    );
    // At that instant it renews.
    let mut at_target = request.clone();
    at_target.now = at;
    assert!(b.renewal(&at_target).unwrap().decision.is_renew());
}

fn kubelet_csr(node: &str, sans: &[&str], username: &str, node_ips: &[&str]) -> CsrRequest {
    let csr = parse_csr_pem("node.csr", kubelet_csr_pem(node, sans).as_bytes()).unwrap();
    assert!(csr.defects.is_empty(), "{:?}", csr.defects);
    CsrRequest::new(
        &csr,
        CsrContext {
            signer_name: "kubernetes.io/kubelet-serving".into(),
            username: username.into(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            usages: vec![Usage::DigitalSignature, Usage::ServerAuth],
            node_addresses: node_ips.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        },
        t0(),
    )
}

fn san_codes(b: &Bundle, r: &CsrRequest) -> Vec<String> {
    match b
        .validate_sans(&r.san_request("kubelet-serving", SanStage::Csr))
        .unwrap()
        .decision
    {
        SanDecision::Allow => vec![],
        SanDecision::Deny { violations } => violations.into_iter().map(|v| v.code).collect(),
    }
}

#[test]
fn kubelet_serving_names_are_bound_to_the_requesting_node() {
    for name in ["default", "strict"] {
        let b = bundle(name);
        let ok = kubelet_csr("a", &["a", "10.0.0.5"], "system:node:a", &["10.0.0.5"]);
        assert_eq!(san_codes(&b, &ok), Vec::<String>::new(), "{name}");
        let other_node = kubelet_csr("a", &["b"], "system:node:a", &["10.0.0.5"]);
        assert_eq!(san_codes(&b, &other_node), ["SanNotBoundToNode"], "{name}");
        let prefix = kubelet_csr("a", &["auth"], "system:node:a", &["10.0.0.5"]);
        assert_eq!(san_codes(&b, &prefix), ["SanNotBoundToNode"], "{name}");
        // No evidence for the node at all: even its own name is not bound (the host turns this
        // denial into "pending").
        let unknown_node = kubelet_csr("a", &["a"], "system:node:a", &[]);
        assert_eq!(san_codes(&b, &unknown_node), ["NoNodeEvidence"], "{name}");
        let other_ip = kubelet_csr("a", &["10.0.0.6"], "system:node:a", &["10.0.0.5"]);
        assert_eq!(san_codes(&b, &other_ip), ["IpNotInNodeEvidence"], "{name}");
    }
}

#[test]
fn kubelet_serving_csr_is_approved_and_bad_ones_denied_with_reasons() {
    let b = bundle("default");
    let ok = kubelet_csr("a", &["a", "10.0.0.5"], "system:node:a", &["10.0.0.5"]);
    let o = b.review_csr(&ok).unwrap();
    assert!(
        matches!(o.decision, CsrDecision::Approve { .. }),
        "{:?}",
        o.decision
    );

    let impostor = kubelet_csr("a", &["a"], "system:node:b", &[]);
    let CsrDecision::Deny { violations } = b.review_csr(&impostor).unwrap().decision else {
        panic!()
    };
    assert_eq!(
        violations
            .iter()
            .map(|v| v.code.as_str())
            .collect::<Vec<_>>(),
        ["CommonNameMismatch"]
    );

    let mut masters = kubelet_csr("a", &[], "alice", &[]);
    masters.signer_name = "kubernetes.io/kube-apiserver-client".into();
    masters.subject.organizations = vec!["system:masters".into()];
    masters.usages = vec![Usage::ClientAuth];
    let CsrDecision::Deny { violations } = b.review_csr(&masters).unwrap().decision else {
        panic!()
    };
    let codes: Vec<_> = violations.iter().map(|v| v.code.as_str()).collect();
    assert!(codes.contains(&"OrganizationDenied"), "{codes:?}");
}

#[test]
fn strict_denies_key_encipherment_for_ecdsa_keys() {
    let b = bundle("strict");
    let mut r = kubelet_csr("a", &["a"], "system:node:a", &[]);
    r.usages.push(Usage::KeyEncipherment);
    let CsrDecision::Deny { violations } = b.review_csr(&r).unwrap().decision else {
        panic!()
    };
    assert_eq!(violations[0].code, "UsageNotAllowed");
    // The default bundle accepts what kubelets have long sent.
    assert!(matches!(
        bundle("default").review_csr(&r).unwrap().decision,
        CsrDecision::Approve { .. }
    ));
}
