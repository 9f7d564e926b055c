//! What a key expects of a bucket: the seasonal shape at its hour of week
//! (and whether that hour is of the same kind of day), scaled by the key's
//! level, with the dispersion the tests allow around it. Only reads the
//! model; `fold` in the parent changes it.

use super::{Baselines, FLOOR, RATIO_READY, Slot, WEEK_HOURS};

/// The factor an expectation may be off by when read off another day's
/// hour of the same kind (a first week), another kind of day's (a first
/// Saturday read off a Friday), or the flat level (no shape there yet).
const BAND_OTHER_DAY: f64 = 1.5;
const BAND_OTHER_KIND: f64 = 3.0;
const BAND_FLAT: f64 = 1.5;

impl Baselines {
    /// The hour-of-week slot of a bucket (weeks start on Monday, UTC).
    pub(super) fn hour_of_week(&self, bucket: u32) -> usize {
        let hours = u64::from(bucket) * self.cfg.bucket_secs / 3600;
        // 1970-01-01 was a Thursday: 3 days after a Monday.
        ((hours + 72) % WEEK_HOURS as u64) as usize
    }

    /// The shape at a bucket, and whether it comes from a day of the same
    /// kind (its own hour of week, or another weekday for a weekday, the
    /// other weekend day for a weekend day). Only those teach the level: a
    /// first Saturday read off Friday's shape would drag it down for days.
    pub(super) fn shape_and_kind(&self, s: &Slot, bucket: u32) -> Option<(f64, bool)> {
        let p = self.profiles.get(s.profile as usize)?;
        let h = self.hour_of_week(bucket);
        let weekend = |hour: usize| hour / 24 >= 5;
        // An hour in its first visit holds a running mean of a few buckets:
        // not yet something to expect.
        // Nearest days first, and a day of the same kind before any other:
        // a first Monday reads Tuesday's hour, not Sunday's.
        let first = usize::from(self.young(s, bucket));
        let days = [0, 1, 6, 2, 5, 3, 4].into_iter().skip(first);
        let mut other = None;
        for d in days {
            let at = (h + d * 24) % WEEK_HOURS;
            let v = p[at];
            if v.is_nan() {
                continue;
            }
            if weekend(at) == weekend(h) {
                return Some((f64::from(v), true));
            }
            other.get_or_insert((f64::from(v), false));
        }
        other
    }

    /// The expected count at `bucket` (see `expect`) and the factor it may
    /// be off by, beyond the key's own noise: 1 where the key's own hour of
    /// week is known, more where the expectation is a guess — another
    /// day's hour, another kind of day's, or the flat level that lags every
    /// daily rhythm. A guess widens the tests (rises against `e × band`,
    /// drops against `e / band`); it never sets the level. One shape
    /// lookup serves both: this runs on every call.
    pub(super) fn expect_and_band(&self, s: &Slot, bucket: u32) -> (f64, f64) {
        let found = self.shape_and_kind(s, bucket);
        let band = match found {
            _ if self.cfg.ablate.guess_band => 1.0,
            Some((_, true)) if !self.young(s, bucket) => 1.0,
            Some((_, true)) => BAND_OTHER_DAY,
            Some((_, false)) => BAND_OTHER_KIND,
            None => BAND_FLAT,
        };
        let shape = found.map(|(shape, _)| self.with_bursts(s, bucket, shape));
        (self.expect_from(s, shape), band)
    }

    /// Whether `bucket`'s hour of week is still in its first visit for this
    /// key (a key's history is contiguous: empty buckets fold too).
    pub(super) fn young(&self, s: &Slot, bucket: u32) -> bool {
        self.slot_seen(s, bucket) < self.buckets_per_hour()
    }

    pub(super) fn buckets_per_hour(&self) -> u64 {
        (3600 / self.cfg.bucket_secs).max(1)
    }

    /// How many buckets of `bucket`'s hour of week the key has seen before.
    pub(super) fn slot_seen(&self, s: &Slot, bucket: u32) -> u64 {
        let bph = self.buckets_per_hour();
        let in_hour = (u64::from(bucket) * self.cfg.bucket_secs % 3600) / self.cfg.bucket_secs;
        let visits = u64::from(s.history) / (WEEK_HOURS as u64 * bph);
        visits * bph + in_hour
    }

    /// Expected count at a bucket: the shape scaled by the key's level, or
    /// the flat level while no shape is known there.
    /// A shape with recurring within-hour bursts (`bursts`) moves its
    /// jobs' calls from the whole hour to their buckets.
    pub(super) fn expect(&self, s: &Slot, bucket: u32) -> f64 {
        self.expect_from(s, self.bucket_shape(s, bucket))
    }

    /// `expect` from the bucket's shape, already looked up.
    fn expect_from(&self, s: &Slot, shape: Option<f64>) -> f64 {
        match shape {
            Some(shape) if s.has(RATIO_READY) => shape * level(f64::from(s.lx), f64::from(s.lp)),
            _ => f64::from(s.flat),
        }
    }

    /// The shape at `bucket` with its hour's recurring bursts moved to their
    /// buckets, and whether it comes from a day of the same kind.
    pub(super) fn bucket_shape_and_kind(&self, s: &Slot, bucket: u32) -> Option<(f64, bool)> {
        let (shape, same_kind) = self.shape_and_kind(s, bucket)?;
        Some((self.with_bursts(s, bucket, shape), same_kind))
    }

    /// An hour's `shape` with its recurring bursts moved to their buckets.
    fn with_bursts(&self, s: &Slot, bucket: u32, shape: f64) -> f64 {
        match self.bursts.adjust(s.profile, bucket) {
            Some(a) => (shape - a.spread).max(0.0) + a.extra,
            None => shape,
        }
    }

    pub(super) fn bucket_shape(&self, s: &Slot, bucket: u32) -> Option<f64> {
        self.bucket_shape_and_kind(s, bucket).map(|(v, _)| v)
    }

    /// The variance of a bucket's count around `e`: the key's own noise
    /// (`phi`, Poisson at 1).
    pub(super) fn var(s: &Slot, e: f64) -> f64 {
        e.max(FLOOR) * f64::from(s.phi).max(1.0)
    }
}

/// The level: recent calls over what the shape said of the same buckets,
/// both smoothed; 1 for an owner whose traffic follows its shape, an agent's
/// share for a key that borrows its tenant's shape. The small constant keeps
/// it finite where both have decayed towards zero (a key quiet for days).
fn level(lx: f64, lp: f64) -> f64 {
    const EPS: f64 = 0.01;
    ((lx + EPS) / (lp + EPS)).clamp(1e-4, 1e4)
}
