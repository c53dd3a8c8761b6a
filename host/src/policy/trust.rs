//! Which plugins a bundle accepts: by the sha256 pinned in its manifest, or by a vendor's
//! signature from a key of its `[trust.keys]` (see [`super::signing`] for the envelope) or, for
//! vendors already on cosign, a `cosign sign-blob --key` signature from a key of its
//! `[trust.cosign_keys]` (verified offline with the `sigstore` crate); never a revoked digest
//! or a revoked key's signature.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::bundle::{Acceptance, BundleError, BundleFile, HookEntry};
use super::source::Files;
use crate::contract::Hook;
use crate::plugin::{PluginError, PluginErrorKind};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrustSection {
    /// Trusted vendor keys: a name for each, and its public key file in the bundle.
    #[serde(default)]
    keys: std::collections::BTreeMap<String, String>,
    /// Trusted cosign public keys (`cosign generate-key-pair`'s cosign.pub: ECDSA P-256, or
    /// any key cosign signs blobs with): a name for each, and its file in the bundle.
    #[serde(default)]
    cosign_keys: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    revoked_keys: Vec<String>,
    #[serde(default)]
    revoked_sha256: Vec<String>,
}

/// How a plugin was accepted, with the signature file and statement when by signature.
pub(super) struct Accepted {
    pub(super) how: Acceptance,
    pub(super) signature: Option<BundleFile>,
    pub(super) statement: Option<crate::policy::signing::Statement>,
}

/// The keys a bundle trusts and what it revoked.
#[derive(Debug, Default)]
pub(super) struct Trust {
    pub(super) keys: Vec<(String, crate::policy::signing::PublicKey)>,
    pub(super) cosign_keys: Vec<(String, CosignKey)>,
    revoked_keys: Vec<String>,
    revoked_sha256: Vec<String>,
}

/// A trusted cosign public key.
pub(super) struct CosignKey {
    key: sigstore::crypto::CosignVerificationKey,
    /// Hex sha256 of its DER SubjectPublicKeyInfo (what `revoked_keys` lists).
    pub(super) keyid: String,
}

impl std::fmt::Debug for CosignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosignKey")
            .field("keyid", &self.keyid)
            .finish()
    }
}

impl CosignKey {
    fn from_pem(bytes: &[u8]) -> Result<CosignKey, String> {
        let p = pem::parse(bytes).map_err(|e| format!("not a PEM public key ({e})"))?;
        if p.tag() != "PUBLIC KEY" {
            return Err(format!(
                "a PEM '{}' block, not a 'PUBLIC KEY' (the cosign.pub `cosign generate-key-pair` \
                 writes)",
                p.tag()
            ));
        }
        let key = sigstore::crypto::CosignVerificationKey::try_from_der(p.contents())
            .map_err(|e| format!("not a key cosign verifies with ({e})"))?;
        Ok(CosignKey {
            key,
            keyid: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(p.contents())),
        })
    }

    /// Whether `signature` (base64, as `cosign sign-blob --output-signature` writes it) is this
    /// key's over `blob`.
    fn verifies(&self, signature: &[u8], blob: &[u8]) -> bool {
        self.key
            .verify_signature(sigstore::crypto::Signature::Base64Encoded(signature), blob)
            .is_ok()
    }
}

/// The bundle's `[trust]`: every key file read and parsed, revocations normalised.
pub(super) fn read_trust(
    source: &Files,
    manifest_path: &Path,
    section: &TrustSection,
    files: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<Trust, BundleError> {
    let manifest = |message: String| BundleError::Manifest {
        path: manifest_path.to_path_buf(),
        message,
    };
    let hex64 = |what: &str, v: &str| -> Result<String, BundleError> {
        let v = v.trim().to_ascii_lowercase();
        if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(v)
        } else {
            Err(manifest(format!(
                "[trust] '{what}': {v:?} is not a 64-hex-digit sha256"
            )))
        }
    };
    let mut trust = Trust {
        revoked_keys: section
            .revoked_keys
            .iter()
            .map(|k| hex64("revoked_keys", k))
            .collect::<Result<_, _>>()?,
        revoked_sha256: section
            .revoked_sha256
            .iter()
            .map(|d| hex64("revoked_sha256", d))
            .collect::<Result<_, _>>()?,
        ..Trust::default()
    };
    for (name, file) in &section.keys {
        let rel = PathBuf::from(file);
        let bytes = source
            .read(&rel)
            .map_err(|e| manifest(format!("[trust.keys] '{name}': {e}")))?;
        let key = crate::policy::signing::PublicKey::from_pem(&bytes)
            .map_err(|e| manifest(format!("[trust.keys] '{name}': {file}: {e}")))?;
        if !files.iter().any(|(p, _)| *p == rel) {
            files.push((rel, bytes));
        }
        trust.keys.push((name.clone(), key));
    }
    for (name, file) in &section.cosign_keys {
        if section.keys.contains_key(name) {
            return Err(manifest(format!(
                "[trust.cosign_keys] '{name}': [trust.keys] has a key of that name too \
                 (signed_by names one key)"
            )));
        }
        let rel = PathBuf::from(file);
        let bytes = source
            .read(&rel)
            .map_err(|e| manifest(format!("[trust.cosign_keys] '{name}': {e}")))?;
        let key = CosignKey::from_pem(&bytes)
            .map_err(|e| manifest(format!("[trust.cosign_keys] '{name}': {file}: {e}")))?;
        if !files.iter().any(|(p, _)| *p == rel) {
            files.push((rel, bytes));
        }
        trust.cosign_keys.push((name.clone(), key));
    }
    Ok(trust)
}

/// Accept `bytes` (the plugin file `entry.plugin`, digest `actual`) by its pin or by a trusted
/// signature. Returns how, with the signature file read (to record with the bundle).
pub(super) fn accept(
    source: &Files,
    manifest_path: &Path,
    hook: Hook,
    entry: &HookEntry,
    trust: &Trust,
    actual: &str,
    plugin: &[u8],
) -> Result<Accepted, BundleError> {
    let size = plugin.len();
    use crate::policy::signing::Envelope;
    let untrusted = |message: String| BundleError::Untrusted {
        path: manifest_path.to_path_buf(),
        hook,
        plugin: entry.plugin.clone(),
        message,
    };
    let field = |field: &'static str, message: String| BundleError::Field {
        path: manifest_path.to_path_buf(),
        hook,
        field,
        message,
    };
    if trust.revoked_sha256.iter().any(|d| d == actual) {
        return Err(untrusted(format!(
            "its sha256 {actual} is revoked ([trust] revoked_sha256)"
        )));
    }
    let pinned = entry.sha256.trim().to_ascii_lowercase();
    if !pinned.is_empty() {
        if pinned.len() != 64 || !pinned.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(field(
                "sha256",
                "must be the plugin's 64-hex-digit sha256 (`sha256sum FILE` gives it)".into(),
            ));
        }
        if pinned != actual {
            return Err(BundleError::Plugin {
                path: manifest_path.to_path_buf(),
                error: PluginError {
                    plugin: entry.name.clone().unwrap_or_else(|| entry.plugin.clone()),
                    hook,
                    kind: PluginErrorKind::DigestMismatch {
                        expected: pinned,
                        actual: actual.to_string(),
                    },
                },
            });
        }
        return Ok(Accepted {
            how: Acceptance::Pin,
            signature: None,
            statement: None,
        });
    }
    if trust.keys.is_empty() && trust.cosign_keys.is_empty() {
        return Err(field(
            "sha256",
            "is missing: pin the plugin by its sha256 (`rotor policy pin`), or trust its \
             vendor's key in [trust.keys] (or its cosign key in [trust.cosign_keys]) and ship \
             its signature"
                .into(),
        ));
    }
    let constraint = entry
        .version
        .as_deref()
        .map(|v| {
            semver::VersionReq::parse(v).map_err(|e| {
                field(
                    "version",
                    format!("{v:?} is not a version requirement: {e}"),
                )
            })
        })
        .transpose()?;
    if let Some(name) = &entry.signed_by
        && !trust.keys.iter().any(|(n, _)| n == name)
        && !trust.cosign_keys.iter().any(|(n, _)| n == name)
    {
        let names: Vec<&str> = trust
            .keys
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(trust.cosign_keys.iter().map(|(n, _)| n.as_str()))
            .collect();
        return Err(field(
            "signed_by",
            format!(
                "is '{name}', which names no key of [trust.keys] or [trust.cosign_keys] ({})",
                names.join(", ")
            ),
        ));
    }
    let candidates: Vec<&(String, crate::policy::signing::PublicKey)> = trust
        .keys
        .iter()
        .filter(|(n, _)| entry.signed_by.as_ref().is_none_or(|s| s == n))
        .collect();
    let sig_rel = entry
        .signature
        .clone()
        .unwrap_or_else(|| format!("{}.sig", entry.plugin));
    let sig_bytes = source.read(Path::new(&sig_rel)).map_err(|e| {
        if e.is_not_found() {
            untrusted(format!(
                "it has no pin and no signature ({sig_rel} is missing): pin it by sha256, or \
                 ship the vendor's signature beside it"
            ))
        } else {
            untrusted(e.to_string())
        }
    })?;
    // rotor's envelope is JSON; anything else is taken for cosign's base64 signature.
    if !sig_bytes.trim_ascii_start().starts_with(b"{") {
        return accept_cosign(trust, entry, &sig_rel, sig_bytes, plugin, untrusted, field);
    }
    let envelope = Envelope::parse(&sig_bytes).map_err(|e| untrusted(format!("{sig_rel}: {e}")))?;
    if candidates.is_empty() {
        return Err(untrusted(format!(
            "{sig_rel} is rotor's signature envelope, but the bundle trusts no rotor key{} \
             ([trust.keys])",
            entry
                .signed_by
                .as_ref()
                .map(|s| format!(" named '{s}'"))
                .unwrap_or_default()
        )));
    }
    // A revoked key's signatures do not count, whatever else signed the envelope; one that
    // would have verified is named in the refusal.
    let (revoked, candidates): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|(_, key)| trust.revoked_keys.iter().any(|k| k == key.keyid()));
    let mut why = Vec::new();
    for (name, key) in candidates {
        let statement = match key.verify(&envelope) {
            Ok(s) => s,
            Err(e) => {
                why.push(format!("key '{name}': {e}"));
                continue;
            }
        };
        if statement.sha256 != actual || statement.size != size as u64 {
            return Err(untrusted(format!(
                "{sig_rel} signs sha256 {} ({} bytes), but {} is sha256 {actual} ({size} bytes): \
                 the component was changed or replaced after signing",
                statement.sha256, statement.size, entry.plugin
            )));
        }
        if !statement.hooks.contains(&hook) {
            let hooks: Vec<&str> = statement.hooks.iter().map(|h| h.as_str()).collect();
            return Err(untrusted(format!(
                "{sig_rel} signs it for the {} hook(s), not {}",
                hooks.join(", "),
                hook.as_str()
            )));
        }
        let version = statement
            .validate()
            .map_err(|e| untrusted(format!("{sig_rel}: {e}")))?;
        if let Some(req) = &constraint
            && !req.matches(&version)
        {
            return Err(untrusted(format!(
                "{} {} is signed, but the bundle asks for version {req}",
                statement.name, statement.version
            )));
        }
        let acceptance = Acceptance::Signature {
            key: name.clone(),
            keyid: key.keyid().to_string(),
            name: statement.name.clone(),
            version: statement.version.clone(),
            file: sig_rel.clone(),
        };
        return Ok(Accepted {
            how: acceptance,
            signature: Some((PathBuf::from(&sig_rel), sig_bytes)),
            statement: Some(statement),
        });
    }
    if let Some((name, key)) = revoked
        .iter()
        .find(|(_, key)| key.verify(&envelope).is_ok())
    {
        return Err(untrusted(format!(
            "{sig_rel} is signed by key '{name}' ({}), which is revoked ([trust] revoked_keys)",
            key.keyid()
        )));
    }
    if why.is_empty() {
        why.push("every trusted key it could be signed by is revoked".into());
    }
    Err(untrusted(format!(
        "{sig_rel}: no trusted key verifies it ({})",
        why.join("; ")
    )))
}

/// Accept a plugin by a cosign signature (`cosign sign-blob --key cosign.key
/// --output-signature FILE`: base64 of the key's signature over the component's bytes) from a
/// key of `[trust.cosign_keys]`. Offline: no transparency-log entry is looked up or required.
/// Such a signature signs the bytes only, not a name, version or hooks: the plugin is named by
/// the bundle or its file, and a `version` requirement cannot be checked, so it is refused.
fn accept_cosign(
    trust: &Trust,
    entry: &HookEntry,
    sig_rel: &str,
    sig_bytes: Vec<u8>,
    plugin: &[u8],
    untrusted: impl Fn(String) -> BundleError,
    field: impl Fn(&'static str, String) -> BundleError,
) -> Result<Accepted, BundleError> {
    if let Some(v) = &entry.version {
        return Err(field(
            "version",
            format!(
                "is {v:?}, but {sig_rel} is a cosign signature, which signs the component's \
                 bytes and no version: remove `version`, or have the vendor sign with `rotor \
                 policy sign`"
            ),
        ));
    }
    let signature = sig_bytes.trim_ascii();
    let candidates: Vec<&(String, CosignKey)> = trust
        .cosign_keys
        .iter()
        .filter(|(n, _)| entry.signed_by.as_ref().is_none_or(|s| s == n))
        .collect();
    if candidates.is_empty() {
        return Err(untrusted(format!(
            "{sig_rel} is not rotor's signature envelope (JSON), so it is taken for a cosign \
             signature, but the bundle trusts no cosign key{} ([trust.cosign_keys])",
            entry
                .signed_by
                .as_ref()
                .map(|s| format!(" named '{s}'"))
                .unwrap_or_default()
        )));
    }
    let (revoked, candidates): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|(_, key)| trust.revoked_keys.contains(&key.keyid));
    if let Some((name, key)) = candidates
        .iter()
        .find(|(_, key)| key.verifies(signature, plugin))
    {
        return Ok(Accepted {
            how: Acceptance::Cosign {
                key: name.clone(),
                keyid: key.keyid.clone(),
                file: sig_rel.to_string(),
            },
            signature: Some((PathBuf::from(sig_rel), sig_bytes.clone())),
            statement: None,
        });
    }
    if let Some((name, key)) = revoked
        .iter()
        .find(|(_, key)| key.verifies(signature, plugin))
    {
        return Err(untrusted(format!(
            "{sig_rel} is a cosign signature by key '{name}' ({}), which is revoked ([trust] \
             revoked_keys)",
            key.keyid
        )));
    }
    let names: Vec<&str> = candidates.iter().map(|(n, _)| n.as_str()).collect();
    Err(untrusted(format!(
        "{sig_rel}: no trusted cosign key verifies it over {} ({}): a signature of another \
         file, by another key, or not a cosign signature",
        entry.plugin,
        if names.is_empty() {
            "every one it could be is revoked".to_string()
        } else {
            format!("tried {}", names.join(", "))
        }
    )))
}
