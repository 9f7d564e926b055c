//! The baseline model on simulated keys: steady, seasonal, bursty, shifted.

use super::*;

fn cfg() -> BaselineConfig {
    BaselineConfig {
        warmup_buckets: 10,
        max_keys: 1000,
        ..BaselineConfig::default()
    }
}

/// 60-second buckets starting on a Monday 00:00 UTC (1970-01-05).
const MONDAY: u32 = 4 * 1440;
/// A week and an hour of 60-second buckets: CUSUMs run against a key's own
/// hour of the week, known once a week has passed.
const SETTLED: u32 = 7 * 1440 + 60;

struct Run {
    b: Baselines,
    closed: Vec<ClosedBucket>,
    signals: Vec<Signal>,
}

impl Run {
    fn new(cfg: BaselineConfig) -> Run {
        Run {
            b: Baselines::new(cfg),
            closed: Vec::new(),
            signals: Vec::new(),
        }
    }
    /// Counts `n` calls, one at a time as a stream would, and returns the
    /// signals they raised.
    fn calls(&mut self, key: u64, bucket: u32, n: u32, shape: Shape) -> Vec<Signal> {
        self.signals.clear();
        for _ in 0..n {
            self.b
                .observe(key, bucket, 1, shape, &mut self.closed, &mut self.signals);
        }
        std::mem::take(&mut self.signals)
    }
    fn feed(&mut self, key: u64, from: u32, to: u32, per_bucket: u32) -> Vec<Signal> {
        let mut out = Vec::new();
        for bucket in from..to {
            out.extend(self.calls(key, bucket, per_bucket, Shape::Own));
        }
        out
    }
}

#[test]
fn steady_traffic_never_alerts_and_learns_its_rate() {
    let mut r = Run::new(cfg());
    assert!(r.feed(1, 0, 2000, 10).is_empty());
    let expected = r.b.expected(1, 2000).expect("warm");
    assert!((expected - 10.0).abs() < 0.5, "{expected}");
}

#[test]
fn a_tenfold_jump_spikes_once_while_its_bucket_is_open() {
    let mut r = Run::new(cfg());
    r.feed(1, 0, 300, 10);
    let signals = r.calls(1, 300, 100, Shape::Own);
    let spikes: Vec<_> = signals
        .iter()
        .filter(|s| s.kind == SignalKind::Spike)
        .collect();
    assert_eq!(spikes.len(), 1, "{signals:?}");
    assert!(spikes[0].observed < 100, "fires while the bucket is open");
    assert_eq!(spikes[0].bucket, 300);
    assert!(spikes[0].score >= 8.0);
}

#[test]
fn cold_keys_do_not_alert() {
    let mut r = Run::new(cfg());
    r.feed(1, 0, 5, 1);
    assert!(r.feed(1, 5, 6, 500).is_empty(), "only 5 buckets of history");
}

#[test]
fn late_calls_count_in_their_own_bucket_or_not_at_all() {
    let mut r = Run::new(cfg());
    r.feed(1, 0, 100, 10);
    // Bucket 100 opens; a call for 98 (two late) still joins 98.
    r.calls(1, 100, 1, Shape::Own);
    r.calls(1, 98, 1, Shape::Own);
    assert_eq!(r.b.late(), 0);
    // 96 left the ring when 100 arrived: too late, counted as such.
    r.calls(1, 96, 5, Shape::Own);
    assert_eq!(r.b.late(), 5);
    let mut signals = Vec::new();
    r.closed.clear();
    r.b.close_all(&mut r.closed, &mut signals);
    let b98 = r.closed.iter().find(|c| c.bucket == 98).expect("98 closed");
    assert_eq!(b98.observed, 11);
}

#[test]
fn the_least_recently_seen_key_is_evicted_and_frees_its_shape() {
    let mut r = Run::new(BaselineConfig {
        max_keys: 3,
        max_profiles: 3,
        ..cfg()
    });
    for key in [1, 2, 3] {
        r.calls(key, 0, 1, Shape::Own);
    }
    r.calls(1, 1, 1, Shape::Own);
    r.calls(4, 1, 1, Shape::Own);
    assert_eq!(r.b.len(), 3);
    assert_eq!(r.b.evictions(), 1);
    assert!(r.b.index.contains_key(&1) && r.b.index.contains_key(&4));
    assert!(!r.b.index.contains_key(&2), "2 was the least recently seen");
    assert_eq!(r.b.profiles(), 3, "4 took the shape 2 left");
    assert!(r.b.profile_of(4).is_some());
}

/// Any tenant can invent names: a flood of keys seen once each used to
/// evict every other tenant's baselines from a plain LRU. New keys now evict
/// only keys on probation; keys that called in two buckets stay.
#[test]
fn a_flood_of_invented_names_never_evicts_an_established_key() {
    let mut r = Run::new(BaselineConfig {
        max_keys: 100,
        max_profiles: 100,
        ..cfg()
    });
    for bucket in 0..3 {
        for key in 1..=20 {
            r.calls(key, bucket, 2, Shape::Own);
        }
    }
    assert_eq!(r.b.protected(), 20);
    for invented in 1_000..11_000 {
        r.calls(invented, 3, 1, Shape::Own);
    }
    assert_eq!(r.b.len(), 100);
    assert!(r.b.evictions() >= 9_900);
    for key in 1..=20 {
        assert!(
            r.b.index.contains_key(&key),
            "established key {key} evicted"
        );
    }
    // The established keys kept their model: their next bucket is ordinary.
    for key in 1..=20 {
        assert!(r.calls(key, 4, 2, Shape::Own).is_empty());
    }
    // Promoted keys are capped at 3/4 of the table: new keys always have room.
    for bucket in 5..8 {
        for key in 2_000..2_200 {
            r.calls(key, bucket, 1, Shape::Own);
        }
    }
    assert!(r.b.protected() <= 75, "{}", r.b.protected());
}

#[test]
fn overdispersed_keys_are_harder_to_surprise() {
    let poisson = score_up(30, 10.0, 10.0);
    let bursty = score_up(30, 10.0, 100.0);
    assert!(poisson > bursty, "{poisson} vs {bursty}");
    assert!(poisson > 5.0);
    assert!(score_down(0, 30.0, 30.0) > 10.0);
    assert!(score_down(25, 30.0, 30.0) < 1.0);
}

/// A working rhythm: busy 08–18 on weekdays, a trickle at night and at
/// weekends, and a batch job at minute 0 of every hour.
fn office(bucket: u32) -> u32 {
    office_with(bucket, 120)
}

fn office_with(bucket: u32, batch: u32) -> u32 {
    let minute = bucket % 60;
    let hour = (bucket / 60) % 24;
    let day = (bucket / 1440 + 3) % 7; // 0 = Monday
    let base = if day < 5 && (8..18).contains(&hour) {
        30
    } else {
        2
    };
    base + if minute == 0 { batch } else { 0 } + (bucket * 7919 % 5)
}

#[test]
fn two_weeks_of_rhythm_and_batch_jobs_stay_quiet_in_the_second() {
    let mut r = Run::new(cfg());
    let week = 7 * 1440;
    for bucket in MONDAY..MONDAY + week {
        r.calls(1, bucket, office(bucket), Shape::Own);
    }
    let mut loud = Vec::new();
    for bucket in MONDAY + week..MONDAY + 2 * week {
        loud.extend(r.calls(1, bucket, office(bucket), Shape::Own));
    }
    assert!(
        loud.is_empty(),
        "{} signals in week two, first {:?}",
        loud.len(),
        loud.first()
    );
    // It learned the shape: a weekday 10:30 expects far more than 03:30.
    let day = MONDAY + 2 * week + 1440;
    let peak = r.b.expected(1, day + 630).expect("warm");
    let night = r.b.expected(1, day + 210).expect("warm");
    assert!(peak > 5.0 * night, "peak {peak} night {night}");
}

#[test]
fn a_burst_at_a_quiet_hour_alerts_sooner_than_at_the_peak() {
    let week = 7 * 1440;
    let calls_to_alert = |minute_of_day: u32, batch: u32| {
        let mut r = Run::new(cfg());
        for bucket in MONDAY..MONDAY + 2 * week {
            r.calls(1, bucket, office_with(bucket, batch), Shape::Own);
        }
        let bucket = MONDAY + 2 * week + minute_of_day;
        for bucket in MONDAY + 2 * week..bucket {
            r.calls(1, bucket, office_with(bucket, batch), Shape::Own);
        }
        (1..=1000)
            .find(|_| !r.calls(1, bucket, 1, Shape::Own).is_empty())
            .unwrap_or(u32::MAX)
    };
    for batch in [0, 120] {
        let quiet = calls_to_alert(3 * 60 + 30, batch);
        let peak = calls_to_alert(10 * 60 + 30, batch);
        assert!(
            quiet < peak,
            "batch {batch}: quiet hour {quiet} calls, peak {peak} calls"
        );
        // An hourly batch job makes the key bursty, and so harder to
        // surprise; without one, a few dozen calls at 03:30 stand out.
        if batch == 0 {
            assert!(quiet <= 40, "{quiet}");
        }
    }
}

#[test]
fn three_times_for_fifteen_minutes_surges_though_no_bucket_spikes() {
    let mut r = Run::new(cfg());
    r.feed(1, 0, SETTLED, 4);
    let mut first = None;
    for (i, bucket) in (SETTLED..SETTLED + 15).enumerate() {
        let signals = r.calls(1, bucket, 12, Shape::Own);
        assert!(
            signals.iter().all(|s| s.kind != SignalKind::Spike),
            "{signals:?}"
        );
        if first.is_none() && signals.iter().any(|s| s.kind == SignalKind::Surge) {
            first = Some(i);
        }
    }
    let at = first.expect("a sustained 3x must surge");
    assert!(at < 15, "after {at} buckets");
}

#[test]
fn a_slow_climb_surges() {
    let mut r = Run::new(cfg());
    r.feed(1, 0, SETTLED, 10);
    // +5 % a bucket: twice the rate after 15 buckets, eight times after 45.
    let surged = (0..60u32).any(|i| {
        let n = (10.0 * 1.05f64.powi(i as i32)) as u32;
        r.calls(1, SETTLED + i, n, Shape::Own)
            .iter()
            .any(|s| s.kind == SignalKind::Surge)
    });
    assert!(surged);
}

#[test]
fn a_key_going_silent_is_a_drop_when_it_returns_and_a_halving_is_too() {
    let mut r = Run::new(cfg());
    r.feed(1, 0, SETTLED, 20);
    // Nothing for 30 buckets, then one call.
    let signals = r.calls(1, SETTLED + 30, 1, Shape::Own);
    assert!(
        signals.iter().any(|s| s.kind == SignalKind::Drop),
        "{signals:?}"
    );
    let mut r = Run::new(cfg());
    r.feed(1, 0, SETTLED, 40);
    let drops = r
        .feed(1, SETTLED, SETTLED + 30, 12)
        .into_iter()
        .filter(|s| s.kind == SignalKind::Drop)
        .count();
    assert!(drops > 0);
}

#[test]
fn a_step_alerts_then_becomes_the_new_normal_within_a_day() {
    // An established key: two weeks at 5 calls a bucket, then 20.
    let mut r = Run::new(cfg());
    let step = MONDAY + 14 * 1440;
    r.feed(1, MONDAY, step, 5);
    let early = r.feed(1, step, step + 60, 20);
    assert!(
        early.iter().any(|s| s.kind != SignalKind::Drop),
        "the step alerts"
    );
    // An attack does not teach at full weight: an hour in, the level has
    // moved far less than a quiet hour would have moved it.
    let expected = r.b.expected(1, step + 60).expect("warm");
    assert!(expected < 8.0, "{expected}");
    // A day later the step is the normal.
    r.feed(1, step + 60, step + 1440, 20);
    let late = r.feed(1, step + 1440, step + 1500, 20);
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn memory_per_key_stays_under_128_bytes_at_a_million_keys() {
    let keys = 1_000_000u64;
    let mut r = Run::new(BaselineConfig {
        max_keys: keys as usize,
        ..cfg()
    });
    for key in 0..keys {
        let shape = if key % 4 == 0 {
            Shape::Own
        } else {
            Shape::Flat
        };
        r.b.observe(
            key.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            0,
            1,
            shape,
            &mut r.closed,
            &mut r.signals,
        );
    }
    assert_eq!(r.b.len(), keys as usize);
    assert_eq!(r.b.profiles(), 65_536, "shapes are capped");
    let per_key = r.b.approx_bytes() / r.b.len();
    assert!(per_key <= 128, "{per_key} bytes per key");
}

#[test]
fn a_borrowing_key_reads_the_owners_shape() {
    let mut r = Run::new(cfg());
    let week = 7 * 1440;
    for bucket in MONDAY..MONDAY + week + 1440 {
        let n = office(bucket);
        r.calls(1, bucket, n, Shape::Own);
        let p = r.b.profile_of(1).expect("owner has a shape");
        r.calls(2, bucket, n, Shape::Borrow(p));
    }
    let at = MONDAY + week + 1440 + 630;
    let owner = r.b.expected(1, at).expect("warm");
    let borrower = r.b.expected(2, at).expect("warm");
    assert!(
        (owner - borrower).abs() < 0.2 * owner,
        "owner {owner} borrower {borrower}"
    );
}

#[test]
fn extreme_parameters_never_panic() {
    for observed in [0u32, 1, 7, 1000, 65_535, u32::MAX] {
        for mean in [
            0.0,
            1e-300,
            1e-9,
            0.1,
            3.0,
            1e6,
            1e12,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
        ] {
            for var in [0.0, 1e-9, 1.0, 1e9, 1e300, f64::NAN, f64::INFINITY] {
                let up = score_up(observed, mean, var);
                let down = score_down(observed, mean, var);
                assert!(
                    up.is_finite() && down.is_finite(),
                    "{observed} {mean} {var}"
                );
            }
        }
    }
}

/// Fresh signals only: what may open an alert.
fn fresh(signals: &[Signal]) -> Vec<Signal> {
    signals.iter().filter(|s| s.fresh).copied().collect()
}

/// A key with a burst of ×4 for 5 buckets every 3 hours needs more than
/// such a burst to open an alert; a steady key of the same rate does not.
/// Far beyond its bursts, the bursty key still opens one.
#[test]
fn a_bursty_key_needs_a_larger_surprise_than_a_steady_one() {
    let bursty = |bucket: u32| if bucket % 180 < 5 { 80 } else { 20 };
    let (mut steady, mut noisy) = (Run::new(cfg()), Run::new(cfg()));
    let day = 1440;
    for bucket in MONDAY..MONDAY + 2 * day {
        steady.calls(1, bucket, 20 + bucket % 3, Shape::Own);
        noisy.calls(1, bucket, bursty(bucket) + bucket % 3, Shape::Own);
    }
    // The same ×4 for 5 buckets, off the bursty key's own schedule.
    let at = MONDAY + 2 * day + 90;
    let (mut on_steady, mut on_noisy) = (Vec::new(), Vec::new());
    for bucket in MONDAY + 2 * day..at + 5 {
        let n = |base: u32| if bucket >= at { 80 } else { base };
        on_steady.extend(steady.calls(1, bucket, n(20 + bucket % 3), Shape::Own));
        on_noisy.extend(noisy.calls(1, bucket, n(bursty(bucket) + bucket % 3), Shape::Own));
    }
    assert!(!fresh(&on_steady).is_empty(), "{on_steady:?}");
    assert!(fresh(&on_noisy).is_empty(), "{on_noisy:?}");
    // ×25 is no burst of this key's.
    let far = noisy.calls(1, at + 5, 500, Shape::Own);
    assert!(!fresh(&far).is_empty(), "{far:?}");
}

/// After an alert the key's bar stays raised for a while: the same rise
/// again within hours opens nothing new, a rise far larger does.
#[test]
fn a_repeat_of_the_same_rise_within_hours_opens_nothing_a_larger_one_does() {
    let mut r = Run::new(cfg());
    let at = MONDAY + 3000;
    r.feed(1, MONDAY, at, 10);
    let first = r.calls(1, at, 45, Shape::Own);
    assert!(!fresh(&first).is_empty(), "{first:?}");
    r.feed(1, at + 1, at + 120, 10);
    let again = r.calls(1, at + 120, 45, Shape::Own);
    assert!(fresh(&again).is_empty(), "{again:?}");
    r.feed(1, at + 121, at + 240, 10);
    let larger = r.calls(1, at + 240, 200, Shape::Own);
    assert!(!fresh(&larger).is_empty(), "{larger:?}");
}

/// A day of history is enough for a sustained ×3 to surge: no test waits
/// a week for the key's own hour of the week.
#[test]
fn on_day_two_a_sustained_threefold_rise_surges() {
    let mut r = Run::new(cfg());
    let day = 1440;
    r.feed(1, MONDAY, MONDAY + day + 600, 8);
    let signals = r.feed(1, MONDAY + day + 600, MONDAY + day + 615, 24);
    assert!(
        fresh(&signals).iter().any(|s| s.kind == SignalKind::Surge),
        "{signals:?}"
    );
    // The ablation switch takes the surge CUSUM out: nothing finds it.
    let mut r = Run::new(BaselineConfig {
        ablate: Ablation::from_names(&["surge_cusum".to_owned()]),
        ..cfg()
    });
    r.feed(1, MONDAY, MONDAY + day + 600, 8);
    let signals = r.feed(1, MONDAY + day + 600, MONDAY + day + 615, 24);
    assert!(
        signals.iter().all(|s| s.kind != SignalKind::Surge),
        "{signals:?}"
    );
}

/// A key whose rate swings ×5 over the day, in its first days: the guess
/// of yesterday's hour widens the tests, and the rhythm raises nothing.
#[test]
fn a_daily_rhythm_in_its_first_days_stays_quiet() {
    let mut r = Run::new(cfg());
    let rhythm = |bucket: u32| {
        let t = f64::from(bucket % 1440) / 1440.0 * std::f64::consts::TAU;
        (30.0 + 20.0 * t.sin()).round() as u32 + bucket % 3
    };
    let mut loud = Vec::new();
    for bucket in MONDAY..MONDAY + 4 * 1440 {
        let s = r.calls(1, bucket, rhythm(bucket), Shape::Own);
        if bucket >= MONDAY + 1440 {
            loud.extend(fresh(&s));
        }
    }
    assert!(
        loud.is_empty(),
        "{} signals, first {:?}",
        loud.len(),
        loud.first()
    );
}
