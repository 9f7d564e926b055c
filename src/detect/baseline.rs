//! Baseline owns the per-key model of call frequency and the tests against
//! it: a level (calls per event-time bucket), a weekly seasonal shape, a
//! dispersion, and two CUSUMs, kept for at most `max_keys` keys, with shapes
//! in a table of at most `max_profiles`.
//!
//! The key table is a segmented LRU (`table.rs`): a flood of invented names
//! churns only the keys on probation, never an established key's baseline.
//! What a key expects of a bucket is read in `expectation.rs`, the open
//! buckets are tested after each call in `open_buckets.rs`, and a bucket
//! leaving the ring is folded into the model in `fold.rs`.
//!
//! The expected count of a bucket is `level × shape[hour of week]`. A key
//! that owns a shape (tenant+tool, tenant) teaches it; a key that borrows one
//! (an agent's calls of a tool borrow its tenant's shape of that tool) only
//! scales it by its own level, so a tenant's shape is learned once however
//! many agents share it. Four signals come out:
//! - a *spike*: the open bucket's count is improbable (Poisson, or negative
//!   binomial when the key is over-dispersed) and well above expectation;
//! - a *surge*: a Poisson-likelihood CUSUM for "twice the expected rate"
//!   crosses its threshold, counting the buckets still open: shifts that no
//!   single bucket shows (3× for 15 minutes, a slow climb);
//! - a *drop*: a closed bucket far below expectation, or the CUSUM for "half
//!   the expected rate" crossing (silence included: empty buckets fold as 0);
//! - none, and the bucket teaches the model at full weight. A bucket that
//!   signalled teaches at `alerting_weight`, so an attack does not become
//!   normal within minutes.
//!
//! Each key keeps the counts of its newest `RING` buckets, so a call up to
//! `RING - 1` buckets late still counts in its own bucket; a bucket is folded
//! into the model when it leaves the ring. A key costs one 64-byte slot plus
//! its index entry; a shape costs 336 bytes. Keys are 64-bit hashes: names
//! are the caller's business, so the table's size never depends on how long
//! an attacker's tenant or tool names are.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use half::f16;
use table::{EMPTY_LRU, Lru};

/// Tuning of the model and its tests; see `DetectConfig` for the defaults
/// and why.
#[derive(Debug, Clone)]
pub struct BaselineConfig {
    /// Seconds in one bucket: where a bucket falls in the week.
    pub bucket_secs: u64,
    /// EWMA weight of the newest bucket in the level and the dispersion.
    pub level_alpha: f64,
    /// EWMA weight of a bucket in its hour-of-week slot of the shape.
    pub season_weight: f64,
    /// Closed buckets a key needs before it may alert.
    pub warmup_buckets: u32,
    /// Calls in one bucket below which no spike alerts.
    pub min_count: u32,
    /// Observed over expected below which no spike alerts (and expected
    /// over observed below which no single-bucket drop alerts).
    pub min_ratio: f64,
    /// Alert when -log10 of the tail probability reaches this.
    pub min_score: f64,
    /// CUSUM decision threshold, in nats of log-likelihood ratio.
    pub cusum_threshold: f64,
    /// Expected calls per bucket below which drops are not tested.
    pub min_drop_expected: f64,
    /// Learning weight of a bucket that signalled, relative to a quiet one.
    pub alerting_weight: f64,
    /// Calibration per key: a signal opens an alert only when its evidence
    /// (in thresholds: score over `min_score`, CUSUM over
    /// `cusum_threshold`) is at least this many times the key's own recent
    /// peak of evidence. 0 turns calibration off.
    pub calibration_margin: f64,
    /// Per-bucket decay of that peak (from its half-life).
    pub calibration_decay: f64,
    /// The most base thresholds a key's calibrated threshold may reach: a
    /// key however noisy still alerts on a rise far beyond its noise.
    pub calibration_max: f64,
    pub max_keys: usize,
    pub max_profiles: usize,
    /// Mechanisms switched off for an ablation.
    pub ablate: Ablation,
    /// Score every bucket as it closes. Backtests record those scores; live
    /// detection does not need them.
    pub score_closed: bool,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            bucket_secs: 60,
            level_alpha: alpha_for_halflife(60, 3 * 3600),
            season_weight: 1.0 / (3.0 * 60.0),
            warmup_buckets: 60,
            min_count: 5,
            min_ratio: 1.5,
            min_score: 8.0,
            cusum_threshold: 20.0,
            min_drop_expected: 5.0,
            alerting_weight: 0.25,
            calibration_margin: 1.5,
            calibration_decay: 1.0 - alpha_for_halflife(60, 86_400),
            calibration_max: 8.0,
            max_keys: 1_000_000,
            max_profiles: 65_536,
            ablate: Ablation::default(),
            score_closed: false,
        }
    }
}

/// The mechanisms of the model an ablation may switch off, by name:
/// `agentaudit eval --ablation` measures each one's effect on recall and
/// false alerts. `calibration` sets `calibration_margin` to 0;
/// `borrowed_shapes` and `silence_watch` are the detector's.
pub const ABLATIONS: [&str; 8] = [
    "burst_tables",
    "borrowed_shapes",
    "surge_cusum",
    "drop_cusum",
    "single_bucket_drop",
    "guess_band",
    "calibration",
    "silence_watch",
];

/// Which of the baseline's own mechanisms are off (all on by default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Ablation {
    pub burst_tables: bool,
    pub borrowed_shapes: bool,
    pub surge_cusum: bool,
    pub drop_cusum: bool,
    pub single_bucket_drop: bool,
    pub guess_band: bool,
    pub silence_watch: bool,
}

impl Ablation {
    pub fn from_names(names: &[String]) -> Ablation {
        let off = |m: &str| names.iter().any(|n| n == m);
        Ablation {
            burst_tables: off("burst_tables"),
            borrowed_shapes: off("borrowed_shapes"),
            surge_cusum: off("surge_cusum"),
            drop_cusum: off("drop_cusum"),
            single_bucket_drop: off("single_bucket_drop"),
            guess_band: off("guess_band"),
            silence_watch: off("silence_watch"),
        }
    }
}

/// The per-bucket EWMA weight whose memory halves every `halflife_secs`.
pub fn alpha_for_halflife(bucket_secs: u64, halflife_secs: u64) -> f64 {
    let ratio = bucket_secs as f64 / halflife_secs.max(1) as f64;
    (1.0 - 0.5f64.powf(ratio)).clamp(1e-6, 0.5)
}

/// The CUSUM alternatives: twice and half the expected rate.
const SURGE_RATIO: f64 = 2.0;
const DROP_RATIO: f64 = 0.5;
/// A CUSUM is capped at this many thresholds, so a shift that ends is
/// forgotten within a bounded time (a few hours). A key whose bar is above
/// it (its ordinary bursts fill its CUSUMs) alerts on single buckets only.
const CUSUM_CAP: f64 = 3.0;
/// The most `calibration_max` may be.
pub const MAX_CALIBRATED: f64 = 16.0;
/// Never expect less than this per bucket when testing for a rise: a key
/// that was silent is not infinitely surprised by one call.
const FLOOR: f64 = 0.5;
/// The dispersion index never counts one bucket above this.
const PHI_CAP: f64 = 1000.0;

/// What stood out in a key's buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SignalKind {
    Spike,
    Surge,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signal {
    pub kind: SignalKind,
    pub bucket: u32,
    pub observed: u32,
    pub expected: f64,
    /// -log10 tail probability for spikes and drops, CUSUM nats for surges
    /// (and for drops that the CUSUM found).
    pub score: f64,
    /// The evidence reaches the key's calibrated threshold: the signal may
    /// open an alert. A signal that only reaches the base threshold keeps an
    /// open alert open, and opens none.
    pub fresh: bool,
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

/// Which seasonal shape a key reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The key teaches a shape of its own (if the table has room).
    Own,
    /// The key scales the shape of another key (its profile index).
    Borrow(u32),
    /// Flat: the level alone.
    Flat,
}

const NONE: u32 = u32::MAX;
/// Buckets of counts kept per key: the lateness a key tolerates.
pub const RING: u32 = 4;
/// Beyond this many empty buckets a key is folded no further: its level and
/// CUSUMs have long reached what silence teaches.
const MAX_FOLD_STEPS: u32 = 2048;
/// Hours in a week: the slots of a shape.
pub const WEEK_HOURS: usize = 168;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    /// EWMA of calls per bucket, and of the shape at the same buckets, over
    /// the buckets whose shape is known: the level is their ratio, which
    /// stays finite where the shape is zero.
    lx: f32,
    lp: f32,
    /// EWMA of calls per bucket over every bucket: the expectation while no
    /// shape is known.
    flat: f32,
    /// EWMA of (x - e)² / e: 1 for a Poisson process, more when bursty.
    phi: f32,
    surge: f16,
    drop: f16,
    /// Decaying peaks of the key's own evidence, up and down, in base
    /// thresholds: what this key's buckets ordinarily reach.
    up_peak: f16,
    down_peak: f16,
    /// Newest bucket seen; the ring holds `newest - RING + 1 ..= newest`.
    newest: u32,
    counts: [u32; RING as usize],
    /// The shape this key reads (its own or borrowed), or `NONE`.
    profile: u32,
    /// Closed buckets folded in, saturating.
    history: u16,
    /// Bit per ring position: that bucket spiked (low nibble) or surged
    /// (high nibble) already, with fresh evidence (`fired`) or only enough
    /// to keep an alert open (`kept`).
    fired: u8,
    kept: u8,
    /// `OWNS_PROFILE`, `PROTECTED_KEY`, `RATIO_READY`, `UP_ALERTED`,
    /// `DOWN_ALERTED`.
    flags: u8,
    /// The largest evidence, up and down, of the episode the key is in
    /// (evidence above `EPISODE_FLOOR` in consecutive buckets), in
    /// `EPISODE_STEPS` per base threshold: the peaks learn it once the
    /// episode ends, so a rise never raises its own bar while it grows.
    episode_up: u8,
    episode_down: u8,
    prev: u32,
    next: u32,
}

/// The key teaches its own shape (`profile` is its).
const OWNS_PROFILE: u8 = 1;
/// Promoted out of probation: called in more than one bucket.
const PROTECTED_KEY: u8 = 2;
/// `lx` and `lp` hold data (the first bucket with a known shape seeds
/// them, so that both are in the same units from the start).
const RATIO_READY: u8 = 4;
/// The key's current episode up (or down) has opened an alert: another
/// needs evidence `calibration_margin` times the episode's largest.
const UP_ALERTED: u8 = 8;
const DOWN_ALERTED: u8 = 16;
/// Evidence (in base thresholds) below which a bucket ends an episode.
const EPISODE_FLOOR: f64 = 0.25;
/// Quantisation of an episode's largest evidence: 60 steps per base
/// threshold reach `MAX_CALIBRATED` within a byte.
const EPISODE_STEPS: f64 = 15.0;

// A key's slot stays at 72 bytes: 128 bytes a key at a million keys with
// the index and the shapes (`memory_per_key_stays_under_128_bytes...`).
const _: () = assert!(size_of::<Slot>() <= 72);

impl Slot {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    fn set(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }
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

/// An hour-of-week shape; NaN marks an hour not seen yet.
type Profile = [f16; WEEK_HOURS];

pub struct Baselines {
    cfg: BaselineConfig,
    index: HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>,
    slots: Vec<Slot>,
    profiles: Vec<Profile>,
    free_profiles: Vec<u32>,
    /// Most and least recently seen of each segment: `PROBATION`, then
    /// `PROTECTED`. The probation tail is evicted first.
    lists: [Lru; 2],
    evictions: u64,
    late: u64,
    ln_surge: f64,
    ln_drop: f64,
    /// Recurring within-hour bursts of the shapes that have them.
    bursts: bursts::Bursts,
}

impl Baselines {
    pub fn new(cfg: BaselineConfig) -> Baselines {
        Baselines {
            index: HashMap::default(),
            slots: Vec::new(),
            profiles: Vec::new(),
            free_profiles: Vec::new(),
            lists: [EMPTY_LRU; 2],
            evictions: 0,
            late: 0,
            ln_surge: SURGE_RATIO.ln(),
            ln_drop: DROP_RATIO.ln(),
            bursts: bursts::Bursts::new(cfg.bucket_secs, bursts::MAX_TABLES, cfg.min_count),
            cfg,
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

    /// The mechanisms switched off (none outside an ablation).
    pub fn ablation(&self) -> Ablation {
        self.cfg.ablate
    }

    /// Shapes in use.
    pub fn profiles(&self) -> usize {
        self.profiles.len() - self.free_profiles.len()
    }

    /// Shapes with a table of recurring within-hour bursts, and how many
    /// were refused one because `bursts::MAX_TABLES` were in use.
    pub fn burst_tables(&self) -> (usize, u64) {
        (self.bursts.len(), self.bursts.refused)
    }

    /// Calls that arrived after their bucket had left the key's ring.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Bytes the tables hold: slots, shapes, and index entries (key, slot,
    /// control byte) at the index's capacity.
    pub fn approx_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
            + self.profiles.capacity() * size_of::<Profile>()
            + self.index.capacity() * (12 + 1)
    }

    /// The profile a key teaches, for keys that borrow it.
    pub fn profile_of(&self, key: u64) -> Option<u32> {
        let s = &self.slots[*self.index.get(&key)? as usize];
        (s.has(OWNS_PROFILE) && s.profile != NONE).then_some(s.profile)
    }

    /// Counts `n` calls for `key` in `bucket`. Buckets the key leaves behind
    /// are folded into its model and reported through `closed`; what stood
    /// out (a drop in a folded bucket, a spike or surge in the open ones)
    /// goes to `signals`.
    pub fn observe(
        &mut self,
        key: u64,
        bucket: u32,
        n: u32,
        shape: Shape,
        closed: &mut Vec<ClosedBucket>,
        signals: &mut Vec<Signal>,
    ) {
        let idx = self.slot_for(key, bucket, shape);
        if let Shape::Borrow(p) = shape
            && !self.slots[idx as usize].has(OWNS_PROFILE)
            && (p as usize) < self.profiles.len()
        {
            self.slots[idx as usize].profile = p;
        }
        let second_bucket = bucket > self.slots[idx as usize].newest;
        if !self.roll(idx, bucket, closed, signals) {
            self.late += u64::from(n);
            return;
        }
        let s = &mut self.slots[idx as usize];
        let pos = (bucket % RING) as usize;
        s.counts[pos] = s.counts[pos].saturating_add(n);
        self.test_open(idx, bucket, signals);
        if second_bucket && !self.slots[idx as usize].has(PROTECTED_KEY) {
            self.promote(idx);
        } else {
            self.touch(idx);
        }
    }

    /// Moves a known key's ring up to `bucket` with no call in it, folding
    /// the buckets it leaves behind: a key that fell silent sends nothing
    /// that would fold its empty buckets. Returns false for an unknown key.
    pub fn roll_silent(
        &mut self,
        key: u64,
        bucket: u32,
        closed: &mut Vec<ClosedBucket>,
        signals: &mut Vec<Signal>,
    ) -> bool {
        let Some(&idx) = self.index.get(&key) else {
            return false;
        };
        self.roll(idx, bucket, closed, signals);
        true
    }

    /// The key's smoothed calls per bucket, if the key is known.
    pub fn flat_of(&self, key: u64) -> Option<f64> {
        let &idx = self.index.get(&key)?;
        Some(f64::from(self.slots[idx as usize].flat))
    }

    /// Folds, oldest first, every bucket the ring of `idx` no longer holds
    /// once `bucket` is open, the empty ones between included (capped).
    /// Returns false when `bucket` is too late for the ring.
    fn roll(
        &mut self,
        idx: u32,
        bucket: u32,
        closed: &mut Vec<ClosedBucket>,
        signals: &mut Vec<Signal>,
    ) -> bool {
        let s = self.slots[idx as usize];
        if bucket > s.newest {
            let keep_from = bucket.saturating_sub(RING - 1);
            let from = s.newest.saturating_sub(RING - 1);
            let to = keep_from.min(from.saturating_add(MAX_FOLD_STEPS));
            for b in from..to {
                self.fold(idx, b, closed, signals);
            }
            self.slots[idx as usize].newest = bucket;
            true
        } else {
            bucket + RING > s.newest
        }
    }

    /// Counts a past bucket into the model without reporting anything:
    /// warming from stored history.
    pub fn warm(&mut self, key: u64, bucket: u32, n: u32, shape: Shape) {
        let (mut closed, mut signals) = (Vec::new(), Vec::new());
        self.observe(key, bucket, n, shape, &mut closed, &mut signals);
    }

    /// Closes every open bucket (end of a backtest).
    pub fn close_all(&mut self, closed: &mut Vec<ClosedBucket>, signals: &mut Vec<Signal>) {
        for idx in 0..self.slots.len() as u32 {
            let s = self.slots[idx as usize];
            for b in s.newest.saturating_sub(RING - 1)..=s.newest {
                if s.counts[(b % RING) as usize] > 0 {
                    self.fold(idx, b, closed, signals);
                }
            }
        }
    }

    /// Expected calls for `key` in `bucket`, if the key is known and warm.
    pub fn expected(&self, key: u64, bucket: u32) -> Option<f64> {
        let s = &self.slots[*self.index.get(&key)? as usize];
        (u32::from(s.history) >= self.cfg.warmup_buckets).then(|| self.expect(s, bucket))
    }

    /// Log-likelihood ratio of "twice the rate" over "the expected rate"
    /// for one bucket, shrunk by the key's dispersion.
    fn surge_llr(&self, s: &Slot, x: u32, e: f64) -> f64 {
        let e = e.max(FLOOR);
        (f64::from(x) * self.ln_surge - e * (SURGE_RATIO - 1.0)) / f64::from(s.phi).max(1.0)
    }

    /// The evidence, in base thresholds, a signal of this key needs to open
    /// an alert: `calibration_margin` times the key's recent peak, at least
    /// 1 and at most `calibration_max`; and once the key's current episode
    /// has opened one, `calibration_margin` times the episode's largest
    /// evidence (a key that resolved does not open another within the same
    /// episode unless its evidence grows materially).
    pub(super) fn need(&self, peak: f16, episode: u8, alerted: bool) -> f64 {
        let m = self.cfg.calibration_margin;
        let need = (m * f64::from(peak)).clamp(1.0, self.cfg.calibration_max);
        if alerted {
            need.max(m * f64::from(episode) / EPISODE_STEPS)
        } else {
            need
        }
    }
}

pub mod bursts;
mod expectation;
mod fold;
mod open_buckets;
mod table;
mod tails;
pub use tails::{score_down, score_up};

#[cfg(test)]
mod tests;
