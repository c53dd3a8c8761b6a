//! rotor:policy@0.1.0 and 0.2.0 plugins keep loading and deciding the same: the default plugins
//! as rotor shipped them on each older contract (tests/compat/rotor-policy-0.N, committed bytes)
//! against today's 0.3 builds, with the settings of each shipped bundle, on every fixture case:
//! the same decisions in the same words (0.3's coded renewal reasons worded by the host).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::{repo_root, rotor, shared_cache};

/// The 0.2 builds, by plugin file name, with the sha256 the bundles pinned then.
const V02: &[(&str, &str)] = &[
    (
        "renewal-window.wasm",
        "5c51ac778840c508c8e84b5075e301bd1c8dba047ce9baae1852ff5d9126e8e9",
    ),
    (
        "san-validation.wasm",
        "3c5cc08c4bb98386fe0106ced6c499b0cab67d7e053236c22d3fb997edf90238",
    ),
    (
        "csr-approval.wasm",
        "6ac0ced1ceb580a35432af0cbe37d4192cdc4c9d111dcb5f0635f34d8689b423",
    ),
];

/// The 0.1 builds, by plugin file name, with the sha256 the bundles pinned then.
const V01: &[(&str, &str)] = &[
    (
        "renewal-window.wasm",
        "f9f9a5cabb6b0fff3f1f5d1561f610e4229ec96a4beb9bcf480381133aaec5e5",
    ),
    (
        "san-validation.wasm",
        "57486a930e626e1b38e1380d3ee1b67609d42e537280b7043fbf3b87e3f505b6",
    ),
    (
        "csr-approval.wasm",
        "23fbf8a30d5bd6322f0a84ce7d0e6a46b9c9c4291e5cf69ca2923970115c5d2d",
    ),
];

/// A copy of `policies/<name>` whose three hooks run the builds of an older contract (`builds`,
/// in `tests/compat/<from>`; same settings, limits, failure modes).
fn old_bundle(name: &str, from: &str, builds: &[(&str, &str)], dir: &Path) {
    let manifest =
        std::fs::read_to_string(repo_root().join("policies").join(name).join("bundle.toml"))
            .unwrap();
    let table: toml::Table = toml::from_str(&manifest).unwrap();
    let mut text = manifest.clone();
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    for hook in ["renewal", "san", "csr"] {
        let section = table[hook].as_table().unwrap();
        let file = section["plugin"]
            .as_str()
            .unwrap()
            .strip_prefix("plugins/")
            .unwrap();
        let (_, old) = builds.iter().find(|(f, _)| *f == file).unwrap();
        text = text.replace(section["sha256"].as_str().unwrap(), old);
        let bytes = std::fs::read(repo_root().join("tests/compat").join(from).join(file)).unwrap();
        std::fs::write(dir.join("plugins").join(file), bytes).unwrap();
    }
    std::fs::write(dir.join("bundle.toml"), text).unwrap();
}

/// Every case of the fixture directory: name -> (passed, outcome).
fn decisions(bundle: &Path, fixtures: &Path) -> BTreeMap<String, (bool, Value)> {
    let (code, out, err) = rotor(
        &[
            "policy",
            "test",
            "--json",
            "--bundle",
            bundle.to_str().unwrap(),
            fixtures.to_str().unwrap(),
        ],
        &shared_cache(),
    );
    assert!(code == 0 || code == 1, "{out}{err}");
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let name = v["case"].as_str().unwrap().to_string();
            (
                name,
                (v["passed"] == Value::Bool(true), v["outcome"].clone()),
            )
        })
        .collect()
}

#[test]
fn contract_0_1_builds_of_the_default_plugins_decide_like_the_current_builds_on_every_fixture() {
    older_builds_decide_like_the_current_ones("rotor-policy-0.1", V01, "0.1.0");
}

#[test]
fn contract_0_2_builds_of_the_default_plugins_decide_like_the_current_builds_on_every_fixture() {
    older_builds_decide_like_the_current_ones("rotor-policy-0.2", V02, "0.2.0");
}

fn older_builds_decide_like_the_current_ones(from: &str, builds: &[(&str, &str)], version: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for name in ["default", "strict"] {
        let old = tmp.path().join(format!("{name}-{version}"));
        old_bundle(name, from, builds, &old);
        let current = repo_root().join("policies").join(name);

        // Both load, each on its own contract.
        let check = |bundle: &Path| {
            let (code, out, err) = rotor(
                &["policy", "check", "--bundle", bundle.to_str().unwrap()],
                &shared_cache(),
            );
            assert_eq!(code, 0, "{out}{err}");
            out
        };
        let out = check(&old);
        assert_eq!(
            out.matches(&format!("contract  rotor:policy@{version}"))
                .count(),
            3,
            "{out}"
        );
        let out = check(&current);
        assert_eq!(
            out.matches("contract  rotor:policy@0.3.0").count(),
            3,
            "{out}"
        );

        for fixtures in [
            repo_root().join("policies/default/fixtures"),
            repo_root().join("policies/strict/fixtures"),
        ] {
            let old_decisions = decisions(&old, &fixtures);
            let new_decisions = decisions(&current, &fixtures);
            assert!(!old_decisions.is_empty());
            assert_eq!(
                old_decisions.keys().collect::<Vec<_>>(),
                new_decisions.keys().collect::<Vec<_>>()
            );
            for (case, (old_passed, old_outcome)) in &old_decisions {
                let (new_passed, new_outcome) = &new_decisions[case];
                assert!(
                    !old_outcome.is_null(),
                    "{name} {version}, {}: {case}: no decision",
                    fixtures.display()
                );
                // The same decision, reason, violations, lifetime, source and notes.
                assert_eq!(
                    old_outcome,
                    new_outcome,
                    "{name} bundle, {}: {case}",
                    fixtures.display()
                );
                assert_eq!(old_passed, new_passed, "{case}");
                if fixtures.ends_with(format!("{name}/fixtures")) {
                    assert!(new_passed, "{name}: {case} fails its own bundle's fixture");
                }
                compared += 1;
            }
        }
    }
    // 25 default and 16 strict cases, each against both bundles.
    assert!(compared >= 2 * (25 + 16), "{compared}");
}
