//! Recurring bursts: calls that come at the same bucket of every hour (a
//! cron job at minute 0), which an hour-of-week shape averages away over the
//! hour. A shape gets a burst table only once one of its buckets stood out,
//! so the keys without bursts — nearly all of them — pay nothing for it.
//!
//! A table holds, per bucket of the hour, the mean of what that bucket saw
//! since the table started (a running mean over the first `SETTLE` hours,
//! then an EWMA over about a day of hours). A position is a *burst* once it
//! has `MIN_VISITS` hours behind it and its mean is at least `BURST_RATIO`
//! times the table's average position and at least `min_count`.
//!
//! A job adds calls; it does not multiply them. So a burst's excess (its
//! mean over the other positions' mean) is added at its position, and the
//! same excess, spread over the hour, is taken from the hour's shape
//! everywhere: the shape's hourly mean holds the job's calls too, and
//! without that the other buckets would expect them and see drops.
//!
//! A one-off spike raises its bucket of the hour's expectation to about a
//! third of itself, fading within a day; a job that has run for three hours
//! no longer alerts.
//!
//! Bursts learn at full weight, alerting or not: a recurring burst is what
//! this table is for, and it alerts three times before it is one.

use std::collections::HashMap;

use half::f16;

/// Shapes that may keep a burst table (about 190 bytes each).
pub const MAX_TABLES: usize = 4096;
/// Most buckets an hour can have for burst tables (60-s buckets).
pub const MAX_POSITIONS: usize = 60;
/// Hours a position needs before it can count as a burst.
const MIN_VISITS: u8 = 3;
/// Running mean over this many hours, then an EWMA of weight 1/`SETTLE`.
const SETTLE: u8 = 24;
/// A burst position is at least this many times the table's average.
const BURST_RATIO: f64 = 3.0;

/// One shape's bucket-of-the-hour means, and what they make of bursts.
#[derive(Debug, Clone)]
struct Table {
    mean: [f16; MAX_POSITIONS],
    visits: [u8; MAX_POSITIONS],
    /// Bit per position: a burst.
    bursts: u64,
    /// Mean of the positions that are no burst.
    quiet_mean: f32,
    /// Burst excess per bucket of the hour, spread evenly.
    spread: f32,
}

/// How a burst table adjusts a bucket's expectation from the hour's shape:
/// `shape - spread + extra`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adjust {
    pub spread: f64,
    pub extra: f64,
}

#[derive(Debug)]
pub struct Bursts {
    /// Buckets in an hour; 0 when burst tables do not apply (an hour is not
    /// a whole number of 2 to 60 buckets).
    positions: usize,
    bucket_secs: u64,
    max_tables: usize,
    min_count: f64,
    tables: HashMap<u32, Table>,
    /// Tables not started because `max_tables` were in use.
    pub refused: u64,
}

impl Bursts {
    pub fn new(bucket_secs: u64, max_tables: usize, min_count: u32) -> Bursts {
        let bucket_secs = bucket_secs.max(1);
        let per_hour = 3600 / bucket_secs;
        let positions = if 3600 % bucket_secs == 0 && (2..=MAX_POSITIONS as u64).contains(&per_hour)
        {
            per_hour as usize
        } else {
            0
        };
        Bursts {
            positions,
            bucket_secs,
            max_tables,
            min_count: f64::from(min_count),
            tables: HashMap::new(),
            refused: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    fn position(&self, bucket: u32) -> usize {
        ((u64::from(bucket) * self.bucket_secs % 3600) / self.bucket_secs) as usize
    }

    /// How `bucket`'s expectation differs from its hour's shape for shape
    /// `profile`, before scaling by a key's level; `None` if the shape has
    /// no recurring burst.
    pub fn adjust(&self, profile: u32, bucket: u32) -> Option<Adjust> {
        // Asked on every call's expectation; nearly always there is no table.
        if self.tables.is_empty() {
            return None;
        }
        let t = self.tables.get(&profile)?;
        if t.bursts == 0 {
            return None;
        }
        let pos = self.position(bucket);
        let extra = if t.bursts & (1 << pos) != 0 {
            (f64::from(t.mean[pos]) - f64::from(t.quiet_mean)).max(0.0)
        } else {
            0.0
        };
        Some(Adjust {
            spread: f64::from(t.spread),
            extra,
        })
    }

    /// Whether `profile` has a table.
    pub fn tracks(&self, profile: u32) -> bool {
        self.tables.contains_key(&profile)
    }

    /// Starts a table for `profile` (a bucket of it stood out), if bursts
    /// apply and there is room.
    pub fn start(&mut self, profile: u32) {
        if self.positions == 0 || self.tables.contains_key(&profile) {
            return;
        }
        if self.tables.len() >= self.max_tables {
            self.refused += 1;
            return;
        }
        self.tables.insert(
            profile,
            Table {
                mean: [f16::ZERO; MAX_POSITIONS],
                visits: [0; MAX_POSITIONS],
                bursts: 0,
                quiet_mean: 0.0,
                spread: 0.0,
            },
        );
    }

    /// Counts `x` calls of a closed bucket into `profile`'s table, if any.
    pub fn learn(&mut self, profile: u32, bucket: u32, x: u32) {
        let pos = self.position(bucket);
        let Some(t) = self.tables.get_mut(&profile) else {
            return;
        };
        let old = f64::from(t.mean[pos]);
        let w = 1.0 / f64::from(t.visits[pos].saturating_add(1).min(SETTLE));
        t.mean[pos] = f16::from_f64(old + w * (f64::from(x) - old));
        t.visits[pos] = t.visits[pos].saturating_add(1).min(SETTLE);
        // Once an hour is enough to re-classify, at the hour's last bucket.
        if pos + 1 == self.positions {
            classify(t, self.positions, self.min_count);
        }
    }

    /// Drops `profile`'s table: its shape was freed.
    pub fn forget(&mut self, profile: u32) {
        self.tables.remove(&profile);
    }
}

/// Which positions are bursts, the others' mean, and the excess to spread.
fn classify(t: &mut Table, positions: usize, min_count: f64) {
    let means = || t.mean[..positions].iter().map(|m| f64::from(*m));
    let average = means().sum::<f64>() / positions as f64;
    let mut bursts = 0u64;
    for (p, m) in means().enumerate() {
        if t.visits[p] >= MIN_VISITS && m >= min_count && m >= BURST_RATIO * average {
            bursts |= 1 << p;
        }
    }
    let quiet: Vec<f64> = means()
        .enumerate()
        .filter(|(p, _)| bursts & (1 << p) == 0)
        .map(|(_, m)| m)
        .collect();
    let quiet_mean = quiet.iter().sum::<f64>() / quiet.len().max(1) as f64;
    let excess: f64 = means()
        .enumerate()
        .filter(|(p, _)| bursts & (1 << p) != 0)
        .map(|(_, m)| (m - quiet_mean).max(0.0))
        .sum();
    t.bursts = bursts;
    t.quiet_mean = quiet_mean as f32;
    t.spread = (excess / positions as f64) as f32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_at_minute_zero_becomes_a_burst_after_three_hours() {
        let mut b = Bursts::new(60, 10, 5);
        b.start(7);
        for hour in 0..3u32 {
            for minute in 0..60 {
                let x = if minute == 0 { 120 } else { 2 };
                assert_eq!(b.adjust(7, hour * 60 + minute), None, "hour {hour}");
                b.learn(7, hour * 60 + minute, x);
            }
        }
        // The hour's mean is 2 + 118/60: the job's calls come off every
        // bucket and go back at minute 0.
        let a = b.adjust(7, 3 * 60).expect("minute 0 is a burst");
        assert!((a.extra - 118.0).abs() < 1.0, "{a:?}");
        assert!((a.spread - 118.0 / 60.0).abs() < 0.05, "{a:?}");
        let quiet = b.adjust(7, 3 * 60 + 1).expect("the table applies");
        assert_eq!(quiet.extra, 0.0, "minute 1 is no burst");
        assert_eq!(b.adjust(8, 3 * 60), None, "another shape has no table");
    }

    #[test]
    fn a_one_off_spike_fades_and_tables_are_bounded() {
        let mut b = Bursts::new(60, 1, 5);
        b.start(1);
        b.start(2);
        assert_eq!((b.len(), b.refused), (1, 1));
        for hour in 0..48u32 {
            for minute in 0..60 {
                let x = if hour == 0 && minute == 30 { 300 } else { 10 };
                b.learn(1, hour * 60 + minute, x);
            }
        }
        assert_eq!(b.adjust(1, 48 * 60 + 30), None, "two days later");
        // Buckets that do not divide an hour into 2..=60 have no tables.
        let mut off = Bursts::new(5, 10, 5);
        off.start(1);
        assert!(off.is_empty());
    }
}
