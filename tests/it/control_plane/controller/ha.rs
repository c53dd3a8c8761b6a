//! Two replicas and a Lease; a restart mid-batch; the controller on the service account and
//! RBAC of deploy/ alone, with the Node objects and with a fixed evidence list.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::control_plane::{Cluster, Flavor};

#[test]
fn two_replicas_one_leads_the_other_takes_over_and_a_restart_decides_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(c) = Cluster::start(Flavor::Kubeadm, tmp.path(), &[]) else {
        return;
    };
    create_node(&c, "n1", &["10.0.1.1"]);
    let n1 = node_identity(&c, "n1");
    let admin = admin_kubeconfig(&c);
    let mut a = Controller::start(&c, &admin, "replica-a", HA_TIMINGS);
    wait_leads(&a, LIMIT);
    let b = Controller::start(&c, &admin, "replica-b", HA_TIMINGS);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!b.leads(), "two leaders:\n{}\n{}", a.log(), b.log());
    serving_csr(&c, &n1, "ha-1", "n1", "DNS:n1,IP:10.0.1.1");
    wait_csr(
        &c,
        "ha-1",
        LIMIT,
        "Approved",
        &a.log,
        decided_as("Approved"),
    );
    assert!(a.log().contains("ha-1"), "{}", a.log());

    // The leader dies without giving the Lease up; the standby decides the next CSR within the
    // lease duration (4 s), plus its retry period and slack for a loaded machine.
    a.kill();
    let killed = Instant::now();
    serving_csr(&c, &n1, "ha-2", "n1", "DNS:n1,IP:10.0.1.1");
    wait_csr(
        &c,
        "ha-2",
        LIMIT,
        "Approved",
        &b.log,
        decided_as("Approved"),
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(4 + 1) + DEADLINE_SLACK,
        "the standby took {took:?}:\n{}",
        b.log()
    );
    assert!(b.leads() && b.log().contains("ha-2"), "{}", b.log());
    drop(b);

    // A controller killed mid-batch, and a new one: every CSR decided exactly once.
    let names = create_many_as(&c, &n1, "batch", 300, "n1", "10.0.1.1");
    let mut one = Controller::start(
        &c,
        &admin,
        "replica-c",
        &[HA_TIMINGS, &["--workers", "1"]].concat(),
    );
    let start = Instant::now();
    let at_kill = loop {
        let done = csrs_named(&c, "batch")
            .iter()
            .filter(|o| !decisions(o).is_empty())
            .count();
        if done >= 10 {
            one.kill();
            break done;
        }
        assert!(start.elapsed() < LIMIT, "nothing decided:\n{}", one.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    let two = Controller::start(&c, &admin, "replica-d", HA_TIMINGS);
    let start = Instant::now();
    loop {
        let all = csrs_named(&c, "batch");
        assert_eq!(all.len(), names.len());
        if all.iter().all(|o| !decisions(o).is_empty()) {
            for o in &all {
                let d = decisions(o);
                assert_eq!(d.len(), 1, "decided twice: {o:#}");
                assert_eq!(d[0]["type"], "Approved", "{o:#}");
            }
            break;
        }
        assert!(start.elapsed() < LIMIT, "not all decided:\n{}", two.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        at_kill < names.len(),
        "the first controller decided the whole batch before it was killed; nothing was left \
         to a restart"
    );
}

#[test]
fn the_controller_needs_nothing_but_the_service_account_and_rbac_of_deploy() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(c) = Cluster::start(Flavor::Kubeadm, tmp.path(), &[]) else {
        return;
    };
    let deploy = repo_root().join("deploy");
    let d = deploy.display().to_string();
    // What docs/csr-controller.md says: a server-side dry run does not create the namespace, so
    // before it exists the namespaced objects are refused...
    let before = c.admin(&["apply", "--dry-run=server", "-f", &d]);
    assert!(
        !before.status.success() && text(&before).contains("namespaces \"rotor-system\" not found"),
        "{}",
        text(&before)
    );
    // ...and pass once it does.
    c.admin_ok(&[
        "apply",
        "-f",
        &deploy.join("00-namespace.yaml").display().to_string(),
    ]);
    let out = c.admin_ok(&["apply", "--dry-run=server", "-f", &d]);
    assert!(
        out.contains("deployment.apps/rotor-csr-controller"),
        "{out}"
    );
    c.admin_ok(&["apply", "-f", &d]);
    let token = c.admin_ok(&[
        "-n",
        "rotor-system",
        "create",
        "token",
        "rotor-csr-controller",
    ]);
    let kc = c.work.join("sa.json");
    kubeconfig(&c, &kc, json!({"token": token.trim()}));

    create_node(&c, "n1", &["10.0.1.1"]);
    let n1 = node_identity(&c, "n1");
    let late = node_identity(&c, "late");
    // As the Deployment runs it: the default bundle, kubelet-serving, the Lease in
    // rotor-system.
    let ctl = Controller::start(&c, &kc, "in-rotor-system", &["--no-listen"]);
    serving_csr(&c, &n1, "sa-n1", "n1", "DNS:n1,IP:10.0.1.1");
    wait_csr(
        &c,
        "sa-n1",
        LIMIT,
        "Approved",
        &ctl.log,
        decided_as("Approved"),
    );
    // An abstention's Event is allowed too (a Node that does not exist).
    serving_csr(&c, &late, "sa-late", "late", "DNS:late,IP:10.0.1.7");
    let start = Instant::now();
    loop {
        let events = c.admin_ok(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"]);
        if events.contains("sa-late") && events.contains("NodeNotFound") {
            break;
        }
        assert!(start.elapsed() < LIMIT, "no event:\n{}", ctl.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let lease = c.admin_ok(&[
        "-n",
        "rotor-system",
        "get",
        "lease",
        "rotor-csr-controller",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(lease, "in-rotor-system");
    assert!(!ctl.log().contains("forbidden"), "{}", ctl.log());

    // --node-evidence: a fixed list instead of the Node objects (none exists for n9). The
    // stopped controller gave the Lease up, so the next one leads at once.
    drop(ctl);
    let n9 = node_identity(&c, "n9");
    let evidence = c.work.join("evidence.json");
    std::fs::write(&evidence, r#"{"n9": ["10.0.9.9"]}"#).unwrap();
    let ctl = Controller::start(
        &c,
        &kc,
        "fixed-evidence",
        &[
            "--no-listen",
            "--node-evidence",
            &evidence.display().to_string(),
        ],
    );
    serving_csr(&c, &n9, "n9-fixed", "n9", "DNS:n9,IP:10.0.9.9");
    wait_csr(
        &c,
        "n9-fixed",
        LIMIT,
        "Approved",
        &ctl.log,
        decided_as("Approved"),
    );
    serving_csr(&c, &n9, "n9-not-listed", "n9", "DNS:n9,IP:10.0.9.8");
    let csr = wait_csr(
        &c,
        "n9-not-listed",
        LIMIT,
        "Denied",
        &ctl.log,
        decided_as("Denied"),
    );
    assert!(
        decisions(&csr)[0]["message"]
            .as_str()
            .unwrap()
            .contains("10.0.9.8"),
        "{csr:#}"
    );
}
