//! Plugin distribution: a signed component, its signature and its fixtures as one OCI
//! artifact, pushed to and pulled from an OCI registry (the distribution API, through
//! `oci-client`) or an OCI image-layout directory (for air-gapped clusters).
//!
//! The artifact is an OCI image manifest in the media types Kubewarden and ORAS use for wasm:
//!
//! | part | media type | content |
//! |---|---|---|
//! | config | `application/vnd.wasm.config.v1+json` | the signed statement, unverified (for browsing) |
//! | layer 1 | `application/vnd.wasm.content.layer.v1+wasm` | the component |
//! | layer 2 | `application/vnd.dsse.envelope.v1+json` | its DSSE signature envelope |
//! | layers 3.. | `application/vnd.rotor.plugin.fixture.v1` | fixture files, path in the title annotation |
//!
//! Every blob is checked against its digest when pulled, a digest-pinned reference against
//! the manifest's digest, and the component against the digest its signature states. Whether
//! the signature is from a trusted key is the bundle's decision (or a key given to the pull).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_client::manifest::{
    ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageIndex, OciImageManifest, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE,
};
use sha2::{Digest, Sha256};

use crate::fs::{FsError, Root};
use crate::policy::signing::{Envelope, Statement};

/// Media type of the signature layer: a DSSE envelope.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Media type of a fixture file layer.
pub const FIXTURE_MEDIA_TYPE: &str = "application/vnd.rotor.plugin.fixture.v1";
/// The annotation that names a layer's file (and a manifest's plugin).
const TITLE: &str = "org.opencontainers.image.title";
const VERSION: &str = "org.opencontainers.image.version";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTRACT: &str = "dev.rotor.plugin.contract";
const HOOKS: &str = "dev.rotor.plugin.hooks";
/// The largest manifest or blob rotor reads (a component is a few MiB at most).
const MAX_BLOB: u64 = 256 << 20;

/// A distribution step failed. Messages name the reference, file or layer concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistributionError {
    /// A reference could not be parsed.
    #[error("{reference}: {message}")]
    Reference {
        /// As given.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// The registry refused or failed a request.
    #[error("{reference}: {message}")]
    Registry {
        /// The reference.
        reference: String,
        /// The registry's (or the client's) error.
        message: String,
    },
    /// What was fetched is not a rotor plugin artifact, or does not match its digests.
    #[error("{reference}: {message}")]
    Artifact {
        /// The reference.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// A local file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Where an artifact lives.
#[derive(Clone, Debug)]
pub enum Location {
    /// A registry: `oci://HOST[:PORT]/REPO(:TAG|@sha256:DIGEST)`.
    Registry(oci_client::Reference),
    /// An OCI image-layout directory: `oci-layout:DIR[:TAG|@sha256:DIGEST]`.
    Layout {
        /// The directory.
        dir: PathBuf,
        /// A tag (`org.opencontainers.image.ref.name`) or a `sha256:` digest.
        reference: Option<String>,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Registry(r) => write!(f, "oci://{}", r.whole()),
            Location::Layout { dir, reference } => {
                write!(f, "oci-layout:{}", dir.display())?;
                match reference {
                    Some(r) if r.starts_with("sha256:") => write!(f, "@{r}"),
                    Some(r) => write!(f, ":{r}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl Location {
    /// Parse `oci://HOST[:PORT]/REPO[:TAG|@sha256:D]` or `oci-layout:DIR[:TAG|@sha256:D]`.
    pub fn parse(s: &str) -> Result<Location, DistributionError> {
        let bad = |message: String| DistributionError::Reference {
            reference: s.to_string(),
            message,
        };
        if let Some(rest) = s.strip_prefix("oci://") {
            let host = rest.split('/').next().unwrap_or_default();
            if !rest.contains('/') || host.is_empty() {
                return Err(bad(
                    "give the registry and repository: oci://HOST[:PORT]/REPO:TAG".into(),
                ));
            }
            if host.starts_with('[') {
                return Err(bad(
                    "OCI references cannot name a registry by an IPv6 address: use localhost or \
                     127.0.0.1 for a loopback registry, or a host name"
                        .into(),
                ));
            }
            // Say which: a tag or a digest (no implicit `latest`).
            let last = rest.rsplit('/').next().unwrap_or_default();
            match last.split_once('@') {
                Some((_, digest)) => check_digest(digest).map_err(bad)?,
                None if !last.contains(':') => {
                    return Err(bad(
                        "name a tag (REPO:TAG) or a digest (REPO@sha256:DIGEST)".into(),
                    ));
                }
                None => {}
            }
            let reference: oci_client::Reference = rest
                .parse()
                .map_err(|e| bad(format!("not an OCI reference ({e})")))?;
            if reference.registry() != host {
                return Err(bad(format!(
                    "'{host}' is not a registry host (a registry has a '.' or a ':PORT' in its \
                     name, or is localhost)"
                )));
            }
            return Ok(Location::Registry(reference));
        }
        if let Some(rest) = s.strip_prefix("oci-layout:") {
            if rest.is_empty() {
                return Err(bad("give the layout directory: oci-layout:DIR[:TAG]".into()));
            }
            let (dir, reference) = if let Some((dir, digest)) = rest.rsplit_once('@') {
                check_digest(digest).map_err(bad)?;
                (dir.to_string(), Some(digest.to_string()))
            } else {
                // A tag follows the last ':' of the last path component.
                let last = rest.rsplit('/').next().unwrap_or(rest);
                match last.rsplit_once(':') {
                    Some((_, tag)) if !tag.is_empty() => {
                        let dir = &rest[..rest.len() - tag.len() - 1];
                        (dir.to_string(), Some(tag.to_string()))
                    }
                    _ => (rest.to_string(), None),
                }
            };
            if dir.is_empty() {
                return Err(bad("give the layout directory: oci-layout:DIR[:TAG]".into()));
            }
            return Ok(Location::Layout {
                dir: PathBuf::from(dir),
                reference,
            });
        }
        Err(bad(
            "not a plugin location: give oci://HOST[:PORT]/REPO:TAG (a registry) or \
             oci-layout:DIR[:TAG] (an OCI image-layout directory)"
                .into(),
        ))
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("'{d}' is not a sha256: digest"))?;
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(format!(
            "'{d}' is not a sha256: digest (64 lowercase hex digits)"
        ))
    }
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A plugin artifact: the component, its signature envelope, and fixture files.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The component.
    pub component: Vec<u8>,
    /// The DSSE envelope (JSON), as signed.
    pub signature: Vec<u8>,
    /// What the envelope states (NOT verified: see [`crate::policy::PublicKey`]).
    pub statement: Statement,
    /// Fixture files: path (relative, `/`-separated) and content.
    pub fixtures: Vec<(String, Vec<u8>)>,
}

/// Where a pushed or pulled artifact is.
#[derive(Clone, Debug)]
pub struct Stored {
    /// `sha256:...` of the manifest.
    pub digest: String,
    /// Its immutable reference: `oci://HOST/REPO@DIGEST` or `oci-layout:DIR@DIGEST`.
    pub location: String,
    /// The tag a layout entry got.
    pub tag: Option<String>,
}

impl Stored {
    /// An artifact in a registry's repository, by its manifest digest.
    fn registry(reference: &oci_client::Reference, digest: String) -> Stored {
        Stored {
            location: format!(
                "oci://{}/{}@{digest}",
                reference.registry(),
                reference.repository()
            ),
            digest,
            tag: None,
        }
    }
}

impl Artifact {
    /// An artifact from a component and its signature. The envelope must state this
    /// component's digest and size (it is not verified here: whoever loads it decides whether
    /// the key is trusted).
    pub fn new(
        component: Vec<u8>,
        signature: Vec<u8>,
        fixtures: Vec<(String, Vec<u8>)>,
    ) -> Result<Artifact, String> {
        let statement = Envelope::parse(&signature)
            .and_then(|e| e.unverified_statement())
            .map_err(|e| e.to_string())?;
        statement.validate().map_err(|e| e.to_string())?;
        let digest = hex::encode(Sha256::digest(&component));
        if statement.sha256 != digest || statement.size != component.len() as u64 {
            return Err(format!(
                "the signature is for sha256 {} ({} bytes), the component is sha256 {digest} ({} \
                 bytes): sign this component",
                statement.sha256,
                statement.size,
                component.len()
            ));
        }
        check_plugin_name(&statement.name)?;
        if !component.starts_with(b"\0asm") {
            return Err("the component is not WebAssembly (no \\0asm header)".into());
        }
        for (path, bytes) in &fixtures {
            safe_path(path)?;
            // Fixtures are certificates, CSRs and JSON; a private key among them is a mistake
            // (a vendor's own directory given as fixtures) that must not be published.
            const KEY: &[u8] = b"PRIVATE KEY-----";
            if bytes.windows(KEY.len()).any(|w| w == KEY) {
                return Err(format!(
                    "fixture {path} holds a private key: not published (fixtures never need one)"
                ));
            }
        }
        // Paths that could not all be files of one directory (`a` and `a/b`, or twice `a`)
        // are refused here, before anything is written.
        let mut paths: Vec<&str> = fixtures.iter().map(|(p, _)| p.as_str()).collect();
        paths.sort_unstable();
        for pair in paths.windows(2) {
            if pair[0] == pair[1] || pair[1].starts_with(&format!("{}/", pair[0])) {
                return Err(format!(
                    "fixture paths {:?} and {:?} cannot both be files",
                    pair[0], pair[1]
                ));
            }
        }
        Ok(Artifact {
            component,
            signature,
            statement,
            fixtures,
        })
    }

    /// The file name the component gets when pulled (`<name>.wasm`).
    pub fn file_name(&self) -> String {
        format!("{}.wasm", self.statement.name)
    }

    /// The manifest (bytes, as pushed) and every blob it references, config first.
    fn encode(&self) -> (Vec<u8>, Vec<(OciDescriptor, Vec<u8>)>) {
        let descriptor = |media_type: &str, bytes: &[u8], title: Option<String>| OciDescriptor {
            media_type: media_type.to_string(),
            digest: sha256_digest(bytes),
            size: bytes.len() as i64,
            urls: None,
            annotations: title.map(|t| BTreeMap::from([(TITLE.to_string(), t)])),
            ..OciDescriptor::default()
        };
        let config = serde_json::to_vec(&self.statement).unwrap_or_default();
        let config_desc = descriptor(WASM_CONFIG_MEDIA_TYPE, &config, None);
        let mut blobs = vec![(config_desc.clone(), config)];
        let name = self.file_name();
        blobs.push((
            descriptor(WASM_LAYER_MEDIA_TYPE, &self.component, Some(name.clone())),
            self.component.clone(),
        ));
        blobs.push((
            descriptor(
                SIGNATURE_MEDIA_TYPE,
                &self.signature,
                Some(format!("{name}.sig")),
            ),
            self.signature.clone(),
        ));
        for (path, bytes) in &self.fixtures {
            blobs.push((
                descriptor(FIXTURE_MEDIA_TYPE, bytes, Some(path.clone())),
                bytes.clone(),
            ));
        }
        let hooks: Vec<&str> = self.statement.hooks.iter().map(|h| h.as_str()).collect();
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
            config: config_desc,
            layers: blobs[1..].iter().map(|(d, _)| d.clone()).collect(),
            subject: None,
            artifact_type: None,
            annotations: Some(BTreeMap::from([
                (TITLE.to_string(), self.statement.name.clone()),
                (VERSION.to_string(), self.statement.version.clone()),
                (CONTRACT.to_string(), self.statement.contract.clone()),
                (HOOKS.to_string(), hooks.join(",")),
            ])),
        };
        let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        (bytes, blobs)
    }

    /// The artifact of `manifest` (raw bytes), its blobs fetched by `fetch` (which checks
    /// each against its descriptor's digest).
    fn decode(
        reference: &str,
        manifest: &[u8],
        mut fetch: impl FnMut(&OciDescriptor) -> Result<Vec<u8>, DistributionError>,
    ) -> Result<Artifact, DistributionError> {
        let bad = |message: String| DistributionError::Artifact {
            reference: reference.to_string(),
            message,
        };
        let manifest: OciImageManifest = serde_json::from_slice(manifest)
            .map_err(|e| bad(format!("not an OCI image manifest ({e})")))?;
        if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
            return Err(bad(format!(
                "not a wasm artifact (config media type {})",
                manifest.config.media_type
            )));
        }
        let of = |media_type: &str| -> Vec<&OciDescriptor> {
            manifest
                .layers
                .iter()
                .filter(|l| l.media_type == media_type)
                .collect()
        };
        let (components, signatures) = (of(WASM_LAYER_MEDIA_TYPE), of(SIGNATURE_MEDIA_TYPE));
        if components.len() != 1 {
            return Err(bad(format!(
                "{} wasm layers ({WASM_LAYER_MEDIA_TYPE}); a rotor plugin has one",
                components.len()
            )));
        }
        if signatures.len() != 1 {
            return Err(bad(format!(
                "{} signature layers ({SIGNATURE_MEDIA_TYPE}); a rotor plugin has one (unsigned \
                 plugins are not distributed)",
                signatures.len()
            )));
        }
        if let Some(other) = manifest.layers.iter().find(|l| {
            ![
                WASM_LAYER_MEDIA_TYPE,
                SIGNATURE_MEDIA_TYPE,
                FIXTURE_MEDIA_TYPE,
            ]
            .contains(&l.media_type.as_str())
        }) {
            return Err(bad(format!("unexpected layer type {}", other.media_type)));
        }
        // Every blob is exactly its descriptor's size (and, checked by `fetch`, digest).
        let mut fetch = |d: &OciDescriptor| -> Result<Vec<u8>, DistributionError> {
            let bytes = fetch(d)?;
            if i64::try_from(bytes.len()).ok() != Some(d.size) {
                return Err(bad(format!(
                    "blob {} is {} bytes, its descriptor says {}",
                    d.digest,
                    bytes.len(),
                    d.size
                )));
            }
            Ok(bytes)
        };
        let component = fetch(components[0])?;
        let signature = fetch(signatures[0])?;
        let mut fixtures = Vec::new();
        for layer in of(FIXTURE_MEDIA_TYPE) {
            let path = layer
                .annotations
                .as_ref()
                .and_then(|a| a.get(TITLE))
                .cloned()
                .ok_or_else(|| bad(format!("fixture layer {} has no title", layer.digest)))?;
            fixtures.push((path, fetch(layer)?));
        }
        Artifact::new(component, signature, fixtures).map_err(bad)
    }

    /// Write the component (`<name>.wasm`), its signature (`<name>.wasm.sig`) and fixtures
    /// (`<name>-fixtures/...`) into `dir` (created). Returns the component's path.
    pub fn write_files(&self, dir: &Path) -> Result<PathBuf, DistributionError> {
        let root = Root::create_ambient(dir)?;
        let name = self.file_name();
        let fixtures = format!("{}-fixtures", self.statement.name);
        // The release's fixtures replace the previous release's whole: staged beside them,
        // then swapped in (none at all when this release ships none).
        let staged = format!(".{fixtures}.new");
        if root.exists(Path::new(&staged)) {
            root.remove_dir_all(Path::new(&staged))?;
        }
        for (path, bytes) in &self.fixtures {
            let rel = Path::new(&staged).join(path);
            if let Some(parent) = rel.parent() {
                root.create_dir_all(parent)?;
            }
            root.write_atomic(&rel, bytes, 0o644)?;
        }
        if root.exists(Path::new(&fixtures)) {
            root.remove_dir_all(Path::new(&fixtures))?;
        }
        if !self.fixtures.is_empty() {
            root.rename(Path::new(&staged), Path::new(&fixtures))?;
        }
        // The signature before the component: a reader between the two sees the old component
        // with the new signature, which a bundle refuses (the digests differ), never a
        // component accepted by a signature that was not made for it.
        root.write_atomic(Path::new(&format!("{name}.sig")), &self.signature, 0o644)?;
        root.write_atomic(Path::new(&name), &self.component, 0o644)?;
        Ok(dir.join(name))
    }
}

/// Whether `name` can name a plugin's files (`NAME.wasm`, `NAME.wasm.sig`): letters, digits,
/// `-`, `_` and `.`, not starting with `.`, at most 128 bytes.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?} is not a file name (letters, digits, '-', '_', '.')"
        ))
    }
}

/// A fixture path: relative, `/`-separated, no `..`, no empty or hidden component.
fn safe_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "fixture path {path:?} is not a plain relative path"
        ))
    }
}

/// Every file under `dir` (recursively) as fixtures, sorted by path.
pub fn read_fixtures(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, DistributionError> {
    let root = Root::open_ambient(dir)?;
    let mut out = Vec::new();
    for (rel, kind) in root.walk(Path::new("."))? {
        // Hidden files and directories (.gitkeep, .DS_Store, .git/) are not fixtures.
        let hidden = rel.components().any(|c| match c {
            std::path::Component::Normal(n) => n.to_string_lossy().starts_with('.'),
            _ => false,
        });
        if kind != crate::fs::Kind::File || hidden {
            continue;
        }
        let path = rel
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("/");
        safe_path(&path).map_err(|message| DistributionError::Artifact {
            reference: root.display(&rel).display().to_string(),
            message: format!(
                "{message}: fixture files are named with letters, digits, '-', '_' and '.'"
            ),
        })?;
        out.push((path, root.read(&rel)?));
    }
    out.sort();
    Ok(out)
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Extra CA certificates (PEM) for a registry's TLS certificate. Given for a loopback
    /// registry, it also makes rotor speak TLS to it.
    pub ca_pem: Option<Vec<u8>>,
    /// Basic-auth credentials.
    pub basic_auth: Option<(String, String)>,
}

/// Whether a registry host (`HOST[:PORT]`) is on loopback: the only registries reached over
/// plain HTTP.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn client(reference: &oci_client::Reference, options: &RegistryOptions) -> oci_client::Client {
    use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
    let registry = reference.resolve_registry().to_string();
    let protocol = if is_loopback(&registry) && options.ca_pem.is_none() {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let mut config = ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        // The manifest is pushed whole; no chunked uploads to a registry that may not do them.
        use_monolithic_push: true,
        ..ClientConfig::default()
    };
    if let Some(pem) = &options.ca_pem {
        config.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: pem.clone(),
        });
    }
    oci_client::Client::new(config)
}

fn auth(options: &RegistryOptions) -> oci_client::secrets::RegistryAuth {
    match &options.basic_auth {
        Some((u, p)) => oci_client::secrets::RegistryAuth::Basic(u.clone(), p.clone()),
        None => oci_client::secrets::RegistryAuth::Anonymous,
    }
}

/// The registry's error in words: the client's error and its sources.
fn registry_error(reference: &str, e: &dyn std::error::Error) -> DistributionError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    if message.contains("MANIFEST_UNKNOWN") || message.contains("manifest unknown") {
        message.push_str(" (the repository holds no such tag or digest)");
    }
    // A TLS registry on loopback answers rotor's plain HTTP with 400.
    if message.contains("400 Bad Request") && message.contains("(http://") {
        message.push_str(
            " (rotor speaks plain HTTP to a loopback registry unless it is given the CA \
             certificate of the registry's TLS certificate; a registry serving TLS needs it)",
        );
    }
    DistributionError::Registry {
        reference: reference.to_string(),
        message,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, DistributionError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DistributionError::Registry {
            reference: "registry client".into(),
            message: e.to_string(),
        })
}

/// Push `artifact` to `location` (a registry tag, or a layout directory with a tag). Returns
/// the manifest's digest: the immutable reference to give pulls.
pub fn push(
    artifact: &Artifact,
    location: &Location,
    options: &RegistryOptions,
) -> Result<Stored, DistributionError> {
    let (manifest, blobs) = artifact.encode();
    let digest = sha256_digest(&manifest);
    match location {
        Location::Registry(reference) => {
            let shown = location.to_string();
            if reference.digest().is_some() {
                return Err(DistributionError::Reference {
                    reference: shown,
                    message: "push to a tag (REPO:TAG); the digest is what the push returns".into(),
                });
            }
            let client = client(reference, options);
            runtime()?.block_on(async {
                client
                    .store_auth_if_needed(reference.resolve_registry(), &auth(options))
                    .await;
                for (desc, bytes) in &blobs {
                    let present = client
                        .blob_exists(reference, &desc.digest)
                        .await
                        .map_err(|e| registry_error(&shown, &e))?;
                    if !present {
                        client
                            .push_blob(reference, bytes.clone(), &desc.digest)
                            .await
                            .map_err(|e| registry_error(&shown, &e))?;
                    }
                }
                client
                    .push_manifest_raw(
                        reference,
                        manifest.clone(),
                        http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
                    )
                    .await
                    .map_err(|e| registry_error(&shown, &e))?;
                Ok::<_, DistributionError>(())
            })?;
            Ok(Stored::registry(reference, digest))
        }
        Location::Layout { dir, reference } => {
            let tag = match reference {
                Some(r) if r.starts_with("sha256:") => {
                    return Err(DistributionError::Reference {
                        reference: location.to_string(),
                        message: "write to a tag (oci-layout:DIR:TAG)".into(),
                    });
                }
                Some(r) => r.clone(),
                // Several plugins share a layout: each tagged NAME-VERSION unless told.
                None => format!("{}-{}", artifact.statement.name, artifact.statement.version),
            };
            write_layout(dir, &manifest, &blobs, &tag)?;
            Ok(Stored {
                location: format!("oci-layout:{}@{digest}", dir.display()),
                digest,
                tag: Some(tag),
            })
        }
    }
}

/// Pull the artifact at `location`. A digest reference must match the manifest; every blob
/// must match its descriptor; the component must match its signature's digest.
pub fn pull(
    location: &Location,
    options: &RegistryOptions,
) -> Result<(Artifact, Stored), DistributionError> {
    let shown = location.to_string();
    match location {
        Location::Registry(reference) => {
            let client = client(reference, options);
            runtime()?.block_on(async {
                let (manifest, digest) = client
                    .pull_manifest_raw(reference, &auth(options), &[OCI_IMAGE_MEDIA_TYPE])
                    .await
                    .map_err(|e| registry_error(&shown, &e))?;
                verify_manifest_digest(&shown, &manifest, reference.digest(), &digest)?;
                // Fetch each blob; the client checks it against the descriptor's digest.
                let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
                let parsed: OciImageManifest =
                    serde_json::from_slice(&manifest).map_err(|e| DistributionError::Artifact {
                        reference: shown.clone(),
                        message: format!("not an OCI image manifest ({e})"),
                    })?;
                for layer in &parsed.layers {
                    if layer.size < 0 || layer.size as u64 > MAX_BLOB {
                        return Err(DistributionError::Artifact {
                            reference: shown.clone(),
                            message: format!("layer {} is {} bytes", layer.digest, layer.size),
                        });
                    }
                    if blobs.contains_key(&layer.digest) {
                        continue;
                    }
                    let mut out = Limited {
                        bytes: Vec::new(),
                        limit: usize::try_from(layer.size).unwrap_or(0),
                    };
                    client
                        .pull_blob(reference, layer, &mut out)
                        .await
                        .map_err(|e| {
                            let e = registry_error(&shown, &e);
                            DistributionError::Artifact {
                                reference: shown.clone(),
                                message: format!(
                                    "layer {} ({}) refused: {}",
                                    layer.digest,
                                    layer.media_type,
                                    e.to_string().trim_start_matches(&format!("{shown}: "))
                                ),
                            }
                        })?;
                    blobs.insert(layer.digest.clone(), out.bytes);
                }
                let artifact = Artifact::decode(&shown, &manifest, |d| {
                    blobs
                        .get(&d.digest)
                        .cloned()
                        .ok_or_else(|| DistributionError::Artifact {
                            reference: shown.clone(),
                            message: format!("layer {} missing", d.digest),
                        })
                })?;
                Ok((artifact, Stored::registry(reference, digest)))
            })
        }
        Location::Layout { dir, reference } => {
            let root = Root::open_ambient(dir).map_err(|e| {
                if e.is_not_found() {
                    DistributionError::Artifact {
                        reference: shown.clone(),
                        message: "no such image-layout directory".into(),
                    }
                } else {
                    e.into()
                }
            })?;
            let (manifest, digest) = layout_manifest(&root, &shown, reference.as_deref())?;
            let artifact =
                Artifact::decode(&shown, &manifest, |d| read_blob(&root, &shown, &d.digest))?;
            Ok((
                artifact,
                Stored {
                    location: format!("oci-layout:{}@{digest}", dir.display()),
                    digest,
                    tag: reference.clone().filter(|r| !r.starts_with("sha256:")),
                },
            ))
        }
    }
}

/// A blob being downloaded: refused past its descriptor's size, so a registry cannot make rotor
/// hold more than the manifest announced.
struct Limited {
    bytes: Vec<u8>,
    limit: usize,
}

impl tokio::io::AsyncWrite for Limited {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len().saturating_add(buf.len()) > self.limit {
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes the manifest announced",
                self.limit
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn verify_manifest_digest(
    shown: &str,
    manifest: &[u8],
    wanted: Option<&str>,
    reported: &str,
) -> Result<(), DistributionError> {
    let actual = sha256_digest(manifest);
    for expected in wanted.into_iter().chain(Some(reported)) {
        if expected != actual {
            return Err(DistributionError::Artifact {
                reference: shown.to_string(),
                message: format!(
                    "digest mismatch: asked for {expected}, the manifest served is {actual}"
                ),
            });
        }
    }
    Ok(())
}

/// A blob of a layout, checked against its digest.
fn read_blob(root: &Root, shown: &str, digest: &str) -> Result<Vec<u8>, DistributionError> {
    check_digest(digest).map_err(|message| DistributionError::Artifact {
        reference: shown.to_string(),
        message,
    })?;
    let rel = PathBuf::from("blobs/sha256").join(&digest["sha256:".len()..]);
    let bytes = {
        use std::io::Read;
        let file = root.open_read(&rel)?;
        let mut bytes = Vec::new();
        file.take(MAX_BLOB + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| FsError::io(root.display(&rel), e))?;
        if bytes.len() as u64 > MAX_BLOB {
            return Err(DistributionError::Artifact {
                reference: shown.to_string(),
                message: format!(
                    "blob {} is larger than {} MiB",
                    root.display(&rel).display(),
                    MAX_BLOB >> 20
                ),
            });
        }
        bytes
    };
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(DistributionError::Artifact {
            reference: shown.to_string(),
            message: format!(
                "blob {} is sha256 {actual}: it was changed (tampered or corrupt)",
                root.display(&rel).display()
            ),
        });
    }
    Ok(bytes)
}

/// The manifest a layout's `index.json` names by tag or digest (or its only one).
fn layout_manifest(
    root: &Root,
    shown: &str,
    reference: Option<&str>,
) -> Result<(Vec<u8>, String), DistributionError> {
    let bad = |message: String| DistributionError::Artifact {
        reference: shown.to_string(),
        message,
    };
    let index: OciImageIndex = serde_json::from_slice(&root.read(Path::new("index.json"))?)
        .map_err(|e| bad(format!("index.json: not an OCI image index ({e})")))?;
    let tag_of = |e: &ImageIndexEntry| {
        e.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let entry = match reference {
        Some(d) if d.starts_with("sha256:") => index.manifests.iter().find(|e| e.digest == d),
        Some(tag) => index
            .manifests
            .iter()
            .find(|e| tag_of(e).as_deref() == Some(tag)),
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => {
            let tags: Vec<String> = index.manifests.iter().filter_map(tag_of).collect();
            return Err(bad(format!(
                "the layout holds {} manifests: name one (tags: {})",
                index.manifests.len(),
                tags.join(", ")
            )));
        }
    };
    let entry = entry.ok_or_else(|| {
        bad(format!(
            "no manifest {} in index.json",
            reference.unwrap_or_default()
        ))
    })?;
    let manifest = read_blob(root, shown, &entry.digest)?;
    Ok((manifest, entry.digest.clone()))
}

/// Write the artifact into an OCI image layout: blobs first, `index.json` last (replacing an
/// entry of the same tag), so a reader sees the old index or the new, each complete.
fn write_layout(
    dir: &Path,
    manifest: &[u8],
    blobs: &[(OciDescriptor, Vec<u8>)],
    tag: &str,
) -> Result<(), DistributionError> {
    let root = Root::create_ambient(dir)?;
    let shown = format!("oci-layout:{}", dir.display());
    let mut index = match root.read(Path::new("index.json")) {
        Ok(bytes) => serde_json::from_slice::<OciImageIndex>(&bytes).map_err(|e| {
            DistributionError::Artifact {
                reference: shown.clone(),
                message: format!("index.json: not an OCI image index ({e})"),
            }
        })?,
        Err(e) if e.is_not_found() => OciImageIndex {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()),
            manifests: Vec::new(),
            artifact_type: None,
            annotations: None,
        },
        Err(e) => return Err(e.into()),
    };
    root.create_dir_all(Path::new("blobs/sha256"))?;
    let digest = sha256_digest(manifest);
    let all = blobs
        .iter()
        .map(|(d, b)| (d.digest.as_str(), b.as_slice()))
        .chain(Some((digest.as_str(), manifest)));
    for (d, bytes) in all {
        let rel = PathBuf::from("blobs/sha256").join(&d["sha256:".len()..]);
        root.write_atomic(&rel, bytes, 0o644)?;
    }
    root.write_atomic(
        Path::new("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    index.manifests.retain(|e| {
        e.annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .map(String::as_str)
            != Some(tag)
    });
    index.manifests.push(ImageIndexEntry {
        media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
        digest,
        size: manifest.len() as i64,
        platform: None,
        annotations: Some(BTreeMap::from([(REF_NAME.to_string(), tag.to_string())])),
        artifact_type: None,
    });
    let bytes = serde_json::to_vec_pretty(&index).unwrap_or_default();
    root.write_atomic(Path::new("index.json"), &bytes, 0o644)?;
    Ok(())
}

/// Fuzzing entry: decode `data` as a manifest (every blob answered by `data` itself, then by
/// an error), as an image index, and as a location. Never panics.
#[doc(hidden)]
pub(crate) fn fuzz_artifact(data: &[u8]) {
    let _ = Artifact::decode("fuzz", data, |_| Ok(data.to_vec()));
    let _ = Artifact::decode("fuzz", data, |d| {
        Err(DistributionError::Artifact {
            reference: "fuzz".into(),
            message: d.digest.clone(),
        })
    });
    let _ = serde_json::from_slice::<OciImageIndex>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Location::parse(text.trim());
        let _ = is_loopback(text);
        let _ = safe_path(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        match Location::parse("oci://127.0.0.1:5000/acme/renewal:1.2.0").unwrap() {
            Location::Registry(r) => {
                assert_eq!(r.registry(), "127.0.0.1:5000");
                assert_eq!(r.repository(), "acme/renewal");
                assert_eq!(r.tag(), Some("1.2.0"));
            }
            l => panic!("{l:?}"),
        }
        let d = format!("sha256:{}", "a".repeat(64));
        match Location::parse(&format!("oci-layout:/tmp/x:y/layout@{d}")).unwrap() {
            Location::Layout { dir, reference } => {
                assert_eq!(dir, PathBuf::from("/tmp/x:y/layout"));
                assert_eq!(reference.as_deref(), Some(d.as_str()));
            }
            l => panic!("{l:?}"),
        }
        match Location::parse("oci-layout:out/layout:v1").unwrap() {
            Location::Layout { dir, reference } => {
                assert_eq!(dir, PathBuf::from("out/layout"));
                assert_eq!(reference.as_deref(), Some("v1"));
            }
            l => panic!("{l:?}"),
        }
        assert!(Location::parse("acme/renewal:1").is_err());
        assert!(
            Location::parse("oci://acme/renewal:1").is_err(),
            "no registry host"
        );
        assert!(Location::parse("oci-layout:x@sha256:abc").is_err());
    }

    #[test]
    fn only_loopback_is_plain_http() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "registry.example.com",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn fixture_paths_stay_inside() {
        for p in ["csr.json", "inputs/node-a.csr"] {
            assert!(safe_path(p).is_ok(), "{p}");
        }
        for p in ["../x", "/etc/passwd", "a//b", ".hidden", "a/../b", ""] {
            assert!(safe_path(p).is_err(), "{p}");
        }
    }
}
