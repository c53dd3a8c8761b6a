//! `san-validation`: rotor's default SAN policy plugin.
//!
//! Settings (JSON):
//! ```json
//! {
//!   "allow_all": false,
//!   "rules": {
//!     "dns":   {"allow": ["**.example.com"], "deny": ["*.internal.example.com"]},
//!     "ip":    {"allow": ["10.0.0.0/8"], "deny": ["10.0.0.1"]},
//!     "email": {"allow": ["example.com", "admin@example.org"], "deny": []},
//!     "uri":   {"schemes": ["spiffe"], "allow": ["cluster.local"], "deny": []},
//!     "allow_literal_wildcards": false, "allow_underscores": false,
//!     "max_sans": 100, "max_dns_names": 100, "require_san": false,
//!     "common_name": "ignore"
//!   },
//!   "profiles": {
//!     "kubelet-serving": {
//!       "max_dns_names": 1, "require_san": true, "dns": {"allow": []},
//!       "node_binding": {"allowed_suffixes": ["int.example.com"], "require_ip_evidence": true,
//!                        "require_node_evidence": true}
//!     }
//!   }
//! }
//! ```
//! With `node_binding`, a request for a node the host holds no evidence (addresses) for is
//! denied with `NoNodeEvidence` unless `require_node_evidence` is false; the host turns a
//! denial made only of missing evidence into "pending" (the CSR can be approved once evidence
//! is given).
//! A profile (chosen by the host: a signer profile such as `kubelet-serving` or a certificate
//! name) replaces the base fields it sets. `ip.deny` defaults to the reserved ranges. See
//! `rules.rs` for the exact semantics.

#![allow(
    unsafe_code,
    reason = "the SDK's export macro expands to wit-bindgen's unsafe glue; the rules contain none"
)]

mod rules;

use rotor_policy_sdk::settings;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rotor_policy_sdk::san::exports::rotor::policy::san_validation::{
    Guest as SanValidation, SanDecision, SanRequest,
};
use rotor_policy_sdk::san::rotor::policy::types::{IpAddress, Violation};

impl settings::Settings for rules::Settings {
    fn from_json(json: &str) -> Result<Self, String> {
        rules::Settings::from_json(json)
    }
}

struct Plugin;

fn ip(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    }
}

impl SanValidation for Plugin {
    fn configure(json: String) -> Result<(), String> {
        settings::configure::<rules::Settings>(&json)
    }

    fn validate(request: SanRequest) -> SanDecision {
        let req = rules::Request {
            profile: request.profile,
            common_name: request.subject.common_name,
            dns_names: request.sans.dns_names,
            ips: request.sans.ip_addresses.into_iter().map(ip).collect(),
            uris: request.sans.uris,
            emails: request.sans.emails,
            others: request.sans.others,
            node: request.node.map(|n| rules::Node {
                name: n.name,
                addresses: n.addresses.into_iter().map(ip).collect(),
            }),
        };
        let violations = settings::with(|s: &rules::Settings| rules::validate(s, &req));
        if violations.is_empty() {
            SanDecision::Allow
        } else {
            SanDecision::Deny(
                violations
                    .into_iter()
                    .map(|v| Violation {
                        code: v.code.to_string(),
                        field: v.field,
                        message: v.message,
                    })
                    .collect(),
            )
        }
    }
}

rotor_policy_sdk::san::export!(Plugin);
