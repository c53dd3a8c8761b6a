//! `rotor csr review` and `rotor csr sign` through the shipped default bundle: real CSRs (rcgen
//! and `openssl req`), real compiled plugins, certificates checked with rustls-webpki, a rustls
//! handshake and `openssl verify`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair, SanType};
use rotor::facts::{ExtendedKeyUsage, KeyUsageBit, parse_certificates_pem};
use serde_json::{Value, json};

use crate::common::*;

pub(crate) const SERVING: &str = "kubernetes.io/kubelet-serving";
pub(crate) const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub(crate) const APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

/// A CSR built with rcgen: subject CN/O, SANs (IPs when they parse), extra extensions.
pub(crate) struct CsrSpec<'a> {
    pub(crate) cn: &'a str,
    pub(crate) orgs: &'a [&'a str],
    pub(crate) sans: &'a [&'a str],
    pub(crate) extra: Vec<CustomExtension>,
}

impl CsrSpec<'_> {
    pub(crate) fn node(node: &str, sans: &[&str]) -> (String, String) {
        let cn = format!("system:node:{node}");
        CsrSpec {
            cn: &cn,
            orgs: &["system:nodes"],
            sans,
            extra: Vec::new(),
        }
        .build()
    }

    /// (CSR PEM, private key PEM).
    pub(crate) fn build(self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, self.cn);
        for o in self.orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.subject_alt_names = self
            .sans
            .iter()
            .map(|s| match s.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*s).try_into().unwrap()),
            })
            .collect();
        params.custom_extensions = self.extra;
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        (csr, key.serialize_pem())
    }
}

/// An initialized k3s data dir in a temp dir, plus a scratch dir for inputs and outputs.
pub(crate) struct Fixture {
    _tmp: tempfile::TempDir,
    pub(crate) data: PathBuf,
    pub(crate) work: PathBuf,
}

impl Fixture {
    pub(crate) fn k3s() -> Fixture {
        Fixture::init(&["--profile", "k3s"])
    }

    fn init(profile: &[&str]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let now = rfc3339(t0());
        let mut args = vec![
            "init",
            "--node-name",
            "server-1",
            "--node-ip",
            "192.168.1.10",
            "--datastore-format",
            "k3s",
            "--now",
            &now,
        ];
        args.extend_from_slice(profile);
        rotor_ok(&data, &args);
        Fixture {
            _tmp: tmp,
            data,
            work,
        }
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.work.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `rotor csr <cmd> --csr FILE --signer S --username U --group G... --usage U... --node-ip IP... ARGS`.
    #[allow(
        clippy::too_many_arguments,
        reason = "mirrors the CLI's flags one to one"
    )]
    pub(crate) fn run(
        &self,
        cmd: &str,
        csr: &Path,
        signer: &str,
        username: &str,
        groups: &[&str],
        usages: &[&str],
        node_ips: &[&str],
        extra: &[&str],
    ) -> (i32, String, String) {
        let now = rfc3339(t0() + days(1));
        let mut args: Vec<String> = [
            "csr",
            cmd,
            "--csr",
            csr.to_str().unwrap(),
            "--signer",
            signer,
            "--username",
            username,
            "--now",
            &now,
        ]
        .map(String::from)
        .to_vec();
        for g in groups {
            args.extend(["--group".into(), g.to_string()]);
        }
        for u in usages {
            args.extend(["--usage".into(), u.to_string()]);
        }
        for ip in node_ips {
            args.extend(["--node-ip".into(), ip.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rotor_at(&self.data, &args)
    }

    /// `rotor --data-dir DATA ARGS` with `input` on standard input.
    fn run_stdin(&self, args: &[&str], input: &[u8]) -> (i32, String, String) {
        let mut child = Command::new(rotor_bin())
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env("ROTOR_PLUGIN_CACHE", shared_cache())
            .env_remove("ROTOR_BUNDLE")
            .current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

pub(crate) const SERVING_USAGES: &[&str] =
    &["digital signature", "key encipherment", "server auth"];

pub(crate) fn violation_codes(json_out: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(json_out).unwrap_or_else(|e| panic!("{e}: {json_out}"));
    v["violations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v["code"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kubelet_serving_csr_is_approved_signed_and_serves_tls_for_exactly_its_names() {
    let f = Fixture::k3s();
    let (csr, key) = CsrSpec::node("a", &["a", "10.0.0.5"]);
    let csr = f.write("a.csr", &csr);
    let key_file = f.write("a.key", &key);
    let out = f.work.join("a.crt");
    let (code, stdout, stderr) = f.run(
        "sign",
        &csr,
        SERVING,
        "system:node:a",
        &["system:nodes", "system:authenticated"],
        SERVING_USAGES,
        &["10.0.0.5"],
        &["-o", "json", "--out", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let review: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(review["decision"], "approve");
    let stages: Vec<(&str, &str)> = review["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap(),
                s["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("host", "pass"),
            ("csr-approval", "approve"),
            ("san (csr)", "allow"),
            ("san (template)", "allow")
        ]
    );

    // Chains to server-ca (not client-ca) for server use, at the review instant and a year on.
    let server_ca = f.data.join("server/tls/server-ca.crt");
    let client_ca = f.data.join("server/tls/client-ca.crt");
    webpki_verify(&out, &server_ca, true, t0() + days(1)).unwrap();
    webpki_verify(&out, &server_ca, true, t0() + days(365)).unwrap();
    assert!(webpki_verify(&out, &server_ca, true, t0() + days(367)).is_err());
    assert!(webpki_verify(&out, &client_ca, true, t0() + days(1)).is_err());
    assert!(
        webpki_verify(&out, &server_ca, false, t0() + days(1)).is_err(),
        "no client auth was approved"
    );

    // Exactly the approved names and usages.
    let cert = &parse_certificates_pem("a.crt", &std::fs::read(&out).unwrap()).unwrap()[0];
    assert_eq!(cert.subject.common_name.as_deref(), Some("system:node:a"));
    assert_eq!(cert.subject.organizations, ["system:nodes"]);
    assert_eq!(cert.sans.dns_names, ["a"]);
    assert_eq!(
        cert.sans.ip_addresses,
        ["10.0.0.5".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(cert.sans.uris.is_empty() && cert.sans.emails.is_empty());
    assert!(!cert.is_ca);
    assert_eq!(
        cert.key_usage.as_deref(),
        Some(&[KeyUsageBit::DigitalSignature, KeyUsageBit::KeyEncipherment][..])
    );
    assert_eq!(cert.extended_key_usages, [ExtendedKeyUsage::ServerAuth]);
    assert_eq!(
        (cert.not_after - cert.not_before).whole_minutes(),
        365 * 24 * 60 + 5,
        "365 days from the review instant, notBefore backdated 5 minutes"
    );

    // A real TLS 1.3 handshake: the kubelet serves with it, a client trusting server-ca connects
    // by the node's name and by its IP; the apiserver's client certificate authenticates.
    let trust_server_ca = pem_certs(&server_ca);
    for name in ["a", "10.0.0.5"] {
        let peer = tls_handshake_named(
            name,
            (&out, &key_file),
            &pem_certs(&client_ca),
            (
                &f.data.join("server/tls/client-kube-apiserver.crt"),
                &f.data.join("server/tls/client-kube-apiserver.key"),
            ),
            &trust_server_ca,
        )
        .unwrap();
        assert_eq!(peer, "system:apiserver");
    }
    for wrong in ["b", "10.0.0.6", "a.evil"] {
        let err = tls_handshake_named(
            wrong,
            (&out, &key_file),
            &pem_certs(&client_ca),
            (
                &f.data.join("server/tls/client-kube-apiserver.crt"),
                &f.data.join("server/tls/client-kube-apiserver.key"),
            ),
            &trust_server_ca,
        )
        .unwrap_err();
        assert!(err.contains("not valid for name"), "{wrong}: {err}");
    }

    if require_command("openssl") {
        let o = Command::new("openssl")
            .args(["verify", "-purpose", "sslserver", "-CAfile"])
            .arg(&server_ca)
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn kubelet_client_csr_is_signed_by_the_client_ca_and_authenticates_over_mtls() {
    let f = Fixture::k3s();
    let (csr, key) = CsrSpec::node("a", &[]);
    let csr = f.write("a-client.csr", &csr);
    let key_file = f.write("a-client.key", &key);
    let out = f.work.join("a-client.crt");
    let (code, stdout, stderr) = f.run(
        "sign",
        &csr,
        KUBELET_CLIENT,
        "system:node:a",
        &["system:nodes"],
        &["digital signature", "client auth"],
        &[],
        &["--out", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    webpki_verify(
        &out,
        &f.data.join("server/tls/client-ca.crt"),
        false,
        t0() + days(1),
    )
    .unwrap();
    let peer = tls_handshake(
        &f.data.join("server/tls/serving-kube-apiserver.crt"),
        &f.data.join("server/tls/serving-kube-apiserver.key"),
        &pem_certs(&f.data.join("server/tls/client-ca.crt")),
        &out,
        &key_file,
        &pem_certs(&f.data.join("server/tls/server-ca.crt")),
    )
    .unwrap();
    assert_eq!(peer, "system:node:a");
}

#[test]
fn denials_name_every_reason_and_nothing_is_signed() {
    let f = Fixture::k3s();
    let node_a = |sans: &[&str]| CsrSpec::node("a", sans).0;
    // A CSR for node a whose CN bytes are changed afterwards to node b: the signature no longer
    // covers the content (no proof of possession).
    let tampered = {
        let (pem, _) = CsrSpec::node("a", &["a"]);
        let block = &rotor::facts::read_pem_blocks("t", pem.as_bytes()).unwrap()[0];
        let mut der = block.der.clone();
        let at = der.windows(13).position(|w| w == b"system:node:a").unwrap();
        der[at + 12] = b'b';
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            B64.encode(&der)
        )
    };
    let basic_constraints_ca =
        CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
    // A second subjectAltName extension ([2] "b"), after rcgen's own.
    let second_san =
        CustomExtension::from_oid_content(&[2, 5, 29, 17], vec![0x30, 0x03, 0x82, 0x01, b'b']);
    // A SAN of type registeredID (1.2.3.4), which no Kubernetes certificate carries.
    let registered_id = CustomExtension::from_oid_content(
        &[2, 5, 29, 17],
        vec![0x30, 0x05, 0x88, 0x03, 0x2a, 0x03, 0x04],
    );
    let spec = |cn: &'static str, orgs: &'static [&'static str], sans: &'static [&'static str]| {
        move |extra: Vec<CustomExtension>| {
            CsrSpec {
                cn,
                orgs,
                sans,
                extra,
            }
            .build()
            .0
        }
    };

    // (what, CSR PEM, signer, username, usages, node IPs, expected codes in order, host stage only)
    type Case<'a> = (
        &'a str,
        String,
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "SAN for another node's name",
            node_a(&["b"]),
            SERVING,
            "system:node:a",
            SERVING_USAGES,
            &["10.0.0.5"],
            &["SanNotBoundToNode"],
            false,
        ),
        (
            "IP of another node",
            node_a(&["a", "10.0.0.9"]),
            SERVING,
            "system:node:a",
            SERVING_USAGES,
            &["10.0.0.5"],
            &["IpNotInNodeEvidence"],
            false,
        ),
        (
            "IP-only CSR for an IP that is not the node's",
            node_a(&["10.0.0.9"]),
            SERVING,
            "system:node:a",
            SERVING_USAGES,
            &["10.0.0.5"],
            &["IpNotInNodeEvidence"],
            false,
        ),
        (
            "name sharing only a prefix with the node name",
            node_a(&["a-evil", "ab"]),
            SERVING,
            "system:node:a",
            SERVING_USAGES,
            &["10.0.0.5"],
            &["SanNotBoundToNode", "SanNotBoundToNode"],
            false,
        ),
        (
            "requester is another node",
            node_a(&["a"]),
            SERVING,
            "system:node:b",
            SERVING_USAGES,
            &["10.0.0.5"],
            &["HostFloor"],
            true,
        ),
        (
            "requester is not a node",
            node_a(&["a"]),
            SERVING,
            "alice",
            SERVING_USAGES,
            &["10.0.0.5"],
            &["HostFloor"],
            true,
        ),
        (
            "O=system:masters on kube-apiserver-client",
            spec("alice", &["system:masters"], &[])(Vec::new()),
            APISERVER_CLIENT,
            "alice",
            &["client auth"],
            &[],
            &["HostFloor"],
            true,
        ),
        (
            "tampered signature",
            tampered,
            SERVING,
            "system:node:b",
            SERVING_USAGES,
            &["10.0.0.5"],
            &["InvalidSignature"],
            true,
        ),
        (
            "CA request",
            spec("system:node:a", &["system:nodes"], &["a"])(vec![basic_constraints_ca]),
            SERVING,
            "system:node:a",
            SERVING_USAGES,
            &[],
            &["HostFloor"],
            true,
        ),
        (
            "two subjectAltName extensions",
            spec("system:node:a", &["system:nodes"], &["a"])(vec![second_san]),
            SERVING,
            "system:node:a",
            SERVING_USAGES,
            &[],
            &["MultipleSanExtensions"],
            true,
        ),
        (
            "unknown SAN type",
            spec("system:node:a", &["system:nodes"], &[])(vec![registered_id]),
            SERVING,
            "system:node:a",
            SERVING_USAGES,
            &[],
            &["UnsupportedSanType"],
            true,
        ),
        (
            "a usage only CAs get",
            node_a(&["a"]),
            SERVING,
            "system:node:a",
            &["digital signature", "server auth", "cert sign"],
            &[],
            &["HostFloor"],
            true,
        ),
    ];
    for (what, pem, signer, user, usages, ips, expected, host_only) in cases {
        let csr = f.write("case.csr", &pem);
        let out = f.work.join("case.crt");
        let (code, stdout, stderr) = f.run(
            "sign",
            &csr,
            signer,
            user,
            &["system:nodes"],
            usages,
            ips,
            &["-o", "json", "--out", out.to_str().unwrap()],
        );
        assert_eq!(code, 1, "{what}: exit 1 for a denial\n{stdout}\n{stderr}");
        assert_eq!(violation_codes(&stdout), expected, "{what}\n{stdout}");
        assert!(!out.exists(), "{what}: nothing is written for a denial");
        let review: Value = serde_json::from_str(&stdout).unwrap();
        let stages = review["stages"].as_array().unwrap();
        if host_only {
            assert_eq!(stages.len(), 1, "{what}: denied before any plugin ran");
            assert_eq!(stages[0]["stage"], "host");
        } else {
            assert!(stages.len() > 1, "{what}: the plugins decided");
        }
    }
}

#[test]
fn pending_requests_exit_3_and_missing_evidence_is_not_a_denial() {
    let f = Fixture::k3s();
    // kube-apiserver-client is never auto-approved by the default bundle: pending for a human.
    let (pem, _) = CsrSpec {
        cn: "alice",
        orgs: &["dev"],
        sans: &[],
        extra: Vec::new(),
    }
    .build();
    let csr = f.write("alice.csr", &pem);
    let (code, stdout, _) = f.run(
        "review",
        &csr,
        APISERVER_CLIENT,
        "alice",
        &[],
        &["client auth"],
        &[],
        &[],
    );
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.starts_with("abstain: "), "{stdout}");

    // A serving CSR with an IP SAN, and no address evidence at all for the node: pending (it can
    // be approved once evidence is given), not a permanent denial.
    let csr = f.write("a.csr", &CsrSpec::node("a", &["a", "10.0.0.5"]).0);
    let (code, stdout, _) = f.run(
        "review",
        &csr,
        SERVING,
        "system:node:a",
        &["system:nodes"],
        SERVING_USAGES,
        &[],
        &[],
    );
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.contains("holds no addresses"), "{stdout}");
    let (code, stdout, _) = f.run(
        "review",
        &csr,
        SERVING,
        "system:node:a",
        &["system:nodes"],
        SERVING_USAGES,
        &["10.0.0.5"],
        &[],
    );
    assert_eq!(code, 0, "{stdout}");
    // Evidence that names other addresses is a denial.
    let (code, _, _) = f.run(
        "review",
        &csr,
        SERVING,
        "system:node:a",
        &["system:nodes"],
        SERVING_USAGES,
        &["10.0.0.6"],
        &[],
    );
    assert_eq!(code, 1);
}

#[test]
fn a_failing_csr_plugin_never_approves() {
    let f = Fixture::k3s();
    let tmp = tempfile::tempdir().unwrap();
    // The hostile plugin approves with a usage nobody asked for; the default SAN plugin allows.
    let bundle = write_bundle(
        tmp.path(),
        &[
            HookSpec {
                hook: "csr",
                plugin: &test_plugin("hostile-answers"),
                extra: "",
                settings: "",
            },
            HookSpec {
                hook: "san",
                plugin: &default_plugin("san-validation"),
                extra: "",
                settings: "allow_all = true",
            },
        ],
    );
    let csr = f.write("a.csr", &CsrSpec::node("a", &["a"]).0);
    let out = f.work.join("a.crt");
    let now = rfc3339(t0() + days(1));
    let (code, stdout, stderr) = rotor(
        &[
            "--data-dir",
            f.data.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "csr",
            "sign",
            "--csr",
            csr.to_str().unwrap(),
            "--signer",
            SERVING,
            "--username",
            "system:node:a",
            "--usage",
            "server auth",
            "--out",
            out.to_str().unwrap(),
            "--now",
            &now,
        ],
        &shared_cache(),
    );
    assert_eq!(code, 3, "pending, never approved\n{stdout}\n{stderr}");
    assert!(stdout.contains("grants usage 'cert sign'"), "{stdout}");
    assert!(!out.exists());
}

#[test]
fn csrs_made_by_openssl_req_are_accepted_like_ours() {
    if !require_command("openssl") {
        return;
    }
    let f = Fixture::k3s();
    for (name, newkey) in [
        (
            "ec",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        ),
        ("rsa", vec!["-newkey", "rsa:2048"]),
    ] {
        let csr = f.work.join(format!("{name}.csr"));
        let key = f.work.join(format!("{name}.key"));
        let o = Command::new("openssl")
            .args(["req", "-new", "-nodes"])
            .args(&newkey)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .args([
                "-subj",
                "/O=system:nodes/CN=system:node:a",
                "-addext",
                "subjectAltName=DNS:a,IP:10.0.0.5",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out = f.work.join(format!("{name}.crt"));
        let (code, stdout, stderr) = f.run(
            "sign",
            &csr,
            SERVING,
            "system:node:a",
            &["system:nodes"],
            SERVING_USAGES,
            &["10.0.0.5"],
            &["--out", out.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{name}: {stdout}\n{stderr}");
        let o = Command::new("openssl")
            .args(["verify", "-purpose", "sslserver", "-CAfile"])
            .arg(f.data.join("server/tls/server-ca.crt"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // The certificate carries the CSR's key: openssl's own key matches it.
        let pubkey = |args: &[&str], file: &Path| {
            let o = Command::new("openssl")
                .args(args)
                .arg(file)
                .output()
                .unwrap();
            assert!(o.status.success());
            o.stdout
        };
        assert_eq!(
            pubkey(&["x509", "-noout", "-pubkey", "-in"], &out),
            pubkey(&["pkey", "-pubout", "-in"], &key),
            "{name}"
        );
    }
}

/// A CertificateSigningRequest object as `kubectl get csr -o json` prints it.
pub(crate) fn k8s_object(
    name: &str,
    csr_pem: &str,
    signer: &str,
    user: &str,
    usages: &[&str],
) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {
            "name": name,
            "uid": "0b6f4b53-5d43-4b4e-9c1e-1a2b3c4d5e6f",
            "resourceVersion": "12345",
            "creationTimestamp": "2026-01-01T00:00:00Z"
        },
        "spec": {
            "request": B64.encode(csr_pem),
            "signerName": signer,
            "username": user,
            "groups": ["system:nodes", "system:authenticated"],
            "usages": usages,
            "expirationSeconds": 86400
        },
        "status": {}
    })
}

#[test]
fn kubernetes_objects_come_back_with_their_condition_and_certificate() {
    let f = Fixture::k3s();
    let now = rfc3339(t0() + days(1));
    let (pem, _) = CsrSpec::node("a", &["a", "10.0.0.5"]);
    let object = k8s_object("csr-a", &pem, SERVING, "system:node:a", SERVING_USAGES);
    let (code, stdout, stderr) = f.run_stdin(
        &[
            "csr",
            "sign",
            "--csr",
            "-",
            "--node-ip",
            "10.0.0.5",
            "--now",
            &now,
        ],
        object.to_string().as_bytes(),
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let back: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(back["metadata"], object["metadata"], "metadata kept");
    assert_eq!(back["spec"], object["spec"], "spec kept");
    let conditions = back["status"]["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["type"], "Approved");
    assert_eq!(conditions[0]["status"], "True");
    let cert_pem = B64
        .decode(back["status"]["certificate"].as_str().unwrap())
        .unwrap();
    let cert_file = f.write("a.crt", std::str::from_utf8(&cert_pem).unwrap());
    webpki_verify(
        &cert_file,
        &f.data.join("server/tls/server-ca.crt"),
        true,
        t0() + days(1),
    )
    .unwrap();
    let cert = &parse_certificates_pem("a.crt", &cert_pem).unwrap()[0];
    assert_eq!(
        (cert.not_after - cert.not_before).whole_seconds(),
        86_400 + 300,
        "spec.expirationSeconds, notBefore backdated"
    );

    // The returned object is left alone by a second pass (already approved).
    let (code, again, _) = f.run_stdin(&["csr", "sign", "--csr", "-"], stdout.as_bytes());
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), back);

    // A denial: Denied condition with the reason codes, no certificate.
    let (pem, _) = CsrSpec::node("a", &["b"]);
    let object = k8s_object("csr-b", &pem, SERVING, "system:node:a", SERVING_USAGES);
    let (code, stdout, _) = f.run_stdin(
        &[
            "csr",
            "sign",
            "--csr",
            "-",
            "--node-ip",
            "10.0.0.5",
            "--now",
            &now,
        ],
        object.to_string().as_bytes(),
    );
    assert_eq!(code, 1);
    let back: Value = serde_json::from_str(&stdout).unwrap();
    let condition = &back["status"]["conditions"][0];
    assert_eq!(condition["type"], "Denied");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("SanNotBoundToNode"),
        "{condition}"
    );
    assert!(back["status"].get("certificate").is_none());
}

#[test]
fn a_batch_signs_a_directory_with_one_result_per_csr_and_a_summary() {
    let f = Fixture::k3s();
    let now = rfc3339(t0() + days(1));
    let dir = f.work.join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let mut evidence = serde_json::Map::new();
    // 24 good serving CSRs, 6 for an address the node does not hold, 3 pending (apiserver
    // client), 2 unreadable files, and 1 PEM CSR taking its context from the flags.
    for i in 0..30 {
        let node = format!("node-{i}");
        let ip = format!("10.1.0.{i}");
        evidence.insert(node.clone(), json!([ip]));
        let claimed = if i < 24 { ip } else { format!("10.2.0.{i}") };
        let (pem, _) = CsrSpec::node(&node, &[&node, &claimed]);
        let obj = k8s_object(
            &format!("csr-{i}"),
            &pem,
            SERVING,
            &format!("system:node:{node}"),
            SERVING_USAGES,
        );
        std::fs::write(dir.join(format!("csr-{i}.json")), obj.to_string()).unwrap();
    }
    for i in 0..3 {
        let (pem, _) = CsrSpec {
            cn: "alice",
            orgs: &[],
            sans: &[],
            extra: Vec::new(),
        }
        .build();
        let obj = k8s_object(
            &format!("client-{i}"),
            &pem,
            APISERVER_CLIENT,
            "alice",
            &["client auth"],
        );
        std::fs::write(dir.join(format!("client-{i}.json")), obj.to_string()).unwrap();
    }
    std::fs::write(
        dir.join("broken.json"),
        "{\"kind\": \"CertificateSigningRequest\"",
    )
    .unwrap();
    std::fs::write(dir.join("not-a-csr.pem"), "hello").unwrap();
    std::fs::write(dir.join("README.txt"), "ignored: not a CSR file name").unwrap();
    std::fs::write(dir.join("flags.csr"), CsrSpec::node("a", &["a"]).0).unwrap();
    evidence.insert("a".into(), json!(["10.9.9.9"]));
    let evidence_file = f.write("nodes.json", &Value::Object(evidence).to_string());
    let out_dir = f.work.join("signed");

    let (code, stdout, stderr) = rotor_at(
        &f.data,
        &[
            "csr",
            "sign",
            "--dir",
            dir.to_str().unwrap(),
            "--node-evidence",
            evidence_file.to_str().unwrap(),
            "--signer",
            SERVING,
            "--username",
            "system:node:a",
            "--group",
            "system:nodes",
            "--usage",
            "server auth",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--threads",
            "3",
            "--now",
            &now,
        ],
    );
    assert_eq!(code, 1, "errors in the batch: exit 1\n{stderr}");
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 36, "one result per CSR file\n{stdout}");
    let decision = |name: &str| {
        results
            .iter()
            .find(|r| r["csr"] == name || r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))["decision"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(decision("csr-0"), "approve");
    assert_eq!(decision("csr-23"), "approve");
    assert_eq!(decision("csr-24"), "deny");
    assert_eq!(decision("client-0"), "abstain");
    assert_eq!(decision("broken.json"), "error");
    assert_eq!(decision("not-a-csr.pem"), "error");
    assert_eq!(decision("flags.csr"), "approve");
    assert!(
        stderr.contains("36 CSRs in")
            && stderr.contains("25 approved (25 signed), 6 denied, 3 pending, 0 skipped, 2 errors"),
        "{stderr}"
    );

    // Every approved object was written back with a certificate from server-ca; denied ones
    // with their condition; the PEM CSR as a certificate.
    let server_ca = f.data.join("server/tls/server-ca.crt");
    for i in 0..30 {
        let back: Value =
            serde_json::from_slice(&std::fs::read(out_dir.join(format!("csr-{i}.json"))).unwrap())
                .unwrap();
        let kind = back["status"]["conditions"][0]["type"].as_str().unwrap();
        if i < 24 {
            assert_eq!(kind, "Approved");
            let pem = B64
                .decode(back["status"]["certificate"].as_str().unwrap())
                .unwrap();
            let file = f.write("check.crt", std::str::from_utf8(&pem).unwrap());
            webpki_verify(&file, &server_ca, true, t0() + days(1)).unwrap();
            let cert = &parse_certificates_pem("c", &pem).unwrap()[0];
            assert_eq!(cert.sans.dns_names, [format!("node-{i}")]);
        } else {
            assert_eq!(kind, "Denied");
        }
    }
    webpki_verify(&out_dir.join("flags.crt"), &server_ca, true, t0() + days(1)).unwrap();

    // The same objects as a JSON-lines stream: the approved ones come back untouched (already
    // approved), no errors, exit 0.
    let lines: String = (0..24)
        .map(|i| std::fs::read_to_string(out_dir.join(format!("csr-{i}.json"))).unwrap())
        .map(|t| serde_json::from_str::<Value>(&t).unwrap().to_string() + "\n")
        .collect();
    let (code, stdout, stderr) = f.run_stdin(&["csr", "sign", "--jsonl", "-"], lines.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 24);
    assert!(
        stderr.contains("0 approved (0 signed), 0 denied, 0 pending, 24 skipped, 0 errors"),
        "{stderr}"
    );
}

#[test]
fn kubeadm_signs_every_kubernetes_signer_with_its_one_ca() {
    let f = Fixture::init(&["--profile", "kubeadm"]);
    let (pem, key) = CsrSpec::node("a", &["a", "10.0.0.5"]);
    let csr = f.write("a.csr", &pem);
    f.write("a.key", &key);
    let out = f.work.join("a.crt");
    let (code, stdout, stderr) = f.run(
        "sign",
        &csr,
        SERVING,
        "system:node:a",
        &["system:nodes"],
        SERVING_USAGES,
        &["10.0.0.5"],
        &["--out", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    webpki_verify(&out, &f.data.join("pki/ca.crt"), true, t0() + days(1)).unwrap();
}

#[test]
fn bad_input_is_a_clear_error_that_names_it_and_writes_nothing() {
    let f = Fixture::k3s();
    let before = tree(&f.data);
    let missing = f.work.join("missing.csr");
    let garbage = f.write("garbage.csr", "not a csr");
    let not_json = f.write("bad.json", "{ nope");
    let good = f.write("a.csr", &CsrSpec::node("a", &["a"]).0);
    let out = f.work.join("out.crt");
    for (file, expected) in [
        (&missing, "missing.csr"),
        (&garbage, "garbage.csr"),
        (&not_json, "bad.json"),
    ] {
        let (code, stdout, stderr) = f.run(
            "sign",
            file,
            SERVING,
            "system:node:a",
            &["system:nodes"],
            SERVING_USAGES,
            &[],
            &["--out", out.to_str().unwrap()],
        );
        assert_eq!(code, 2, "{stdout}\n{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
    // Signing without a data dir names the dir.
    let nowhere = f.work.join("no-data");
    let (code, _, stderr) = rotor_at(
        &nowhere,
        &[
            "csr",
            "sign",
            "--csr",
            good.to_str().unwrap(),
            "--signer",
            SERVING,
            "--username",
            "system:node:a",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no-data") && stderr.contains("not an initialized data dir"),
        "{stderr}"
    );
    // A PEM CSR without its context names the missing flag.
    let (code, _, stderr) = rotor_at(&f.data, &["csr", "review", "--csr", good.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--signer"), "{stderr}");
    assert!(!out.exists());
    assert_eq!(tree(&f.data), before, "the data dir is unchanged");
}
