//! The agent's loop: a pass, then sleep until the next check (jittered, so a fleet started
//! together does not ask at once) or, after a failure, a backoff that doubles up to a limit;
//! SIGTERM or SIGINT stop it between passes.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use time::OffsetDateTime;

use super::pass::{Agent, AgentError, PassReport};
use crate::serve::clock::{Clock, Woken};

/// When the loop wakes.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// The longest time between two passes.
    pub check_interval: Duration,
    /// Each wait is shortened by up to this fraction of it, at random (0 to 1).
    pub jitter: f64,
    /// The first wait after a failure (doubled at each failure in a row).
    pub min_backoff: Duration,
    /// The longest wait after failures.
    pub max_backoff: Duration,
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule {
            check_interval: Duration::from_secs(3600),
            jitter: 0.2,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT.
    Signal,
    /// `--once`: one pass, every certificate in place.
    Done,
    /// `--once`: one pass, and some certificate is not in place.
    Incomplete,
}

/// A uniform random fraction in [0, 1).
fn random_fraction() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    // 53 random bits, the precision of an f64.
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// `wait` shortened by up to `jitter` of it, at random.
pub fn jittered(wait: Duration, jitter: f64) -> Duration {
    wait.mul_f64(1.0 - jitter.clamp(0.0, 1.0) * random_fraction())
}

/// What the loop says after each pass: its result, and when the next one is (none with
/// `--once`).
pub type Said<'a> = dyn FnMut(&Result<PassReport, AgentError>, Option<OffsetDateTime>) + 'a;

/// Run passes until stopped (or one pass with `once`), handing each report or error to
/// `said` as it happens.
///
/// # Errors
/// With `once`, the pass's error.
pub fn run(
    agent: &mut Agent,
    clock: &Clock,
    schedule: Schedule,
    once: bool,
    said: &mut Said<'_>,
) -> Result<Stopped, AgentError> {
    let stop = signals()?;
    let mut backoff = schedule.min_backoff;
    loop {
        let now = clock.now();
        let result = agent.pass(now);
        let failure = match &result {
            Ok(r) if r.ok() => None,
            Ok(r) => Some(
                r.certificates
                    .iter()
                    .filter(|c| c.action == super::pass::CertAction::Failed)
                    .map(|c| format!("{}: {}", c.name, c.why))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Err(e) => Some(e.to_string()),
        };
        agent.status().pass(failure.clone(), now);
        if once {
            said(&result, None);
            return match result {
                Ok(r) if r.ok() => Ok(Stopped::Done),
                Ok(_) => Ok(Stopped::Incomplete),
                Err(e) => Err(e),
            };
        }
        let wait = match (&result, failure) {
            (Ok(report), None) => {
                backoff = schedule.min_backoff;
                let mut wait = jittered(schedule.check_interval, schedule.jitter);
                if let Some(at) = report.renew_at {
                    let until = Duration::try_from(at - now).unwrap_or(Duration::ZERO);
                    wait = wait.min(until.max(Duration::from_secs(1)));
                }
                wait
            }
            _ => {
                // Full jitter on the backoff: agents that failed together retry apart.
                let wait = jittered(backoff, 1.0).max(schedule.min_backoff / 2);
                backoff = (backoff * 2).min(schedule.max_backoff);
                wait
            }
        };
        let next = now + wait;
        said(&result, Some(next));
        match clock.sleep_until(next, &stop) {
            Woken::Deadline => {}
            Woken::Event(()) | Woken::Closed => return Ok(Stopped::Signal),
        }
    }
}

/// SIGTERM and SIGINT, as events on a channel.
fn signals() -> Result<Receiver<()>, AgentError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| AgentError::Config(format!("signal handlers: {e}")))?;
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("rotor-agent-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| AgentError::Config(format!("signal thread: {e}")))?;
    Ok(rx)
}

/// Serve `/metrics`, `/healthz` and `/readyz` for `agent` on `listener`.
///
/// # Errors
/// The listener cannot be served.
pub fn serve_status(
    listener: std::net::TcpListener,
    agent: &Agent,
) -> std::io::Result<std::net::SocketAddr> {
    crate::serve::spawn_http(listener, None, Arc::clone(agent.status()) as Arc<_>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_only_shortens_and_spreads() {
        let base = Duration::from_secs(100);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(base, 0.2)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w <= base && *w >= Duration::from_secs(80))
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 150, "spread: {}", distinct.len());
        assert_eq!(jittered(base, 0.0), base);
    }
}
