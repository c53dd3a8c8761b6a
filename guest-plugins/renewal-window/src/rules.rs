//! The renewal rules, in plain Rust so they can be unit-tested on the host target.
//!
//! Two modes:
//! - `window` (the documents' rule, k3s/RKE2 before May 2025): renew when the certificate has
//!   expired or expires within `renew_before_days` (90 by default).
//! - `fraction` (cert-manager and `step ca renew` style): renew at `renew_at_fraction` of the
//!   issued lifetime (2/3 by default), moved earlier by a deterministic jitter seeded by the
//!   serial number, with a loop guard and the CA's notAfter taken into account.
//!
//! All time arithmetic is done in `i128` seconds, so no input can overflow it
//! (cert-manager #8937 overflowed `int64` nanoseconds on five-year certificates).

#![forbid(unsafe_code)]

use serde::Deserialize;

const DAY: i64 = 86_400;
/// Parts per million: fractions are kept as integers so the arithmetic is exact.
const PPM: i128 = 1_000_000;

/// What the rules need to know about a certificate.
#[derive(Clone, Debug)]
pub(crate) struct Certificate {
    pub is_ca: bool,
    pub not_before: i64,
    pub not_after: i64,
    /// Lowercase hex of the serial number: the jitter seed.
    pub serial: String,
}

/// Why: the usual reasons as codes the host words from the request (rotor:policy 0.3), the
/// rest in the rule's own words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Text(String),
    CaCertificate,
    InvalidValidity,
    Expired,
    WithinWindow(u32),
    OutsideWindow(u32),
}

/// The decision, before it is turned into the WIT type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Keep {
        reason: Reason,
        renew_at: Option<i64>,
    },
    Renew {
        reason: Reason,
        lifetime_seconds: Option<u64>,
    },
}

/// Validated settings.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    mode: Mode,
    /// How far issuers set notBefore before the real issuance; the loop guard measures a
    /// certificate's age from notBefore plus this.
    backdate_seconds: i64,
    /// Lifetime requested for renewed certificates; `None` leaves it to the host (365 days).
    lifetime_seconds: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Mode {
    Window {
        renew_before_seconds: i64,
        days: u32,
    },
    Fraction(Fraction),
}

#[derive(Clone, Debug, PartialEq)]
struct Fraction {
    renew_at_ppm: i128,
    jitter_ppm: i128,
    renew_before_seconds: Option<i64>,
    renew_before_percentage: Option<i128>,
    min_renew_before_seconds: i64,
    min_age_seconds: i64,
    min_age_ppm: i128,
}

impl Default for Settings {
    /// The documents' rule: renew within 90 days of expiry.
    fn default() -> Self {
        Settings {
            mode: Mode::Window {
                renew_before_seconds: 90 * DAY,
                days: 90,
            },
            backdate_seconds: DEFAULT_BACKDATE_SECONDS,
            lifetime_seconds: None,
        }
    }
}

/// The JSON the operator writes in the bundle. Every field is optional; which fields are
/// allowed depends on `mode`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    mode: Option<String>,
    lifetime_days: Option<u32>,
    issuer_backdate_seconds: Option<u64>,
    // window mode
    renew_before_days: Option<u32>,
    // fraction mode
    renew_at_fraction: Option<f64>,
    jitter_fraction: Option<f64>,
    renew_before_seconds: Option<u64>,
    renew_before_percentage: Option<u32>,
    min_renew_before_seconds: Option<u64>,
    min_age_seconds: Option<u64>,
    min_age_fraction: Option<f64>,
}

/// Longest lifetime or window a setting may ask for: 100 years.
const MAX_DAYS: u32 = 36_500;
/// k3s, RKE2 (dynamiclistener) and Let's Encrypt set notBefore one hour before issuance; the
/// Kubernetes signer five minutes, kubeadm not at all. Assuming the longest only delays the
/// loop guard of certificates that were not backdated, and never past their minimum time
/// before notAfter.
const DEFAULT_BACKDATE_SECONDS: i64 = 3600;
/// Minimum age before a renewal, however short the certificate (cert-manager #1122).
const MIN_AGE_SECONDS: i64 = 300;
/// Window mode's minimum age, as a fraction of the time from issuance to notAfter (10%): a
/// window that opens earlier gives way to the 2/3 rule.
const WINDOW_MIN_AGE_PPM: i128 = 100_000;

impl Settings {
    /// Whether the rules read the certificate's serial (the jitter seed of fraction mode): only
    /// then is it asked for.
    pub(crate) fn needs_serial(&self) -> bool {
        matches!(self.mode, Mode::Fraction(_))
    }

    /// Parse and validate the operator's JSON settings. The error names the setting.
    pub(crate) fn from_json(json: &str) -> Result<Settings, String> {
        let raw: RawSettings = rotor_policy_sdk::settings::parse(json)?;
        let lifetime_seconds = match raw.lifetime_days {
            None => None,
            Some(d) if (1..=MAX_DAYS).contains(&d) => Some(u64::from(d) * DAY as u64),
            Some(d) => {
                return Err(format!(
                    "'lifetime_days' must be between 1 and {MAX_DAYS}, got {d}"
                ));
            }
        };
        let mode = match raw.mode.as_deref().unwrap_or("window") {
            "window" => {
                let fraction_only = [
                    ("renew_at_fraction", raw.renew_at_fraction.is_some()),
                    ("jitter_fraction", raw.jitter_fraction.is_some()),
                    ("renew_before_seconds", raw.renew_before_seconds.is_some()),
                    (
                        "renew_before_percentage",
                        raw.renew_before_percentage.is_some(),
                    ),
                    (
                        "min_renew_before_seconds",
                        raw.min_renew_before_seconds.is_some(),
                    ),
                    ("min_age_seconds", raw.min_age_seconds.is_some()),
                    ("min_age_fraction", raw.min_age_fraction.is_some()),
                ];
                if let Some((name, _)) = fraction_only.iter().find(|(_, set)| *set) {
                    return Err(format!("'{name}' only applies to mode 'fraction'"));
                }
                let days = raw.renew_before_days.unwrap_or(90);
                if days == 0 || days > MAX_DAYS {
                    return Err(format!(
                        "'renew_before_days' must be between 1 and {MAX_DAYS}, got {days}"
                    ));
                }
                Mode::Window {
                    renew_before_seconds: i64::from(days) * DAY,
                    days,
                }
            }
            "fraction" => {
                if raw.renew_before_days.is_some() {
                    return Err("'renew_before_days' only applies to mode 'window'".into());
                }
                Mode::Fraction(Fraction::from_raw(&raw)?)
            }
            other => {
                return Err(format!(
                    "'mode' must be 'window' or 'fraction', got '{other}'"
                ));
            }
        };
        let backdate_seconds = match raw.issuer_backdate_seconds {
            None => DEFAULT_BACKDATE_SECONDS,
            Some(s) if s <= DAY as u64 => s as i64,
            Some(s) => {
                return Err(format!(
                    "'issuer_backdate_seconds' must be at most {DAY} (one day), got {s}"
                ));
            }
        };
        Ok(Settings {
            mode,
            backdate_seconds,
            lifetime_seconds,
        })
    }
}

fn fraction_ppm(
    name: &str,
    value: f64,
    min_exclusive: f64,
    max_exclusive: f64,
) -> Result<i128, String> {
    if !value.is_finite() || value <= min_exclusive || value >= max_exclusive {
        return Err(format!(
            "'{name}' must be greater than {min_exclusive} and less than {max_exclusive}, got {value}"
        ));
    }
    // The range check above keeps this cast exact enough and in range.
    Ok((value * PPM as f64).round() as i128)
}

impl Fraction {
    fn from_raw(raw: &RawSettings) -> Result<Fraction, String> {
        let renew_at_ppm = fraction_ppm(
            "renew_at_fraction",
            raw.renew_at_fraction.unwrap_or(2.0 / 3.0),
            0.0,
            1.0,
        )?;
        let jitter_ppm = match raw.jitter_fraction {
            None => 100_000,
            Some(0.0) => 0,
            Some(j) => fraction_ppm("jitter_fraction", j, 0.0, 1.0)?,
        };
        if jitter_ppm >= renew_at_ppm {
            return Err("'jitter_fraction' must be smaller than 'renew_at_fraction'".into());
        }
        if raw.renew_before_seconds.is_some() && raw.renew_before_percentage.is_some() {
            return Err(
                "'renew_before_seconds' and 'renew_before_percentage' are mutually exclusive"
                    .into(),
            );
        }
        let renew_before_seconds = match raw.renew_before_seconds {
            None => None,
            Some(s) if s > 0 && s <= u64::from(MAX_DAYS) * DAY as u64 => Some(s as i64),
            Some(s) => {
                return Err(format!(
                    "'renew_before_seconds' must be between 1 and {}, got {s}",
                    u64::from(MAX_DAYS) * DAY as u64
                ));
            }
        };
        let renew_before_percentage = match raw.renew_before_percentage {
            None => None,
            Some(p) if (1..=99).contains(&p) => Some(i128::from(p)),
            Some(p) => {
                return Err(format!(
                    "'renew_before_percentage' must be between 1 and 99, got {p}"
                ));
            }
        };
        let bounded = |name: &str, v: Option<u64>, default: i64| -> Result<i64, String> {
            match v {
                None => Ok(default),
                Some(s) if s <= 365 * DAY as u64 => Ok(s as i64),
                Some(s) => Err(format!(
                    "'{name}' must be at most {} (one year), got {s}",
                    365 * DAY
                )),
            }
        };
        let min_renew_before_seconds = bounded(
            "min_renew_before_seconds",
            raw.min_renew_before_seconds,
            300,
        )?;
        let min_age_seconds = bounded("min_age_seconds", raw.min_age_seconds, 300)?;
        let min_age_ppm = match raw.min_age_fraction {
            None => 100_000,
            Some(0.0) => 0,
            Some(f) => fraction_ppm("min_age_fraction", f, 0.0, 1.0)?,
        };
        if min_age_ppm >= renew_at_ppm - jitter_ppm {
            return Err("'min_age_fraction' must be smaller than 'renew_at_fraction' minus 'jitter_fraction'".into());
        }
        Ok(Fraction {
            renew_at_ppm,
            jitter_ppm,
            renew_before_seconds,
            renew_before_percentage,
            min_renew_before_seconds,
            min_age_seconds,
            min_age_ppm,
        })
    }
}

/// Decide for one certificate at `now`. `issuer_not_after` is the CA's notAfter, when known.
pub(crate) fn decide(
    settings: &Settings,
    cert: &Certificate,
    issuer_not_after: Option<i64>,
    now: i64,
) -> Decision {
    if cert.is_ca {
        return Decision::Keep {
            reason: Reason::CaCertificate,
            renew_at: None,
        };
    }
    if cert.not_after <= cert.not_before {
        return renew(settings, Reason::InvalidValidity);
    }
    if now >= cert.not_after {
        return renew(settings, Reason::Expired);
    }
    match &settings.mode {
        Mode::Window {
            renew_before_seconds,
            days,
        } => {
            let na = i128::from(cert.not_after);
            let left = na - i128::from(now);
            // The built-in fallback rule of the host uses the same guard.
            let guard = loop_guard(
                settings,
                cert,
                WINDOW_MIN_AGE_PPM,
                i128::from(MIN_AGE_SECONDS),
            );
            if na - i128::from(*renew_before_seconds) < guard {
                // The window is as long as the certificate's life (a 30-day leaf, a 90-day
                // window): the window alone would renew it at once, and its replacement too.
                // cert-manager's answer: renew at 2/3 of the lifetime instead.
                let nb = i128::from(cert.not_before);
                let target = (nb + (na - nb) * 2 / 3).max(guard).min(na);
                let how = format!(
                    "the {days}-day renewal window is not shorter than the {} lifetime, so 2/3 of the lifetime",
                    span(na - nb)
                );
                return if i128::from(now) >= target {
                    renew(
                        settings,
                        Reason::Text(format!(
                            "renewal time {} reached ({how})",
                            date_i128(target)
                        )),
                    )
                } else {
                    Decision::Keep {
                        reason: Reason::Text(format!(
                            "expires on {} (in {}); renewal due on {} ({how})",
                            date(cert.not_after),
                            span(left),
                            date_i128(target)
                        )),
                        // target lies between notBefore and notAfter, both i64.
                        renew_at: Some(target as i64),
                    }
                };
            }
            if left <= i128::from(*renew_before_seconds) {
                renew(settings, Reason::WithinWindow(*days))
            } else {
                Decision::Keep {
                    reason: Reason::OutsideWindow(*days),
                    renew_at: Some(cert.not_after - renew_before_seconds),
                }
            }
        }
        Mode::Fraction(f) => {
            let (target, how) = fraction_target(settings, f, cert, issuer_not_after);
            if i128::from(now) >= target {
                renew(
                    settings,
                    Reason::Text(format!(
                        "renewal time {} reached ({how})",
                        date_i128(target)
                    )),
                )
            } else {
                Decision::Keep {
                    reason: Reason::Text(format!("renewal due on {} ({how})", date_i128(target))),
                    // target lies between notBefore and notAfter, both i64.
                    renew_at: Some(target as i64),
                }
            }
        }
    }
}

fn renew(settings: &Settings, reason: Reason) -> Decision {
    Decision::Renew {
        reason,
        lifetime_seconds: settings.lifetime_seconds,
    }
}

/// The renewal instant for fraction mode, with a description of how it was chosen.
/// Follows the algorithm of the reference study (policy-rules §4.3).
fn fraction_target(
    settings: &Settings,
    f: &Fraction,
    cert: &Certificate,
    issuer_not_after: Option<i64>,
) -> (i128, String) {
    let nb = i128::from(cert.not_before);
    let na = i128::from(cert.not_after);
    let lifetime = na - nb;
    let loop_guard = loop_guard(settings, cert, f.min_age_ppm, i128::from(f.min_age_seconds));
    let min_renew_before = i128::from(f.min_renew_before_seconds);

    let fraction_rule = || {
        // h in [0, 1) as a 64-bit fixed-point number, derived from the serial.
        // jitter = lifetime * jitter_fraction * h: the first factor is below 2^64 (a difference
        // of two i64) and so is h, so the product fits in u128.
        let max_jitter = (lifetime * f.jitter_ppm / PPM) as u128;
        let jitter = ((max_jitter * u128::from(jitter_seed(&cert.serial))) >> 64) as i128;
        let target = nb + lifetime * f.renew_at_ppm / PPM - jitter;
        let how = format!(
            "{} of the {} lifetime, {} earlier by jitter",
            ppm_text(f.renew_at_ppm),
            span(lifetime),
            span(jitter)
        );
        (target, how)
    };

    let (mut target, mut how) = if let Some(rb) = f.renew_before_seconds {
        let rb = i128::from(rb);
        if min_renew_before <= rb && rb < lifetime && na - rb >= loop_guard {
            (na - rb, format!("{} before notAfter", span(rb)))
        } else {
            let (t, h) = fraction_rule();
            (
                t,
                format!(
                    "{h}; RenewBeforeIgnored: 'renew_before_seconds' does not fit the {} lifetime",
                    span(lifetime)
                ),
            )
        }
    } else if let Some(pct) = f.renew_before_percentage {
        // pct% of the lifetime remaining at renewal, computed without overflow or rounding up.
        let before = (lifetime / 100) * pct + ((lifetime % 100) * pct) / 100;
        if na - before >= loop_guard && before >= min_renew_before {
            (
                na - before,
                format!("{pct}% of the {} lifetime remaining", span(lifetime)),
            )
        } else {
            let (t, h) = fraction_rule();
            (
                t,
                format!(
                    "{h}; RenewBeforeIgnored: 'renew_before_percentage' would renew too early or too late"
                ),
            )
        }
    } else {
        fraction_rule()
    };

    if target < loop_guard {
        target = loop_guard;
        how.push_str("; raised to the minimum age (loop guard)");
    }
    if target > na - min_renew_before {
        target = na - min_renew_before;
        how.push_str("; lowered to the minimum time before notAfter");
    }
    if let Some(ca) = issuer_not_after {
        let ca_limit = i128::from(ca) - min_renew_before;
        if target > ca_limit {
            target = ca_limit.max(nb);
            how.push_str("; lowered because the issuing CA expires first");
        }
    }
    // Truncate to whole seconds is implicit (we work in seconds); keep it within the validity.
    (target.clamp(nb, na), how)
}

/// The earliest instant a renewal may be due: the certificate's real issuance (notBefore plus
/// the issuer's backdating, never past notAfter) plus a minimum age, the larger of
/// `min_age_ppm` of the time from issuance to notAfter and `min_age_seconds`. Measuring from
/// notBefore instead renews a backdated short-lived certificate a minute after it was issued.
fn loop_guard(settings: &Settings, cert: &Certificate, min_age_ppm: i128, min_age: i128) -> i128 {
    let nb = i128::from(cert.not_before);
    let na = i128::from(cert.not_after);
    let issued = (nb + i128::from(settings.backdate_seconds)).min(na);
    issued + ((na - issued) * min_age_ppm / PPM).max(min_age)
}

/// Deterministic 64-bit seed from the serial (FNV-1a, then the SplitMix64 finalizer), so a
/// certificate always renews at the same instant across restarts (cert-manager #4399 lesson).
fn jitter_seed(serial: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in serial.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn ppm_text(ppm: i128) -> String {
    if ppm == 666_667 {
        "2/3".into()
    } else {
        format!("{:.2}%", ppm as f64 / 10_000.0)
    }
}

/// A span of seconds in the largest sensible unit.
fn span(secs: i128) -> String {
    let secs = secs.max(0);
    if secs >= 2 * i128::from(DAY) {
        format!("{} days", secs / i128::from(DAY))
    } else if secs >= 7200 {
        format!("{} hours", secs / 3600)
    } else if secs >= 120 {
        format!("{} minutes", secs / 60)
    } else {
        format!("{secs} seconds")
    }
}

fn date(ts: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ts) {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| format!("@{ts}")),
        Err(_) => format!("@{ts}"),
    }
}

fn date_i128(ts: i128) -> String {
    match i64::try_from(ts) {
        Ok(t) => date(t),
        Err(_) => format!("@{ts}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

    fn leaf(days: i64) -> Certificate {
        Certificate {
            is_ca: false,
            not_before: T0,
            not_after: T0 + days * DAY,
            serial: "1f2e3d".into(),
        }
    }

    fn is_renew(d: &Decision) -> bool {
        matches!(d, Decision::Renew { .. })
    }

    #[test]
    fn window_rule_renews_inside_the_window_and_keeps_outside() {
        let s = Settings::default();
        let c = leaf(365);
        // 300 days left: keep, renew_at = notAfter - 90 days.
        let d = decide(&s, &c, None, T0 + 65 * DAY);
        assert_eq!(
            d,
            Decision::Keep {
                reason: Reason::OutsideWindow(90),
                renew_at: Some(c.not_after - 90 * DAY),
            }
        );
        // 30 days left: renew.
        let d = decide(&s, &c, None, T0 + 335 * DAY);
        assert!(is_renew(&d), "{d:?}");
        // Exactly on the window edge renews (k3s: days left <= window).
        assert!(is_renew(&decide(&s, &c, None, c.not_after - 90 * DAY)));
        assert!(!is_renew(&decide(&s, &c, None, c.not_after - 90 * DAY - 1)));
        // Expired.
        let d = decide(&s, &c, None, c.not_after + 3 * DAY);
        match d {
            Decision::Renew {
                reason,
                lifetime_seconds,
            } => {
                assert_eq!(reason, Reason::Expired);
                assert_eq!(lifetime_seconds, None);
            }
            other => panic!("expected renew, got {other:?}"),
        }
    }

    #[test]
    fn ca_certificates_are_never_renewed() {
        let s = Settings::default();
        let mut c = leaf(3650);
        c.is_ca = true;
        assert!(!is_renew(&decide(&s, &c, None, c.not_after + DAY)));
    }

    #[test]
    fn settings_are_validated_with_the_setting_named() {
        let err = |j: &str| Settings::from_json(j).unwrap_err();
        assert!(err(r#"{"mode":"sometimes"}"#).contains("'mode'"));
        assert!(err(r#"{"renew_before_days":0}"#).contains("'renew_before_days'"));
        assert!(err(r#"{"jitter_fraction":0.1}"#).contains("only applies to mode 'fraction'"));
        assert!(
            err(r#"{"mode":"fraction","renew_at_fraction":1.5}"#).contains("'renew_at_fraction'")
        );
        assert!(err(r#"{"mode":"fraction","jitter_fraction":0.7}"#).contains("'jitter_fraction'"));
        assert!(err(r#"{"renew_befor_days":3}"#).contains("unknown field"));
        assert!(
            err(r#"{"mode":"fraction","renew_before_seconds":10,"renew_before_percentage":5}"#)
                .contains("mutually exclusive")
        );
        assert!(err("[1,2]").starts_with("settings"));
        assert_eq!(Settings::from_json("").unwrap(), Settings::default());
        assert_eq!(Settings::from_json("{}").unwrap(), Settings::default());
        let s = Settings::from_json(r#"{"renew_before_days":120,"lifetime_days":30}"#).unwrap();
        assert_eq!(s.lifetime_seconds, Some(30 * 86_400));
    }

    fn fraction(json: &str) -> Settings {
        Settings::from_json(json).unwrap()
    }

    fn renew_at(s: &Settings, c: &Certificate, ca: Option<i64>) -> i64 {
        match decide(s, c, ca, c.not_before) {
            Decision::Keep {
                renew_at: Some(t), ..
            } => t,
            other => panic!("expected keep with renew_at, got {other:?}"),
        }
    }

    #[test]
    fn fraction_rule_is_two_thirds_minus_a_deterministic_jitter() {
        let s = fraction(r#"{"mode":"fraction"}"#);
        let c = leaf(365);
        let lifetime = 365 * DAY;
        let t = renew_at(&s, &c, None);
        let two_thirds = T0 + lifetime * 2 / 3;
        assert!(
            t <= two_thirds + 1 && t >= two_thirds - lifetime / 10 - 1,
            "{t}"
        );
        // Deterministic: same serial, same instant.
        assert_eq!(t, renew_at(&s, &c, None));
        // Another serial moves it (with overwhelming probability for these two seeds).
        let mut c2 = c.clone();
        c2.serial = "abcdef0123".into();
        assert_ne!(t, renew_at(&s, &c2, None));
        // Renews at the target, keeps one second before it.
        assert!(is_renew(&decide(&s, &c, None, t)));
        assert!(!is_renew(&decide(&s, &c, None, t - 1)));
    }

    #[test]
    fn fraction_rule_without_jitter_is_exact() {
        let s = fraction(r#"{"mode":"fraction","renew_at_fraction":0.5,"jitter_fraction":0}"#);
        let c = leaf(100);
        assert_eq!(renew_at(&s, &c, None), T0 + 50 * DAY);
    }

    #[test]
    fn ca_expiry_pulls_the_renewal_earlier() {
        let s = fraction(r#"{"mode":"fraction","jitter_fraction":0}"#);
        let c = leaf(365);
        let ca_not_after = T0 + 100 * DAY;
        assert_eq!(renew_at(&s, &c, Some(ca_not_after)), ca_not_after - 300);
    }

    #[test]
    fn loop_guard_keeps_renewal_after_the_minimum_age() {
        // cert-manager #4423: issuer clamps the lifetime to 1 hour; renew_before of 59 minutes
        // would renew 1 minute after issuance, forever. The loop guard ignores it.
        let s = fraction(r#"{"mode":"fraction","jitter_fraction":0,"renew_before_seconds":3540}"#);
        let c = Certificate {
            is_ca: false,
            not_before: T0,
            not_after: T0 + 3600,
            serial: "01".into(),
        };
        let t = renew_at(&s, &c, None);
        assert!(t >= T0 + 360, "renews too soon after issuance: {}", t - T0);
        match decide(&s, &c, None, T0) {
            Decision::Keep {
                reason: Reason::Text(reason),
                ..
            } => {
                assert!(reason.contains("RenewBeforeIgnored"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn percentage_means_lifetime_remaining() {
        // cert-manager #7420 shipped this inverted: 25% means renew when 25% remains.
        let s = fraction(r#"{"mode":"fraction","jitter_fraction":0,"renew_before_percentage":25}"#);
        let c = leaf(100);
        assert_eq!(renew_at(&s, &c, None), T0 + 75 * DAY);
    }

    #[test]
    fn multi_year_lifetimes_do_not_overflow() {
        // cert-manager #8937: int64 nanoseconds overflow at ~292 years; we use i128 seconds.
        let s = fraction(r#"{"mode":"fraction"}"#);
        let c = Certificate {
            is_ca: false,
            not_before: i64::MIN / 2,
            not_after: i64::MAX / 2,
            serial: "ff".into(),
        };
        let t = renew_at(&s, &c, None);
        assert!(t > c.not_before && t < c.not_after);
        let s = Settings::default();
        assert!(!is_renew(&decide(&s, &c, None, 0)));
        assert!(is_renew(&decide(&s, &c, None, i64::MAX)));
    }

    fn backdated(lifetime: i64, backdate: i64, serial: &str) -> (Certificate, i64) {
        let issued = T0;
        (
            Certificate {
                is_ca: false,
                not_before: issued - backdate,
                not_after: issued - backdate + lifetime,
                serial: serial.into(),
            },
            issued,
        )
    }

    #[test]
    fn window_rule_never_renews_a_fresh_certificate_shorter_than_the_window() {
        // Acceptance 1(a): a 30-day leaf evaluated a minute after issuance, 90-day window.
        let s = Settings::default();
        for backdate in [0, 300, 3600] {
            let (c, issued) = backdated(30 * DAY, backdate, "0a");
            let d = decide(&s, &c, None, issued + 60);
            assert!(!is_renew(&d), "backdate {backdate}: {d:?}");
            // It renews at 2/3 of its lifetime instead, and then does renew.
            let target = c.not_before + (c.not_after - c.not_before) * 2 / 3;
            assert_eq!(
                d,
                match decide(&s, &c, None, issued + 60) {
                    Decision::Keep { reason, .. } => Decision::Keep {
                        reason,
                        renew_at: Some(target)
                    },
                    other => other,
                }
            );
            assert!(is_renew(&decide(&s, &c, None, target)));
            assert!(!is_renew(&decide(&s, &c, None, target - 1)));
        }
        // A 90-day certificate backdated one hour (k3s) with a 90-day window: the window would
        // open at the issuance itself; it is not renewed a minute later either.
        let (c, issued) = backdated(90 * DAY + 3600, 3600, "0b");
        assert!(!is_renew(&decide(&s, &c, None, issued + 60)));
        // Lifetimes just above the window (the churn edge): never renewed within a tenth of
        // their life, the fallback rule's guard too.
        for extra_hours in [1, 2, 3, 24, 24 * 9] {
            let (c, issued) = backdated(90 * DAY + extra_hours * 3600, 3600, "0d");
            let tenth = (c.not_after - issued) / 10;
            assert!(
                !is_renew(&decide(&s, &c, None, issued + tenth - 60)),
                "{extra_hours} h over the window"
            );
        }
        // A year-long certificate keeps the plain window rule.
        let (c, _) = backdated(365 * DAY + 3600, 3600, "0c");
        assert!(is_renew(&decide(&s, &c, None, c.not_after - 90 * DAY)));
        assert!(!is_renew(&decide(&s, &c, None, c.not_after - 90 * DAY - 1)));
    }

    #[test]
    fn loop_guard_counts_from_the_real_issuance_of_a_backdated_certificate() {
        // Acceptance 1(c): fraction rule, renew_before = lifetime - 10 min, notBefore backdated
        // one hour (Let's Encrypt, k3s). Every lifetime from 70 minutes to a day, any serial:
        // never renewed within a minute of issuance, never later than notAfter.
        for minutes in (70..=180).chain([600, 1440]) {
            let l = minutes * 60;
            let s = fraction(&format!(
                r#"{{"mode":"fraction","renew_before_seconds":{}}}"#,
                l - 600
            ));
            for serial in ["01", "7f3a", "deadbeef"] {
                let (c, issued) = backdated(l, 3600, serial);
                let d = decide(&s, &c, None, issued + 60);
                assert!(!is_renew(&d), "{minutes} min, serial {serial}: {d:?}");
                assert!(is_renew(&decide(&s, &c, None, c.not_after)));
            }
        }
        // With the issuer's backdating configured to zero, the guard counts from notBefore again.
        let s = fraction(
            r#"{"mode":"fraction","renew_before_seconds":3600,"issuer_backdate_seconds":0}"#,
        );
        let (c, issued) = backdated(5400, 3600, "01");
        assert!(is_renew(&decide(&s, &c, None, issued + 60)));
        assert!(
            Settings::from_json(r#"{"issuer_backdate_seconds":90000}"#)
                .unwrap_err()
                .contains("'issuer_backdate_seconds'")
        );
    }

    #[test]
    fn inverted_validity_is_renewed() {
        let c = Certificate {
            is_ca: false,
            not_before: T0,
            not_after: T0 - 1,
            serial: "01".into(),
        };
        assert!(is_renew(&decide(&Settings::default(), &c, None, T0)));
    }
}
