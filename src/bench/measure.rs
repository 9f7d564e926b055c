//! Measure owns the benchmark's instruments and its component figures:
//! process CPU time and peak RSS from /proc, the baseline table's bytes per
//! key, and detection's own cost per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::traffic::{GenOptions, Generator};

/// CPU time (user + system) of every thread of this process so far, from
/// /proc in clock ticks of 1/100 s (USER_HZ, fixed by the kernel's ABI).
pub(super) fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // The command name may hold spaces; the fields after it are fixed.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// Samples this process's RSS every 20 ms on a thread, keeping the peak.
pub(super) struct RssSampler {
    before: u64,
    peak: Arc<AtomicU64>,
    sampling: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub(super) fn start() -> RssSampler {
        let before = rss_bytes();
        let peak = Arc::new(AtomicU64::new(before));
        let sampling = Arc::new(AtomicBool::new(true));
        let thread = {
            let (peak, sampling) = (peak.clone(), sampling.clone());
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        RssSampler {
            before,
            peak,
            sampling,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak growth over the RSS at start.
    pub(super) fn stop(mut self) -> u64 {
        self.sampling.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak
            .load(Ordering::Relaxed)
            .saturating_sub(self.before)
    }
}

/// Resident set size of this process, from /proc.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Fills a baseline table with `keys` distinct keys, each seen in a few
/// buckets, and reports bytes per key: by the table's own accounting and by
/// this process's RSS growth.
pub fn baseline_memory(keys: usize) -> (f64, f64) {
    use crate::detect::baseline::{BaselineConfig, Baselines, Shape};
    let before = rss_bytes();
    let mut b = Baselines::new(BaselineConfig {
        max_keys: keys,
        max_profiles: BaselineConfig::default().max_profiles.min(keys),
        ..BaselineConfig::default()
    });
    let (mut closed, mut signals) = (Vec::new(), Vec::new());
    for bucket in 0..3u32 {
        for k in 0..keys as u64 {
            // Every fourth key teaches a shape, as a tenant's tool does for
            // the agents that call it.
            let shape = if k % 4 == 0 { Shape::Own } else { Shape::Flat };
            b.observe(
                k.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                bucket,
                1,
                shape,
                &mut closed,
                &mut signals,
            );
            closed.clear();
            signals.clear();
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    let n = b.len().max(1) as f64;
    (b.approx_bytes() as f64 / n, grown as f64 / n)
}

/// Detection alone: `events` generated, decoded and redacted records run
/// through a fresh detector under the benign inventory; returns ns per event.
pub fn detect_cost(events: usize) -> f64 {
    use crate::detect::Detector;
    use crate::detect::policy::Policy;
    let Ok(policy) = Policy::parse(&crate::traffic::scenario::benign_policy_toml()) else {
        return f64::NAN;
    };
    let cfg = Config::default();
    let Ok(redactor) = crate::redact::Redactor::new(&cfg.redact) else {
        return f64::NAN;
    };
    let mut generator = Generator::new(GenOptions::default());
    let coords = crate::event::KafkaCoords {
        topic: Arc::from("bench"),
        partition: 0,
        offset: 0,
        kafka_ts_ms: None,
    };
    let records: Vec<_> = (0..events)
        .filter_map(|_| {
            let m = generator.next_message();
            crate::decode::decode(Some(&m.payload), i64::MAX / 2, &cfg.decode_limits()).ok()
        })
        .map(|e| redactor.redact_event(e, coords.clone(), 0))
        .collect();
    let mut detector = Detector::new(&cfg.detect, false);
    let mut changes = Vec::new();
    let started = Instant::now();
    for r in &records {
        detector.observe(r, Some(&policy), &mut changes);
    }
    started.elapsed().as_nanos() as f64 / records.len().max(1) as f64
}
