//! Moving an artifact: to and from a registry (the distribution API, through `oci-client`) or
//! an OCI image-layout directory, every blob checked against its digest on the way in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_client::manifest::{
    ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageIndex, OciImageManifest,
};

use super::{
    Artifact, DistributionError, Location, MAX_BLOB, REF_NAME, Stored, check_digest, sha256_digest,
};
use crate::fs::{FsError, Root};

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
pub(super) fn is_loopback(registry: &str) -> bool {
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
