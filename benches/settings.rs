//! The suite's criterion settings, shared by every bench.

use std::time::Duration;

use criterion::Criterion;

/// 1 s of warm-up and 3 s of measurement per function keep the whole suite near 10 minutes on
/// 2 cores (docs/performance.md was measured with these settings).
pub(crate) fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}
