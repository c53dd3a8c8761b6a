//! The host floor: what no plugin can approve, on every signer and in every path that signs a
//! CSR (`csr review` and `csr sign`, batches, and every front end that decides through
//! [`super::review`]; [`super::sign`] checks it again on what it signs). A plugin that approves
//! everything gets nothing of it signed.
//!
//! Refused whatever the plugins answer, each with a reason of its own (code `HostFloor`):
//!
//! - a CA certificate (basicConstraints `cA`) and the usages only CAs carry (`cert sign`,
//!   `crl sign`);
//! - a subject in a group that grants power by itself: `system:masters` (Kubernetes'
//!   unconditional superuser group), `kubeadm:cluster-admins` (bound to cluster-admin by
//!   kubeadm), and every other `system:` group but `system:nodes` (a prefix Kubernetes reserves
//!   for the groups it assigns: service accounts, bootstrappers, ...);
//! - a subject that is the control plane's or a service account's user name: every `system:`
//!   common name (`system:kube-controller-manager`, `system:kube-scheduler`, `system:admin`,
//!   `system:serviceaccount:<ns>:<name>`, ...) but a node's own identity and the agent
//!   components a node runs (`system:kube-proxy`, `system:k3s-controller`,
//!   `system:rke2-controller`);
//! - a node's identity (`O=system:nodes`, or a `CN=system:node:<name>`) for anyone but that
//!   node: a requester who is not `system:node:<name>`, or a node asking for another's name;
//! - a `kubernetes.io/kubelet-serving` or `kubernetes.io/kube-apiserver-client-kubelet`
//!   certificate whose subject is not exactly its requester's node (`CN=system:node:<name>`,
//!   `O=system:nodes`).
//!
//! An operator who means it opens one door at a time, for one signer, in the bundle's host
//! section (never in a plugin's settings, so no plugin can widen the floor):
//!
//! ```toml
//! [host.floor."kubernetes.io/kube-apiserver-client"]
//! allow_groups = ["system:masters"]               # this group, for this signer only
//! allow_users = ["system:kube-scheduler"]         # this user name, for this signer only
//!
//! [host.floor."kubernetes.io/kube-apiserver-client-kubelet"]
//! allow_node_identity_for = ["system:bootstrappers"]  # these requesters may ask for any
//!                                                     # node's identity (TLS bootstrapping)
//! ```
//!
//! Every load of a bundle with an open door warns. CA certificates have no door. Cluster-admin
//! credentials for people are made by `rotor init` and renewed by `rotor certificate rotate`
//! (k3s, RKE2) or `rotor certs renew admin.conf` (kubeadm), which do not go through CSRs.

use std::collections::BTreeMap;

use crate::contract::CsrContext;
use crate::facts::{Usage, Violation};

/// The code of every floor refusal.
pub const FLOOR_CODE: &str = "HostFloor";

/// Kubernetes' unconditional superuser group.
const MASTERS: &str = "system:masters";
/// kubeadm's administrators' group (bound to cluster-admin), which its `admin.conf` carries.
const KUBEADM_ADMINS: &str = "kubeadm:cluster-admins";
/// The prefix Kubernetes reserves for the users and groups it assigns.
const SYSTEM: &str = "system:";
/// The nodes' group.
const NODES: &str = "system:nodes";
/// A node's user name: `system:node:<name>`.
const NODE_PREFIX: &str = "system:node:";
/// A service account's user name: `system:serviceaccount:<namespace>:<name>`.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// `system:` user names of components a node runs, with no power beyond what they read: the
/// names the supervisor API issues to agents besides the node's own.
const NODE_COMPONENTS: &[&str] = &[
    "system:kube-proxy",
    "system:k3s-controller",
    "system:rke2-controller",
];
/// The signer of the certificates the supervisor API issues to the components a node runs
/// (`system:kube-proxy`, `system:<program>-controller`), from the client CA.
pub const NODE_COMPONENT_SIGNER: &str = "rotor.io/node-component";

/// Signers whose certificates are a node's own identity.
const KUBELET_SIGNERS: &[&str] = &[
    "kubernetes.io/kubelet-serving",
    "kubernetes.io/kube-apiserver-client-kubelet",
];
/// The signers rotor signs for: a door for another opens nothing.
const SIGNERS: &[&str] = &[
    "kubernetes.io/kubelet-serving",
    "kubernetes.io/kube-apiserver-client-kubelet",
    "kubernetes.io/kube-apiserver-client",
    "kubernetes.io/legacy-unknown",
    NODE_COMPONENT_SIGNER,
];

/// The floor's rules in words, for `rotor policy check` and the documentation.
pub const FLOOR_RULES: &[&str] = &[
    "no CA certificate and no CA usage ('cert sign', 'crl sign'), on any signer (no door)",
    "no subject in system:masters, kubeadm:cluster-admins or any other system: group but \
     system:nodes (door: allow_groups)",
    "no system: user name (control plane, service accounts: system:kube-controller-manager, \
     system:serviceaccount:..., ...) but a node's own and system:kube-proxy, \
     system:k3s-controller, system:rke2-controller (door: allow_users)",
    "no node identity (O=system:nodes or CN=system:node:<name>) for anyone but that node \
     (door: allow_node_identity_for)",
    "a kubelet-serving or kube-apiserver-client-kubelet certificate is exactly its requester's \
     node: CN=system:node:<name>, O=system:nodes",
    "a rotor.io/node-component certificate is one of the components a node runs \
     (system:kube-proxy, system:k3s-controller, system:rke2-controller), for a node, with no O",
];

/// Whether the floor refuses group `g` in a subject (`system:nodes` is the node rule's).
fn refused_group(g: &str) -> bool {
    g == KUBEADM_ADMINS || (g.starts_with(SYSTEM) && g != NODES)
}

/// Whether the floor refuses user name `cn` (a node's name is the node rule's).
fn refused_user(cn: &str) -> bool {
    cn.starts_with(SYSTEM) && !cn.starts_with(NODE_PREFIX) && !NODE_COMPONENTS.contains(&cn)
}

/// Why group `g` is refused, in words.
fn group_reason(g: &str) -> String {
    match g {
        MASTERS => format!(
            "{MASTERS} is never issued through a CSR (Kubernetes' unconditional superuser group)"
        ),
        KUBEADM_ADMINS => format!(
            "{KUBEADM_ADMINS} is never issued through a CSR (kubeadm binds it to cluster-admin)"
        ),
        g => format!(
            "{g} is a group Kubernetes assigns itself (system: is reserved), never issued \
             through a CSR"
        ),
    }
}

/// Why user name `cn` is refused, in words.
fn user_reason(cn: &str) -> String {
    if cn.starts_with(SERVICE_ACCOUNT_PREFIX) {
        format!("CN={cn:?} is a service account's identity, never issued through a CSR")
    } else {
        format!(
            "CN={cn:?} is a user name Kubernetes reserves for itself and the control plane \
             (system:), never issued through a CSR"
        )
    }
}

/// One signer's door in the floor, as the bundle's `[host.floor."SIGNER"]` opens it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Door {
    /// Groups the floor refuses that this signer may issue anyway.
    pub allow_groups: Vec<String>,
    /// User names (common names) the floor refuses that this signer may issue anyway.
    pub allow_users: Vec<String>,
    /// Requesters in these groups may ask this signer for any node's identity.
    pub allow_node_identity_for: Vec<String>,
}

/// The doors a bundle opens, per signer (none by default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FloorDoors {
    doors: BTreeMap<String, Door>,
}

impl FloorDoors {
    /// The doors of `doors`, checked: a signer name; in `allow_groups` and `allow_users`
    /// only what the floor refuses; no door to node identities for a group every user, every
    /// node or every service account is in. The error names the signer and the field.
    pub fn new(doors: BTreeMap<String, Door>) -> Result<FloorDoors, String> {
        for (signer, door) in &doors {
            let at = |field: &str| format!("[host.floor.{signer:?}] {field}");
            if signer.trim().is_empty() || signer.contains(char::is_whitespace) {
                return Err(format!("[host.floor.{signer:?}]: not a signer name"));
            }
            for g in &door.allow_groups {
                if g == NODES {
                    return Err(format!(
                        "{}: {g:?}: node identities open with allow_node_identity_for",
                        at("allow_groups")
                    ));
                }
                if !refused_group(g) {
                    return Err(format!(
                        "{}: {g:?} is not a group the floor refuses (system: groups and \
                         {KUBEADM_ADMINS})",
                        at("allow_groups")
                    ));
                }
            }
            for u in &door.allow_users {
                if u.starts_with(NODE_PREFIX) {
                    return Err(format!(
                        "{}: {u:?}: node identities open with allow_node_identity_for",
                        at("allow_users")
                    ));
                }
                if !refused_user(u) {
                    return Err(format!(
                        "{}: {u:?} is not a user name the floor refuses (system: names)",
                        at("allow_users")
                    ));
                }
            }
            for g in &door.allow_node_identity_for {
                if g.trim().is_empty() {
                    return Err(format!(
                        "{}: an empty group name",
                        at("allow_node_identity_for")
                    ));
                }
                let everyone = matches!(
                    g.as_str(),
                    "system:authenticated" | "system:unauthenticated" | "system:serviceaccounts"
                ) || g.starts_with("system:serviceaccounts:");
                if everyone || g == NODES {
                    return Err(format!(
                        "{}: {g:?} holds every {}: any of them could become any node",
                        at("allow_node_identity_for"),
                        if g == NODES {
                            "node"
                        } else if g.starts_with("system:serviceaccounts") {
                            "service account"
                        } else {
                            "user"
                        }
                    ));
                }
            }
            if door.allow_groups.is_empty()
                && door.allow_users.is_empty()
                && door.allow_node_identity_for.is_empty()
            {
                return Err(format!(
                    "[host.floor.{signer:?}]: opens nothing (give allow_groups, allow_users or \
                     allow_node_identity_for, or remove the table)"
                ));
            }
        }
        Ok(FloorDoors { doors })
    }

    /// The door of `signer`, if the bundle opens one.
    pub fn door(&self, signer: &str) -> Option<&Door> {
        self.doors.get(signer)
    }

    /// Every open door, one line each, as the warning every load of the bundle says.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (signer, door) in &self.doors {
            if !SIGNERS.contains(&signer.as_str()) {
                out.push(format!(
                    "[host.floor.\"{signer}\"] names a signer rotor never signs for (it signs \
                     {}): the door opens nothing",
                    SIGNERS.join(", ")
                ));
            }
            for u in &door.allow_users {
                out.push(format!(
                    "the bundle opens the host floor: {signer} may issue certificates to user \
                     {u} ([host.floor.\"{signer}\"] allow_users)"
                ));
            }
            for g in &door.allow_groups {
                out.push(format!(
                    "the bundle opens the host floor: {signer} may issue certificates in {g} \
                     ([host.floor.\"{signer}\"] allow_groups)"
                ));
            }
            if !door.allow_node_identity_for.is_empty() {
                out.push(format!(
                    "the bundle opens the host floor: {signer} may issue any node's identity to \
                     requesters in {} ([host.floor.\"{signer}\"] allow_node_identity_for)",
                    door.allow_node_identity_for.join(", ")
                ));
            }
        }
        out
    }
}

/// The subject and extensions of what would be signed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Asked<'a> {
    /// The subject's common name.
    pub(crate) common_name: Option<&'a str>,
    /// The subject's organizations.
    pub(crate) organizations: &'a [String],
    /// Whether basicConstraints asks for a CA.
    pub(crate) requests_ca: bool,
    /// The usages.
    pub(crate) usages: &'a [Usage],
}

fn floor(field: &str, message: String) -> Violation {
    Violation::new(FLOOR_CODE, field, message)
}

/// Every floor refusal of `asked` for `ctx`'s requester and signer, under `doors`; a note in
/// `notes` for each door that let something through.
pub(crate) fn check(
    doors: &FloorDoors,
    ctx: &CsrContext,
    asked: Asked<'_>,
    notes: &mut Vec<String>,
) -> Vec<Violation> {
    let signer = ctx.signer_name.as_str();
    let door = doors.door(signer);
    let mut out = Vec::new();

    // A CA, on any signer, with no door.
    if asked.requests_ca {
        out.push(floor(
            "basicConstraints",
            "CA certificates are never issued through a CSR".into(),
        ));
    }
    for u in asked.usages {
        if matches!(u, Usage::CertSign | Usage::CrlSign) {
            out.push(floor(
                "spec.usages",
                format!("'{u}' is only for CA certificates, which are never issued through a CSR"),
            ));
        }
    }

    // Groups and user names that grant power by themselves.
    for g in asked.organizations.iter().filter(|g| refused_group(g)) {
        if door.is_some_and(|d| d.allow_groups.contains(g)) {
            notes.push(format!(
                "{g} let through by the bundle's [host.floor.\"{signer}\"] allow_groups"
            ));
        } else {
            out.push(floor("subject.organizations", group_reason(g)));
        }
    }
    if let Some(cn) = asked.common_name.filter(|cn| refused_user(cn)) {
        if door.is_some_and(|d| d.allow_users.iter().any(|u| u == cn)) {
            notes.push(format!(
                "user {cn} let through by the bundle's [host.floor.\"{signer}\"] allow_users"
            ));
        } else {
            out.push(floor("subject.commonName", user_reason(cn)));
        }
    }

    // A node's identity is its own.
    let requester_node = ctx
        .username
        .strip_prefix(NODE_PREFIX)
        .filter(|n| !n.is_empty());
    let cn = asked.common_name.unwrap_or("");
    let names_a_node =
        cn.starts_with(NODE_PREFIX) || asked.organizations.iter().any(|o| o == NODES);
    let door_group = door.and_then(|d| {
        d.allow_node_identity_for
            .iter()
            .find(|g| ctx.groups.iter().any(|have| have == *g))
    });
    let kubelet = KUBELET_SIGNERS.contains(&signer);
    let own = requester_node.is_some() && cn == ctx.username;
    if (names_a_node || kubelet) && !own {
        if let Some(group) = door_group {
            notes.push(format!(
                "a node identity for a requester in {group}, let through by the bundle's \
                 [host.floor.\"{signer}\"] allow_node_identity_for"
            ));
        } else if requester_node.is_some() {
            out.push(floor(
                "subject.commonName",
                format!(
                    "CN={cn:?} is not {}'s own identity: a node only gets certificates for itself",
                    ctx.username
                ),
            ));
        } else {
            out.push(floor(
                "spec.username",
                format!(
                    "'{}' is not a node (system:node:<name>), so it gets no {}",
                    ctx.username,
                    if kubelet {
                        format!("{signer} certificate")
                    } else {
                        "certificate in system:nodes or with a system:node: name".into()
                    }
                ),
            ));
        }
    }

    // A node component's certificate: one of the components, for a node, in no group.
    if signer == NODE_COMPONENT_SIGNER
        && (requester_node.is_none()
            || !NODE_COMPONENTS.contains(&cn)
            || !asked.organizations.is_empty())
    {
        out.push(floor(
            "subject",
            format!(
                "every {signer} certificate is CN={} with no O, for a node (system:node:<name>); \
                 asked CN={cn:?}, O={:?} for '{}'",
                NODE_COMPONENTS.join(" or CN="),
                asked.organizations,
                ctx.username
            ),
        ));
    }

    // A kubelet certificate is exactly a node's: CN=system:node:<name>, O=system:nodes.
    if kubelet {
        let node_cn = cn.strip_prefix(NODE_PREFIX).is_some_and(|n| !n.is_empty());
        if asked.organizations != [NODES] || !node_cn {
            out.push(floor(
                "subject",
                format!(
                    "every {signer} certificate is CN=system:node:<node name>, O={NODES}; \
                     asked CN={cn:?}, O={:?}",
                    asked.organizations
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVING: &str = "kubernetes.io/kubelet-serving";
    const CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
    const CLIENT: &str = "kubernetes.io/kube-apiserver-client";

    fn ctx(signer: &str, user: &str, groups: &[&str]) -> CsrContext {
        CsrContext {
            signer_name: signer.into(),
            username: user.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            usages: vec![Usage::DigitalSignature, Usage::ClientAuth],
            expiration_seconds: None,
            node_addresses: Vec::new(),
        }
    }

    fn refusals(doors: &FloorDoors, c: &CsrContext, cn: &str, orgs: &[&str]) -> Vec<String> {
        let orgs: Vec<String> = orgs.iter().map(|o| o.to_string()).collect();
        let asked = Asked {
            common_name: Some(cn),
            organizations: &orgs,
            requests_ca: false,
            usages: &c.usages,
        };
        check(doors, c, asked, &mut Vec::new())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn doors(signer: &str, door: Door) -> FloorDoors {
        FloorDoors::new(BTreeMap::from([(signer.to_string(), door)])).unwrap()
    }

    #[test]
    fn masters_is_refused_on_every_signer_until_its_door_opens_for_one() {
        let closed = FloorDoors::default();
        for signer in [CLIENT, "kubernetes.io/legacy-unknown", "example.com/any"] {
            let r = refusals(
                &closed,
                &ctx(signer, "alice", &[]),
                "evil-admin",
                &[MASTERS],
            );
            assert_eq!(r.len(), 1, "{signer}: {r:?}");
            assert!(
                r[0].starts_with(
                    "HostFloor: subject.organizations: system:masters is never issued through a CSR"
                ),
                "{r:?}"
            );
        }
        let open = doors(
            CLIENT,
            Door {
                allow_groups: vec![MASTERS.into()],
                ..Door::default()
            },
        );
        let mut notes = Vec::new();
        let orgs = vec![MASTERS.to_string()];
        let c = ctx(CLIENT, "alice", &[]);
        let asked = Asked {
            common_name: Some("admin"),
            organizations: &orgs,
            requests_ca: false,
            usages: &c.usages,
        };
        assert!(check(&open, &c, asked, &mut notes).is_empty());
        assert!(notes[0].contains("allow_groups"), "{notes:?}");
        // Only that signer.
        let other = ctx("kubernetes.io/legacy-unknown", "alice", &[]);
        assert_eq!(refusals(&open, &other, "admin", &[MASTERS]).len(), 1);
    }

    #[test]
    fn a_node_identity_belongs_to_that_node_alone() {
        let closed = FloorDoors::default();
        // A non-node asking for a node name, or for the nodes' group.
        for (cn, orgs) in [("system:node:a", &[][..]), ("x", &[NODES][..])] {
            let r = refusals(&closed, &ctx(CLIENT, "alice", &[]), cn, orgs);
            assert_eq!(r.len(), 1, "{r:?}");
            assert!(
                r[0].contains("spec.username: 'alice' is not a node"),
                "{r:?}"
            );
        }
        // Another node's name.
        let r = refusals(
            &closed,
            &ctx(CLIENT, "system:node:a", &[NODES]),
            "system:node:b",
            &[NODES],
        );
        assert!(r[0].contains("not system:node:a's own identity"), "{r:?}");
        // Its own: fine.
        assert!(
            refusals(
                &closed,
                &ctx(CLIENT, "system:node:a", &[NODES]),
                "system:node:a",
                &[NODES]
            )
            .is_empty()
        );
    }

    #[test]
    fn kubelet_certificates_are_exactly_the_requesters_node() {
        let closed = FloorDoors::default();
        let node_a = ctx(SERVING, "system:node:a", &[NODES]);
        assert!(refusals(&closed, &node_a, "system:node:a", &[NODES]).is_empty());
        // O other than exactly system:nodes.
        let r = refusals(&closed, &node_a, "system:node:a", &[NODES, "extra"]);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with("HostFloor: subject: every kubernetes.io/kubelet-serving certificate is CN=system:node:<node name>, O=system:nodes"), "{r:?}");
        // A CN that is no node at all, from a node.
        let r = refusals(&closed, &node_a, "web", &[NODES]);
        assert!(
            r.iter()
                .any(|m| m.contains("not system:node:a's own identity")),
            "{r:?}"
        );
        // A non-node asking for a kubelet certificate with a plain subject.
        let r = refusals(&closed, &ctx(CLIENT_KUBELET, "alice", &[]), "alice", &[]);
        assert!(
            r.iter().any(|m| m.contains("'alice' is not a node")),
            "{r:?}"
        );
        assert!(r.iter().any(|m| m.contains("HostFloor: subject:")), "{r:?}");
    }

    #[test]
    fn the_bootstrap_door_opens_node_identities_for_one_signer_and_one_group() {
        let open = doors(
            CLIENT_KUBELET,
            Door {
                allow_node_identity_for: vec!["system:bootstrappers".into()],
                ..Door::default()
            },
        );
        let boot = ctx(
            CLIENT_KUBELET,
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
        );
        assert!(refusals(&open, &boot, "system:node:new", &[NODES]).is_empty());
        // Still exactly a node subject, and still no system:masters.
        assert_eq!(
            refusals(&open, &boot, "system:node:new", &[NODES, MASTERS]).len(),
            2
        );
        // Not for another group, and not for another signer.
        let stranger = ctx(CLIENT_KUBELET, "system:bootstrap:x", &["other"]);
        assert_eq!(
            refusals(&open, &stranger, "system:node:new", &[NODES]).len(),
            1
        );
        let serving = ctx(
            SERVING,
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
        );
        assert!(!refusals(&open, &serving, "system:node:new", &[NODES]).is_empty());
    }

    #[test]
    fn ca_requests_and_usages_have_no_door() {
        let c = ctx(CLIENT, "alice", &[]);
        let orgs = Vec::new();
        let asked = Asked {
            common_name: Some("alice"),
            organizations: &orgs,
            requests_ca: true,
            usages: &[Usage::CertSign, Usage::CrlSign, Usage::ClientAuth],
        };
        let r = check(&FloorDoors::default(), &c, asked, &mut Vec::new());
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r.iter().all(|v| v.code == FLOOR_CODE));
    }

    #[test]
    fn power_by_group_or_user_name_is_refused_until_its_door_opens() {
        let closed = FloorDoors::default();
        let alice = ctx(CLIENT, "alice", &[]);
        for (cn, orgs, expected) in [
            (
                "alice",
                &[KUBEADM_ADMINS][..],
                "kubeadm binds it to cluster-admin",
            ),
            (
                "alice",
                &["system:serviceaccounts"][..],
                "a group Kubernetes assigns itself",
            ),
            (
                "alice",
                &["system:bootstrappers"][..],
                "a group Kubernetes assigns itself",
            ),
            (
                "system:kube-controller-manager",
                &[][..],
                "reserves for itself",
            ),
            ("system:kube-scheduler", &[][..], "reserves for itself"),
            ("system:admin", &[][..], "reserves for itself"),
            (
                "system:serviceaccount:kube-system:default",
                &[][..],
                "a service account's identity",
            ),
        ] {
            let r = refusals(&closed, &alice, cn, orgs);
            assert_eq!(r.len(), 1, "{cn} {orgs:?}: {r:?}");
            assert!(r[0].starts_with("HostFloor: subject."), "{r:?}");
            assert!(r[0].contains(expected), "{cn} {orgs:?}: {r:?}");
        }
        // What a node runs, and plain names and groups, pass.
        for cn in [
            "system:kube-proxy",
            "system:k3s-controller",
            "alice",
            "kube-apiserver",
        ] {
            assert!(refusals(&closed, &alice, cn, &["dev"]).is_empty(), "{cn}");
        }
        // One door, one name, one signer.
        let open = doors(
            CLIENT,
            Door {
                allow_users: vec!["system:kube-scheduler".into()],
                allow_groups: vec![KUBEADM_ADMINS.into()],
                ..Door::default()
            },
        );
        assert!(refusals(&open, &alice, "system:kube-scheduler", &[KUBEADM_ADMINS]).is_empty());
        assert_eq!(
            refusals(&open, &alice, "system:kube-controller-manager", &[]).len(),
            1
        );
        assert_eq!(refusals(&open, &alice, "alice", &[MASTERS]).len(), 1);
        let legacy = ctx("kubernetes.io/legacy-unknown", "alice", &[]);
        assert_eq!(
            refusals(&open, &legacy, "system:kube-scheduler", &[]).len(),
            1
        );
        // A door for a signer rotor never signs for says so.
        let nowhere = doors(
            "example.com/x",
            Door {
                allow_groups: vec![MASTERS.into()],
                ..Door::default()
            },
        );
        assert!(
            nowhere.warnings()[0].contains("never signs for"),
            "{:?}",
            nowhere.warnings()
        );
    }

    #[test]
    fn node_component_certificates_are_components_for_nodes() {
        let closed = FloorDoors::default();
        let node = ctx(NODE_COMPONENT_SIGNER, "system:node:a", &[NODES]);
        assert!(refusals(&closed, &node, "system:kube-proxy", &[]).is_empty());
        assert!(refusals(&closed, &node, "system:k3s-controller", &[]).is_empty());
        for (c, cn, orgs) in [
            (&node, "alice", &[][..]),
            (&node, "system:kube-proxy", &["dev"][..]),
            (
                &ctx(NODE_COMPONENT_SIGNER, "alice", &[]),
                "system:kube-proxy",
                &[][..],
            ),
        ] {
            let r = refusals(&closed, c, cn, orgs);
            assert!(
                r.iter()
                    .any(|m| m.contains("certificate is CN=system:kube-proxy")),
                "{cn} {orgs:?}: {r:?}"
            );
        }
    }

    #[test]
    fn doors_are_checked() {
        let one = |door: Door| FloorDoors::new(BTreeMap::from([(CLIENT.to_string(), door)]));
        assert!(
            one(Door {
                allow_groups: vec![NODES.into()],
                ..Door::default()
            })
            .unwrap_err()
            .contains("allow_groups")
        );
        assert!(
            one(Door {
                allow_node_identity_for: vec!["system:authenticated".into()],
                ..Door::default()
            })
            .unwrap_err()
            .contains("every user")
        );
        assert!(one(Door::default()).unwrap_err().contains("opens nothing"));
        for g in [
            "system:nodes",
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
        ] {
            let err = one(Door {
                allow_node_identity_for: vec![g.into()],
                ..Door::default()
            })
            .unwrap_err();
            assert!(err.contains("could become any node"), "{g}: {err}");
        }
        for (users, why) in [
            (vec!["system:node:a".to_string()], "allow_node_identity_for"),
            (
                vec!["alice".to_string()],
                "not a user name the floor refuses",
            ),
            (
                vec!["system:kube-proxy".to_string()],
                "not a user name the floor refuses",
            ),
        ] {
            let err = one(Door {
                allow_users: users,
                ..Door::default()
            })
            .unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        assert!(
            one(Door {
                allow_groups: vec!["dev".into()],
                ..Door::default()
            })
            .unwrap_err()
            .contains("not a group the floor refuses")
        );
    }
}
