//! What each hook answers, as the host sees it after validating the plugin's answer.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::facts::{Usage, Violation};

/// Renewal hook answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum RenewalDecision {
    /// Keep the certificate.
    Keep {
        /// Why, in words, for logs, reports and the CSR's condition.
        reason: String,
        #[serde(
            default,
            with = "time::serde::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        /// When to ask again, if the plugin knows.
        renew_at: Option<OffsetDateTime>,
    },
    /// Re-issue the certificate.
    Renew {
        /// Why, in words, for logs, reports and the CSR's condition.
        reason: String,
        /// Lifetime of the new certificate; `None` means the host default (365 days).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lifetime_seconds: Option<u64>,
    },
}

impl RenewalDecision {
    /// Whether the answer is to renew.
    pub fn is_renew(&self) -> bool {
        matches!(self, RenewalDecision::Renew { .. })
    }

    /// The plugin's reason.
    pub fn reason(&self) -> &str {
        match self {
            RenewalDecision::Keep { reason, .. } | RenewalDecision::Renew { reason, .. } => reason,
        }
    }

    /// The lifetime the plugin asked for the replacement, if any.
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
    /// Every name is acceptable.
    Allow,
    /// At least one name is not acceptable.
    Deny {
        /// Every violation found, not only the first.
        violations: Vec<Violation>,
    },
}

impl SanDecision {
    /// Whether every name was allowed.
    pub fn is_allow(&self) -> bool {
        matches!(self, SanDecision::Allow)
    }
}

/// CSR hook answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum CsrDecision {
    /// Approve the CSR.
    Approve {
        /// Why, in words, for logs, reports and the CSR's condition.
        reason: String,
        /// The certificate lifetime the plugin grants, if it limits it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lifetime_seconds: Option<u64>,
        /// The usages the plugin grants, if fewer than requested.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usages: Option<Vec<Usage>>,
    },
    /// Deny the CSR.
    Deny {
        /// Every violation found, not only the first.
        violations: Vec<Violation>,
    },
    /// Leave the CSR pending for a human or another approver.
    Abstain {
        /// Why, in words, for logs, reports and the CSR's condition.
        reason: String,
    },
}

impl CsrDecision {
    /// `approve`, `deny` or `abstain`.
    pub fn kind(&self) -> &'static str {
        match self {
            CsrDecision::Approve { .. } => "approve",
            CsrDecision::Deny { .. } => "deny",
            CsrDecision::Abstain { .. } => "abstain",
        }
    }
}
