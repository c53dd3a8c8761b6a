//! Registry logins made by other tools (docker, podman, oras, crane), used by `rotor policy
//! push` and `pull` against a real registry that wants one (docker-registry with htpasswd).

use std::path::Path;
use std::process::Command;

use base64::Engine;

use crate::common::{on_path, require, shared_cache};
use crate::distribution::{Registry, s, vendor};

/// A registry that wants a login: anonymous is refused; the login docker, oras or crane stored
/// in `$DOCKER_CONFIG/config.json` is used (an `auth` entry, then a credential helper), podman's
/// `REGISTRY_AUTH_FILE` comes before it, `ROTOR_REGISTRY_USERNAME`/`_PASSWORD` before both; a
/// broken auth file is an error naming it, with nothing written.
#[test]
fn registry_logins_come_from_docker_and_podman_auth_files() {
    if !require("htpasswd (apache2-utils)", on_path("htpasswd")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-cbB", s(&htpasswd), "alice", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let Some(registry) = Registry::start_with(tmp.path(), None, Some(&htpasswd)) else {
        return;
    };
    let acme = vendor(&tmp.path().join("vendor"), "acme", "1.0.0");
    let host = format!("127.0.0.1:{}", registry.port);
    let url = registry.url("acme/renewal-window:1.0.0");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // rotor with no login anywhere but what `env` gives.
    let with = |env: &[(&str, &Path)], extra: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(crate::common::rotor_bin());
        cmd.args(args)
            .env("ROTOR_PLUGIN_CACHE", shared_cache())
            .env("HOME", &home)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("ROTOR_REGISTRY_USERNAME")
            .env_remove("ROTOR_REGISTRY_PASSWORD");
        for (k, v) in env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);

    // Anonymous: refused by the registry.
    let (code, out, err) = with(&[], &[], &["policy", "push", s(&acme.plugin), &url]);
    assert_eq!(code, 2, "{out}{err}");

    // docker login's `auth` entry, keyed by host:port.
    let docker = tmp.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64("alice:s3cret")
        ),
    )
    .unwrap();
    let (code, out, err) = with(
        &[("DOCKER_CONFIG", &docker)],
        &[],
        &["policy", "push", s(&acme.plugin), &url],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!(
            "logging in to {host} as alice (from {}",
            docker.join("config.json").display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("s3cret") && !out.contains("s3cret"),
        "the password is never shown"
    );
    // ~/.docker/config.json when DOCKER_CONFIG is unset.
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::copy(docker.join("config.json"), home.join(".docker/config.json")).unwrap();
    let pulled = tmp.path().join("pulled-home");
    let (code, out, err) = with(&[], &[], &["policy", "pull", &url, "--out", s(&pulled)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(pulled.join("renewal-window.wasm").is_file());

    // A credential helper the config names (docker-credential-NAME on the PATH).
    let helper = bin.join("docker-credential-rotortest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = \"{host}\" ] || exit 1\n\
             echo '{{\"ServerURL\":\"{host}\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}}'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let helped = tmp.path().join("helped");
    std::fs::create_dir_all(&helped).unwrap();
    std::fs::write(
        helped.join("config.json"),
        format!(r#"{{"credHelpers":{{"{host}":"rotortest"}}}}"#),
    )
    .unwrap();
    let pulled = tmp.path().join("pulled-helper");
    let (code, out, err) = with(
        &[("DOCKER_CONFIG", &helped)],
        &[],
        &["policy", "pull", &url, "--out", s(&pulled)],
    );
    assert_eq!(code, 0, "{out}{err}");

    // A credsStore with no helper installed (Docker Desktop's config copied to a server): a
    // warning, and the next file (podman's default under XDG_RUNTIME_DIR) gives the login.
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("config.json"), r#"{"credsStore":"desktop"}"#).unwrap();
    let runtime = tmp.path().join("runtime");
    std::fs::create_dir_all(runtime.join("containers")).unwrap();
    std::fs::write(
        runtime.join("containers/auth.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64("alice:s3cret")
        ),
    )
    .unwrap();
    let (code, out, err) = with(
        &[("DOCKER_CONFIG", &store), ("XDG_RUNTIME_DIR", &runtime)],
        &[],
        &[
            "policy",
            "pull",
            &url,
            "--out",
            s(&tmp.path().join("stored")),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("rotor: warning: ")
            && err.contains("the credential helper it names gave no login"),
        "{err}"
    );
    assert!(err.contains("containers/auth.json)"), "{err}");

    // podman's REGISTRY_AUTH_FILE comes first (the docker config now holds a wrong password).
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
            b64("alice:wrong")
        ),
    )
    .unwrap();
    let (code, out, err) = with(
        &[("DOCKER_CONFIG", &docker)],
        &[],
        &[
            "policy",
            "pull",
            &url,
            "--out",
            s(&tmp.path().join("refused")),
        ],
    );
    assert_eq!(code, 2, "the wrong password is refused: {out}{err}");
    let podman = tmp.path().join("auth.json");
    std::fs::write(
        &podman,
        format!(r#"{{"auths":{{"{host}":{{"username":"alice","password":"s3cret"}}}}}}"#),
    )
    .unwrap();
    let (code, out, err) = with(
        &[("DOCKER_CONFIG", &docker), ("REGISTRY_AUTH_FILE", &podman)],
        &[],
        &[
            "policy",
            "pull",
            &url,
            "--out",
            s(&tmp.path().join("podman")),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("(from {})", podman.display())),
        "{err}"
    );
    // ROTOR_REGISTRY_USERNAME/_PASSWORD come before every file.
    let (code, out, err) = with(
        &[("DOCKER_CONFIG", &docker)],
        &[
            ("ROTOR_REGISTRY_USERNAME", "alice"),
            ("ROTOR_REGISTRY_PASSWORD", "s3cret"),
        ],
        &["policy", "pull", &url, "--out", s(&tmp.path().join("env"))],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("logging in to"), "{err}");

    // A broken auth file: an error naming it, nothing written.
    std::fs::write(docker.join("config.json"), "{not json").unwrap();
    let nothing = tmp.path().join("nothing");
    let (code, out, err) = with(
        &[("DOCKER_CONFIG", &docker)],
        &[],
        &["policy", "pull", &url, "--out", s(&nothing)],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&docker.join("config.json").display().to_string())
            && err.contains("not a registry auth file"),
        "{err}"
    );
    assert!(!nothing.exists());
    // REGISTRY_AUTH_FILE set but missing: said, not silently anonymous.
    let (code, _, err) = with(
        &[("REGISTRY_AUTH_FILE", &tmp.path().join("missing.json"))],
        &[],
        &["policy", "pull", &url, "--out", s(&nothing)],
    );
    assert_eq!(code, 2);
    assert!(err.contains("missing.json"), "{err}");
}
