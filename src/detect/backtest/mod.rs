//! Backtest owns replaying history through the detectors in event time: a
//! JSONL file of v1 events or a time range of the stored dataset, sorted by
//! (ts, event_id) so that two runs over the same input write byte-identical
//! scores and alerts; and scoring those alerts against `gen`'s ground truth.
//! Memory stays bounded whatever the input: the JSONL input is sorted
//! externally (`sort`), bucket scores stream to their files as they close,
//! and the dataset is replayed one hour at a time.

mod sort;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use serde_json::Value;

use super::policy::Policy;
use super::{Alert, AlertChange, BucketScore, Detector};
use crate::config::Config;
use crate::decode::decode;
use crate::event::KafkaCoords;
use crate::lake::Lake;
use crate::redact::Redactor;
use crate::traffic::scenario::GroundTruth;

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BacktestError + '_ {
    move |source| BacktestError::Io {
        path: path.to_owned(),
        source,
    }
}

pub enum Input {
    Jsonl(PathBuf),
    /// The stored dataset between two instants (epoch ms, half-open).
    Dataset {
        lake: Lake,
        from_ms: i64,
        to_ms: i64,
    },
}

pub struct Outcome {
    pub events: usize,
    pub skipped: usize,
    /// Bucket scores written to `scores.csv` and `scores.parquet`.
    pub scores: usize,
    pub alerts: Vec<Alert>,
    /// Sorted runs spilled to disk (0: the input fit in memory).
    pub spilled_runs: usize,
    /// Events replayed per UTC day (days since the epoch): what an
    /// evaluation over part of the range counts its benign events from.
    pub events_by_day: BTreeMap<i64, usize>,
}

/// Bytes of input lines held in memory per sorted run.
pub const RUN_BYTES: usize = 64 * 1024 * 1024;
/// Bucket scores buffered before they are written out.
const SCORE_BATCH: usize = 65_536;

/// Decodes, redacts and replays `input`; the policy is the one in `cfg`.
/// Scores stream into `out` (created if missing) as buckets close; the
/// alerts are returned, for `write_alerts`.
pub fn run(cfg: &Config, input: &Input, out: &Path) -> Result<Outcome, BacktestError> {
    let redactor = Redactor::new(&cfg.redact).map_err(|e| BacktestError::Other(e.to_string()))?;
    let policy = match &cfg.detect.policy_file {
        Some(p) => Some(Policy::load(p).map_err(|e| BacktestError::Other(e.to_string()))?),
        None => None,
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let limits = cfg.decode_limits();
    let coords = KafkaCoords {
        topic: Arc::from("backtest"),
        partition: 0,
        offset: 0,
        kafka_ts_ms: None,
    };
    let mut detector = Detector::new(&cfg.detect, true);
    let mut scores = ScoreWriter::create(out)?;
    let mut changes = Vec::new();
    let mut alerts = Vec::new();
    let (mut events, mut skipped, mut spilled_runs) = (0usize, 0usize, 0usize);
    let mut events_by_day = BTreeMap::new();
    // History is judged by its own clock: no event is "in the future".
    let now = i64::MAX / 2;
    let mut replay = |line: &str, detector: &mut Detector| -> Result<(), BacktestError> {
        let Ok(e) = decode(Some(line.as_bytes()), now, &limits) else {
            return Ok(());
        };
        let r = redactor.redact_event(e, coords.clone(), 0);
        detector.observe(&r, policy.as_ref(), &mut changes);
        events += 1;
        *events_by_day
            .entry(r.event.ts_ms.div_euclid(86_400_000))
            .or_insert(0) += 1;
        keep_fired(&mut changes, &mut alerts);
        if detector.scores.len() >= SCORE_BATCH {
            scores.write(&std::mem::take(&mut detector.scores))?;
        }
        Ok(())
    };
    match input {
        Input::Jsonl(path) => {
            let f = File::open(path).map_err(io(path))?;
            let spill = out.join(format!(".sort-{}", std::process::id()));
            let mut sorted = sort::Sorted::new(
                BufReader::with_capacity(1 << 20, f),
                path,
                &spill,
                RUN_BYTES,
                |line| match decode(Some(line.as_bytes()), now, &limits) {
                    Ok(e) => Some((e.ts_ms, e.event_id)),
                    Err(_) => {
                        skipped += 1;
                        None
                    }
                },
            )?;
            spilled_runs = sorted.spilled_runs;
            while let Some(k) = sorted.next_line()? {
                replay(&k.line, &mut detector)?;
            }
        }
        Input::Dataset {
            lake,
            from_ms,
            to_ms,
        } => {
            // One hour at a time, each sorted: memory is bounded by an
            // hour of traffic, not by the range. Only hours holding calls
            // are read: a range of years is one query per busy hour, not
            // one per hour of the calendar.
            for hour in dataset_hours(lake, *from_ms, *to_ms)? {
                let (lo, hi) = (hour.max(*from_ms), (hour + 3_600_000).min(*to_ms));
                let mut lines: Vec<(i64, String, String)> = Vec::new();
                for line in dataset_lines(lake, lo, hi)? {
                    match decode(Some(line.as_bytes()), now, &limits) {
                        Ok(e) => lines.push((e.ts_ms, e.event_id, line)),
                        Err(_) => skipped += 1,
                    }
                }
                lines.sort();
                for (_, _, line) in &lines {
                    replay(line, &mut detector)?;
                }
            }
        }
    }
    detector.finish(&mut changes);
    keep_fired(&mut changes, &mut alerts);
    scores.write(&std::mem::take(&mut detector.scores))?;
    let scores = scores.finish()?;
    Ok(Outcome {
        events,
        skipped,
        scores,
        alerts,
        spilled_runs,
        events_by_day,
    })
}

fn keep_fired(changes: &mut Vec<AlertChange>, alerts: &mut Vec<Alert>) {
    alerts.extend(changes.drain(..).filter_map(|c| match c {
        AlertChange::Fired(a) => Some(a),
        AlertChange::Resolved(_) => None,
    }));
}

/// Rows of the stored dataset as v1 JSON lines (the input is stored
/// redacted, so the replay sees what live detection saw).
/// The start (epoch ms) of every hour in `[from_ms, to_ms)` with a stored
/// call, in order.
fn dataset_hours(lake: &Lake, from_ms: i64, to_ms: i64) -> Result<Vec<i64>, BacktestError> {
    let sql = format!(
        "SELECT DISTINCT CAST(CAST(ts AS BIGINT) / 3600000 AS BIGINT) AS h FROM invocations \
         WHERE ts >= to_timestamp_millis({from_ms}) AND ts < to_timestamp_millis({to_ms}) ORDER BY h"
    );
    let batches =
        crate::query::run_blocking(lake, sql).map_err(|e| BacktestError::Other(e.to_string()))?;
    let mut hours = Vec::new();
    for b in &batches {
        let column = datafusion::arrow::compute::cast(b.column(0), &DataType::Int64)
            .map_err(|e| BacktestError::Other(e.to_string()))?;
        let Some(values) = column
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
        else {
            continue;
        };
        hours.extend(values.iter().flatten().map(|h| h.saturating_mul(3_600_000)));
    }
    Ok(hours)
}

fn dataset_lines(lake: &Lake, from_ms: i64, to_ms: i64) -> Result<Vec<String>, BacktestError> {
    let sql = format!(
        "SELECT event_id, CAST(ts AS BIGINT) AS ts, tenant, agent_id, environment, tool, status, \
                actor, workflow_id, step, tool_call_id, tool_type, agent_version, mcp_server, \
                mcp_server_version, credential_id, latency_ms, error_type, input, tokens_in, \
                tokens_out, approval_id, approval_approver, approval_decision \
         FROM invocations WHERE ts >= to_timestamp_millis({from_ms}) AND ts < to_timestamp_millis({to_ms})"
    );
    let batches =
        crate::query::run_blocking(lake, sql).map_err(|e| BacktestError::Other(e.to_string()))?;
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
        for b in &batches {
            w.write(b)
                .map_err(|e| BacktestError::Other(e.to_string()))?;
        }
        w.finish()
            .map_err(|e| BacktestError::Other(e.to_string()))?;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(Value::Object(mut row)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(Value::String(input)) = row.remove("input") {
            row.insert(
                "input".into(),
                serde_json::from_str(&input).unwrap_or(Value::String(input)),
            );
        }
        let decision = row.remove("approval_decision");
        let id = row.remove("approval_id");
        let approver = row.remove("approval_approver");
        if let Some(d @ Value::String(_)) = decision {
            let mut a = serde_json::Map::new();
            a.insert("decision".into(), d);
            if let Some(v @ Value::String(_)) = id {
                a.insert("id".into(), v);
            }
            if let Some(v @ Value::String(_)) = approver {
                a.insert("approver".into(), v);
            }
            row.insert("approval".into(), Value::Object(a));
        }
        out.push(Value::Object(row).to_string());
    }
    Ok(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Bucket scores as they close, to `scores.csv` and `scores.parquet`.
struct ScoreWriter {
    csv: std::io::BufWriter<File>,
    parquet: ArrowWriter<File>,
    csv_path: PathBuf,
    written: usize,
}

impl ScoreWriter {
    fn create(dir: &Path) -> Result<ScoreWriter, BacktestError> {
        let csv_path = dir.join("scores.csv");
        let mut csv = std::io::BufWriter::new(File::create(&csv_path).map_err(io(&csv_path))?);
        csv.write_all(b"kind,tenant,agent_id,tool,bucket_start_ms,observed,expected,score,warm\n")
            .map_err(io(&csv_path))?;
        let pq_path = dir.join("scores.parquet");
        let f = File::create(&pq_path).map_err(io(&pq_path))?;
        let parquet = ArrowWriter::try_new(f, scores_schema(), None)
            .map_err(|e| BacktestError::Other(format!("{}: {e}", pq_path.display())))?;
        Ok(ScoreWriter {
            csv,
            parquet,
            csv_path,
            written: 0,
        })
    }

    fn write(&mut self, scores: &[BucketScore]) -> Result<(), BacktestError> {
        if scores.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for s in scores {
            let _ = writeln!(
                text,
                "{},{},{},{},{},{},{:.6},{:.6},{}",
                s.kind,
                csv_field(&s.tenant),
                csv_field(&s.agent_id),
                csv_field(&s.tool),
                s.bucket_start_ms,
                s.observed,
                s.expected,
                s.score,
                s.warm
            );
        }
        self.csv
            .write_all(text.as_bytes())
            .map_err(io(&self.csv_path))?;
        self.parquet
            .write(&scores_batch(scores)?)
            .map_err(|e| BacktestError::Other(e.to_string()))?;
        self.written += scores.len();
        Ok(())
    }

    fn finish(mut self) -> Result<usize, BacktestError> {
        self.csv.flush().map_err(io(&self.csv_path))?;
        self.parquet
            .close()
            .map_err(|e| BacktestError::Other(e.to_string()))?;
        Ok(self.written)
    }
}

/// Writes the alerts under `dir`, as CSV and as Parquet (the scores are
/// already there: `run` streams them).
pub fn write_alerts(outcome: &Outcome, dir: &Path) -> Result<(), BacktestError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut alerts = String::from(
        "alert_id,rule,severity,tenant,agent_id,tool,window_start_ms,detected_at_ms,observed,expected,score,sample_event_ids,detail\n",
    );
    for a in &outcome.alerts {
        let _ = writeln!(
            alerts,
            "{},{},{},{},{},{},{},{},{},{:.6},{:.6},{},{}",
            a.id(),
            a.rule.name(),
            a.severity.as_str(),
            csv_field(&a.tenant),
            csv_field(&a.agent_id),
            csv_field(&a.tool),
            a.window_start_ms,
            a.detected_at_ms,
            a.observed,
            a.expected,
            a.score,
            csv_field(&a.sample_event_ids.join(" ")),
            csv_field(&a.detail)
        );
    }
    let path = dir.join("alerts.csv");
    std::fs::write(&path, alerts).map_err(io(&path))?;
    let batch = crate::sink::schema::alerts_batch(&outcome.alerts)
        .map_err(|e| BacktestError::Other(e.to_string()))?;
    write_parquet(&dir.join("alerts.parquet"), &batch)?;
    Ok(())
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), BacktestError> {
    let other = |e: datafusion::parquet::errors::ParquetError| {
        BacktestError::Other(format!("{}: {e}", path.display()))
    };
    let f = File::create(path).map_err(io(path))?;
    let mut w = ArrowWriter::try_new(f, batch.schema(), None).map_err(other)?;
    w.write(batch).map_err(other)?;
    w.close().map_err(other)?;
    Ok(())
}

fn scores_schema() -> Arc<Schema> {
    let utc = Some("UTC".into());
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("tenant", DataType::Utf8, false),
        Field::new("agent_id", DataType::Utf8, false),
        Field::new("tool", DataType::Utf8, false),
        Field::new(
            "bucket_start",
            DataType::Timestamp(TimeUnit::Millisecond, utc),
            false,
        ),
        Field::new("observed", DataType::Int64, false),
        Field::new("expected", DataType::Float64, false),
        Field::new("score", DataType::Float64, false),
        Field::new("warm", DataType::Boolean, false),
    ]))
}

fn scores_batch(scores: &[BucketScore]) -> Result<RecordBatch, BacktestError> {
    let schema = scores_schema();
    let text = |f: fn(&BucketScore) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(scores.iter().map(f)))
    };
    let starts = scores.iter().map(|s| s.bucket_start_ms);
    let columns: Vec<ArrayRef> = vec![
        text(|s| s.kind),
        text(|s| &s.tenant),
        text(|s| &s.agent_id),
        text(|s| &s.tool),
        Arc::new(TimestampMillisecondArray::from_iter_values(starts).with_timezone("UTC")),
        Arc::new(Int64Array::from_iter_values(
            scores.iter().map(|s| i64::from(s.observed)),
        )),
        Arc::new(Float64Array::from_iter_values(
            scores.iter().map(|s| s.expected),
        )),
        Arc::new(Float64Array::from_iter_values(
            scores.iter().map(|s| s.score),
        )),
        Arc::new(BooleanArray::from_iter(scores.iter().map(|s| Some(s.warm)))),
    ];
    RecordBatch::try_new(schema, columns).map_err(|e| BacktestError::Other(e.to_string()))
}

/// How one planted scenario fared.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioResult {
    pub scenario: String,
    pub detected: bool,
    pub alerts: usize,
    /// From the scenario's first event to the first alert of its main rule.
    pub time_to_detect_ms: Option<i64>,
}

/// Whether an alert is one of a planted scenario's: its rule is one the
/// scenario may fire, it names the scenario's tenant or agent, and it
/// came after the scenario began.
fn matches(a: &Alert, t: &GroundTruth) -> bool {
    t.rules.contains(&a.rule.name())
        && (a.tenant == t.tenant || a.agent_id == t.agent_id)
        && a.detected_at_ms >= t.start_ms
}

/// Matches alerts to ground truth (see `matches`).
pub fn evaluate(alerts: &[Alert], truth: &[GroundTruth]) -> (Vec<ScenarioResult>, usize) {
    let results = truth
        .iter()
        .map(|t| {
            let mine: Vec<&Alert> = alerts.iter().filter(|a| matches(a, t)).collect();
            let first = mine
                .iter()
                .filter(|a| a.rule.name() == t.rules[0])
                .map(|a| a.detected_at_ms)
                .min();
            ScenarioResult {
                scenario: t.scenario.to_owned(),
                detected: first.is_some(),
                alerts: mine.len(),
                time_to_detect_ms: first.map(|f| f - t.start_ms),
            }
        })
        .collect();
    let false_alerts = alerts
        .iter()
        .filter(|a| !truth.iter().any(|t| matches(a, t)))
        .count();
    (results, false_alerts)
}

/// The evaluation table: per scenario whether and how fast it was found,
/// then the alerts that match no scenario per million benign events. With
/// `from_day` (UTC days since the epoch), alerts before that day belong to
/// the learning period and are counted apart.
pub fn evaluation_report(
    outcome: &Outcome,
    truth: &[GroundTruth],
    bucket_ms: f64,
    from_day: Option<i64>,
) -> String {
    use std::fmt::Write as _;
    let from_ms = from_day.map_or(i64::MIN, |d| d.saturating_mul(86_400_000));
    let (judged, learning): (Vec<Alert>, Vec<Alert>) = outcome
        .alerts
        .iter()
        .cloned()
        .partition(|a| a.detected_at_ms >= from_ms);
    let (results, false_alerts) = evaluate(&judged, truth);
    let mut out = String::new();
    let _ = writeln!(out, "| scenario | detected | alerts | time to detect |");
    let _ = writeln!(out, "|---|---|---|---|");
    for r in &results {
        let ttd = r.time_to_detect_ms.map_or("-".to_owned(), |ms| {
            format!(
                "{:.1} s ({:.2} buckets)",
                ms as f64 / 1000.0,
                ms as f64 / bucket_ms
            )
        });
        let found = if r.detected { "yes" } else { "NO" };
        let _ = writeln!(out, "| {} | {found} | {} | {ttd} |", r.scenario, r.alerts);
    }
    let judged_events: usize = outcome
        .events_by_day
        .range(from_day.unwrap_or(i64::MIN)..)
        .map(|(_, n)| n)
        .sum();
    let planted: u64 = truth.iter().map(|t| t.events).sum();
    let benign = judged_events.saturating_sub(usize::try_from(planted).unwrap_or(usize::MAX));
    let _ = writeln!(
        out,
        "recall {}/{}; {false_alerts} of {} alerts match no scenario: {:.2} per million of {benign} benign events",
        results.iter().filter(|r| r.detected).count(),
        results.len(),
        judged.len(),
        false_alerts as f64 * 1e6 / benign.max(1) as f64,
    );
    let by_rule = count_by_rule(
        judged
            .iter()
            .filter(|a| !truth.iter().any(|t| matches(a, t))),
    );
    if !by_rule.is_empty() {
        let _ = writeln!(out, "unmatched alerts by rule: {by_rule:?}");
    }
    if from_day.is_some() {
        let by_rule = count_by_rule(learning.iter());
        let _ = writeln!(
            out,
            "learning period (before the evaluation day): {} alerts {by_rule:?}",
            learning.len()
        );
    }
    out
}

fn count_by_rule<'a>(alerts: impl Iterator<Item = &'a Alert>) -> BTreeMap<&'static str, usize> {
    let mut by_rule = BTreeMap::new();
    for a in alerts {
        *by_rule.entry(a.rule.name()).or_default() += 1;
    }
    by_rule
}

pub fn read_truth(path: &Path) -> Result<Vec<GroundTruth>, BacktestError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .map_err(|e| BacktestError::Other(format!("{}: {e}", path.display())))?;
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            let scenario = crate::traffic::scenario::Scenario::parse(&s("scenario"))
                .map_err(BacktestError::Other)?;
            Ok(GroundTruth {
                scenario: scenario.name(),
                rules: scenario.rules().to_vec(),
                tenant: s("tenant"),
                agent_id: s("agent_id"),
                tool: s("tool"),
                start_ms: v["start_ms"].as_i64().unwrap_or_default(),
                end_ms: v["end_ms"].as_i64().unwrap_or_default(),
                events: v["events"].as_u64().unwrap_or_default(),
            })
        })
        .collect()
}
