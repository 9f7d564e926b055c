//! Eval owns `agentaudit eval`: the evaluation nobody can fit. Each seed
//! draws a world (`world.rs`) — its keys' rates, rhythms, noise, jobs,
//! ramps and steps, its history length and the attacks of its evaluation
//! day — replays it through the detector in event time, in process, and
//! `score.rs` turns the alerts into what an operator feels: recall and time
//! to detect by cell (magnitude × duration × history), false alerts per
//! 1,000 key-days by the key's hard case, and alert rows per incident.
//!
//! Seeds below `TEST_SEEDS` are for choosing settings; seeds from it on are
//! the test set, reported once per change and never tuned on.

pub mod score;
pub mod world;

use std::sync::Arc;

use crate::config::DetectConfig;
use crate::decode::markers::Markers;
use crate::detect::{AlertChange, Detector};
use crate::event::{Event, KafkaCoords, Record, Status};

pub use score::{Report, SeedResult};
pub use world::Ranges;

/// The first test seed: `--seeds 10000..10040` is the test set.
pub const TEST_SEEDS: u64 = 10_000;

/// The record the detector sees for one call: only what detection reads.
fn record(call: &world::Call<'_>, n: u64, topic: &Arc<str>) -> Record {
    let tenant = world::World::tenant_name(call.tenant);
    Record {
        event: Event {
            event_id: format!("e{n}"),
            ts_ms: call.ts_ms,
            agent_id: world::World::agent_name(call.tenant),
            tenant,
            environment: "production".into(),
            tool: call.tool.to_owned(),
            status: if call.failed {
                Status::Error
            } else {
                Status::Ok
            },
            actor: None,
            workflow_id: None,
            step: None,
            tool_call_id: None,
            tool_type: None,
            agent_version: None,
            mcp_server: None,
            mcp_server_version: None,
            credential_id: None,
            latency_ms: None,
            error_type: call.failed.then(|| "error".to_owned()),
            input: None,
            output: None,
            tokens_in: None,
            tokens_out: None,
            approval: None,
            attributes: Vec::new(),
            unknown_fields: 0,
            output_markers: Markers::default(),
            input_markers: Markers::default(),
        },
        input_json: None,
        attributes_json: None,
        redactions: Vec::new(),
        secret_in_input: false,
        coords: KafkaCoords {
            topic: topic.clone(),
            partition: 0,
            offset: n as i64,
            kafka_ts_ms: None,
        },
        // Arrival is the event's own time: a replay in event time.
        ingested_at_ms: call.ts_ms,
    }
}

/// Replays the world of `seed` through a detector with `cfg`.
pub fn run_seed(seed: u64, ranges: Ranges, cfg: &DetectConfig) -> SeedResult {
    run_world(&world::draw(seed, ranges), cfg)
}

/// Replays `world` through a detector with `cfg` and judges its alerts.
pub fn run_world(world: &world::World, cfg: &DetectConfig) -> SeedResult {
    let mut detector = Detector::new(cfg, false);
    let topic: Arc<str> = Arc::from("eval");
    let mut changes = Vec::new();
    let mut fired = Vec::new();
    let mut n = 0u64;
    world::calls(world, |minute| {
        for call in minute {
            detector.observe(&record(call, n, &topic), None, &mut changes);
            n += 1;
        }
        for c in changes.drain(..) {
            if let AlertChange::Fired(a) = c {
                fired.push(a);
            }
        }
    });
    detector.finish(&mut changes);
    fired.extend(changes.drain(..).filter_map(|c| match c {
        AlertChange::Fired(a) => Some(a),
        AlertChange::Resolved(_) => None,
    }));
    score::seed(world, &fired, n, cfg.bucket_secs)
}

/// Runs every seed of `seeds` on every core and gathers the report in seed
/// order; `progress` sees each seed as it finishes. A seed's world and
/// detector are its own, so the result does not depend on the threads.
pub fn run(
    seeds: std::ops::Range<u64>,
    ranges: Ranges,
    cfg: &DetectConfig,
    mut progress: impl FnMut(&SeedResult),
) -> Report {
    let next = std::sync::atomic::AtomicU64::new(seeds.start);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min((seeds.end - seeds.start) as usize)
        .max(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut results = std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, end) = (&next, seeds.end);
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= end || tx.send(run_seed(seed, ranges, cfg)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut results = Vec::new();
        for r in rx {
            progress(&r);
            results.push(r);
        }
        results
    });
    results.sort_by_key(|r| r.seed);
    let mut report = Report::default();
    for r in results {
        report.add(r);
    }
    report
}

/// One row of an ablation: the configuration as given, or with one
/// mechanism switched off, and its headline figures.
#[derive(Debug, Clone)]
pub struct AblationRow {
    pub off: &'static str,
    /// (detected, of) per headline line, in `Report::headline`'s order.
    pub recall: Vec<(usize, usize)>,
    pub false_alerts_per_1000: f64,
    pub median_rows: Option<f64>,
}

/// The rows of an ablation, printable as a table.
#[derive(Debug, Clone, Default)]
pub struct Ablation(pub Vec<AblationRow>);

/// Runs `seeds` as `cfg` says, then once per mechanism in
/// `baseline::ABLATIONS` with that mechanism (also) switched off.
pub fn ablation(
    seeds: std::ops::Range<u64>,
    ranges: Ranges,
    cfg: &DetectConfig,
    mut starting: impl FnMut(&str),
) -> Ablation {
    let runs = std::iter::once("nothing").chain(crate::detect::baseline::ABLATIONS);
    let mut rows = Vec::new();
    for off in runs {
        starting(off);
        let mut cfg = cfg.clone();
        if off != "nothing" {
            cfg.ablate.push(off.to_owned());
        }
        let report = run(seeds.clone(), ranges, &cfg, |_| {});
        let all = report.false_alert_rates();
        rows.push(AblationRow {
            off,
            recall: report.headline().iter().map(|&(_, d, n)| (d, n)).collect(),
            false_alerts_per_1000: all.last().map_or(0.0, |a| a.2),
            median_rows: report.median_rows_per_incident(),
        });
    }
    Ablation(rows)
}

impl std::fmt::Display for Ablation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| switched off | x5 >= 10 min | x3-5 >= 15 min | errors >= 50 % | new tools | drops | all | false alerts / 1,000 key-days | rows / incident |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|")?;
        for r in &self.0 {
            write!(f, "| {} |", r.off)?;
            for (d, n) in &r.recall {
                write!(f, " {d}/{n} |")?;
            }
            let rows = r.median_rows.map_or("-".to_owned(), |m| format!("{m}"));
            writeln!(f, " {:.2} | {rows} |", r.false_alerts_per_1000)?;
        }
        Ok(())
    }
}

/// Parses `A..B` (half-open) or a single seed.
pub fn parse_seeds(text: &str) -> Result<std::ops::Range<u64>, String> {
    let bad = || format!("`{text}` is not a seed range like 1..40");
    match text.split_once("..") {
        Some((a, b)) => {
            let a: u64 = a.trim().parse().map_err(|_| bad())?;
            let b: u64 = b.trim().parse().map_err(|_| bad())?;
            if a >= b {
                return Err(bad());
            }
            Ok(a..b)
        }
        None => {
            let a: u64 = text.trim().parse().map_err(|_| bad())?;
            Ok(a..a + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat_world(attack: Option<world::AttackKind>) -> world::World {
        let start_ms = 1_767_571_200_000;
        let history_days = 2;
        let eval = start_ms + 2 * 86_400_000;
        world::World {
            seed: 3,
            start_ms,
            history_days,
            tenants: 1,
            keys: vec![world::Key {
                tenant: 0,
                tool: "tool-0-0".into(),
                rate: 5.0,
                daily_amplitude: 0.0,
                daily_phase: 0.0,
                weekend_factor: 1.0,
                noise: world::Noise::Poisson,
                job: None,
                ramp: None,
                step: None,
                error_share: 0.01,
                kind: "plain",
            }],
            attacks: attack
                .map(|kind| world::Attack {
                    kind,
                    tenant: 0,
                    tool: Some("tool-0-0".into()),
                    start_ms: eval + 12 * 3_600_000,
                    end_ms: eval + 12 * 3_600_000 + 30 * 60_000,
                    history_days,
                })
                .into_iter()
                .collect(),
        }
    }

    /// A ×20 rise for 30 minutes on a steady key is found, and its rows
    /// counted; the same world without it raises no false alert.
    #[test]
    fn a_plain_rise_is_found_and_a_quiet_world_stays_quiet() {
        let cfg = DetectConfig::default();
        let r = run_world(&flat_world(Some(world::AttackKind::Rise(20.0))), &cfg);
        assert!(r.attacks[0].detected, "{r:?}");
        assert!(r.attacks[0].alert_rows >= 1);
        assert!(
            r.attacks[0].minutes_to_detect.is_some_and(|m| m <= 10.0),
            "{r:?}"
        );
        let quiet = run_world(&flat_world(None), &cfg);
        assert_eq!(quiet.false_alerts, Vec::<(&str, &str)>::new(), "{quiet:?}");
        assert!(quiet.key_days.values().sum::<f64>() > 0.0);
    }

    /// The short form of `agentaudit eval`: a few narrowed seeds run end to
    /// end into a report with every section.
    #[test]
    fn a_short_evaluation_reports_every_section() {
        let ranges = Ranges {
            max_rate: 20.0,
            max_history_days: 2,
            ..Ranges::default()
        };
        let report = run(1..4, ranges, &DetectConfig::default(), |_| {});
        assert_eq!(report.seeds.len(), 3);
        let text = report.to_string();
        for section in [
            "| recall |",
            "per 1,000 key-days",
            "median alert rows",
            "| attack |",
        ] {
            assert!(text.contains(section), "{section} missing:\n{text}");
        }
        assert!(report.seeds.iter().all(|s| s.events > 0));
        // Seeds run on every core, but the report is in seed order and a
        // seed's result is what it is alone.
        let order: Vec<u64> = report.seeds.iter().map(|s| s.seed).collect();
        assert_eq!(order, vec![1, 2, 3]);
        let alone = run_seed(2, ranges, &DetectConfig::default());
        assert_eq!(format!("{:?}", report.seeds[1]), format!("{alone:?}"));
    }

    #[test]
    fn seed_ranges_parse_half_open() {
        assert_eq!(parse_seeds("1..40"), Ok(1..40));
        assert_eq!(parse_seeds("7"), Ok(7..8));
        assert!(parse_seeds("5..5").is_err());
        assert!(parse_seeds("a..b").is_err());
    }
}
