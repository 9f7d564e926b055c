//! Baseline owns the rolling per-key call-frequency statistics and the spike
//! test: an exponentially weighted mean and variance of calls per event-time
//! bucket, kept for at most `max_keys` keys (least recently seen evicted),
//! and the upper-tail probability of an observed count under that baseline.
//!
//! Each key keeps the counts of its newest `RING` buckets, so a call up to
//! `RING - 1` buckets late still counts in its own bucket; a bucket is folded
//! into the baseline when it leaves the ring, and a call later than that is
//! counted as late and left out (it is still stored; only the baseline
//! skips it). A key costs one 56-byte slot plus its index entry. Keys are 64-bit hashes:
//! names are the caller's business, so the table's size never depends on how
//! long an attacker's tenant or tool names are.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use statrs::distribution::{DiscreteCDF, NegativeBinomial, Poisson};

/// Tuning of the spike test; see `DetectConfig` for the defaults and why.
#[derive(Debug, Clone)]
pub struct BaselineConfig {
    /// EWMA weight of the newest bucket.
    pub alpha: f64,
    /// Closed buckets a key needs before it may alert.
    pub warmup_buckets: u32,
    /// Calls in one bucket below which nothing alerts.
    pub min_count: u32,
    /// Observed over expected below which nothing alerts.
    pub min_ratio: f64,
    /// Alert when -log10 P(X >= observed) reaches this.
    pub min_score: f64,
    pub max_keys: usize,
    /// Score every bucket as it closes. Backtests record those scores; live
    /// detection does not need them, and a negative-binomial tail costs
    /// microseconds, so it scores only open buckets that could alert.
    pub score_closed: bool,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            alpha: 0.05,
            warmup_buckets: 30,
            min_count: 20,
            min_ratio: 5.0,
            min_score: 8.0,
            max_keys: 1_000_000,
            score_closed: false,
        }
    }
}

/// A spike found in a key's open bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    pub bucket: u32,
    pub observed: u32,
    pub expected: f64,
    pub score: f64,
}

/// A bucket that closed for a key: what backtests record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClosedBucket {
    pub key: u64,
    // `score` is 0 unless `BaselineConfig::score_closed`.
    pub bucket: u32,
    pub observed: u32,
    pub expected: f64,
    pub score: f64,
    pub warm: bool,
}

const NONE: u32 = u32::MAX;
/// Buckets of counts kept per key: the lateness a key tolerates.
pub const RING: u32 = 4;
/// Beyond this many empty buckets a mean has decayed to nothing anyway.
const MAX_DECAY_STEPS: u32 = 2048;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    mean: f32,
    var: f32,
    /// Newest bucket seen; the ring holds `newest - RING + 1 ..= newest`.
    newest: u32,
    counts: [u32; RING as usize],
    /// Closed buckets folded in, saturating.
    history: u16,
    /// Bit per ring position: that bucket already alerted.
    fired: u8,
    prev: u32,
    next: u32,
}

/// Keys are already hashes: hashing them again would only cost time.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub struct Baselines {
    cfg: BaselineConfig,
    index: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>,
    slots: Vec<Slot>,
    /// Most and least recently seen; the tail is evicted first.
    head: u32,
    tail: u32,
    evictions: u64,
    late: u64,
}

impl Baselines {
    pub fn new(cfg: BaselineConfig) -> Baselines {
        Baselines {
            cfg,
            index: HashMap::default(),
            slots: Vec::new(),
            head: NONE,
            tail: NONE,
            evictions: 0,
            late: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Calls that arrived after their bucket had left the key's ring.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Bytes the table holds: slots plus index entries (key, slot, control
    /// byte) at the index's capacity.
    pub fn approx_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>() + self.index.capacity() * (12 + 1)
    }

    /// Counts `n` calls for `key` in `bucket`. Buckets the key leaves behind
    /// are folded into its baseline and reported through `closed`. Returns a
    /// spike the first time the open bucket's count becomes improbable.
    pub fn observe(
        &mut self,
        key: u64,
        bucket: u32,
        n: u32,
        closed: &mut Vec<ClosedBucket>,
    ) -> Option<Spike> {
        let idx = self.slot_for(key, bucket);
        let cfg = &self.cfg;
        let s = &mut self.slots[idx as usize];
        if bucket > s.newest {
            // Fold, oldest first, every bucket the ring no longer holds.
            let keep_from = bucket.saturating_sub(RING - 1);
            let mut b = s.newest.saturating_sub(RING - 1);
            while b < keep_from && b <= s.newest {
                closed.push(close(cfg, s, b));
                b += 1;
            }
            // Buckets between the old newest and the new ring that saw no
            // calls at all: lazy decay, capped.
            if keep_from > s.newest + 1 {
                decay(
                    cfg.alpha,
                    s,
                    (keep_from - s.newest - 1).min(MAX_DECAY_STEPS),
                );
            }
            s.newest = bucket;
        } else if bucket + RING <= s.newest {
            self.late += u64::from(n);
            return None;
        }
        let pos = (bucket % RING) as usize;
        s.counts[pos] = s.counts[pos].saturating_add(n);
        let spike = test(cfg, s, bucket);
        self.touch(idx);
        spike
    }

    /// Closes every open bucket (end of a backtest).
    pub fn close_all(&mut self, closed: &mut Vec<ClosedBucket>) {
        for s in &mut self.slots {
            for b in s.newest.saturating_sub(RING - 1)..=s.newest {
                if s.counts[(b % RING) as usize] > 0 {
                    closed.push(close(&self.cfg, s, b));
                }
            }
        }
    }

    /// Expected calls per bucket for `key`, if it is known and warm.
    pub fn expected(&self, key: u64) -> Option<f64> {
        let s = &self.slots[*self.index.get(&key)? as usize];
        (u32::from(s.history) >= self.cfg.warmup_buckets).then_some(f64::from(s.mean))
    }

    fn slot_for(&mut self, key: u64, bucket: u32) -> u32 {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let fresh = Slot {
            key,
            mean: 0.0,
            var: 0.0,
            newest: bucket,
            counts: [0; RING as usize],
            history: 0,
            fired: 0,
            prev: NONE,
            next: NONE,
        };
        let idx = if self.slots.len() >= self.cfg.max_keys && self.tail != NONE {
            let victim = self.tail;
            self.unlink(victim);
            self.index.remove(&self.slots[victim as usize].key);
            self.evictions += 1;
            self.slots[victim as usize] = fresh;
            victim
        } else {
            self.slots.push(fresh);
            u32::try_from(self.slots.len() - 1).unwrap_or(NONE - 1)
        };
        self.index.insert(key, idx);
        self.push_front(idx);
        idx
    }

    fn touch(&mut self, idx: u32) {
        if self.head != idx {
            self.unlink(idx);
            self.push_front(idx);
        }
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let s = &self.slots[idx as usize];
            (s.prev, s.next)
        };
        match prev {
            NONE => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NONE => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, idx: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[idx as usize];
            s.prev = NONE;
            s.next = old;
        }
        if old != NONE {
            self.slots[old as usize].prev = idx;
        }
        self.head = idx;
        if self.tail == NONE {
            self.tail = idx;
        }
    }
}

/// Folds `bucket` (leaving the ring) into the mean and variance (West's
/// weighted incremental form) and reports it with the score it had.
fn close(cfg: &BaselineConfig, s: &mut Slot, bucket: u32) -> ClosedBucket {
    let pos = (bucket % RING) as usize;
    let observed = s.counts[pos];
    s.counts[pos] = 0;
    s.fired &= !(1 << pos);
    let warm = u32::from(s.history) >= cfg.warmup_buckets;
    let expected = f64::from(s.mean);
    let out = ClosedBucket {
        key: s.key,
        bucket,
        observed,
        expected,
        score: if cfg.score_closed {
            score(observed, expected, f64::from(s.var))
        } else {
            0.0
        },
        warm,
    };
    update(cfg.alpha, s, f64::from(observed));
    out
}

fn update(alpha: f64, s: &mut Slot, x: f64) {
    let (mean, var) = (f64::from(s.mean), f64::from(s.var));
    let diff = x - mean;
    let incr = alpha * diff;
    s.mean = (mean + incr) as f32;
    s.var = ((1.0 - alpha) * (var + diff * incr)) as f32;
    s.history = s.history.saturating_add(1);
}

fn decay(alpha: f64, s: &mut Slot, empty_buckets: u32) {
    for _ in 0..empty_buckets {
        update(alpha, s, 0.0);
    }
}

fn test(cfg: &BaselineConfig, s: &mut Slot, bucket: u32) -> Option<Spike> {
    let pos = (bucket % RING) as usize;
    let observed = s.counts[pos];
    if s.fired & (1 << pos) != 0
        || u32::from(s.history) < cfg.warmup_buckets
        || observed < cfg.min_count
    {
        return None;
    }
    let expected = f64::from(s.mean);
    if f64::from(observed) < cfg.min_ratio * expected.max(0.1) {
        return None;
    }
    let score = score(observed, expected, f64::from(s.var));
    (score >= cfg.min_score).then(|| {
        s.fired |= 1 << pos;
        Spike {
            bucket,
            observed,
            expected,
            score,
        }
    })
}

/// -log10 P(X >= observed): Poisson around the mean, or negative binomial
/// when the key's counts vary more than a Poisson process would.
pub fn score(observed: u32, mean: f64, var: f64) -> f64 {
    if observed == 0 {
        return 0.0;
    }
    // Never expect less than a call per ten buckets: a key that was silent
    // is not infinitely surprised by one call.
    let mean = mean.max(0.1);
    let x = u64::from(observed - 1);
    let tail = if var > mean * 1.05 {
        let r = mean * mean / (var - mean);
        NegativeBinomial::new(r, r / (r + mean)).map(|d| d.sf(x))
    } else {
        Poisson::new(mean)
            .map(|d| d.sf(x))
            .map_err(|_| statrs::distribution::NegativeBinomialError::PInvalid)
    };
    match tail {
        Ok(p) if p > 0.0 => (-p.log10()).clamp(0.0, 300.0),
        Ok(_) => 300.0,
        Err(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BaselineConfig {
        BaselineConfig {
            warmup_buckets: 10,
            min_count: 20,
            min_ratio: 5.0,
            min_score: 8.0,
            max_keys: 1000,
            ..BaselineConfig::default()
        }
    }

    /// Feeds `per_bucket` calls per bucket for buckets `from..to`.
    fn feed(b: &mut Baselines, key: u64, from: u32, to: u32, per_bucket: u32) -> Vec<Spike> {
        let mut closed = Vec::new();
        (from..to)
            .filter_map(|bucket| b.observe(key, bucket, per_bucket, &mut closed))
            .collect()
    }

    #[test]
    fn steady_traffic_never_alerts_and_learns_its_rate() {
        let mut b = Baselines::new(cfg());
        assert!(feed(&mut b, 1, 0, 500, 10).is_empty());
        let expected = b.expected(1).expect("warm");
        assert!((expected - 10.0).abs() < 0.5, "{expected}");
    }

    #[test]
    fn a_tenfold_jump_alerts_once_in_its_bucket() {
        let mut b = Baselines::new(cfg());
        feed(&mut b, 1, 0, 100, 10);
        let mut closed = Vec::new();
        let mut spikes = Vec::new();
        for _ in 0..100 {
            spikes.extend(b.observe(1, 100, 1, &mut closed));
        }
        assert_eq!(spikes.len(), 1, "{spikes:?}");
        assert!(spikes[0].observed < 100, "fires while the bucket is open");
        assert_eq!(spikes[0].bucket, 100);
        assert!(spikes[0].score >= 8.0);
    }

    #[test]
    fn cold_keys_do_not_alert() {
        let mut b = Baselines::new(cfg());
        feed(&mut b, 1, 0, 5, 1);
        assert!(
            feed(&mut b, 1, 5, 6, 500).is_empty(),
            "only 5 buckets of history"
        );
    }

    #[test]
    fn small_keys_stay_quiet() {
        let mut b = Baselines::new(cfg());
        feed(&mut b, 1, 0, 100, 1);
        // 15 calls against 1 expected is improbable but below min_count.
        assert!(feed(&mut b, 1, 100, 101, 15).is_empty());
    }

    #[test]
    fn idle_buckets_decay_the_mean_lazily() {
        let mut b = Baselines::new(cfg());
        feed(&mut b, 1, 0, 100, 10);
        // Next call 200 buckets later: the empty ones are folded in.
        let mut closed = Vec::new();
        b.observe(1, 300, 1, &mut closed);
        let expected = b.expected(1).expect("warm");
        assert!(expected < 0.01, "{expected}");
        let buckets: Vec<u32> = closed.iter().map(|c| c.bucket).collect();
        assert_eq!(buckets, vec![96, 97, 98, 99], "the ring is folded in order");
        assert_eq!(closed[3].observed, 10);
    }

    #[test]
    fn late_calls_count_in_their_own_bucket_or_not_at_all() {
        let mut b = Baselines::new(cfg());
        feed(&mut b, 1, 0, 100, 10);
        let mut closed = Vec::new();
        // Bucket 100 opens; a call for 98 (two late) still joins 98.
        b.observe(1, 100, 1, &mut closed);
        b.observe(1, 98, 1, &mut closed);
        assert_eq!(b.late(), 0);
        // 96 left the ring when 100 arrived: too late, counted as such.
        b.observe(1, 96, 5, &mut closed);
        assert_eq!(b.late(), 5);
        b.close_all(&mut closed);
        let b98 = closed.iter().find(|c| c.bucket == 98).expect("98 closed");
        assert_eq!(b98.observed, 11);
    }

    #[test]
    fn the_least_recently_seen_key_is_evicted() {
        let mut b = Baselines::new(BaselineConfig {
            max_keys: 3,
            ..cfg()
        });
        let mut closed = Vec::new();
        for key in [1, 2, 3] {
            b.observe(key, 0, 1, &mut closed);
        }
        b.observe(1, 1, 1, &mut closed);
        b.observe(4, 1, 1, &mut closed);
        assert_eq!(b.len(), 3);
        assert_eq!(b.evictions(), 1);
        assert!(b.index.contains_key(&1) && b.index.contains_key(&4));
        assert!(!b.index.contains_key(&2), "2 was the least recently seen");
    }

    #[test]
    fn overdispersed_keys_are_harder_to_surprise() {
        let poisson = score(30, 10.0, 10.0);
        let bursty = score(30, 10.0, 100.0);
        assert!(poisson > bursty, "{poisson} vs {bursty}");
        assert!(poisson > 5.0);
    }

    #[test]
    fn memory_per_key_stays_under_128_bytes() {
        let mut b = Baselines::new(BaselineConfig {
            max_keys: 100_000,
            ..cfg()
        });
        let mut closed = Vec::new();
        for key in 0..100_000u64 {
            b.observe(key.wrapping_mul(0x9E37_79B9_7F4A_7C15), 0, 1, &mut closed);
        }
        let per_key = b.approx_bytes() / b.len();
        assert!(per_key <= 128, "{per_key} bytes per key");
    }
}
