//! The host floor under every CSR decision, and plugins that cannot be loaded: a plugin that
//! approves everything gets nothing signed that grants cluster-wide power (on one CSR, in a
//! batch, as Kubernetes objects); a door opened in the bundle lets exactly one group through
//! for exactly one signer; a plugin whose `configure` loops, exhausts its memory or that
//! imports WASI makes its hook decide by its failure mode instead of refusing the bundle.

use std::path::{Path, PathBuf};

use rcgen::CustomExtension;
use serde_json::Value;

use crate::common::*;
use crate::csr::{
    APISERVER_CLIENT, CsrSpec, Fixture, KUBELET_CLIENT, SERVING, SERVING_USAGES, k8s_object,
    violation_codes,
};
use crate::serve::init_k3s;

const LEGACY: &str = "kubernetes.io/legacy-unknown";

/// A bundle whose CSR and SAN hooks are the approve-all plugin, plus `host` (TOML appended).
fn approve_all_bundle(dir: &Path, host: &str) -> PathBuf {
    let plugin = test_plugin("hostile-approve-all");
    let bundle = write_bundle(
        dir,
        &[
            HookSpec {
                hook: "csr",
                plugin: &plugin,
                extra: "",
                settings: "",
            },
            HookSpec {
                hook: "san",
                plugin: &plugin,
                extra: "",
                settings: "",
            },
        ],
    );
    if !host.is_empty() {
        let manifest = bundle.join("bundle.toml");
        let mut text = std::fs::read_to_string(&manifest).unwrap();
        text.push_str(host);
        std::fs::write(&manifest, text).unwrap();
    }
    bundle
}

/// One CSR through `rotor --bundle B csr sign -o json`: (exit, review JSON, stderr, signed?).
#[allow(clippy::too_many_arguments, reason = "one argument per CSR field")]
fn sign(
    f: &Fixture,
    bundle: &Path,
    pem: &str,
    signer: &str,
    user: &str,
    groups: &[&str],
    usages: &[&str],
) -> (i32, Value, String, bool) {
    let csr = f.write("case.csr", pem);
    let out = f.work.join("case.crt");
    let _ = std::fs::remove_file(&out);
    let now = rfc3339(t0() + days(1));
    let mut args: Vec<String> = [
        "--data-dir",
        f.data.to_str().unwrap(),
        "--bundle",
        bundle.to_str().unwrap(),
        "csr",
        "sign",
        "--csr",
        csr.to_str().unwrap(),
        "--signer",
        signer,
        "--username",
        user,
        "--now",
        &now,
        "-o",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    for g in groups {
        args.extend(["--group".into(), g.to_string()]);
    }
    for u in usages {
        args.extend(["--usage".into(), u.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = rotor(&args, &shared_cache());
    let review =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, review, stderr, out.exists())
}

fn csr(cn: &str, orgs: &[&str], sans: &[&str], extra: Vec<CustomExtension>) -> String {
    CsrSpec {
        cn,
        orgs,
        sans,
        extra,
    }
    .build()
    .0
}

fn messages(review: &Value) -> String {
    review["violations"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v["message"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .unwrap_or_default()
}

#[test]
fn an_approve_all_plugin_gets_nothing_past_the_floor() {
    let f = Fixture::k3s();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = approve_all_bundle(tmp.path(), "");
    let client = &["client auth", "digital signature"][..];

    // The plugin really approves: a plain client certificate is signed on its word.
    let (code, review, stderr, signed) = sign(
        &f,
        &bundle,
        &csr("alice", &["dev"], &[], Vec::new()),
        APISERVER_CLIENT,
        "alice",
        &["system:authenticated"],
        client,
    );
    assert_eq!(code, 0, "{review}\n{stderr}");
    assert!(signed);
    assert_eq!(review["stages"][1]["decision"], "approve", "{review}");

    let basic_constraints_ca =
        CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
    // What, the CSR, signer, requester, groups, usages, and the reason expected.
    type Case<'a> = (
        &'a str,
        String,
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "cluster-admin for a stranger",
            csr("evil-admin", &["system:masters"], &[], Vec::new()),
            APISERVER_CLIENT,
            "alice",
            &["system:authenticated"],
            client,
            "system:masters is never issued through a CSR",
        ),
        (
            "system:masters on legacy-unknown",
            csr("evil-admin", &["system:masters"], &[], Vec::new()),
            LEGACY,
            "alice",
            &[],
            client,
            "system:masters is never issued through a CSR",
        ),
        (
            "system:masters for a node, with its own name",
            csr("system:node:a", &["system:masters"], &[], Vec::new()),
            KUBELET_CLIENT,
            "system:node:a",
            &["system:nodes"],
            client,
            "system:masters is never issued through a CSR",
        ),
        (
            "kubeadm's administrators for a stranger",
            csr("evil-admin", &["kubeadm:cluster-admins"], &[], Vec::new()),
            APISERVER_CLIENT,
            "alice",
            &["system:authenticated"],
            client,
            "kubeadm binds it to cluster-admin",
        ),
        (
            "the controller manager's identity",
            csr("system:kube-controller-manager", &[], &[], Vec::new()),
            APISERVER_CLIENT,
            "alice",
            &[],
            client,
            "reserves for itself and the control plane",
        ),
        (
            "a service account's identity",
            csr(
                "system:serviceaccount:kube-system:default",
                &[],
                &[],
                Vec::new(),
            ),
            APISERVER_CLIENT,
            "alice",
            &[],
            client,
            "a service account's identity",
        ),
        (
            "the service accounts' group",
            csr("alice", &["system:serviceaccounts"], &[], Vec::new()),
            LEGACY,
            "alice",
            &[],
            client,
            "a group Kubernetes assigns itself",
        ),
        (
            "a node identity for a user",
            csr("system:node:a", &["system:nodes"], &[], Vec::new()),
            APISERVER_CLIENT,
            "alice",
            &["system:authenticated"],
            client,
            "'alice' is not a node",
        ),
        (
            "the nodes' group for a user",
            csr("alice", &["system:nodes"], &[], Vec::new()),
            LEGACY,
            "alice",
            &[],
            client,
            "'alice' is not a node",
        ),
        (
            "another node's client identity",
            csr("system:node:b", &["system:nodes"], &[], Vec::new()),
            KUBELET_CLIENT,
            "system:node:a",
            &["system:nodes"],
            client,
            "is not system:node:a's own identity",
        ),
        (
            "another node's serving identity",
            csr("system:node:b", &["system:nodes"], &["b"], Vec::new()),
            SERVING,
            "system:node:a",
            &["system:nodes"],
            SERVING_USAGES,
            "is not system:node:a's own identity",
        ),
        (
            "a kubelet serving certificate in another group",
            csr("system:node:a", &["ops"], &["a"], Vec::new()),
            SERVING,
            "system:node:a",
            &["system:nodes"],
            SERVING_USAGES,
            "certificate is CN=system:node:<node name>, O=system:nodes",
        ),
        (
            "a bootstrap token asking for a node's identity",
            csr("system:node:new", &["system:nodes"], &[], Vec::new()),
            KUBELET_CLIENT,
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
            client,
            "'system:bootstrap:abcdef' is not a node",
        ),
        (
            "a CA",
            csr("alice", &[], &[], vec![basic_constraints_ca]),
            APISERVER_CLIENT,
            "alice",
            &[],
            client,
            "CA certificates are never issued through a CSR",
        ),
        (
            "a CA usage",
            csr("alice", &[], &[], Vec::new()),
            LEGACY,
            "alice",
            &[],
            &["cert sign", "client auth"],
            "'cert sign' is only for CA certificates",
        ),
    ];
    for (what, pem, signer, user, groups, usages, reason) in &cases {
        let (code, review, stderr, signed) = sign(&f, &bundle, pem, signer, user, groups, usages);
        assert_eq!(code, 1, "{what}: a denial\n{review}\n{stderr}");
        assert!(!signed, "{what}: nothing is signed");
        assert_eq!(review["decision"], "deny", "{what}: {review}");
        let codes = violation_codes(&review.to_string());
        assert!(
            !codes.is_empty() && codes.iter().all(|c| c == "HostFloor"),
            "{what}: {codes:?}"
        );
        assert!(messages(&review).contains(reason), "{what}: {review}");
        // Refused before any plugin ran: the plugin's approval never counted.
        let stages = review["stages"].as_array().unwrap();
        assert_eq!(stages.len(), 1, "{what}: {review}");
        assert_eq!(stages[0]["stage"], "host");
    }

    // The same requests as Kubernetes objects through a batch: every one denied, none signed.
    let dir = f.work.join("batch");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (_, pem, signer, user, _, usages, _)) in cases.iter().enumerate() {
        let obj = k8s_object(&format!("floor-{i}"), pem, signer, user, usages);
        std::fs::write(dir.join(format!("floor-{i}.json")), obj.to_string()).unwrap();
    }
    let out_dir = f.work.join("batch-out");
    let (code, stdout, stderr) = rotor(
        &[
            "--data-dir",
            f.data.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "csr",
            "sign",
            "--dir",
            dir.to_str().unwrap(),
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--now",
            &rfc3339(t0() + days(1)),
        ],
        &shared_cache(),
    );
    assert_eq!(
        code, 0,
        "denials are results, not errors\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("0 approved (0 signed), {} denied", cases.len())),
        "{stderr}"
    );
    for i in 0..cases.len() {
        let back: Value = serde_json::from_slice(
            &std::fs::read(out_dir.join(format!("floor-{i}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(back["status"]["conditions"][0]["type"], "Denied", "{back}");
        assert!(back["status"].get("certificate").is_none(), "{back}");
        assert!(
            back["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("HostFloor"),
            "{back}"
        );
    }
}

#[test]
fn a_door_lets_exactly_one_group_through_for_exactly_one_signer() {
    let f = Fixture::k3s();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = approve_all_bundle(
        tmp.path(),
        "\n[host.floor.\"kubernetes.io/kube-apiserver-client\"]\nallow_groups = [\"system:masters\"]\nallow_users = [\"system:kube-scheduler\"]\n\
         \n[host.floor.\"kubernetes.io/kube-apiserver-client-kubelet\"]\nallow_node_identity_for = [\"system:bootstrappers\"]\n",
    );
    let client = &["client auth", "digital signature"][..];
    let admin = csr("break-glass", &["system:masters"], &[], Vec::new());

    // Opened for kube-apiserver-client: signed, with a note and a warning at load.
    let (code, review, stderr, signed) =
        sign(&f, &bundle, &admin, APISERVER_CLIENT, "alice", &[], client);
    assert_eq!(code, 0, "{review}\n{stderr}");
    assert!(signed);
    assert!(
        stderr.contains("rotor: warning:")
            && stderr.contains("opens the host floor: kubernetes.io/kube-apiserver-client may issue certificates in system:masters"),
        "{stderr}"
    );
    assert!(
        review["notes"].to_string().contains("allow_groups"),
        "{review}"
    );
    let cert = f.work.join("case.crt");
    let facts =
        &rotor::facts::parse_certificates_pem("c", &std::fs::read(&cert).unwrap()).unwrap()[0];
    assert_eq!(facts.subject.organizations, ["system:masters"]);

    // The user-name door: the scheduler's identity, and no other control-plane name.
    let scheduler = csr("system:kube-scheduler", &[], &[], Vec::new());
    let (code, review, _, signed) = sign(
        &f,
        &bundle,
        &scheduler,
        APISERVER_CLIENT,
        "alice",
        &[],
        client,
    );
    assert_eq!(code, 0, "{review}");
    assert!(signed);
    let manager = csr("system:kube-controller-manager", &[], &[], Vec::new());
    let (code, review, _, signed) = sign(
        &f,
        &bundle,
        &manager,
        APISERVER_CLIENT,
        "alice",
        &[],
        client,
    );
    assert_eq!(code, 1, "{review}");
    assert!(!signed);

    // Not for another signer.
    let (code, review, _, signed) = sign(&f, &bundle, &admin, LEGACY, "alice", &[], client);
    assert_eq!(code, 1, "{review}");
    assert!(!signed);
    assert!(
        messages(&review).contains("system:masters is never issued"),
        "{review}"
    );

    // The bootstrap door: a bootstrapper gets a node's client identity on that signer only.
    let node = csr("system:node:new", &["system:nodes"], &[], Vec::new());
    let (code, review, stderr, signed) = sign(
        &f,
        &bundle,
        &node,
        KUBELET_CLIENT,
        "system:bootstrap:abcdef",
        &["system:bootstrappers"],
        client,
    );
    assert_eq!(code, 0, "{review}\n{stderr}");
    assert!(signed);
    // Not for another group, and not a serving certificate.
    let (code, review, _, signed) = sign(
        &f,
        &bundle,
        &node,
        KUBELET_CLIENT,
        "mallory",
        &["system:authenticated"],
        client,
    );
    assert_eq!(code, 1, "{review}");
    assert!(!signed);
    let serving = csr("system:node:new", &["system:nodes"], &["new"], Vec::new());
    let (code, review, _, signed) = sign(
        &f,
        &bundle,
        &serving,
        SERVING,
        "system:bootstrap:abcdef",
        &["system:bootstrappers"],
        SERVING_USAGES,
    );
    assert_eq!(code, 1, "{review}");
    assert!(!signed);

    // policy check lists the floor and the open doors.
    let (code, stdout, _) = rotor(
        &["--bundle", bundle.to_str().unwrap(), "policy", "check"],
        &shared_cache(),
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("no subject in system:masters"), "{stdout}");
    assert_eq!(stdout.matches("DOOR OPEN").count(), 3, "{stdout}");

    // A door a plugin's settings try to open is no door: settings are the plugin's.
    let tmp2 = tempfile::tempdir().unwrap();
    let sneaky = approve_all_bundle(tmp2.path(), "");
    let manifest = sneaky.join("bundle.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replacen(
        "[csr.settings]\n",
        "[csr.settings]\nhost = { floor = { \"kubernetes.io/kube-apiserver-client\" = { allow_groups = [\"system:masters\"] } } }\n",
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    let (code, review, _, signed) =
        sign(&f, &sneaky, &admin, APISERVER_CLIENT, "alice", &[], client);
    assert_eq!(code, 1, "{review}");
    assert!(!signed);

    // A door that opens too much is refused with the field named.
    for (door, why) in [
        ("allow_groups = [\"system:nodes\"]", "allow_groups"),
        (
            "allow_groups = [\"developers\"]",
            "not a group the floor refuses",
        ),
        (
            "allow_users = [\"system:node:a\"]",
            "allow_node_identity_for",
        ),
        (
            "allow_node_identity_for = [\"system:authenticated\"]",
            "every user",
        ),
        ("allow_node_identity_for = [\"system:nodes\"]", "every node"),
    ] {
        let tmp3 = tempfile::tempdir().unwrap();
        let b = approve_all_bundle(
            tmp3.path(),
            &format!("\n[host.floor.\"{APISERVER_CLIENT}\"]\n{door}\n"),
        );
        let (code, _, stderr) = rotor(
            &["--bundle", b.to_str().unwrap(), "policy", "check"],
            &shared_cache(),
        );
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("bundle.toml") && stderr.contains(why),
            "{stderr}"
        );
    }
}

/// A renewal bundle of `plugin` with `settings` (failure mode fallback by default).
fn renewal_bundle(dir: &Path, plugin: &str, extra: &str, settings: &str) -> PathBuf {
    write_bundle(
        dir,
        &[HookSpec {
            hook: "renewal",
            plugin: &test_plugin(plugin),
            extra,
            settings,
        }],
    )
}

#[test]
fn a_renewal_plugin_that_cannot_load_falls_back_and_start_renews() {
    let tmp = tempfile::tempdir().unwrap();
    let broken = [
        (
            "hostile-loop",
            "timeout_ms = 50",
            "in_configure = true",
            "timed out",
        ),
        (
            "hostile-memory",
            "",
            "in_configure = true",
            "exceeded its memory limit",
        ),
        ("hostile-wasi", "", "", "imports wasi"),
    ];
    for (plugin, extra, settings, why) in broken {
        let data = tmp.path().join(format!("data-{plugin}"));
        init_k3s(&data, t0());
        let bundle = renewal_bundle(
            &tmp.path().join(format!("bundle-{plugin}")),
            plugin,
            &format!("failure_mode = \"fallback\"\n{extra}"),
            settings,
        );
        let before = std::fs::read(data.join("server/tls/client-admin.crt")).unwrap();
        let (code, stdout, stderr) = rotor(
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--bundle",
                bundle.to_str().unwrap(),
                "start",
                "--now",
                &rfc3339(t0() + days(300)),
            ],
            &shared_cache(),
        );
        assert_eq!(code, 0, "{plugin}: start renews\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("renewed 17 certificate(s) with new keys"),
            "{plugin}: {stdout}"
        );
        assert!(
            stderr.contains("rotor: warning:")
                && stderr.contains("could not be loaded")
                && stderr.to_lowercase().contains(why)
                && stderr.contains("the built-in rule decides instead"),
            "{plugin}: {stderr}"
        );
        assert_ne!(
            std::fs::read(data.join("server/tls/client-admin.crt")).unwrap(),
            before,
            "{plugin}"
        );

        // policy check: non-zero, naming the plugin.
        let (code, stdout, stderr) = rotor(
            &["--bundle", bundle.to_str().unwrap(), "policy", "check"],
            &shared_cache(),
        );
        assert_eq!(code, 2, "{plugin}: {stdout}\n{stderr}");
        assert!(stdout.contains("COULD NOT BE LOADED"), "{plugin}: {stdout}");
        assert!(
            stderr.contains(&format!("plugin '{plugin}'")),
            "{plugin}: {stderr}"
        );
        // Nor is it recorded in a data dir.
        let (code, _, stderr) = rotor(
            &[
                "--data-dir",
                data.to_str().unwrap(),
                "--bundle",
                bundle.to_str().unwrap(),
                "policy",
                "use",
            ],
            &shared_cache(),
        );
        assert_eq!(code, 2, "{plugin}: {stderr}");
    }

    // failure_mode = "error": the command fails, as a decision-time failure does.
    let data = tmp.path().join("data-error");
    init_k3s(&data, t0());
    let bundle = renewal_bundle(
        &tmp.path().join("bundle-error"),
        "hostile-loop",
        "failure_mode = \"error\"\ntimeout_ms = 50",
        "in_configure = true",
    );
    let before = tree(&data);
    let (code, _, stderr) = rotor(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "start",
            "--now",
            &rfc3339(t0() + days(300)),
        ],
        &shared_cache(),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("plugin 'hostile-loop'"), "{stderr}");
    assert_eq!(tree(&data), before, "nothing written");
}

#[test]
fn a_csr_or_san_plugin_that_cannot_load_never_approves() {
    let f = Fixture::k3s();
    let tmp = tempfile::tempdir().unwrap();
    let approve_all = test_plugin("hostile-approve-all");
    let wasi = test_plugin("hostile-wasi");
    // Each of these plugins would approve everything, were it loaded.
    let broken: [(&str, &Path, &str, &str); 3] = [
        (
            "looping",
            &approve_all,
            "timeout_ms = 50",
            "in_configure = true",
        ),
        ("hoarding", &approve_all, "", "hoard_in_configure = true"),
        ("wasi", &wasi, "", ""),
    ];
    let pem = CsrSpec::node("a", &["a"]).0;
    for (what, plugin, extra, settings) in broken {
        for (mode, code, decision) in [("abstain", 3, "abstain"), ("deny", 1, "deny")] {
            let bundle = write_bundle(
                &tmp.path().join(format!("{what}-{mode}")),
                &[HookSpec {
                    hook: "csr",
                    plugin,
                    extra: &format!("failure_mode = \"{mode}\"\n{extra}"),
                    settings,
                }],
            );
            let (got, review, stderr, signed) = sign(
                &f,
                &bundle,
                &pem,
                SERVING,
                "system:node:a",
                &["system:nodes"],
                SERVING_USAGES,
            );
            assert_eq!(got, code, "{what} {mode}: {review}\n{stderr}");
            assert!(!signed, "{what} {mode}");
            assert_eq!(review["decision"], decision, "{what} {mode}: {review}");
            assert!(
                review.to_string().contains("could not be loaded"),
                "{what} {mode}: {review}"
            );
            assert!(
                stderr.contains("could not be loaded"),
                "{what} {mode}: {stderr}"
            );
        }
    }

    // failure_mode = "error": the command fails, naming the plugin; nothing is signed.
    let bundle = write_bundle(
        &tmp.path().join("error"),
        &[HookSpec {
            hook: "csr",
            plugin: &approve_all,
            extra: "failure_mode = \"error\"\ntimeout_ms = 50",
            settings: "in_configure = true",
        }],
    );
    let csr = f.write("error.csr", &pem);
    let out = f.work.join("error.crt");
    let (code, _, stderr) = rotor(
        &[
            "--data-dir",
            f.data.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "csr",
            "sign",
            "--csr",
            csr.to_str().unwrap(),
            "--signer",
            SERVING,
            "--username",
            "system:node:a",
            "--usage",
            "server auth",
            "--out",
            out.to_str().unwrap(),
        ],
        &shared_cache(),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("plugin 'hostile-approve-all'"), "{stderr}");
    assert!(!out.exists());

    // A SAN plugin that cannot load denies every name, whatever the CSR plugin approves.
    let bundle = write_bundle(
        &tmp.path().join("san"),
        &[
            HookSpec {
                hook: "csr",
                plugin: &approve_all,
                extra: "",
                settings: "",
            },
            HookSpec {
                hook: "san",
                plugin: &approve_all,
                extra: "timeout_ms = 50",
                settings: "in_configure = true",
            },
        ],
    );
    let (code, review, _, signed) = sign(
        &f,
        &bundle,
        &pem,
        SERVING,
        "system:node:a",
        &["system:nodes"],
        SERVING_USAGES,
    );
    assert_eq!(code, 1, "{review}");
    assert!(!signed);
    assert_eq!(violation_codes(&review.to_string()), ["PolicyPluginFailed"]);
}

/// `rotor -vv ... certificate check` under util-linux's `script`, which gives it a terminal:
/// what it printed.
fn on_a_terminal(data: &Path, no_color: Option<&str>) -> String {
    let command = format!(
        "{} -vv --data-dir {} certificate check",
        rotor_bin().display(),
        data.display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env("ROTOR_PLUGIN_CACHE", shared_cache())
        .env_remove("ROTOR_BUNDLE")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn diagnostics_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    let f = Fixture::k3s();
    // -vv logs every lock taken. Standard error a pipe: never coloured.
    let out = std::process::Command::new(rotor_bin())
        .args([
            "-vv",
            "--data-dir",
            f.data.to_str().unwrap(),
            "certificate",
            "check",
        ])
        .env("ROTOR_PLUGIN_CACHE", shared_cache())
        .env_remove("ROTOR_BUNDLE")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("locked"), "-vv says something: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no escape sequences: {stderr:?}"
    );
    // On a terminal: coloured, unless NO_COLOR says otherwise.
    if !require_command("script") {
        return;
    }
    let coloured = on_a_terminal(&f.data, None);
    assert!(coloured.contains("locked"), "{coloured:?}");
    assert!(
        coloured.contains("\u{1b}["),
        "colour on a terminal: {coloured:?}"
    );
    let plain = on_a_terminal(&f.data, Some("1"));
    assert!(plain.contains("locked"), "{plain:?}");
    assert!(!plain.contains("\u{1b}["), "NO_COLOR: {plain:?}");
}
