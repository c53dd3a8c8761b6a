//! Registry logins made by other tools: what `docker login`, `podman login`, `oras login` and
//! `crane auth login` wrote, found as they find it (the `auths` of a Docker-style config, a
//! credential helper or store it names), read with the `docker_credential` crate.
//!
//! The files, in order; the first that has a login for the registry gives it:
//! 1. `$REGISTRY_AUTH_FILE` (podman, skopeo, buildah; an error if set and missing),
//! 2. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (docker, oras, crane),
//! 3. `$XDG_RUNTIME_DIR/containers/auth.json` (podman's default).
//!
//! `ROTOR_REGISTRY_USERNAME` / `ROTOR_REGISTRY_PASSWORD`, read by the CLI, come before all of
//! them.

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};

use super::DistributionError;
use crate::fs::Root;

/// A registry login found in an auth file.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
    /// The file it came from (for messages; never the secret).
    pub source: PathBuf,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// The login for `registry` (`HOST[:PORT]`, as in a reference) in the first auth file that has
/// one, or `None` (anonymous). A file that cannot be read or parsed, or a login rotor cannot use
/// (an identity token), is an error naming the file; a credential helper that has no login for
/// the registry or fails is a warning, and the next file is asked.
pub fn registry_credential(
    registry: &str,
) -> Result<Option<RegistryCredential>, DistributionError> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files: Vec<(PathBuf, bool)> = Vec::new();
    if let Some(file) = env("REGISTRY_AUTH_FILE") {
        files.push((file, true));
    }
    if let Some(dir) = env("DOCKER_CONFIG").or_else(|| env("HOME").map(|h| h.join(".docker"))) {
        files.push((dir.join("config.json"), false));
    }
    if let Some(dir) = env("XDG_RUNTIME_DIR") {
        files.push((dir.join("containers/auth.json"), false));
    }
    for (file, required) in files {
        if let Some(credential) = from_file(&file, registry, required)? {
            return Ok(Some(credential));
        }
    }
    Ok(None)
}

/// The login for `registry` in `file`; `None` when the file (not `required`) is missing or has
/// no login for it.
fn from_file(
    file: &Path,
    registry: &str,
    required: bool,
) -> Result<Option<RegistryCredential>, DistributionError> {
    let error = |message: String| DistributionError::Credentials {
        file: file.to_path_buf(),
        message,
    };
    let bytes = match Root::read_ambient_file(file) {
        Ok(b) => b,
        Err(e) if e.is_not_found() && !required => return Ok(None),
        Err(e) => return Err(error(format!("cannot be read ({e})"))),
    };
    match docker_credential::get_credential_from_reader(bytes.as_slice(), registry) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(RegistryCredential {
                username,
                password,
                source: file.to_path_buf(),
            }))
        }
        Ok(DockerCredential::IdentityToken(_)) => Err(error(format!(
            "the login for {registry} is an identity token (an OAuth refresh token), which rotor \
             cannot use: log in with a user name and password or token, or set \
             ROTOR_REGISTRY_USERNAME and ROTOR_REGISTRY_PASSWORD"
        ))),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(CredentialRetrievalError::ConfigReadError) => Err(error(
            "is not a registry auth file (JSON with \"auths\", as docker login writes)".into(),
        )),
        // A credential helper or store that has no login for this registry (Docker Desktop's
        // `credsStore` is asked for every registry), is not installed or fails: no login here,
        // as docker and crane go on without one; said, never silent.
        Err(
            e @ (CredentialRetrievalError::HelperFailure { .. }
            | CredentialRetrievalError::HelperCommunicationError
            | CredentialRetrievalError::MalformedHelperResponse),
        ) => {
            let first = e.to_string();
            crate::say!(
                "rotor: warning: {}: the credential helper it names gave no login for {registry} \
                 ({}); going on without it",
                file.display(),
                first.lines().next().unwrap_or_default().trim()
            );
            Ok(None)
        }
        Err(e) => Err(error(format!(
            "the login for {registry}: {}",
            e.to_string().trim()
        ))),
    }
}
