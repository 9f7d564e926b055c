//! The tests run after every call on the buckets still open (in the ring):
//! a spike in the call's bucket, and a surge over the folded CUSUM plus
//! every open bucket. Each fires at most once per bucket.

use super::{Baselines, FLOOR, RING, Signal, SignalKind, score_up};

impl Baselines {
    /// Tests the open buckets after a call: a spike in `bucket`, a surge
    /// over the folded CUSUM plus every bucket still in the ring.
    pub(super) fn test_open(&mut self, idx: u32, bucket: u32, signals: &mut Vec<Signal>) {
        let cfg = &self.cfg;
        let s = self.slots[idx as usize];
        if u32::from(s.history) < cfg.warmup_buckets {
            return;
        }
        let pos = (bucket % RING) as usize;
        let observed = s.counts[pos];
        let e = self.expect(&s, bucket);
        let mut fired = s.fired;
        if fired & (1 << pos) == 0
            && observed >= cfg.min_count
            && f64::from(observed) >= cfg.min_ratio * e.max(FLOOR)
        {
            let score = score_up(observed, e, Self::var(&s, e));
            if score >= cfg.min_score {
                fired |= 1 << pos;
                signals.push(Signal {
                    kind: SignalKind::Spike,
                    bucket,
                    observed,
                    expected: e,
                    score,
                });
            }
        }
        if fired & (0x10 << pos) == 0 && self.settled(&s, bucket) {
            let mut cusum = f64::from(s.surge);
            let (mut obs_sum, mut exp_sum) = (0u64, 0.0);
            for b in s.newest.saturating_sub(RING - 1)..=s.newest {
                let x = s.counts[(b % RING) as usize];
                let e = self.expect(&s, b);
                cusum = (cusum + self.surge_llr(&s, x, e)).max(0.0);
                obs_sum += u64::from(x);
                exp_sum += e;
            }
            if cusum >= cfg.cusum_threshold {
                fired |= 0x10 << pos;
                signals.push(Signal {
                    kind: SignalKind::Surge,
                    bucket,
                    observed: u32::try_from(obs_sum).unwrap_or(u32::MAX),
                    expected: exp_sum,
                    score: cusum,
                });
            }
        }
        self.slots[idx as usize].fired = fired;
    }
}
