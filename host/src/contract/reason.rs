//! The renewal reasons a 0.3 plugin gives as codes, in the host's words.
//!
//! Worded exactly as the default renewal-window plugin worded them in 0.1 and 0.2 (so fixtures,
//! logs and reports read the same across contract versions; `tests/it/compat.rs` checks it),
//! from the request the answer is about: the plugin sends a code and at most a number.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A renewal reason by code (`rotor:policy@0.3.0`, `renewal.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewalReason {
    /// A CA certificate: never renewed automatically.
    CaCertificate,
    /// notAfter is not after notBefore.
    InvalidValidity,
    /// Expired.
    Expired,
    /// Expires within a renewal window of `days`.
    WithinWindow {
        /// The window's length in days.
        days: u32,
    },
    /// Expires outside a renewal window of `days`.
    OutsideWindow {
        /// The window's length in days.
        days: u32,
    },
}

impl RenewalReason {
    /// The reason in words, for a certificate valid from `not_before` to `not_after`, at `now`.
    pub fn words(
        self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        now: OffsetDateTime,
    ) -> String {
        match self {
            RenewalReason::CaCertificate => "CA certificate: CAs are never renewed automatically (rotate them with 'rotor certificate rotate-ca')".into(),
            RenewalReason::InvalidValidity => format!(
                "invalid validity period: notAfter {} is not after notBefore {}",
                date(not_after),
                date(not_before)
            ),
            RenewalReason::Expired => format!(
                "expired on {} ({} ago)",
                date(not_after),
                span(seconds(now, not_after))
            ),
            RenewalReason::WithinWindow { days } => format!(
                "expires on {} (in {}), within the {days}-day renewal window",
                date(not_after),
                span(seconds(not_after, now))
            ),
            RenewalReason::OutsideWindow { days } => format!(
                "expires on {} (in {}), outside the {days}-day renewal window",
                date(not_after),
                span(seconds(not_after, now))
            ),
        }
    }
}

/// Whole seconds from `earlier` to `later`, as the plugins count them (Unix seconds).
fn seconds(later: OffsetDateTime, earlier: OffsetDateTime) -> i128 {
    i128::from(later.unix_timestamp()) - i128::from(earlier.unix_timestamp())
}

/// RFC 3339 of the whole second, as the plugins print a timestamp.
fn date(t: OffsetDateTime) -> String {
    let ts = t.unix_timestamp();
    OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ts}"))
}

/// A span of seconds in the largest sensible unit.
fn span(secs: i128) -> String {
    const DAY: i128 = 86_400;
    let secs = secs.max(0);
    if secs >= 2 * DAY {
        format!("{} days", secs / DAY)
    } else if secs >= 7200 {
        format!("{} hours", secs / 3600)
    } else if secs >= 120 {
        format!("{} minutes", secs / 60)
    } else {
        format!("{secs} seconds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    #[test]
    fn reasons_read_as_the_window_plugin_wrote_them() {
        let nb = at("2027-01-15T08:00:00Z");
        let na = at("2028-01-15T08:00:00Z");
        let now = at("2027-10-24T16:08:54Z");
        assert_eq!(
            RenewalReason::WithinWindow { days: 90 }.words(nb, na, now),
            "expires on 2028-01-15T08:00:00Z (in 82 days), within the 90-day renewal window"
        );
        assert_eq!(
            RenewalReason::OutsideWindow { days: 30 }.words(nb, na, now),
            "expires on 2028-01-15T08:00:00Z (in 82 days), outside the 30-day renewal window"
        );
        assert_eq!(
            RenewalReason::Expired.words(nb, na, at("2028-01-15T09:30:00Z")),
            "expired on 2028-01-15T08:00:00Z (90 minutes ago)"
        );
        assert_eq!(
            RenewalReason::Expired.words(nb, na, at("2028-01-15T08:00:59Z")),
            "expired on 2028-01-15T08:00:00Z (59 seconds ago)"
        );
        assert_eq!(
            RenewalReason::InvalidValidity.words(na, nb, now),
            "invalid validity period: notAfter 2027-01-15T08:00:00Z is not after notBefore 2028-01-15T08:00:00Z"
        );
        assert!(
            RenewalReason::CaCertificate
                .words(nb, na, now)
                .starts_with("CA certificate")
        );
        // Hours between 2 hours and 2 days.
        assert_eq!(
            RenewalReason::WithinWindow { days: 1 }.words(nb, na, at("2028-01-14T08:00:00Z")),
            "expires on 2028-01-15T08:00:00Z (in 24 hours), within the 1-day renewal window"
        );
    }
}
