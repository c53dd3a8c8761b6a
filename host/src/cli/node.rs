//! `rotor node list | delete`: the node password bindings the supervisor API keeps in the
//! cluster's datastore (shared by every server of an HA set on etcd).

use super::Exit;
use super::args::{GlobalArgs, NodeCommand, NodeOutput};
use super::output::outln;
use crate::cluster::Cluster;
use crate::supervisor::{Nodes, node_name};

pub(super) fn run(global: &GlobalArgs, cmd: NodeCommand) -> anyhow::Result<Exit> {
    let options = super::datadir_options(global, "node");
    let cluster = Cluster::open_read(&global.data_dir, &options)?;
    let nodes = Nodes::new(cluster.records_store(&options)?);
    // The bindings are not files of the data dir: its lock is not needed beyond reading where
    // the datastore is.
    drop(cluster);
    match cmd {
        NodeCommand::List { output } => {
            let list = nodes.list()?;
            match output {
                NodeOutput::Json => {
                    let rows: Vec<serde_json::Value> = list
                        .iter()
                        .map(|(name, r)| {
                            serde_json::json!({
                                "name": name,
                                "first_seen": crate::clock::rfc3339(r.first_seen),
                                "last_issued": r.last_issued.map(crate::clock::rfc3339),
                                "certificates": r.certificates,
                            })
                        })
                        .collect();
                    outln!("{}", serde_json::to_string_pretty(&rows)?);
                }
                NodeOutput::Table => {
                    if list.is_empty() {
                        outln!("no node is bound to a password yet");
                    } else {
                        outln!(
                            "{:<32} {:<21} {:<21} CERTIFICATES (EXPIRY)",
                            "NODE",
                            "FIRST SEEN",
                            "LAST ISSUED"
                        );
                    }
                    for (name, r) in &list {
                        let certs: Vec<String> = r
                            .certificates
                            .iter()
                            .map(|(k, v)| format!("{k} {v}"))
                            .collect();
                        outln!(
                            "{:<32} {:<21} {:<21} {}",
                            name,
                            crate::clock::rfc3339(r.first_seen),
                            r.last_issued
                                .map(crate::clock::rfc3339)
                                .unwrap_or_else(|| "-".into()),
                            if certs.is_empty() {
                                "-".into()
                            } else {
                                certs.join(", ")
                            }
                        );
                    }
                }
            }
            Ok(Exit::Success)
        }
        NodeCommand::Delete { name } => {
            let name = node_name(&name)?;
            if nodes.delete(&name)? {
                outln!(
                    "node {name}: binding removed; the name can join again with a new node password"
                );
                Ok(Exit::Success)
            } else {
                anyhow::bail!("node {name}: no binding (see `rotor node list`)")
            }
        }
    }
}
