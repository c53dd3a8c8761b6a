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
    OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, WASM_CONFIG_MEDIA_TYPE,
    WASM_LAYER_MEDIA_TYPE,
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
    /// A registry auth file (a Docker or podman config) could not be used.
    #[error("registry credentials: {}: {message}", .file.display())]
    Credentials {
        /// The file.
        file: PathBuf,
        /// What is wrong.
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

mod credentials;
mod remote;

pub use credentials::{RegistryCredential, registry_credential};
pub use remote::{RegistryOptions, pull, push};

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
    let _ = serde_json::from_slice::<oci_client::manifest::OciImageIndex>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Location::parse(text.trim());
        let _ = remote::is_loopback(text);
        let _ = safe_path(text);
    }
}

#[cfg(test)]
mod tests {
    use super::remote::is_loopback;
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
