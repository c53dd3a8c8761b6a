//! Time: the only place rotor reads the system clock. Everything else takes `now` as an input,
//! so `--now` can move any command to another instant and tests never depend on the clock.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The current time, from the system clock.
pub fn system_now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Parse an RFC 3339 time such as `2027-01-01T00:00:00Z`.
pub fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("'{s}' is not an RFC 3339 time like 2027-01-01T00:00:00Z ({e})"))
}
