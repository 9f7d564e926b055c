//! Score owns judging one seed's alerts against its world's attacks, and
//! the report over seeds: recall and time to detect by cell (magnitude ×
//! duration × history), false alerts per 1,000 key-days by the key's hard
//! case, and alert rows per incident — the figures an operator feels.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::world::{AttackKind, World};
use crate::detect::Alert;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
/// An alert this long after an attack's end still belongs to it: a drop
/// and a sustained rise are seen only as time passes.
const GRACE_MS: i64 = 30 * MINUTE;

/// One attack, judged.
#[derive(Debug, Clone, Serialize)]
pub struct AttackResult {
    pub kind: &'static str,
    /// The factor of a rise or flood, the failing share of an error burst,
    /// the calls of a new tool; 0 for a drop.
    pub magnitude: f64,
    pub minutes: i64,
    pub history_days: u32,
    /// The hard case of the attacked key ("tenant" for a flood, "new" for a
    /// new tool): recall on a bursty key is not recall on a steady one.
    pub key_kind: &'static str,
    pub detected: bool,
    /// From the attack's start to the first alert's detection, in event time.
    pub minutes_to_detect: Option<f64>,
    /// Alert rows it raised (keys × rules).
    pub alert_rows: usize,
}

/// One seed's result.
#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub history_days: u32,
    pub events: u64,
    pub attacks: Vec<AttackResult>,
    /// False alerts after the first day, by the hard case of their key, and
    /// their rule.
    pub false_alerts: Vec<(&'static str, &'static str)>,
    /// Key-days judged (after the first day), by hard case.
    pub key_days: BTreeMap<&'static str, f64>,
    /// The world's keys as drawn, to look into a figure.
    pub keys: Vec<super::world::Key>,
}

fn matches(a: &Alert, attack: &super::world::Attack, bucket_ms: i64) -> bool {
    if a.tenant != World::tenant_name(attack.tenant) {
        return false;
    }
    let key = match (&attack.kind, attack.tool.as_deref()) {
        (AttackKind::Flood(_), _) | (_, None) => true,
        (_, Some(tool)) => a.tool == tool || a.tool.is_empty(),
    };
    key && a.window_start_ms < attack.end_ms + GRACE_MS
        && a.window_end_ms > attack.start_ms - bucket_ms
}

/// Judges `fired` against `world`.
pub fn seed(world: &World, fired: &[Alert], events: u64, bucket_secs: u64) -> SeedResult {
    let bucket_ms = i64::try_from(bucket_secs * 1000).unwrap_or(300_000);
    let mut claimed = vec![false; fired.len()];
    let mut attacks = Vec::new();
    for attack in &world.attacks {
        let mut rows = 0;
        let mut first: Option<i64> = None;
        for (i, a) in fired.iter().enumerate() {
            if matches(a, attack, bucket_ms) {
                claimed[i] = true;
                rows += 1;
                let at = a.detected_at_ms.max(a.window_start_ms);
                first = Some(first.map_or(at, |f| f.min(at)));
            }
        }
        attacks.push(AttackResult {
            kind: attack.kind.name(),
            magnitude: match attack.kind {
                AttackKind::Rise(f) | AttackKind::Flood(f) => f,
                AttackKind::Errors(s) => s,
                AttackKind::NewTool(n) => f64::from(n),
                AttackKind::Drop => 0.0,
            },
            minutes: (attack.end_ms - attack.start_ms) / MINUTE,
            history_days: attack.history_days,
            key_kind: match (&attack.kind, attack.tool.as_deref()) {
                (AttackKind::Flood(_), _) | (_, None) => "tenant",
                (AttackKind::NewTool(_), _) => "new",
                (_, Some(tool)) => world
                    .keys
                    .iter()
                    .find(|k| k.tenant == attack.tenant && k.tool == tool)
                    .map_or("other", |k| k.kind),
            },
            detected: first.is_some(),
            minutes_to_detect: first.map(|f| (f - attack.start_ms).max(0) as f64 / MINUTE as f64),
            alert_rows: rows,
        });
    }
    let judged_from = world.start_ms + DAY;
    let kind_of = |a: &Alert| -> &'static str {
        if a.tool.is_empty() {
            return "tenant";
        }
        world
            .keys
            .iter()
            .find(|k| a.tool == k.tool && a.tenant == World::tenant_name(k.tenant))
            .map_or("other", |k| k.kind)
    };
    let false_alerts = fired
        .iter()
        .zip(&claimed)
        .filter(|(a, claimed)| !**claimed && a.detected_at_ms >= judged_from)
        .map(|(a, _)| (kind_of(a), a.rule.name()))
        .collect();
    let days = (world.end_ms() - judged_from) as f64 / DAY as f64;
    let mut key_days: BTreeMap<&'static str, f64> = BTreeMap::new();
    for k in &world.keys {
        // A (tenant, tool) key and its agent's key: two keys, one hard case.
        *key_days.entry(k.kind).or_default() += 2.0 * days;
    }
    *key_days.entry("tenant").or_default() += world.tenants as f64 * days;
    SeedResult {
        seed: world.seed,
        history_days: world.history_days,
        events,
        attacks,
        false_alerts,
        key_days,
        keys: world.keys.clone(),
    }
}

/// The report over seeds.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seeds: Vec<SeedResult>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn magnitude_bin(a: &AttackResult) -> &'static str {
    match a.kind {
        "rise" | "flood" => match a.magnitude {
            m if m < 3.0 => "x2-3",
            m if m < 5.0 => "x3-5",
            m if m < 10.0 => "x5-10",
            _ => "x10-50",
        },
        "error_burst" if a.magnitude >= 0.5 => ">=50%",
        "error_burst" => "<50%",
        _ => "-",
    }
}

fn duration_bin(minutes: i64) -> &'static str {
    match minutes {
        ..5 => "1-4 min",
        5..15 => "5-14 min",
        _ => "15-60 min",
    }
}

fn history_bin(days: u32) -> &'static str {
    match days {
        ..2 => "1 d",
        2..7 => "2-6 d",
        _ => "7-21 d",
    }
}

/// A cell of the recall table: attack, magnitude, duration, history.
type Cell = (&'static str, &'static str, &'static str, &'static str);

/// Detected of all, as a share.
fn recall<'a>(attacks: impl Iterator<Item = &'a AttackResult>) -> (usize, usize) {
    attacks.fold((0, 0), |(d, n), a| (d + usize::from(a.detected), n + 1))
}

impl Report {
    pub fn add(&mut self, r: SeedResult) {
        self.seeds.push(r);
    }

    fn attacks(&self) -> impl Iterator<Item = &AttackResult> {
        self.seeds.iter().flat_map(|s| &s.attacks)
    }

    /// The headline figures, as (name, detected, of, share).
    pub fn headline(&self) -> Vec<(&'static str, usize, usize)> {
        let rises = || {
            self.attacks()
                .filter(|a| a.kind == "rise" || a.kind == "flood")
        };
        vec![
            (
                "rises of x5 or more, >= 10 min, >= 1 day of history",
                recall(rises().filter(|a| a.magnitude >= 5.0 && a.minutes >= 10)),
            ),
            (
                "rises of x3-5, >= 15 min, >= 2 days of history",
                recall(rises().filter(|a| {
                    (3.0..5.0).contains(&a.magnitude) && a.minutes >= 15 && a.history_days >= 2
                })),
            ),
            (
                "error bursts of 50 % or more",
                recall(
                    self.attacks()
                        .filter(|a| a.kind == "error_burst" && a.magnitude >= 0.5),
                ),
            ),
            (
                "new tools",
                recall(self.attacks().filter(|a| a.kind == "new_tool")),
            ),
            ("drops", recall(self.attacks().filter(|a| a.kind == "drop"))),
            ("every attack", recall(self.attacks())),
        ]
        .into_iter()
        .map(|(name, (d, n))| (name, d, n))
        .collect()
    }

    /// False alerts per 1,000 key-days, by hard case and in all.
    pub fn false_alert_rates(&self) -> Vec<(&'static str, usize, f64)> {
        let mut by: BTreeMap<&'static str, (usize, f64)> = BTreeMap::new();
        for s in &self.seeds {
            for (kind, days) in &s.key_days {
                by.entry(kind).or_default().1 += days;
            }
            for (kind, _) in &s.false_alerts {
                by.entry(kind).or_default().0 += 1;
            }
        }
        let (all_n, all_days) = by.values().fold((0, 0.0), |(n, d), v| (n + v.0, d + v.1));
        let mut out: Vec<_> = by
            .into_iter()
            .map(|(k, (n, d))| (k, n, 1000.0 * n as f64 / d.max(1e-9)))
            .collect();
        out.push(("all", all_n, 1000.0 * all_n as f64 / all_days.max(1e-9)));
        out
    }

    /// Median alert rows of a detected attack.
    pub fn median_rows_per_incident(&self) -> Option<f64> {
        median(
            self.attacks()
                .filter(|a| a.detected)
                .map(|a| a.alert_rows as f64)
                .collect(),
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let events: u64 = self.seeds.iter().map(|s| s.events).sum();
        writeln!(f, "{} seeds, {events} calls\n", self.seeds.len())?;
        writeln!(f, "| recall | detected | of | share |\n|---|---|---|---|")?;
        for (name, d, n) in self.headline() {
            let share = if n == 0 {
                f64::NAN
            } else {
                100.0 * d as f64 / n as f64
            };
            writeln!(f, "| {name} | {d} | {n} | {share:.1} % |")?;
        }
        writeln!(
            f,
            "\n| false alerts by hard case | alerts | per 1,000 key-days |\n|---|---|---|"
        )?;
        for (kind, n, rate) in self.false_alert_rates() {
            writeln!(f, "| {kind} | {n} | {rate:.2} |")?;
        }
        writeln!(
            f,
            "\n| rises of x5 or more, >= 10 min, by the key's hard case | detected | of |\n|---|---|---|"
        )?;
        let mut by_kind: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        for a in self.attacks().filter(|a| {
            (a.kind == "rise" || a.kind == "flood") && a.magnitude >= 5.0 && a.minutes >= 10
        }) {
            let c = by_kind.entry(a.key_kind).or_default();
            c.0 += usize::from(a.detected);
            c.1 += 1;
        }
        for (kind, (d, n)) in by_kind {
            writeln!(f, "| {kind} | {d} | {n} |")?;
        }
        let rows = self
            .median_rows_per_incident()
            .map_or("-".to_owned(), |m| format!("{m}"));
        writeln!(f, "\nmedian alert rows per detected incident: {rows}\n")?;
        // Recall and time to detect by cell.
        let mut cells: BTreeMap<Cell, (usize, usize, Vec<f64>)> = BTreeMap::new();
        for a in self.attacks() {
            let c = cells
                .entry((
                    a.kind,
                    magnitude_bin(a),
                    duration_bin(a.minutes),
                    history_bin(a.history_days),
                ))
                .or_default();
            c.1 += 1;
            if let Some(m) = a.minutes_to_detect {
                c.0 += 1;
                c.2.push(m);
            }
        }
        writeln!(
            f,
            "| attack | magnitude | duration | history | detected | of | median minutes to detect |\n|---|---|---|---|---|---|---|"
        )?;
        for ((kind, mag, dur, hist), (d, n, ttd)) in cells {
            let ttd = median(ttd).map_or("-".to_owned(), |m| format!("{m:.1}"));
            writeln!(f, "| {kind} | {mag} | {dur} | {hist} | {d} | {n} | {ttd} |")?;
        }
        Ok(())
    }
}
