//! `rotor policy keygen | sign | push | pull`: a vendor signs and publishes a plugin; an
//! operator pulls it, from a registry or an air-gapped OCI image layout.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Exit;
use super::args::{GlobalArgs, PullArgs, PushArgs, RegistryArgs, SignArgs};
use super::output::outln;
use super::vendor::split_file;
use crate::contract::Hook;
use crate::distribution::{self, Artifact, Location, RegistryOptions};
use crate::fs::Root;
use crate::policy::signing::{Envelope, PublicKey, SigningKey, Statement};

/// `PATH` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `rotor policy keygen --out KEY`.
pub(super) fn keygen(out: &Path) -> anyhow::Result<Exit> {
    let (dir, file) = split_file(out)?;
    let public_file = format!("{file}.pub");
    let root = Root::create_ambient(&dir)?;
    for f in [&file, &public_file] {
        if root.exists(Path::new(f)) {
            anyhow::bail!(
                "{}: exists; a signing key is never overwritten (choose another name, or remove it)",
                root.display(Path::new(f)).display()
            );
        }
    }
    let (private_pem, public_pem, key) = SigningKey::generate()?;
    let mut durable = crate::fs::Durable::new();
    root.write_new(
        Path::new(&file),
        private_pem.as_bytes(),
        0o600,
        None,
        &mut durable,
    )?;
    root.write_new(
        Path::new(&public_file),
        public_pem.as_bytes(),
        0o644,
        None,
        &mut durable,
    )?;
    root.sync_dir_later(Path::new("."), &mut durable)?;
    durable.sync()?;
    outln!(
        "wrote {} (private key, mode 0600: keep it secret)",
        out.display()
    );
    outln!(
        "wrote {} (public key: operators trust it in a bundle's [trust.keys])",
        with_suffix(out, ".pub").display()
    );
    outln!("key id {}", key.public().keyid());
    Ok(Exit::Success)
}

/// `rotor policy sign --key KEY --version V PLUGIN.wasm`.
pub(super) fn sign(global: &GlobalArgs, args: SignArgs) -> anyhow::Result<Exit> {
    let key_bytes = Root::read_ambient_file(&args.key)?;
    let key = SigningKey::from_pem(&key_bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.key.display()))?;
    let component = Root::read_ambient_file(&args.file)?;
    let (_, file_name) = split_file(&args.file)?;
    let name = args.name.clone().unwrap_or_else(|| {
        file_name
            .strip_suffix(".wasm")
            .unwrap_or(&file_name)
            .to_string()
    });
    distribution::check_plugin_name(&name)
        .map_err(|e| anyhow::anyhow!("{}: {e} (give another with --name)", args.file.display()))?;
    // What rotor will see when it loads it: its contract and hooks.
    let engine = super::engine(global)?;
    let plugin = engine.load(&name, Hook::Renewal, &component).map_err(|e| {
        anyhow::anyhow!(
            "{}: does not load in rotor: {}",
            args.file.display(),
            e.kind
        )
    })?;
    let hooks = plugin.hooks();
    if hooks.is_empty() {
        anyhow::bail!("{}: exports no hook of rotor:policy", args.file.display());
    }
    let statement = Statement {
        name,
        version: args.plugin_version.clone(),
        contract: plugin.contract().package().to_string(),
        hooks,
        sha256: hex::encode(Sha256::digest(&component)),
        size: component.len() as u64,
    };
    let envelope = key
        .sign(&statement)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| with_suffix(&args.file, ".sig"));
    let (dir, file) = split_file(&out)?;
    Root::create_ambient(&dir)?.write_atomic(Path::new(&file), &envelope.to_json(), 0o644)?;
    let hooks: Vec<&str> = statement.hooks.iter().map(|h| h.as_str()).collect();
    outln!(
        "signed {} {} ({}, {}; sha256 {})",
        statement.name,
        statement.version,
        statement.contract,
        hooks.join(", "),
        statement.sha256
    );
    outln!("  key id {}", key.public().keyid());
    outln!("  wrote {}", out.display());
    Ok(Exit::Success)
}

/// How to reach `location`'s registry: its CA, and its login: `ROTOR_REGISTRY_USERNAME` and
/// `ROTOR_REGISTRY_PASSWORD`, else what `docker login`, `podman login`, `oras login` or `crane
/// auth login` stored for it ([`distribution::registry_credential`]), else anonymous.
fn registry_options(args: &RegistryArgs, location: &Location) -> anyhow::Result<RegistryOptions> {
    let ca_pem = args
        .registry_ca
        .as_deref()
        .map(Root::read_ambient_file)
        .transpose()?;
    let basic_auth = match (
        std::env::var("ROTOR_REGISTRY_USERNAME").ok(),
        std::env::var("ROTOR_REGISTRY_PASSWORD").ok(),
    ) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
        (Some(u), None) if !u.is_empty() => {
            anyhow::bail!("ROTOR_REGISTRY_USERNAME is set but ROTOR_REGISTRY_PASSWORD is not")
        }
        _ => match location {
            Location::Registry(reference) => {
                distribution::registry_credential(reference.registry())?.map(|c| {
                    crate::say!(
                        "rotor: logging in to {} as {} (from {})",
                        reference.registry(),
                        c.username,
                        c.source.display()
                    );
                    (c.username, c.password)
                })
            }
            Location::Layout { .. } => None,
        },
    };
    Ok(RegistryOptions { ca_pem, basic_auth })
}

/// `rotor policy push PLUGIN.wasm LOCATION`.
pub(super) fn push(args: PushArgs) -> anyhow::Result<Exit> {
    let to = Location::parse(&args.to)?;
    if args.file.extension().is_some_and(|e| e == "sig") {
        anyhow::bail!(
            "{}: give the component (the .wasm file); its signature is found beside it",
            args.file.display()
        );
    }
    let component = Root::read_ambient_file(&args.file)?;
    let sig_path = args
        .signature
        .clone()
        .unwrap_or_else(|| with_suffix(&args.file, ".sig"));
    let signature = match Root::read_ambient_file(&sig_path) {
        Ok(s) => s,
        Err(e) if e.is_not_found() => anyhow::bail!(
            "{}: missing; only signed plugins are pushed (rotor policy sign --key KEY --plugin-version V {})",
            sig_path.display(),
            args.file.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let fixtures = match &args.fixtures {
        Some(dir) => distribution::read_fixtures(dir)?,
        None => Vec::new(),
    };
    let artifact = Artifact::new(component, signature, fixtures)
        .map_err(|e| anyhow::anyhow!("{}: {e}", sig_path.display()))?;
    let stored = distribution::push(&artifact, &to, &registry_options(&args.registry, &to)?)?;
    outln!(
        "pushed {} {} ({} fixture files) to {to}{}",
        artifact.statement.name,
        artifact.statement.version,
        artifact.fixtures.len(),
        stored
            .tag
            .as_ref()
            .map(|t| format!(" (tag {t})"))
            .unwrap_or_default()
    );
    outln!("  digest {}", stored.digest);
    outln!(
        "  pull it by digest: rotor policy pull {} --out DIR",
        stored.location
    );
    Ok(Exit::Success)
}

/// `rotor policy pull LOCATION --out DIR|oci-layout:DIR`.
pub(super) fn pull(args: PullArgs) -> anyhow::Result<Exit> {
    let from = Location::parse(&args.from)?;
    let to_layout = if args.out.starts_with("oci-layout:") {
        Some(Location::parse(&args.out)?)
    } else {
        // A directory (made if missing), not a file: refused before anything is fetched.
        match Root::open_ambient(Path::new(&args.out)) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(_) => anyhow::bail!(
                "--out {}: not a directory (pull writes NAME.wasm, NAME.wasm.sig and \
                 NAME-fixtures/ into a directory, or give oci-layout:DIR)",
                args.out
            ),
        }
        None
    };
    let keys = args
        .key
        .iter()
        .map(|p| {
            let bytes = Root::read_ambient_file(p)?;
            PublicKey::from_pem(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Everything is fetched and checked before anything is written.
    let (artifact, stored) = distribution::pull(&from, &registry_options(&args.registry, &from)?)?;
    let verified = if keys.is_empty() {
        None
    } else {
        let envelope = Envelope::parse(&artifact.signature)?;
        let mut why = Vec::new();
        let mut found = None;
        for key in &keys {
            match key.verify(&envelope) {
                Ok(s) => {
                    found = Some((key.keyid().to_string(), s));
                    break;
                }
                Err(e) => why.push(e.to_string()),
            }
        }
        let (keyid, statement) = found.ok_or_else(|| {
            anyhow::anyhow!(
                "{from}: signature refused, nothing written: {}",
                why.join("; ")
            )
        })?;
        if statement != artifact.statement {
            anyhow::bail!("{from}: the verified statement is not the artifact's");
        }
        Some(keyid)
    };
    let s = &artifact.statement;
    let hooks: Vec<&str> = s.hooks.iter().map(|h| h.as_str()).collect();
    outln!(
        "pulled {} {} ({}, {}) from {}",
        s.name,
        s.version,
        s.contract,
        hooks.join(", "),
        stored.location
    );
    match &verified {
        Some(keyid) => outln!("  signature verified: key {keyid}"),
        None => outln!(
            "  signature NOT verified here (no --key): a bundle accepts it only by a key it trusts"
        ),
    }
    if let Some(to) = to_layout {
        let copied = distribution::push(&artifact, &to, &RegistryOptions::default())?;
        outln!(
            "  copied to {} (tag {})",
            copied.location,
            copied.tag.unwrap_or_default()
        );
    } else {
        let dir = PathBuf::from(&args.out);
        let wrote = artifact.write_files(&dir)?;
        outln!("  wrote {} and its .sig", wrote.display());
        if !artifact.fixtures.is_empty() {
            outln!(
                "  wrote {} fixture files to {}",
                artifact.fixtures.len(),
                dir.join(format!("{}-fixtures", s.name)).display()
            );
        }
    }
    Ok(Exit::Success)
}
