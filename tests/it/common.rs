//! Helpers shared by the integration tests: built plugins, temporary bundles, real certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rotor::plugin::{EngineOptions, PluginEngine};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// 2026-01-01T00:00:00Z: tests build certificates relative to this instant, never the clock.
pub fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap()
}

pub fn days(n: i64) -> time::Duration {
    time::Duration::days(n)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn built(kind: &str, name: &str, how: &str) -> PathBuf {
    let p = repo_root()
        .join("target")
        .join(kind)
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run `{how}` first (`make test` does)",
        p.display()
    );
    p
}

/// A default plugin built by `cargo xtask build-plugins`.
pub fn default_plugin(name: &str) -> PathBuf {
    built("plugins", name, "cargo xtask build-plugins")
}

/// A hostile plugin built by `cargo xtask build-test-plugins`.
pub fn test_plugin(name: &str) -> PathBuf {
    built("test-plugins", name, "cargo xtask build-test-plugins")
}

/// An engine with its own empty cache directory.
pub fn engine(cache: &Path) -> PluginEngine {
    PluginEngine::new(EngineOptions {
        cache_dir: Some(cache.to_path_buf()),
        ..EngineOptions::default()
    })
    .unwrap()
}

/// One hook of a temporary bundle.
pub struct HookSpec<'a> {
    pub hook: &'a str,
    pub plugin: &'a Path,
    /// TOML lines placed in the hook's table (failure_mode, timeout_ms, ...).
    pub extra: &'a str,
    /// TOML body of the hook's settings table.
    pub settings: &'a str,
}

/// Write a bundle into `dir`: the plugins copied into `dir/plugins`, pinned by their digest.
pub fn write_bundle(dir: &Path, hooks: &[HookSpec<'_>]) -> PathBuf {
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let mut toml = String::from("[bundle]\nname = \"test\"\n");
    for h in hooks {
        let bytes = std::fs::read(h.plugin).unwrap();
        let file = h.plugin.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::write(dir.join("plugins").join(&file), &bytes).unwrap();
        let digest = hex::encode(Sha256::digest(&bytes));
        toml.push_str(&format!(
            "\n[{hook}]\nplugin = \"plugins/{file}\"\nsha256 = \"{digest}\"\n{extra}\n[{hook}.settings]\n{settings}\n",
            hook = h.hook,
            extra = h.extra,
            settings = h.settings
        ));
    }
    std::fs::write(dir.join("bundle.toml"), toml).unwrap();
    dir.to_path_buf()
}

/// A CA and its key.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub params: CertificateParams,
    pub key: KeyPair,
}

impl Ca {
    pub fn new(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, params, key }
    }

    /// A serving leaf signed by this CA, as k3s writes it: the leaf followed by the CA.
    pub fn leaf_pem(
        &self,
        cn: &str,
        sans: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*s).try_into().unwrap()),
            })
            .collect();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(self.params.clone(), &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        format!("{}{}", cert.pem(), self.cert.pem())
    }
}

/// A kubelet-serving CSR for `node` with the given names.
pub fn kubelet_csr_pem(node: &str, sans: &[&str]) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*s).try_into().unwrap()),
        })
        .collect();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// The rotor binary under test: `ROTOR_TEST_BIN` (`make test` sets it to the release build,
/// the one that ships), else the test profile's build.
pub fn rotor_bin() -> PathBuf {
    std::env::var_os("ROTOR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rotor")))
}

/// Run the rotor binary with `args`; returns (exit code, stdout, stderr).
pub fn rotor(args: &[&str], cache: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(rotor_bin())
        .args(args)
        .env("ROTOR_PLUGIN_CACHE", cache)
        .env_remove("ROTOR_BUNDLE")
        .current_dir(repo_root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Generous upper bound for "stopped by the deadline" on a loaded CI machine.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// A plugin cache shared by every test process of a run (compiled plugins are keyed by digest
/// and engine, so sharing is safe and saves recompiling the same plugins in every test).
pub fn shared_cache() -> PathBuf {
    let dir = repo_root().join("target").join("test-plugin-cache");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    dir
}

/// Run `rotor --data-dir DIR ARGS...` with the shipped default bundle.
pub fn rotor_at(data_dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--data-dir", data_dir.to_str().unwrap()];
    all.extend_from_slice(args);
    rotor(&all, &shared_cache())
}

/// Like [`rotor_at`], failing the test on a non-zero exit.
pub fn rotor_ok(data_dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = rotor_at(data_dir, args);
    assert_eq!(code, 0, "rotor {args:?} failed:\n{out}\n{err}");
    out
}

/// Every file of a tree: path -> (content hash, mode).
pub type Tree = std::collections::BTreeMap<String, (String, u32)>;

/// Every file under `dir` with its content hash and mode, for "nothing changed" checks: the
/// paths as consumers open them (symlinks followed), plus rotor's own `.rotor` directory as it
/// is (links recorded, not followed; the lock file's informational record left out).
pub fn tree(dir: &Path) -> Tree {
    fn walk(base: &Path, dir: &Path, follow: bool, out: &mut Tree) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            let inside_meta = rel == ".rotor" || rel.starts_with(".rotor/");
            if rel == ".rotor/lock" || rel == ".rotor/serve.lock" || rel == ".rotor/agent.lock" {
                continue;
            }
            let follow_here = follow && !inside_meta;
            let meta = if follow_here {
                std::fs::metadata(&path).unwrap()
            } else {
                std::fs::symlink_metadata(&path).unwrap()
            };
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (String::new(), mode));
                walk(base, &path, follow_here, out);
            } else if meta.is_symlink() {
                out.insert(
                    rel,
                    (
                        format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                        mode,
                    ),
                );
            } else {
                out.insert(
                    rel,
                    (
                        hex::encode(Sha256::digest(std::fs::read(&path).unwrap())),
                        mode,
                    ),
                );
            }
        }
    }
    let mut out = Tree::new();
    walk(dir, dir, true, &mut out);
    out
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Whether an external checker is there. Missing, it fails the test under CI (`make test`
/// installs it: scripts/install-deps.sh) and is reported as skipped elsewhere, never silently.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is required (make test installs it with scripts/install-deps.sh)"
    );
    eprintln!("SKIPPED: {what} is not installed here (make test installs it)");
    false
}

/// [`require`] for a command on the PATH.
pub fn require_command(cmd: &str) -> bool {
    require(cmd, have(cmd))
}

/// Whether an executable named `cmd` is in a directory of the PATH (for tools such as
/// htpasswd that have no `--version` to ask).
pub fn on_path(cmd: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(cmd))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether a command exists on this machine (for independent checks with openssl, python3).
pub fn have(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || std::process::Command::new(cmd)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// All certificates (DER) of a PEM file.
pub fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    rotor::facts::read_pem_blocks("test", &std::fs::read(path).unwrap())
        .unwrap()
        .into_iter()
        .filter(|b| b.kind == rotor::facts::PemKind::Certificate)
        .map(|b| b.der)
        .collect()
}

/// Verify `leaf` (first cert of `leaf_file`) against the CA bundle `ca_file` with rustls-webpki,
/// for server or client use, at `now`.
pub fn webpki_verify(
    leaf_file: &Path,
    ca_file: &Path,
    server: bool,
    now: OffsetDateTime,
) -> Result<(), String> {
    webpki_verify_der(
        &pem_certs(leaf_file).remove(0),
        &pem_certs(ca_file),
        server,
        now,
    )
}

/// [`webpki_verify`] on DER: `leaf` against the CA bundle `cas`.
pub fn webpki_verify_der(
    leaf: &[u8],
    cas: &[Vec<u8>],
    server: bool,
    now: OffsetDateTime,
) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let ca_ders: Vec<CertificateDer<'static>> =
        cas.iter().cloned().map(CertificateDer::from).collect();
    // The trust anchors are the self-issued certificates of the bundle; the rest intermediates.
    let (roots, inter): (Vec<_>, Vec<_>) =
        ca_ders.iter().partition(|c| rotor::pki::is_self_issued(c));
    let anchors: Vec<_> = roots
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned())
        .collect();
    let inter: Vec<CertificateDer<'_>> = inter.into_iter().cloned().collect();
    let leaf = CertificateDer::from(leaf.to_vec());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(now.unix_timestamp() as u64));
    let usage = if server {
        webpki::KeyUsage::server_auth()
    } else {
        webpki::KeyUsage::client_auth()
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        time,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}

/// A TLS 1.3 handshake over loopback with rustls: the server presents `server_chain` (the file's
/// certificates in order) and requires a client certificate chaining to `server_trusts`; the
/// client presents `client_chain` and trusts only `client_trusts`. One byte goes each way.
/// Returns the CN of the client certificate the server saw. The client asks for
/// `kubernetes.default.svc`.
pub fn tls_handshake(
    server_chain: &Path,
    server_key: &Path,
    server_trusts: &[Vec<u8>],
    client_chain: &Path,
    client_key: &Path,
    client_trusts: &[Vec<u8>],
) -> Result<String, String> {
    tls_handshake_named(
        "kubernetes.default.svc",
        (server_chain, server_key),
        server_trusts,
        (client_chain, client_key),
        client_trusts,
    )
}

/// [`tls_handshake`] with the client asking for `server_name` (a DNS name or an IP address).
pub fn tls_handshake_named(
    server_name: &str,
    (server_chain, server_key): (&Path, &Path),
    server_trusts: &[Vec<u8>],
    (client_chain, client_key): (&Path, &Path),
    client_trusts: &[Vec<u8>],
) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let chain = |p: &Path| -> Vec<CertificateDer<'static>> {
        pem_certs(p).into_iter().map(CertificateDer::from).collect()
    };
    let key = |p: &Path| -> PrivateKeyDer<'static> {
        let blocks = rotor::facts::read_pem_blocks("k", &std::fs::read(p).unwrap()).unwrap();
        PrivateKeyDer::Pkcs8(blocks[0].der.clone().into())
    };
    let roots = |ders: &[Vec<u8>]| {
        let mut store = rustls::RootCertStore::empty();
        for c in ders {
            store.add(CertificateDer::from(c.clone())).unwrap();
        }
        Arc::new(store)
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(server_trusts),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain(server_chain), key(server_key))
        .map_err(|e| e.to_string())?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(client_trusts))
        .with_client_auth_cert(chain(client_chain), key(client_key))
        .map_err(|e| e.to_string())?;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || -> Result<String, String> {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        let conn =
            rustls::ServerConnection::new(Arc::new(server_config)).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).map_err(|e| format!("server: {e}"))?;
        tls.write_all(b"!").map_err(|e| format!("server: {e}"))?;
        tls.flush().map_err(|e| e.to_string())?;
        let peer = tls
            .conn
            .peer_certificates()
            .ok_or("no client certificate")?;
        let f = rotor::facts::parse_certificate_der("peer", &peer[0]).map_err(|e| e.to_string())?;
        Ok(f.subject.common_name.unwrap_or_default())
    });
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let client = (|| -> Result<(), String> {
        tls.write_all(b"?").map_err(|e| format!("client: {e}"))?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).map_err(|e| format!("client: {e}"))?;
        if &b != b"!" {
            return Err("client: wrong reply".into());
        }
        Ok(())
    })();
    drop(tls);
    let server = server.join().unwrap();
    client?;
    server
}

/// A directory copied, recursively (files and directories only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
