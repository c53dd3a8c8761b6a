//! The three hooks a plugin may serve.

use std::fmt;

/// A question the host asks plugins: each hook is one WIT interface and one bundle section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Keep or renew a certificate, and for how long.
    Renewal,
    /// Are these subject names acceptable.
    San,
    /// Approve, deny or abstain on a certificate signing request.
    Csr,
}

impl Hook {
    /// Every hook, in the order bundles list them.
    pub const ALL: [Hook; 3] = [Hook::Renewal, Hook::San, Hook::Csr];

    /// The bundle section and CLI name: `renewal`, `san`, `csr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Renewal => "renewal",
            Hook::San => "san",
            Hook::Csr => "csr",
        }
    }

    /// The WIT interface that implements it, without the package version
    /// (`rotor:policy/renewal`; a plugin exports it at `@0.1.0`, `@0.2.0` or `@0.3.0`).
    pub fn interface(self) -> &'static str {
        match self {
            Hook::Renewal => "rotor:policy/renewal",
            Hook::San => "rotor:policy/san-validation",
            Hook::Csr => "rotor:policy/csr-approval",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} hook", self.as_str())
    }
}
