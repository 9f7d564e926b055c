//! World owns one randomized world of an evaluation seed: tenants and
//! their (tool) keys with every parameter drawn from wide ranges — rate,
//! daily and weekly rhythm, noise (Poisson, over-dispersed, heavy-tailed
//! bursts), recurring jobs, onboarding ramps and steps — then the attacks
//! of its evaluation day, and the calls minute by minute in time order.
//! Nothing here is chosen to suit the detector: a seed is a world nobody
//! tuned for.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// Bounds of the draw; the defaults are the ranges.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    /// Calls per minute per key, drawn log-uniformly.
    pub min_rate: f64,
    pub max_rate: f64,
    /// Days of history before the evaluation day.
    pub max_history_days: u32,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges {
            min_rate: 0.02,
            max_rate: 500.0,
            max_history_days: 21,
        }
    }
}

/// How a key's counts scatter around its expectation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Noise {
    Poisson,
    /// Gamma-Poisson with this shape (variance λ + λ²/k).
    OverDispersed(f64),
    /// Poisson, with bursts starting each minute with this probability.
    Bursty(f64),
}

/// One (tenant, tool) key and what shapes its calls.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Key {
    pub tenant: usize,
    pub tool: String,
    pub rate: f64,
    pub daily_amplitude: f64,
    /// Where in the day (0–1) the rhythm peaks, shared by a tenant's keys.
    pub daily_phase: f64,
    pub weekend_factor: f64,
    pub noise: Noise,
    /// (period, offset) in minutes, and calls per run.
    pub job: Option<(i64, i64, f64)>,
    /// (start, end) ms and the factor reached at the end.
    pub ramp: Option<(i64, i64, f64)>,
    /// (at) ms and the factor after it.
    pub step: Option<(i64, f64)>,
    pub error_share: f64,
    /// The benign hard case that marks the key, for false alerts by kind.
    pub kind: &'static str,
}

/// What an attack does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttackKind {
    /// One key's calls × factor.
    Rise(f64),
    /// Every key of a tenant × factor.
    Flood(f64),
    /// This share of one key's calls fail.
    Errors(f64),
    /// A tool the tenant never called, this many calls.
    NewTool(u32),
    /// One key goes silent.
    Drop,
}

impl AttackKind {
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Rise(_) => "rise",
            AttackKind::Flood(_) => "flood",
            AttackKind::Errors(_) => "error_burst",
            AttackKind::NewTool(_) => "new_tool",
            AttackKind::Drop => "drop",
        }
    }
}

/// One planted attack: the ground truth.
#[derive(Debug, Clone)]
pub struct Attack {
    pub kind: AttackKind,
    pub tenant: usize,
    /// The key's tool; `None` for a whole-tenant flood.
    pub tool: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    pub history_days: u32,
}

/// A drawn world.
#[derive(Debug, Clone)]
pub struct World {
    pub seed: u64,
    pub start_ms: i64,
    pub history_days: u32,
    pub tenants: usize,
    pub keys: Vec<Key>,
    pub attacks: Vec<Attack>,
}

impl World {
    /// The evaluation day: the last one.
    pub fn eval_start_ms(&self) -> i64 {
        self.start_ms + i64::from(self.history_days) * DAY
    }

    pub fn end_ms(&self) -> i64 {
        self.eval_start_ms() + DAY
    }

    pub fn tenant_name(i: usize) -> String {
        format!("tenant-{i}")
    }

    pub fn agent_name(i: usize) -> String {
        format!("tenant-{i}-agent")
    }
}

fn log_uniform(rng: &mut SmallRng, lo: f64, hi: f64) -> f64 {
    (rng.random_range(lo.ln()..=hi.ln())).exp()
}

/// Draws the world of `seed`.
pub fn draw(seed: u64, r: Ranges) -> World {
    let mut rng = SmallRng::seed_from_u64(seed);
    let history_days = rng.random_range(1..=r.max_history_days.max(1));
    // A Monday 2026-01-05 plus 0–6 days: any weekday starts the history.
    let start_ms = 1_767_571_200_000 + rng.random_range(0..7) * DAY;
    let end_history = start_ms + i64::from(history_days) * DAY;
    let tenants = rng.random_range(1..=2usize);
    let mut keys = Vec::new();
    for t in 0..tenants {
        // A tenant's keys share its daily phase, as one team's users do.
        let phase = rng.random_range(0.0..1.0);
        for j in 0..rng.random_range(1..=3usize) {
            let rate = log_uniform(&mut rng, r.min_rate, r.max_rate);
            let daily_amplitude = if rng.random_bool(0.7) {
                rng.random_range(0.0..0.9)
            } else {
                0.0
            };
            let weekend_factor = if rng.random_bool(0.5) {
                rng.random_range(0.1..1.0)
            } else {
                1.0
            };
            let noise = match rng.random_range(0..10) {
                0..4 => Noise::Poisson,
                4..7 => Noise::OverDispersed(rng.random_range(0.5..5.0)),
                _ => Noise::Bursty(rng.random_range(0.001..0.02)),
            };
            let job = rng.random_bool(0.25).then(|| {
                let period = [5, 10, 15, 30, 60, 120, 360, 720, 1440][rng.random_range(0..9)];
                let calls = (rate * period as f64 * rng.random_range(0.2..2.0)).max(1.0);
                (period, rng.random_range(0..period), calls)
            });
            let ramp = rng.random_bool(0.15).then(|| {
                let span = rng.random_range(3_600_000..=3 * DAY);
                let at = rng.random_range(start_ms..end_history + DAY);
                (at, at + span, rng.random_range(2.0..10.0))
            });
            let step = rng.random_bool(0.1).then(|| {
                (
                    rng.random_range(start_ms..end_history + DAY),
                    rng.random_range(0.3..3.0),
                )
            });
            let kind = if ramp.is_some() {
                "ramp"
            } else if step.is_some() {
                "step"
            } else if job.is_some() {
                "job"
            } else {
                match noise {
                    Noise::Bursty(_) => "bursty",
                    Noise::OverDispersed(_) => "overdispersed",
                    Noise::Poisson if weekend_factor < 1.0 || daily_amplitude > 0.0 => "rhythm",
                    Noise::Poisson => "plain",
                }
            };
            keys.push(Key {
                tenant: t,
                tool: format!("tool-{t}-{j}"),
                rate,
                daily_amplitude,
                daily_phase: phase,
                weekend_factor,
                noise,
                job,
                ramp,
                step,
                error_share: rng.random_range(0.0..0.1),
                kind,
            });
        }
    }
    let mut attacks = Vec::new();
    let eval = end_history;
    for _ in 0..rng.random_range(1..=3) {
        let key = &keys[rng.random_range(0..keys.len())];
        let minutes = rng.random_range(1..=60i64);
        let start = eval + rng.random_range(0..(DAY / MINUTE - minutes)) * MINUTE;
        let end = start + minutes * MINUTE;
        let kind = match rng.random_range(0..20) {
            0..9 => AttackKind::Rise(log_uniform(&mut rng, 2.0, 50.0)),
            9..11 => AttackKind::Flood(log_uniform(&mut rng, 2.0, 50.0)),
            11..15 if key.rate * 60.0 >= 1.0 && key.rate * 60.0 <= 1000.0 => {
                AttackKind::Errors(rng.random_range(0.1..0.9))
            }
            11..18 => AttackKind::NewTool(rng.random_range(1..=50)),
            _ if key.rate >= 1.0 => AttackKind::Drop,
            _ => AttackKind::Rise(log_uniform(&mut rng, 2.0, 50.0)),
        };
        let end = match kind {
            // An error burst needs calls to fail: at least a few minutes.
            AttackKind::Errors(_) => end.max(start + 5 * MINUTE),
            // Silence shows only over time.
            AttackKind::Drop => end.max(start + 30 * MINUTE),
            _ => end,
        };
        attacks.push(Attack {
            kind,
            tenant: key.tenant,
            tool: match kind {
                AttackKind::Flood(_) => None,
                AttackKind::NewTool(_) => Some(format!("new-tool-{}", attacks.len())),
                _ => Some(key.tool.clone()),
            },
            start_ms: start,
            end_ms: end.min(eval + DAY),
            history_days,
        });
    }
    World {
        seed,
        start_ms,
        history_days,
        tenants,
        keys,
        attacks,
    }
}

/// A Poisson draw: Knuth's product under 30, a normal approximation above.
fn poisson(rng: &mut SmallRng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        let limit = (-lambda).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= rng.random::<f64>();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
    (lambda + lambda.sqrt() * normal(rng)).round().max(0.0) as u64
}

fn normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A Gamma(shape, 1) draw (Marsaglia and Tsang; boosted below shape 1).
fn gamma(rng: &mut SmallRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// One call: what the detector is shown.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub ts_ms: i64,
    pub tenant: usize,
    pub tool: &'a str,
    pub failed: bool,
}

/// Per key, the state of its bursts.
struct Burst {
    until_minute: i64,
    factor: f64,
}

/// The expected calls of `key` in the minute starting at `t`, before noise.
fn expected(key: &Key, t: i64, world_start: i64) -> f64 {
    let day_pos = ((t - world_start).rem_euclid(DAY)) as f64 / DAY as f64;
    let daily =
        1.0 + key.daily_amplitude * (std::f64::consts::TAU * (day_pos - key.daily_phase)).sin();
    // 2026-01-05 was a Monday: days 5 and 6 of the week are the weekend.
    let weekday = ((t - 1_767_571_200_000).div_euclid(DAY)).rem_euclid(7);
    let weekly = if weekday >= 5 {
        key.weekend_factor
    } else {
        1.0
    };
    let ramp = match key.ramp {
        Some((a, _, _)) if t < a => 1.0,
        Some((a, b, f)) if t < b => 1.0 + (f - 1.0) * (t - a) as f64 / (b - a) as f64,
        Some((_, _, f)) => f,
        None => 1.0,
    };
    let step = match key.step {
        Some((at, f)) if t >= at => f,
        _ => 1.0,
    };
    key.rate * daily * weekly * ramp * step
}

/// Generates the world's calls minute by minute and hands each minute's,
/// in time order, to `emit`.
pub fn calls(world: &World, mut emit: impl FnMut(&[Call<'_>])) {
    let mut rng = SmallRng::seed_from_u64(world.seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut bursts: Vec<Burst> = world
        .keys
        .iter()
        .map(|_| Burst {
            until_minute: -1,
            factor: 1.0,
        })
        .collect();
    let mut minute_calls: Vec<Call<'_>> = Vec::new();
    let first = world.start_ms / MINUTE;
    let last = world.end_ms() / MINUTE;
    for m in first..last {
        let t = m * MINUTE;
        minute_calls.clear();
        for (i, key) in world.keys.iter().enumerate() {
            let mut lambda = expected(key, t, world.start_ms);
            let mut fail_share = key.error_share;
            for a in &world.attacks {
                if t < a.start_ms || t >= a.end_ms || a.tenant != key.tenant {
                    continue;
                }
                let this_key = a.tool.as_deref() == Some(key.tool.as_str());
                match a.kind {
                    AttackKind::Rise(f) if this_key => lambda *= f,
                    AttackKind::Flood(f) => lambda *= f,
                    AttackKind::Errors(s) if this_key => fail_share = s,
                    AttackKind::Drop if this_key => lambda = 0.0,
                    _ => {}
                }
            }
            let n = match key.noise {
                Noise::Poisson => poisson(&mut rng, lambda),
                Noise::OverDispersed(k) => {
                    let g = gamma(&mut rng, k);
                    poisson(&mut rng, lambda * g / k)
                }
                Noise::Bursty(p) => {
                    let b = &mut bursts[i];
                    if m > b.until_minute && rng.random_bool(p) {
                        b.until_minute = m + rng.random_range(1..=15);
                        b.factor = (1.5 + 0.7 * normal(&mut rng)).exp();
                    }
                    let f = if m <= b.until_minute { b.factor } else { 1.0 };
                    poisson(&mut rng, lambda * f)
                }
            };
            let job = match key.job {
                Some((period, offset, calls)) if (m - offset).rem_euclid(period) == 0 => {
                    poisson(&mut rng, calls)
                }
                _ => 0,
            };
            for j in 0..(n + job) {
                minute_calls.push(Call {
                    ts_ms: t + (j as i64 * MINUTE) / (n + job) as i64,
                    tenant: key.tenant,
                    tool: &key.tool,
                    failed: rng.random_bool(fail_share.clamp(0.0, 1.0)),
                });
            }
        }
        for a in &world.attacks {
            if let (AttackKind::NewTool(n), Some(tool)) = (a.kind, a.tool.as_deref())
                && t >= a.start_ms
                && t < a.end_ms
            {
                let minutes = ((a.end_ms - a.start_ms) / MINUTE).max(1);
                let here = u64::from(n) / minutes as u64
                    + u64::from((m - a.start_ms / MINUTE) < (i64::from(n) % minutes));
                for j in 0..here {
                    minute_calls.push(Call {
                        ts_ms: t + (j as i64 * MINUTE) / here as i64,
                        tenant: a.tenant,
                        tool,
                        failed: false,
                    });
                }
            }
        }
        minute_calls.sort_by_key(|c| c.ts_ms);
        emit(&minute_calls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_is_one_world_and_its_draws_stay_in_range() {
        let a = draw(7, Ranges::default());
        let b = draw(7, Ranges::default());
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        for seed in 0..200 {
            let w = draw(seed, Ranges::default());
            assert!((1..=21).contains(&w.history_days));
            assert!(!w.attacks.is_empty());
            for k in &w.keys {
                assert!((0.02..=500.0).contains(&k.rate), "{}", k.rate);
            }
            for a in &w.attacks {
                assert!(a.start_ms >= w.eval_start_ms() && a.end_ms <= w.end_ms());
            }
        }
    }

    #[test]
    fn the_noise_draws_have_their_means() {
        let mut rng = SmallRng::seed_from_u64(1);
        for lambda in [0.5, 4.0, 80.0] {
            let n = 20_000;
            let mean = (0..n).map(|_| poisson(&mut rng, lambda)).sum::<u64>() as f64 / n as f64;
            assert!(
                (mean - lambda).abs() < 0.05 * lambda + 0.05,
                "{lambda}: {mean}"
            );
        }
        let mean = (0..20_000).map(|_| gamma(&mut rng, 0.7)).sum::<f64>() / 20_000.0;
        assert!((mean - 0.7).abs() < 0.05, "{mean}");
    }
}
