//! Error rates as proportions: for each (tenant, agent) and (tenant, tool),
//! the share of calls that fail (error, denied, timeout), learned per call,
//! and a Bernoulli CUSUM that alerts when failures become far more likely.
//!
//! Counting errors per bucket misses a low-volume agent: at a few calls a
//! minute no bucket holds enough errors to be improbable, though most of
//! its calls fail. Testing each call as a Bernoulli trial against the key's
//! own rate catches it within a handful of calls, whatever the volume.

use super::HashedKeys;

/// Tuning; see `DetectConfig` for the defaults.
#[derive(Debug, Clone, Copy)]
pub struct ErrorRateConfig {
    /// Calls a key needs before it may alert.
    pub min_calls: u32,
    /// EWMA weight of one call in the learned failure rate.
    pub alpha: f64,
    /// CUSUM threshold, nats.
    pub threshold: f64,
    /// Learning weight of a call while the CUSUM is past half its threshold.
    pub alerting_weight: f64,
    pub max_keys: usize,
}

impl Default for ErrorRateConfig {
    fn default() -> Self {
        ErrorRateConfig {
            min_calls: 30,
            alpha: 1.0 / 200.0,
            threshold: 20.0,
            alerting_weight: 0.1,
            max_keys: 1_000_000,
        }
    }
}

/// The failure rate a key is never assumed to be below: one in a hundred
/// calls failing is ordinary, and a rate learned as 0 would make the first
/// failure infinitely surprising.
const MIN_RATE: f64 = 0.01;
const MAX_RATE: f64 = 0.9;

#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Learned failure rate.
    p: f32,
    cusum: f32,
    calls: u32,
}

/// A key whose failures rose: its learned rate and what it saw lately.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorShift {
    pub baseline_rate: f64,
    pub score: f64,
}

pub struct ErrorRates {
    cfg: ErrorRateConfig,
    keys: HashedKeys<Rate>,
    pub evictions: u64,
}

impl ErrorRates {
    pub fn new(cfg: ErrorRateConfig) -> ErrorRates {
        ErrorRates {
            cfg,
            keys: HashedKeys::default(),
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key's state, made room for and created if new.
    fn rate(&mut self, key: u64) -> &mut Rate {
        self.evictions += super::make_room(&mut self.keys, key, self.cfg.max_keys);
        self.keys.entry(key).or_insert(Rate {
            p: 0.02,
            cusum: 0.0,
            calls: 0,
        })
    }

    /// The alternative a key is tested against: at least four times its
    /// rate, and at least 30 points above it.
    fn alternative(p0: f64) -> f64 {
        (p0 * 4.0).max(p0 + 0.3).min(0.95)
    }

    /// Counts one call; returns the shift when the CUSUM crosses (and on
    /// every call while it stays above, so the alert stays active).
    pub fn observe(&mut self, key: u64, failed: bool) -> Option<ErrorShift> {
        let cfg = self.cfg;
        let r = self.rate(key);
        let p0 = f64::from(r.p).clamp(MIN_RATE, MAX_RATE);
        let p1 = Self::alternative(p0);
        let llr = if failed {
            (p1 / p0).ln()
        } else {
            ((1.0 - p1) / (1.0 - p0)).ln()
        };
        let cap = 2.0 * cfg.threshold;
        let cusum = (f64::from(r.cusum) + llr).clamp(0.0, cap);
        let warm = r.calls >= cfg.min_calls;
        r.cusum = if warm { cusum as f32 } else { 0.0 };
        let m = if cusum > cfg.threshold / 2.0 {
            cfg.alerting_weight
        } else {
            1.0
        };
        let y = if failed { 1.0 } else { 0.0 };
        r.p = (f64::from(r.p) + cfg.alpha * m * (y - f64::from(r.p))) as f32;
        r.calls = r.calls.saturating_add(1);
        (warm && cusum >= cfg.threshold).then_some(ErrorShift {
            baseline_rate: p0,
            score: cusum,
        })
    }

    /// Teaches `calls` calls of which `failed` failed, without alerting:
    /// warming from stored history.
    pub fn warm(&mut self, key: u64, calls: u32, failed: u32) {
        let alpha = self.cfg.alpha;
        let r = self.rate(key);
        if calls == 0 {
            return;
        }
        let share = f64::from(failed.min(calls)) / f64::from(calls);
        let w = 1.0 - (1.0 - alpha).powf(f64::from(calls.min(100_000)));
        r.p = (f64::from(r.p) + w * (share - f64::from(r.p))) as f32;
        r.calls = r.calls.saturating_add(calls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut ErrorRates, calls: usize, every: usize) -> Option<usize> {
        let mut first = None;
        for i in 0..calls {
            if r.observe(7, i % every == 0).is_some() && first.is_none() {
                first = Some(i);
            }
        }
        first
    }

    #[test]
    fn an_ordinary_failure_rate_never_alerts() {
        let mut r = ErrorRates::new(ErrorRateConfig::default());
        // One in fifty calls fails, for a hundred thousand calls.
        assert_eq!(feed(&mut r, 100_000, 50), None);
        // A noisy agent whose every fourth call fails is its own normal.
        let mut r = ErrorRates::new(ErrorRateConfig::default());
        assert_eq!(feed(&mut r, 100_000, 4), None);
    }

    #[test]
    fn most_calls_failing_alerts_within_a_few_calls() {
        let mut r = ErrorRates::new(ErrorRateConfig::default());
        feed(&mut r, 300, 100);
        // Now three in five calls fail.
        let mut first = None;
        for i in 0..60 {
            if r.observe(7, i % 5 < 3).is_some() {
                first = Some(i);
                break;
            }
        }
        let n = first.expect("60 % failures must alert");
        assert!(n < 20, "alerted only after {n} calls");
    }

    #[test]
    fn a_cold_key_does_not_alert() {
        let mut r = ErrorRates::new(ErrorRateConfig::default());
        assert_eq!(feed(&mut r, 29, 1), None, "every call failed, but 29 calls");
    }
}
