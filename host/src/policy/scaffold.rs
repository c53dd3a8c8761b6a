//! `rotor policy new`: a plugin crate for one hook, outside any repository, that builds on
//! rotor-policy-sdk: its own copy of the WIT contract, build settings (the 64 KiB stack, the
//! release profile, the toolchain), a rule with unit tests, and fixtures `rotor policy test`
//! runs against the built component.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use time::macros::datetime;

use crate::contract::{CsrRequest, Hook, SanRequest, SanStage};
use crate::facts::{DistinguishedName, KeyAlgorithm, PublicKeyInfo, SubjectAltNames, Usage};
use crate::fs::{FsError, Root};

/// The contract a new crate is made for, the files of `wit/` (its own copy).
const WIT: &[(&str, &str)] = &[
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("renewal.wit", include_str!("../../../wit/renewal.wit")),
    (
        "san-validation.wit",
        include_str!("../../../wit/san-validation.wit"),
    ),
    (
        "csr-approval.wit",
        include_str!("../../../wit/csr-approval.wit"),
    ),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
];

/// Where the crate gets rotor-policy-sdk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SdkSource {
    /// A checkout of rotor: `guest-plugins/sdk` (or the SDK directory itself).
    Path(PathBuf),
    /// A git repository holding rotor, at a branch, tag or revision.
    Git {
        /// The repository.
        url: String,
        /// `rev`, when given.
        rev: Option<String>,
    },
}

impl SdkSource {
    /// `PATH` or `URL[#REV]` (anything with `://`, or starting `git@`, is a git URL).
    pub(crate) fn parse(s: &str) -> SdkSource {
        if s.contains("://") || s.starts_with("git@") {
            match s.split_once('#') {
                Some((url, rev)) => SdkSource::Git {
                    url: url.into(),
                    rev: Some(rev.into()),
                },
                None => SdkSource::Git {
                    url: s.into(),
                    rev: None,
                },
            }
        } else {
            SdkSource::Path(PathBuf::from(s))
        }
    }

    /// The SDK of the rotor checkout this binary was built from, if it is still there.
    pub(crate) fn built_from() -> Option<SdkSource> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-plugins/sdk");
        Root::open_ambient(&dir)
            .ok()
            .filter(|root| root.exists(Path::new("Cargo.toml")))
            .map(|root| SdkSource::Path(root.absolute_path()))
    }

    fn dependency(&self, hook: Hook) -> String {
        let feature = hook.as_str();
        match self {
            SdkSource::Path(p) => format!(
                "{{ path = {}, features = [\"{feature}\"] }}",
                toml_string(&p.display().to_string())
            ),
            SdkSource::Git { url, rev } => {
                let rev = rev
                    .as_ref()
                    .map(|r| format!(", rev = {}", toml_string(r)))
                    .unwrap_or_default();
                format!(
                    "{{ git = {}{rev}, features = [\"{feature}\"] }}",
                    toml_string(url)
                )
            }
        }
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Why a crate could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScaffoldError {
    /// The directory exists and holds files: nothing is overwritten.
    #[error("{}: exists and is not empty; `rotor policy new` never overwrites files", .0.display())]
    NotEmpty(PathBuf),
    /// The crate name is not a Cargo package name.
    #[error(
        "{0:?} is not a usable crate name: use lowercase letters, digits and dashes, starting \
         with a letter (name the directory so, or give the name)"
    )]
    BadName(String),
    /// Writing failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A fixture input could not be made.
    #[error("making the fixture inputs: {0}")]
    Fixture(String),
}

/// The crate name for `dir` (its last component), or the name given.
pub(crate) fn crate_name(dir: &Path, name: Option<&str>) -> Result<String, ScaffoldError> {
    let name = match name {
        Some(n) => n.to_string(),
        // `.` or `dir/..` name no directory by themselves: take the name the path resolves to.
        None => dir
            .file_name()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                let abs = std::path::absolute(dir).ok()?;
                let mut names = Vec::new();
                for c in abs.components() {
                    match c {
                        std::path::Component::Normal(n) => names.push(n.to_os_string()),
                        std::path::Component::ParentDir => {
                            names.pop();
                        }
                        _ => {}
                    }
                }
                names.pop().map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default(),
    };
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 64;
    if ok {
        Ok(name)
    } else {
        Err(ScaffoldError::BadName(name))
    }
}

/// The files of a new crate `name` for `hook`, relative to its directory.
pub(crate) fn files(
    name: &str,
    hook: Hook,
    sdk: &SdkSource,
) -> Result<Vec<(PathBuf, Vec<u8>)>, ScaffoldError> {
    let fill = |template: &str| {
        template
            .replace("{name}", name)
            .replace("{hook}", hook.as_str())
            .replace("{sdk}", &sdk.dependency(hook))
            .replace("{stack_flag}", &rotor_plugin_build::stack_flag())
            .replace("{channel}", env!("ROTOR_RUSTC_CHANNEL"))
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
        (
            "Cargo.toml".into(),
            fill(include_str!("templates/Cargo.toml.in")).into_bytes(),
        ),
        (
            ".cargo/config.toml".into(),
            fill(include_str!("templates/cargo-config.toml.in")).into_bytes(),
        ),
        (
            "rust-toolchain.toml".into(),
            fill(include_str!("templates/rust-toolchain.toml.in")).into_bytes(),
        ),
        (
            "README.md".into(),
            fill(include_str!("templates/README.md.in")).into_bytes(),
        ),
        (".gitignore".into(), b"/target\n*.wasm\n".to_vec()),
    ];
    let (lib, rules) = match hook {
        Hook::Renewal => (
            include_str!("templates/renewal-lib.rs.in"),
            include_str!("templates/renewal-rules.rs.in"),
        ),
        Hook::San => (
            include_str!("templates/san-lib.rs.in"),
            include_str!("templates/san-rules.rs.in"),
        ),
        Hook::Csr => (
            include_str!("templates/csr-lib.rs.in"),
            include_str!("templates/csr-rules.rs.in"),
        ),
    };
    files.push(("src/lib.rs".into(), lib.as_bytes().to_vec()));
    files.push(("src/rules.rs".into(), rules.as_bytes().to_vec()));
    for (file, text) in WIT {
        files.push((Path::new("wit").join(file), text.as_bytes().to_vec()));
    }
    files.extend(fixtures(hook)?);
    Ok(files)
}

/// Write the crate into `dir` (created if needed; refused when it holds anything).
pub(crate) fn write(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Result<(), ScaffoldError> {
    let root = Root::create_ambient(dir)?;
    if !root.list_dir(Path::new("."))?.is_empty() {
        return Err(ScaffoldError::NotEmpty(dir.to_path_buf()));
    }
    for (rel, bytes) in files {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dir_all(parent)?;
        }
        root.write_atomic(rel, bytes, 0o644)?;
    }
    Ok(())
}

fn json(value: serde_json::Value) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Fixture cases that pass against the generated rule with its default settings.
fn fixtures(hook: Hook) -> Result<Vec<(PathBuf, Vec<u8>)>, ScaffoldError> {
    let now = datetime!(2026-06-01 00:00 UTC);
    Ok(match hook {
        Hook::Renewal => {
            let pem = leaf_pem()?;
            let cases = serde_json::json!([
                {
                    "name": "a certificate with months left is kept",
                    "hook": "renewal",
                    "now": rfc3339(now),
                    "input_file": "inputs/leaf.pem",
                    "context": { "name": "serving" },
                    "expect": { "decision": "keep", "reason_contains": "outside the 30-day renewal window" }
                },
                {
                    "name": "a certificate 17 days from its expiry is renewed",
                    "hook": "renewal",
                    "now": rfc3339(datetime!(2026-12-15 00:00 UTC)),
                    "input_file": "inputs/leaf.pem",
                    "context": { "name": "serving" },
                    "expect": { "decision": "renew", "reason_contains": "within the 30-day renewal window" }
                }
            ]);
            vec![
                ("fixtures/inputs/leaf.pem".into(), pem.into_bytes()),
                ("fixtures/renewal.json".into(), json(cases)),
            ]
        }
        Hook::San => {
            let request = |names: &[&str]| SanRequest {
                profile: "default".into(),
                stage: SanStage::Csr,
                subject: DistinguishedName::default(),
                sans: SubjectAltNames {
                    dns_names: names.iter().map(|n| n.to_string()).collect(),
                    ..SubjectAltNames::default()
                },
                node: None,
                now,
            };
            let cases = serde_json::json!([
                {
                    "name": "a name under the allowed suffix is allowed",
                    "hook": "san",
                    "input": request(&["api.example.com"]),
                    "expect": { "decision": "allow" }
                },
                {
                    "name": "a wildcard and a foreign name are both reported",
                    "hook": "san",
                    "input": request(&["*.example.com", "api.example.org"]),
                    "expect": { "decision": "deny", "violations": ["WildcardNotAllowed", "DomainNotAllowed"] }
                }
            ]);
            vec![("fixtures/san.json".into(), json(cases))]
        }
        Hook::Csr => {
            let request = |signer: &str, user: &str, usages: &[Usage]| CsrRequest {
                signer_name: signer.into(),
                username: user.into(),
                uid: String::new(),
                groups: vec!["system:nodes".into(), "system:authenticated".into()],
                subject: DistinguishedName {
                    text: "CN=system:node:a,O=system:nodes".into(),
                    common_name: Some("system:node:a".into()),
                    organizations: vec!["system:nodes".into()],
                    ..DistinguishedName::default()
                },
                sans: SubjectAltNames {
                    dns_names: vec!["a".into()],
                    ..SubjectAltNames::default()
                },
                public_key: PublicKeyInfo {
                    algorithm: KeyAlgorithm::EcdsaP256,
                    bits: 256,
                },
                usages: usages.to_vec(),
                expiration_seconds: None,
                requests_ca: false,
                other_extensions: Vec::new(),
                node_addresses: Vec::new(),
                now,
            };
            // Cases the host's own checks (a usage the signer never issues, several CNs, the
            // host floor: another node's name, system:masters...) let through to the plugin, so
            // they test what the plugin decides in production too.
            let serving = [Usage::DigitalSignature, Usage::ServerAuth];
            let mut stranger = request("kubernetes.io/kubelet-serving", "system:node:a", &serving);
            stranger.groups = vec!["system:authenticated".into()];
            let cases = serde_json::json!([
                {
                    "name": "a node's serving CSR for itself is approved",
                    "hook": "csr",
                    "input": request("kubernetes.io/kubelet-serving", "system:node:a", &serving),
                    "expect": { "decision": "approve" }
                },
                {
                    "name": "a node name outside the system:nodes group is denied",
                    "hook": "csr",
                    "input": stranger,
                    "expect": { "decision": "deny", "violations": ["RequesterNotANode"] }
                },
                {
                    "name": "other signers are left to someone else",
                    "hook": "csr",
                    "input": request("kubernetes.io/kube-apiserver-client", "system:node:a",
                        &[Usage::DigitalSignature, Usage::ClientAuth]),
                    "expect": { "decision": "abstain" }
                }
            ]);
            vec![("fixtures/csr.json".into(), json(cases))]
        }
    })
}

/// A P-256 leaf valid through 2026, for the renewal fixtures.
fn leaf_pem() -> Result<String, ScaffoldError> {
    let err = |e: rcgen::Error| ScaffoldError::Fixture(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec!["serving.example.com".to_string()]).map_err(err)?;
    params.not_before = datetime!(2026-01-01 00:00 UTC);
    params.not_after = datetime!(2027-01-01 00:00 UTC);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "serving");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    Ok(params.self_signed(&key).map_err(err)?.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sdk_sources() {
        assert_eq!(
            crate_name(Path::new("/x/my-policy"), None).unwrap(),
            "my-policy"
        );
        assert!(crate_name(Path::new("/x/My Policy"), None).is_err());
        assert!(crate_name(Path::new("/x/1st"), None).is_err());
        assert_eq!(
            SdkSource::parse("https://example.com/rotor.git#v0.3.0"),
            SdkSource::Git {
                url: "https://example.com/rotor.git".into(),
                rev: Some("v0.3.0".into())
            }
        );
        assert_eq!(
            SdkSource::parse("../rotor/guest-plugins/sdk"),
            SdkSource::Path("../rotor/guest-plugins/sdk".into())
        );
    }

    #[test]
    fn every_hook_gets_a_crate_with_its_feature_and_the_contract() {
        for hook in Hook::ALL {
            let files = files("p", hook, &SdkSource::Path("/sdk".into())).unwrap();
            let get = |name: &str| {
                files
                    .iter()
                    .find(|(p, _)| p == Path::new(name))
                    .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_else(|| panic!("{name} missing"))
            };
            let cargo = get("Cargo.toml");
            assert!(
                cargo.contains(&format!("features = [\"{}\"]", hook.as_str())),
                "{cargo}"
            );
            let manifest: toml::Table = toml::from_str(&cargo).unwrap();
            assert!(manifest.contains_key("workspace"));
            assert!(get(".cargo/config.toml").contains("-zstack-size=65536"));
            assert!(get("wit/worlds.wit").contains("package rotor:policy@0.3.0"));
            assert!(get("src/rules.rs").contains("#[cfg(test)]"));
            assert!(files.iter().any(|(p, _)| p.starts_with("fixtures")));
        }
    }
}
