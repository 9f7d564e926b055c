//! Bounded retry with backoff for the sink's idempotent steps, and the stall
//! signal (`agentaudit_sink_stalled`, `/readyz` 503) while it waits.
//!
//! Only steps that can run twice with one effect are retried: creating a
//! directory, renaming a committed file, replacing the journal, fsyncing a
//! directory. A failed write or fsync of a data file is not retried, since
//! after a failed fsync the kernel may have dropped the dirty pages and a
//! second fsync would report success for data that is gone. Such a failure
//! ends the sink; the process exits non-zero and a restart consumes again
//! from the last durable offsets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::SinkError;
use crate::metrics::Metrics;

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

pub struct Retry {
    /// How long a step may keep failing before the sink gives up.
    budget: Duration,
    metrics: Arc<Metrics>,
}

impl Retry {
    pub fn new(budget: Duration, metrics: Arc<Metrics>) -> Retry {
        Retry { budget, metrics }
    }

    /// Runs `op` until it succeeds or the budget is spent; I/O and object
    /// store errors only are retried, since the others (encoding, a corrupt journal) would fail
    /// the same way again.
    pub fn run<T>(
        &self,
        step: &'static str,
        mut op: impl FnMut() -> Result<T, SinkError>,
    ) -> Result<T, SinkError> {
        let started = Instant::now();
        let mut delay = FIRST_DELAY;
        let mut stalled = false;
        loop {
            match op() {
                Ok(v) => {
                    if stalled {
                        self.metrics.sink_stalled.set(0);
                        tracing::info!(step, "the sink step succeeded after retrying");
                    }
                    return Ok(v);
                }
                Err(e @ (SinkError::Io { .. } | SinkError::Store(_)))
                    if started.elapsed() + delay <= self.budget =>
                {
                    stalled = true;
                    self.metrics.sink_stalled.set(1);
                    self.metrics.sink_retries.inc();
                    tracing::warn!(
                        step,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "a sink step failed; retrying"
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_DELAY);
                }
                Err(e) => {
                    self.metrics.sink_stalled.set(1);
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> SinkError {
        SinkError::io("/x")(std::io::Error::other("disk full"))
    }

    #[test]
    fn a_step_that_recovers_within_the_budget_succeeds_and_clears_the_stall() {
        let metrics = Arc::new(Metrics::new());
        let retry = Retry::new(Duration::from_secs(5), metrics.clone());
        let mut failures = 2;
        let result = retry.run("test", || {
            if failures > 0 {
                failures -= 1;
                Err(io_error())
            } else {
                Ok(7)
            }
        });
        assert_eq!(result.ok(), Some(7));
        assert_eq!(metrics.sink_retries.get(), 2);
        assert_eq!(metrics.sink_stalled.get(), 0);
    }

    #[test]
    fn a_step_that_keeps_failing_gives_up_after_the_budget_and_stays_stalled() {
        let metrics = Arc::new(Metrics::new());
        let retry = Retry::new(Duration::from_millis(350), metrics.clone());
        let started = Instant::now();
        let result: Result<(), _> = retry.run("test", || Err(io_error()));
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        // 100 + 200 ms fit in 350 ms; the next 400 ms would not.
        assert_eq!(metrics.sink_retries.get(), 2);
        assert_eq!(metrics.sink_stalled.get(), 1);
    }

    #[test]
    fn errors_that_would_repeat_are_not_retried() {
        let metrics = Arc::new(Metrics::new());
        let retry = Retry::new(Duration::from_secs(5), metrics.clone());
        let result: Result<(), _> = retry.run("test", || {
            Err(SinkError::Journal {
                path: "/j".into(),
                why: "bad".into(),
            })
        });
        assert!(result.is_err());
        assert_eq!(metrics.sink_retries.get(), 0);
    }
}
