//! The tests run after every call on the buckets still open (in the ring):
//! a spike in the call's bucket, and a surge over the folded CUSUM plus
//! every open bucket. Each signals at most once per bucket with evidence
//! that reaches the key's calibrated threshold (`fresh`, it may open an
//! alert), and at most once with evidence that reaches only the base
//! threshold (it keeps an open alert open).

use super::{Baselines, CUSUM_CAP, FLOOR, RING, Signal, SignalKind, UP_ALERTED, score_up};

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
        // Rises are tested against the top of a guessed expectation's band.
        let (e, band) = self.expect_and_band(&s, bucket);
        let e = e * band;
        let need = self.need(s.up_peak, s.episode_up, s.has(UP_ALERTED));
        let mut bits = (s.fired, s.kept);
        if observed >= cfg.min_count && f64::from(observed) >= cfg.min_ratio * e.max(FLOOR) {
            let score = score_up(observed, e, Self::var(&s, e));
            if score >= cfg.min_score {
                let signal = Signal {
                    kind: SignalKind::Spike,
                    bucket,
                    observed,
                    expected: e,
                    score,
                    fresh: false,
                };
                emit(
                    &mut bits,
                    1 << pos,
                    signal,
                    score / cfg.min_score >= need,
                    signals,
                );
            }
        }
        if bits.0 & (0x10 << pos) == 0 && !cfg.ablate.surge_cusum {
            let mut cusum = f64::from(s.surge);
            let (mut obs_sum, mut exp_sum) = (0u64, 0.0);
            for b in s.newest.saturating_sub(RING - 1)..=s.newest {
                let x = s.counts[(b % RING) as usize];
                let (e, band) = self.expect_and_band(&s, b);
                let e = e * band;
                cusum = (cusum + self.surge_llr(&s, x, e)).max(0.0);
                obs_sum += u64::from(x);
                exp_sum += e;
            }
            let cusum = cusum.min(CUSUM_CAP * cfg.cusum_threshold);
            if cusum >= cfg.cusum_threshold {
                let signal = Signal {
                    kind: SignalKind::Surge,
                    bucket,
                    observed: u32::try_from(obs_sum).unwrap_or(u32::MAX),
                    expected: exp_sum,
                    score: cusum,
                    fresh: false,
                };
                emit(
                    &mut bits,
                    0x10 << pos,
                    signal,
                    cusum / cfg.cusum_threshold >= need,
                    signals,
                );
            }
        }
        let slot = &mut self.slots[idx as usize];
        if bits.0 & !slot.fired != 0 {
            slot.set(UP_ALERTED, true);
        }
        (slot.fired, slot.kept) = bits;
    }
}

/// Pushes `signal` unless its bucket already gave one of this kind: once
/// fresh (it may open an alert), and before that at most once not fresh
/// (it keeps an open alert open). `bits` are the slot's (fired, kept).
fn emit(bits: &mut (u8, u8), bit: u8, signal: Signal, fresh: bool, signals: &mut Vec<Signal>) {
    let (fired, kept) = bits;
    if *fired & bit != 0 || (!fresh && *kept & bit != 0) {
        return;
    }
    if fresh {
        *fired |= bit;
    } else {
        *kept |= bit;
    }
    signals.push(Signal { fresh, ..signal });
}
