//! Fold owns what happens when a bucket leaves a key's ring: the drop tests
//! and both CUSUMs on the closed bucket, the calibration peaks' episodes,
//! and the learning of level, shape, bursts and dispersion.

use half::f16;

use super::{
    Baselines, CUSUM_CAP, ClosedBucket, DOWN_ALERTED, DROP_RATIO, EPISODE_FLOOR, EPISODE_STEPS,
    FLOOR, MAX_CALIBRATED, NONE, OWNS_PROFILE, PHI_CAP, RATIO_READY, RING, Signal, SignalKind,
    UP_ALERTED, score_down, score_up,
};

impl Baselines {
    /// Folds `bucket` (leaving the ring) into the model: tests it for a drop,
    /// steps both CUSUMs, then teaches the level, shape and dispersion.
    pub(super) fn fold(
        &mut self,
        idx: u32,
        bucket: u32,
        closed: &mut Vec<ClosedBucket>,
        signals: &mut Vec<Signal>,
    ) {
        let cfg = &self.cfg;
        let mut s = self.slots[idx as usize];
        let pos = (bucket % RING) as usize;
        let observed = s.counts[pos];
        let x = f64::from(observed);
        let warm = u32::from(s.history) >= cfg.warmup_buckets;
        if s.history == 0 && observed == 0 {
            // A ring position from before the key's first call.
            return;
        }
        // A guessed expectation is a band: rises are tested against its
        // top, drops against its bottom.
        let (e, band) = self.expect_and_band(&s, bucket);
        let (e_up, e_down) = (e * band, e / band);
        let phi = f64::from(s.phi).max(1.0);
        let mut signalled = (s.fired | s.kept) & (0x11 << pos) != 0;
        // This bucket's evidence, in base thresholds, up and down: what the
        // key's peaks learn from.
        let (mut up, mut down) = (0.0f64, 0.0f64);
        if warm && x > e_up {
            up = score_up(observed, e_up, Self::var(&s, e_up)) / cfg.min_score;
        }
        if warm {
            // Both CUSUMs leak at the level's rate: a statistic that a sparse
            // key can no longer move (a drop CUSUM where nothing is
            // expected) fades instead of alerting for ever.
            let leak = 1.0 - cfg.level_alpha;
            let cap = CUSUM_CAP * cfg.cusum_threshold;
            let surge = f64::from(s.surge) * leak + self.surge_llr(&s, observed, e_up);
            let surge = if cfg.ablate.surge_cusum {
                0.0
            } else {
                surge.clamp(0.0, cap)
            };
            s.surge = f16::from_f64(surge);
            signalled |= surge >= cfg.cusum_threshold;
            up = up.max(surge / cfg.cusum_threshold);
            // A drop is only tested for keys that average at least
            // `min_drop_expected` calls a bucket, and where at least one
            // is expected: below that, silence is ordinary.
            let testable = f64::from(s.flat) >= cfg.min_drop_expected;
            let drop = if testable && e_down >= 1.0 {
                f64::from(s.drop) * leak + (x * self.ln_drop - e_down * (DROP_RATIO - 1.0)) / phi
            } else {
                f64::from(s.drop) * leak
            };
            let drop = if cfg.ablate.drop_cusum {
                0.0
            } else {
                drop.clamp(0.0, cap)
            };
            s.drop = f16::from_f64(drop);
            let e = e_down;
            let var = Self::var(&s, e);
            let mut signal = None;
            if testable && e >= cfg.min_drop_expected && x < e {
                let score = score_down(observed, e, var.max(e));
                down = score / cfg.min_score;
                if x * cfg.min_ratio <= e
                    && score >= cfg.min_score
                    && !cfg.ablate.single_bucket_drop
                {
                    signal = Some(score);
                }
            }
            if signal.is_none() && drop >= cfg.cusum_threshold {
                signal = Some(drop);
            }
            down = down.max(drop / cfg.cusum_threshold);
            if let Some(score) = signal {
                signalled = true;
                let need = self.need(s.down_peak, s.episode_down, s.has(DOWN_ALERTED));
                let fresh = down >= need;
                if fresh {
                    s.set(DOWN_ALERTED, true);
                }
                signals.push(Signal {
                    kind: SignalKind::Drop,
                    bucket,
                    observed,
                    expected: e,
                    score,
                    fresh,
                });
            }
        }
        if warm {
            let decay = cfg.calibration_decay;
            // Within an episode the peak only decays and the episode keeps
            // its largest evidence; once it ends, the peak learns that.
            let learn = |peak: &mut f16, episode: &mut u8, v: f64| -> bool {
                let mut p = f64::from(*peak) * decay;
                let ended = v < EPISODE_FLOOR && *episode > 0;
                if v >= EPISODE_FLOOR {
                    let q = (v.min(MAX_CALIBRATED) * EPISODE_STEPS).round();
                    *episode = (*episode).max(q.min(255.0) as u8);
                } else {
                    p = p.max(v).max(f64::from(*episode) / EPISODE_STEPS);
                    *episode = 0;
                }
                *peak = f16::from_f64(p);
                ended
            };
            if learn(&mut s.up_peak, &mut s.episode_up, up) {
                s.set(UP_ALERTED, false);
            }
            if learn(&mut s.down_peak, &mut s.episode_down, down) {
                s.set(DOWN_ALERTED, false);
            }
        }
        closed.push(ClosedBucket {
            key: s.key,
            bucket,
            observed,
            expected: e,
            score: if cfg.score_closed {
                score_up(observed, e, Self::var(&s, e))
            } else {
                0.0
            },
            warm,
        });
        // Learn: a bucket that signalled teaches at a fraction of the weight.
        let m = if signalled { cfg.alerting_weight } else { 1.0 };
        let a = cfg.level_alpha * m;
        let (lx, lp) = (f64::from(s.lx), f64::from(s.lp));
        let h = self.hour_of_week(bucket);
        let seen = self.slot_seen(&s, bucket);
        let young = seen < self.buckets_per_hour();
        if s.has(OWNS_PROFILE) && s.profile != NONE {
            // A bucket far above expectation may be a job that recurs every
            // hour: from then on its shape keeps bucket-of-hour means.
            if !self.bursts.tracks(s.profile)
                && !cfg.ablate.burst_tables
                && warm
                && observed >= cfg.min_count
                && x >= 3.0 * e.max(FLOOR)
            {
                self.bursts.start(s.profile);
            }
            self.bursts.learn(s.profile, bucket, observed);
        }
        let cfg = &self.cfg;
        if s.has(OWNS_PROFILE)
            && let Some(p) = self.profiles.get_mut(s.profile as usize)
        {
            // The shape learns calls, not calls over level: dividing by a
            // level that itself learns from the shape feeds back on itself
            // and drifts. The level only corrects the shape for what the
            // last hours showed.
            // A young slot averages what it has seen (the first visit's
            // running mean, then the mean over visits); an old one is an
            // EWMA. Starting from the first bucket alone, an hourly batch
            // job at minute 0 would set the hour's shape for weeks. A slot
            // still in its first visit knows nothing to alert against, so
            // it learns at full weight.
            let w = cfg.season_weight.max(1.0 / (seen as f64 + 1.0));
            let m = if young { 1.0 } else { m };
            let old = f64::from(p[h]);
            p[h] = f16::from_f64(if old.is_nan() {
                x
            } else {
                old + w * m * (x - old)
            });
        }
        // The level compares calls with the shape the key expects by: never
        // a first visit's running mean, which holds this very bucket.
        // Bucket by bucket: a job's calls against the job's bucket, or the
        // level of a key whose calls all come in one bucket an hour would
        // read the hour's mean against them.
        if let Some((shape, true)) = self.bucket_shape_and_kind(&s, bucket) {
            if s.has(RATIO_READY) {
                s.lx = (lx + a * (x - lx)) as f32;
                s.lp = (lp + a * (shape - lp)) as f32;
            } else {
                // Seed the level at the key's smoothed rate over the shape:
                // a tenant that quadrupled while its shapes were learned
                // (onboarding) starts at its new level, and one bucket (an
                // hourly batch job's) cannot set it askew.
                s.lx = f64::from(s.flat).max(FLOOR) as f32;
                s.lp = shape.max(FLOOR) as f32;
                s.set(RATIO_READY, true);
            }
        }
        // A young key averages its buckets so far: an EWMA started from
        // its first bucket (often a partial one) would stay biased for
        // hours.
        let young_key = 1.0 / (f64::from(s.history) + 1.0);
        let flat = f64::from(s.flat);
        s.flat = (flat + a.max(young_key) * (x - flat)) as f32;
        if warm {
            let dev = ((x - e) * (x - e) / e.max(FLOOR)).min(PHI_CAP);
            let w = a;
            s.phi = (f64::from(s.phi) + w * (dev - f64::from(s.phi))) as f32;
        }
        s.counts[pos] = 0;
        s.fired &= !(0x11 << pos);
        s.kept &= !(0x11 << pos);
        s.history = s.history.saturating_add(1);
        self.slots[idx as usize] = s;
    }
}
