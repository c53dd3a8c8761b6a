//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): one function per parser of
//! untrusted input, each taking arbitrary bytes and ignoring the result. A panic is the bug.
//!
//! `make test` replays the committed corpus (`fuzz/corpus/<target>/`) through these same
//! functions on stable Rust (`tests/it/fuzz_corpus.rs`), so a crash once found stays fixed.

use std::net::{IpAddr, Ipv4Addr};

use time::OffsetDateTime;

use crate::contract::Hook;
use crate::policy::input::{InputContext, build_request};

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("certificate", certificate),
    ("csr", csr),
    ("k8s_csr", k8s_csr),
    ("bundle_manifest", bundle_manifest),
    ("datastore_record", datastore_record),
    ("kubeconfig", kubeconfig),
    ("token", token),
    ("fixture", fixture),
    ("policy_input", policy_input),
    ("plugin_signature", plugin_signature),
    ("oci_artifact", oci_artifact),
];

/// Certificates: PEM blocks, every certificate of a PEM bundle, and the bytes as one DER.
pub fn certificate(data: &[u8]) {
    let _ = crate::facts::read_pem_blocks("fuzz", data);
    let _ = crate::facts::parse_certificates_pem("fuzz", data);
    if let Ok(f) = crate::facts::parse_certificate_der("fuzz", data) {
        let _ = f.subject.text.len() + f.sans.all_names().len();
    }
}

/// CSRs: PEM and DER, with the public key the signer would use.
pub fn csr(data: &[u8]) {
    let _ = crate::facts::parse_csr_pem("fuzz", data);
    let _ = crate::facts::parse_csr_der_with_key("fuzz", data);
}

/// Kubernetes CertificateSigningRequest objects: one JSON document, and every line of it as a
/// `--jsonl` stream.
pub fn k8s_csr(data: &[u8]) {
    let evidence = [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))];
    if let Ok(v) = serde_json::from_slice(data) {
        let _ = crate::csr::k8s::parse("fuzz", v, &evidence);
    }
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = serde_json::from_slice(line) {
            let _ = crate::csr::k8s::parse("fuzz:1", v, &[]);
        }
    }
}

/// Policy bundle manifests (`bundle.toml`).
pub fn bundle_manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::policy::bundle::fuzz_manifest(text);
    }
}

/// Datastore records: the envelope (k3s and rotor-v1 formats) opened with a password that may
/// be wrong, and the bootstrap JSON inside.
pub fn datastore_record(data: &[u8]) {
    crate::datastore::fuzz_record(data);
}

/// Kubeconfigs with embedded client credentials.
pub fn kubeconfig(data: &[u8]) {
    let _ = crate::cluster::read_kubeconfig_credential("fuzz", data);
}

/// Join tokens (`K10<hash>::<user>:<password>` and bare passwords).
pub fn token(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::pki::Token::parse(s);
    }
}

/// Policy fixture files.
pub fn fixture(data: &[u8]) {
    crate::policy::fixtures::fuzz_cases(data);
}

/// `rotor policy eval --input` for every hook: PEM, DER or JSON requests.
pub fn policy_input(data: &[u8]) {
    let ctx = InputContext::default();
    let now = OffsetDateTime::UNIX_EPOCH;
    for hook in [Hook::Renewal, Hook::San, Hook::Csr] {
        let _ = build_request(hook, "fuzz", data, &ctx, now);
    }
}

/// The vendor key of the `plugin_signature` corpus (its envelopes verify with it).
const CORPUS_KEY: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEANKxcRJe8wGEuFgdNehgsb7R63vQzUJHOJmbWqsGUOQg=
-----END PUBLIC KEY-----
";

/// Plugin signatures: DSSE envelopes (parsed, their statement read unverified, verified with a
/// fixed key) and the bytes as a public or a private key file.
pub fn plugin_signature(data: &[u8]) {
    use crate::policy::signing::{Envelope, PublicKey, SigningKey};
    if let Ok(envelope) = Envelope::parse(data) {
        let _ = envelope
            .unverified_statement()
            .map(|s| s.validate().is_ok());
        if let Ok(key) = PublicKey::from_pem(CORPUS_KEY.as_bytes()) {
            let _ = key.verify(&envelope);
        }
        let _ = envelope.keyids();
    }
    let _ = PublicKey::from_pem(data);
    let _ = SigningKey::from_pem(data);
}

/// OCI plugin artifacts: a manifest decoded with its blobs missing or as arbitrary bytes, an
/// image index, and the text as a plugin location.
pub fn oci_artifact(data: &[u8]) {
    crate::distribution::fuzz_artifact(data);
}
