//! Evidence for a node's CSR from the live Node objects: the Node's name and the addresses in
//! its `status.addresses`.
//!
//! The trust model: a kubelet writes its own Node's status, so an address there is the node's
//! claim, not proof. Two rules keep a claim from becoming another node's identity: an address
//! that another Node also lists is disputed (the host denies a request for it, whatever the
//! policy says), and a CSR for a Node that does not exist is not decided at all until the Node
//! appears (never approved blind). The policy's own name and prefix rules run on top.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

/// What the Node objects say, by node name.
#[derive(Debug, Default)]
pub(super) struct NodeIndex {
    addresses: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// The evidence for one requester.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NodeEvidence {
    /// Not a node (`system:node:<name>`): no node evidence.
    NotANode,
    /// The node's Node object does not exist (yet).
    Missing(String),
    /// The node's addresses no other Node lists, and those another Node lists (with its name).
    Found {
        addresses: Vec<IpAddr>,
        disputed: Vec<(IpAddr, String)>,
    },
}

/// The node name a requester's username gives (`system:node:<name>`).
pub(super) fn node_name(username: &str) -> Option<&str> {
    username
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
}

impl NodeIndex {
    /// Record a Node as it is now: `true` when its addresses changed (or it is new).
    pub(super) fn apply(&mut self, node: &Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let ips: BTreeSet<IpAddr> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|list| {
                list.iter()
                    .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP"))
                    // `::ffff:10.0.0.9` is 10.0.0.9, as everywhere else in the host (the SANs,
                    // the plugins' evidence): two Nodes cannot list one address in two
                    // spellings and both look undisputed.
                    .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
                    .map(crate::facts::canonical_ip)
                    .collect()
            })
            .unwrap_or_default();
        self.addresses.insert(name, ips.clone()) != Some(ips)
    }

    /// Forget a deleted Node.
    pub(super) fn delete(&mut self, node: &Node) {
        if let Some(name) = &node.metadata.name {
            self.addresses.remove(name);
        }
    }

    /// The evidence for `username`.
    pub(super) fn evidence(&self, username: &str) -> NodeEvidence {
        let Some(name) = node_name(username) else {
            return NodeEvidence::NotANode;
        };
        let Some(own) = self.addresses.get(name) else {
            return NodeEvidence::Missing(name.to_string());
        };
        let mut addresses = Vec::new();
        let mut disputed = Vec::new();
        for ip in own {
            let others: Vec<&String> = self
                .addresses
                .iter()
                .filter(|(other, ips)| other.as_str() != name && ips.contains(ip))
                .map(|(other, _)| other)
                .collect();
            if others.is_empty() {
                addresses.push(*ip);
            } else {
                disputed.extend(others.into_iter().map(|o| (*ip, o.clone())));
            }
        }
        NodeEvidence::Found {
            addresses,
            disputed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    fn node(name: &str, ips: &[&str]) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.status = Some(NodeStatus {
            addresses: Some(
                ips.iter()
                    .map(|ip| NodeAddress {
                        address: (*ip).into(),
                        type_: "InternalIP".into(),
                    })
                    .chain(std::iter::once(NodeAddress {
                        address: format!("{name}.example"),
                        type_: "Hostname".into(),
                    }))
                    .collect(),
            ),
            ..NodeStatus::default()
        });
        n
    }

    #[test]
    fn an_address_two_nodes_list_is_disputed_and_a_missing_node_is_missing() {
        let mut index = NodeIndex::default();
        assert!(index.apply(&node("a", &["10.0.0.1", "10.0.0.9"])));
        assert!(index.apply(&node("b", &["10.0.0.2", "10.0.0.9"])));
        assert!(!index.apply(&node("b", &["10.0.0.2", "10.0.0.9"])));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            index.evidence("system:node:a"),
            NodeEvidence::Found {
                addresses: vec![ip("10.0.0.1")],
                disputed: vec![(ip("10.0.0.9"), "b".into())],
            }
        );
        assert_eq!(
            index.evidence("system:node:c"),
            NodeEvidence::Missing("c".into())
        );
        assert_eq!(index.evidence("alice"), NodeEvidence::NotANode);
        // The same address in its IPv4-mapped IPv6 spelling is the same address.
        assert!(index.apply(&node("c", &["::ffff:10.0.0.1"])));
        assert_eq!(
            index.evidence("system:node:a"),
            NodeEvidence::Found {
                addresses: vec![],
                disputed: vec![(ip("10.0.0.1"), "c".into()), (ip("10.0.0.9"), "b".into())],
            }
        );
        index.delete(&node("c", &[]));
        index.delete(&node("b", &[]));
        assert_eq!(
            index.evidence("system:node:a"),
            NodeEvidence::Found {
                addresses: vec![ip("10.0.0.1"), ip("10.0.0.9")],
                disputed: vec![],
            }
        );
    }
}
