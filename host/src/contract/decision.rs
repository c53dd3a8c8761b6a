//! What each hook answers, as the host sees it after validating the plugin's answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::facts::{Usage, Violation};

/// Renewal hook answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum RenewalDecision {
    Keep {
        reason: String,
        #[serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        renew_at: Option<OffsetDateTime>,
    },
    Renew {
        reason: String,
        /// Lifetime of the new certificate; `None` means the host default (365 days).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lifetime_seconds: Option<u64>,
    },
}

impl RenewalDecision {
    pub fn is_renew(&self) -> bool {
        matches!(self, RenewalDecision::Renew { .. })
    }

    pub fn reason(&self) -> &str {
        match self {
            RenewalDecision::Keep { reason, .. } | RenewalDecision::Renew { reason, .. } => reason,
        }
    }

    pub fn lifetime(&self) -> Option<Duration> {
        match self {
            RenewalDecision::Renew {
                lifetime_seconds: Some(s),
                ..
            } => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }
}

/// SAN hook answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum SanDecision {
    Allow,
    Deny { violations: Vec<Violation> },
}

impl SanDecision {
    pub fn is_allow(&self) -> bool {
        matches!(self, SanDecision::Allow)
    }
}

/// CSR hook answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum CsrDecision {
    Approve {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lifetime_seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usages: Option<Vec<Usage>>,
    },
    Deny {
        violations: Vec<Violation>,
    },
    Abstain {
        reason: String,
    },
}

impl CsrDecision {
    pub fn kind(&self) -> &'static str {
        match self {
            CsrDecision::Approve { .. } => "approve",
            CsrDecision::Deny { .. } => "deny",
            CsrDecision::Abstain { .. } => "abstain",
        }
    }
}
