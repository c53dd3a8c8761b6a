//! Native work: issuing a leaf against the raw crypto it is made of, the datastore's key
//! derivation, and CSR batches (review by both plugins, then signing) at 1, 100 and 10,000.
//!
//! `cargo bench --bench pki` (after `make plugins`). Figures: docs/performance.md.

#![allow(clippy::disallowed_methods, reason = "benches set up inputs directly")]

#[path = "common.rs"]
mod common;
#[path = "settings.rs"]
mod settings;

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::AtomicUsize;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rotor::csr::{Decide, Item, ItemInput, process_batch};

use rotor::datastore::{RecordFormat, open_record, seal_record};
use rotor::pki::{CaSigner, KeyType, Purpose, Subject, Validity, self_signed_ca};
use rotor::plugin::{EngineOptions, PluginEngine};
use rotor::policy::Bundle;
use time::{Duration, OffsetDateTime};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("valid time")
}

fn server_ca() -> CaSigner {
    let key = KeyType::EcdsaP256.generate().expect("key");
    let subject = Subject {
        common_name: "k3s-server-ca@1795000000".into(),
        ..Subject::default()
    };
    let validity = Validity {
        not_before: now() - Duration::hours(1),
        not_after: now() + Duration::days(3650),
    };
    let cert = self_signed_ca(&subject, &key, validity).expect("CA");
    CaSigner::load("server-ca", cert.pem.as_bytes(), key.pem().as_bytes()).expect("CA loads")
}

/// 4: one leaf (P-256 key generation, certificate building, signing, DER and PEM encoding)
/// against the raw P-256 key generation and one signature by the CA key in the same library.
fn leaf_issue(c: &mut Criterion) {
    let ca = server_ca();
    let subject = Subject {
        common_name: "kube-apiserver".into(),
        organizations: Vec::new(),
        dns_names: vec![
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
            "localhost".into(),
            "server-1".into(),
        ],
        ip_addresses: vec![
            "127.0.0.1".parse().expect("ip"),
            "10.43.0.1".parse().expect("ip"),
        ],
    };
    let validity = Validity {
        not_before: now(),
        not_after: now() + Duration::days(365),
    };
    // A leaf's to-be-signed part is about this long with these names.
    let sample = ca
        .issue_leaf(
            &subject,
            Purpose::Server,
            &KeyType::EcdsaP256.generate().expect("key"),
            validity,
        )
        .expect("leaf");
    let tbs = vec![0x5a_u8; sample.der.len() - 80];
    let rng = SystemRandom::new();
    let ca_raw = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("raw CA key");

    let mut group = c.benchmark_group("leaf_issue");
    group.bench_function("raw_keygen_and_sign", |b| {
        b.iter(|| {
            let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).expect("key");
            black_box(&key);
            black_box(ca_raw.sign(&rng, &tbs).expect("signature"))
        })
    });
    group.bench_function("raw_sign_only", |b| {
        b.iter(|| black_box(ca_raw.sign(&rng, &tbs).expect("signature")))
    });
    group.bench_function("rotor_key_generate", |b| {
        b.iter(|| black_box(KeyType::EcdsaP256.generate().expect("key")))
    });
    group.bench_function("rotor_issue_leaf", |b| {
        b.iter(|| {
            let key = KeyType::EcdsaP256.generate().expect("key");
            black_box(
                ca.issue_leaf(&subject, Purpose::Server, &key, validity)
                    .expect("leaf"),
            )
        })
    });
    group.finish();
}

/// 5 (part): the datastore's key derivation, deliberately slow, reported apart from the rest of
/// `rotor start`. Each opens (derives the key, decrypts) a 10 KB bootstrap record.
fn key_derivation(c: &mut Criterion) {
    let plaintext = vec![b'x'; 10 * 1024];
    let mut group = c.benchmark_group("datastore_open");
    group.sample_size(10);
    for (name, format) in [
        ("k3s_pbkdf2_sha1_4096", RecordFormat::K3s),
        ("rotor_v1_pbkdf2_sha256_600k", RecordFormat::RotorV1),
    ] {
        let record = seal_record(format, "password", "/bootstrap/x", &plaintext).expect("seal");
        group.bench_function(name, |b| {
            b.iter(|| black_box(open_record("password", "/bootstrap/x", &record).expect("open")))
        });
    }
    group.finish();
}

/// `n` kubelet-serving CSR objects, parsed as `rotor csr sign --jsonl` parses them, with the
/// host's address evidence for each node.
fn kubelet_csrs(n: u32) -> Vec<Item> {
    common::kubelet_csr_objects(n)
        .into_iter()
        .enumerate()
        .map(|(i, object)| {
            let address = common::node_address(i as u32);
            let parsed =
                rotor::csr::parse_k8s_object("bench", object, &[address]).expect("object parses");
            Item {
                name: format!("node-{i}"),
                input: ItemInput::Object(Box::new(parsed)),
            }
        })
        .collect()
}

/// 7 and 8: CSR batches reviewed by the CSR and SAN plugins and signed, on every core, as
/// `rotor csr sign --jsonl` runs them (parsing excluded: see the `commands` bench for the
/// whole process).
fn csr_batch(c: &mut Criterion) {
    let engine = PluginEngine::new(EngineOptions::default()).expect("engine");
    let bundle = Bundle::load(
        &engine,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default"),
    )
    .expect("policies/default loads: run `make plugins` first");
    let ca = server_ca();
    let signer = |_: &str| Some(&ca);
    let limits = rotor::csr::SignerLimits::default();
    let how = Decide {
        limits: &limits,
        sign_approved: true,
        now: now(),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all = kubelet_csrs(10_000);

    let mut group = c.benchmark_group("csr_batch");
    for n in [1usize, 100, 10_000] {
        let items = &all[..n];
        let check = process_batch(&bundle, items, &signer, &how, threads, &AtomicUsize::new(0));
        assert!(
            check.iter().all(|o| o.certificate.is_some()),
            "every bench CSR must be approved and signed"
        );
        group.throughput(Throughput::Elements(n as u64));
        if n == 10_000 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &items, |b, items| {
            b.iter(|| {
                black_box(process_batch(
                    &bundle,
                    items,
                    &signer,
                    &how,
                    threads,
                    &AtomicUsize::new(0),
                ))
            })
        });
    }
    // The ceiling the throughput target is read against: the crypto no CSR can skip, alone on
    // the same threads (aws-lc: verify the CSR's P-256 signature, sign a certificate's
    // to-be-signed bytes with the CA's P-256 key), for 10,000 CSRs.
    let ceiling = crypto_work(10_000);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("aws_lc_verify_and_sign_ceiling/10000", |b| {
        b.iter(|| black_box(verify_and_sign(&ceiling, threads)))
    });
    group.finish();
}

/// Per CSR: a public key, a message (the size of a CSR's request info) and its signature; and
/// one CA key pair and a to-be-signed certificate body (the size of a kubelet serving leaf's).
struct CryptoWork {
    csrs: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    ca: EcdsaKeyPair,
    tbs: Vec<u8>,
}

fn crypto_work(n: usize) -> CryptoWork {
    use aws_lc_rs::signature::KeyPair;
    let rng = SystemRandom::new();
    let key = || {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key")
    };
    let csrs = (0..n)
        .map(|i| {
            let k = key();
            let message = vec![i as u8; 300];
            let sig = k.sign(&rng, &message).expect("sign");
            (
                k.public_key().as_ref().to_vec(),
                message,
                sig.as_ref().to_vec(),
            )
        })
        .collect();
    CryptoWork {
        csrs,
        ca: key(),
        tbs: vec![7u8; 500],
    }
}

/// Verify every CSR signature and sign one certificate body per CSR, on `threads` threads.
fn verify_and_sign(work: &CryptoWork, threads: usize) -> usize {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
    let next = AtomicUsize::new(0);
    let rng = SystemRandom::new();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut signed = 0;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((public, message, sig)) = work.csrs.get(i) else {
                            break;
                        };
                        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public)
                            .verify(message, sig)
                            .expect("valid signature");
                        let cert_sig = work.ca.sign(&rng, &work.tbs).expect("sign");
                        signed += cert_sig.as_ref().len().min(1);
                    }
                    signed
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    })
}

criterion_group! {
    name = benches;
    config = settings::config();
    targets = leaf_issue, key_derivation, csr_batch
}
criterion_main!(benches);
