//! The clock `rotor serve` decides and sleeps by: the system clock, or a test clock that a
//! test advances, so a year of renewals takes seconds.
//!
//! # The test clock (`ROTOR_TEST_CLOCK=FILE`)
//!
//! Like the failpoints (see [`crate::fs::failpoints`]), it is read from the environment in
//! every build, so the tests run the binary that ships; nothing else reads that variable.
//! `FILE` holds an RFC 3339 time: the *limit*. The server's time starts there and only moves
//! when it sleeps: a sleep until a deadline at or before the limit returns at once with the
//! time set to the deadline (the server wakes exactly when it asked to); a sleep past the limit
//! moves the time to the limit, writes it to `FILE.now` (the acknowledgement a test waits for:
//! the server has done everything due up to then) and waits, in real time, until the test
//! writes a later limit or an event arrives.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use time::OffsetDateTime;

use crate::fs::{PUBLIC_FILE, Root};

/// How often the test clock looks at its file while it waits.
const TEST_POLL: Duration = Duration::from_millis(10);

/// Where the time comes from.
#[derive(Debug)]
pub enum Clock {
    /// The system clock; sleeps are real.
    System,
    /// A test's clock (`ROTOR_TEST_CLOCK`).
    Test(TestClock),
}

/// The test clock: see the module documentation.
#[derive(Debug)]
pub struct TestClock {
    dir: Root,
    file: PathBuf,
    ack: PathBuf,
    now: Mutex<OffsetDateTime>,
    acked: Mutex<Option<OffsetDateTime>>,
}

/// What ended a sleep early.
pub(crate) enum Woken<E> {
    /// The deadline passed.
    Deadline,
    /// An event arrived.
    Event(E),
    /// Every sender is gone.
    Closed,
}

impl Clock {
    /// The test clock when `ROTOR_TEST_CLOCK` names a file, else the system clock.
    ///
    /// # Errors
    /// The file cannot be read or does not hold an RFC 3339 time.
    pub fn from_env() -> Result<Clock, String> {
        match std::env::var_os("ROTOR_TEST_CLOCK") {
            Some(path) if !path.is_empty() => TestClock::open(Path::new(&path)).map(Clock::Test),
            _ => Ok(Clock::System),
        }
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        match self {
            Clock::System => crate::clock::system_now(),
            Clock::Test(t) => *t.now.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Sleep until `deadline` or until an event arrives on `events`, whichever comes first.
    pub(crate) fn sleep_until<E>(
        &self,
        deadline: OffsetDateTime,
        events: &Receiver<E>,
    ) -> Woken<E> {
        loop {
            let step = match self {
                Clock::System => {
                    let left = deadline - crate::clock::system_now();
                    if left <= time::Duration::ZERO {
                        return Woken::Deadline;
                    }
                    // Wake at least every minute: a suspended machine's clock jumps.
                    Duration::try_from(left)
                        .unwrap_or(Duration::ZERO)
                        .min(Duration::from_secs(60))
                }
                Clock::Test(t) => {
                    if t.reach(deadline) {
                        return Woken::Deadline;
                    }
                    // An event already queued (a swapped bundle) is work due now: the
                    // acknowledgement waits for it.
                    match events.try_recv() {
                        Ok(e) => return Woken::Event(e),
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return Woken::Closed,
                        Err(std::sync::mpsc::TryRecvError::Empty) => {}
                    }
                    t.acknowledge();
                    TEST_POLL
                }
            };
            match events.recv_timeout(step) {
                Ok(e) => return Woken::Event(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Woken::Closed,
            }
        }
    }
}

impl TestClock {
    fn open(path: &Path) -> Result<TestClock, String> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| format!("ROTOR_TEST_CLOCK: {} names no file", path.display()))?;
        let dir = Root::open_ambient(parent).map_err(|e| format!("ROTOR_TEST_CLOCK: {e}"))?;
        let file = PathBuf::from(name);
        let mut ack = name.to_os_string();
        ack.push(".now");
        let clock = TestClock {
            dir,
            file,
            ack: PathBuf::from(ack),
            now: Mutex::new(OffsetDateTime::UNIX_EPOCH),
            acked: Mutex::new(None),
        };
        let limit = clock.limit()?;
        *clock.now.lock().unwrap_or_else(|e| e.into_inner()) = limit;
        Ok(clock)
    }

    fn limit(&self) -> Result<OffsetDateTime, String> {
        let bytes = self
            .dir
            .read(&self.file)
            .map_err(|e| format!("ROTOR_TEST_CLOCK: {e}"))?;
        let text = String::from_utf8_lossy(&bytes);
        crate::clock::parse_rfc3339(text.trim()).map_err(|e| {
            format!(
                "ROTOR_TEST_CLOCK {}: {e}",
                self.dir.display(&self.file).display()
            )
        })
    }

    /// Move the time towards `deadline`, as far as the limit allows; `true` when it got there.
    fn reach(&self, deadline: OffsetDateTime) -> bool {
        // A file being rewritten may read empty for a moment: keep the last limit.
        let limit = self.limit().ok();
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        match limit {
            Some(limit) if limit >= deadline => {
                *now = (*now).max(deadline);
                true
            }
            Some(limit) => {
                *now = (*now).max(limit);
                false
            }
            None => false,
        }
    }

    /// Say (in `FILE.now`) that everything due up to the current time is done.
    fn acknowledge(&self) {
        let at = *self.now.lock().unwrap_or_else(|e| e.into_inner());
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        if *acked != Some(at) {
            let text = format!("{}\n", crate::clock::rfc3339(at));
            if self
                .dir
                .write_atomic(&self.ack, text.as_bytes(), PUBLIC_FILE)
                .is_ok()
            {
                *acked = Some(at);
            }
        }
    }
}
