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

/// The earliest instant `--now` may name: the Unix epoch.
pub const EARLIEST: OffsetDateTime = time::macros::datetime!(1970-01-01 00:00:00 UTC);
/// The latest instant `--now` may name. Certificates issued then (ten-year CAs, lifetimes of
/// up to a century, backdating) still end before 9999-12-31T23:59:59Z, the last time X.509
/// can express, so no date arithmetic can leave the representable range.
pub const LATEST: OffsetDateTime = time::macros::datetime!(9000-01-01 00:00:00 UTC);

/// Parse `--now`: an RFC 3339 time between [`EARLIEST`] and [`LATEST`]. A clap value parser, so
/// every command gets the same check and the same message.
pub fn parse_now(s: &str) -> Result<OffsetDateTime, String> {
    let t = parse_rfc3339(s)?;
    if t < EARLIEST || t > LATEST {
        return Err(format!(
            "'{s}' is outside the times rotor can act at ({} to {})",
            rfc3339(EARLIEST),
            rfc3339(LATEST)
        ));
    }
    Ok(t.to_offset(time::UtcOffset::UTC))
}

/// Format a time as RFC 3339 (`2027-01-01T00:00:00Z`).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}
