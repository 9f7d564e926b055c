//! Incident owns the responder's report (`agentaudit incident`): one alert,
//! or a tenant or agent around a time, turned into one self-contained
//! Markdown and HTML document — why it fired, the timeline, what changed,
//! credentials and approvals, what was redacted, and a chart of the key's
//! calls against its usual rate — each section with the SQL that made it,
//! so it can be run again. It reads the dataset only through `query`, so
//! it holds nothing the sink did not store redacted.

mod chart;
mod render;
mod sections;

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;

use crate::error::QueryError;

pub use chart::Chart;
pub use render::{html, markdown};

/// What the report is about.
#[derive(Debug, Clone)]
pub enum Subject {
    /// An alert of the `alerts` table, by its id.
    Alert(String),
    /// A tenant (and, given, one of its agents) around a time.
    Around {
        tenant: String,
        agent: Option<String>,
        at_ms: i64,
    },
}

/// How far around the subject the report looks.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Before the alert's window (or the time given), and after it.
    pub margin_ms: i64,
    /// History that says what is usual, before the margin.
    pub history_ms: i64,
}

impl Default for Span {
    fn default() -> Self {
        Span {
            margin_ms: 30 * 60_000,
            history_ms: 7 * 24 * 3_600_000,
        }
    }
}

/// One section: a question, its SQL and parameters, and the answer.
#[derive(Debug)]
pub struct Section {
    pub title: &'static str,
    /// What the section answers, for the reader.
    pub about: String,
    pub sql: String,
    pub params: BTreeMap<String, String>,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// When the rows shown are not all: how many there are in all, and the
    /// statement that shows every one.
    pub more: Option<(u64, String)>,
}

/// The whole report.
#[derive(Debug)]
pub struct Report {
    pub title: String,
    /// One paragraph: why it fired (observed against expected and the
    /// score, or the policy clause), or what was asked.
    pub summary: String,
    pub sections: Vec<Section>,
    pub chart: Option<Chart>,
    pub generated_at: String,
}

/// The keys and times every section is asked about.
#[derive(Debug, Clone)]
struct Focus {
    tenant: String,
    /// `""`: every agent of the tenant.
    agent: String,
    /// `""`: every tool.
    tool: String,
    window_start_ms: i64,
    window_end_ms: i64,
    /// The alert's sample calls, by event id.
    samples: Vec<String>,
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Every value of `batches` as display text, row by row.
fn table(batches: &[RecordBatch]) -> Result<(Vec<String>, Vec<Vec<String>>), QueryError> {
    let columns = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    let options = FormatOptions::default().with_null("");
    let mut rows = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueryError::DataFusion(e.into()))?;
        for row in 0..b.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect(),
            );
        }
    }
    Ok((columns, rows))
}

async fn run(
    ctx: &SessionContext,
    sql: &str,
    params: &BTreeMap<String, String>,
) -> Result<(Vec<String>, Vec<Vec<String>>), QueryError> {
    let batches = crate::query::run(ctx, sql, params).await?;
    table(&batches)
}

/// Builds the report over the dataset registered in `ctx`.
pub async fn build(
    ctx: &SessionContext,
    subject: &Subject,
    span: Span,
) -> Result<Report, QueryError> {
    let (focus, title, summary, alert_section) = match subject {
        Subject::Alert(id) => {
            let mut params = BTreeMap::new();
            params.insert("alert_id".to_owned(), id.clone());
            let batches = crate::query::run(ctx, sections::ALERT, &params).await?;
            let (columns, rows) = table(&batches)?;
            let Some(alert) = alert_row(&batches) else {
                return Err(QueryError::Runtime(format!(
                    "no alert `{id}` in the dataset's alerts table"
                )));
            };
            let summary = alert.why();
            let title = format!(
                "Incident: {} ({}) on {}",
                alert.rule,
                alert.severity,
                alert.keys()
            );
            let section = Section {
                title: "The alert",
                about: "The alert as stored: its rule, keys, window, observed against expected, score and the detector's own words.".into(),
                sql: sections::ALERT.to_owned(),
                params,
                columns,
                rows,
                more: None,
            };
            (alert.focus, title, summary, Some(section))
        }
        Subject::Around {
            tenant,
            agent,
            at_ms,
        } => {
            let focus = Focus {
                tenant: tenant.clone(),
                agent: agent.clone().unwrap_or_default(),
                tool: String::new(),
                window_start_ms: *at_ms,
                window_end_ms: *at_ms,
                samples: Vec::new(),
            };
            let who = match agent {
                Some(a) => format!("agent {a} of tenant {tenant}"),
                None => format!("tenant {tenant}"),
            };
            let title = format!("Incident: {who} around {}", rfc3339(*at_ms));
            let summary = format!(
                "What {who} did from {} before to {} after {}, against the {} before.",
                minutes(span.margin_ms),
                minutes(span.margin_ms),
                rfc3339(*at_ms),
                days(span.history_ms)
            );
            (focus, title, summary, None)
        }
    };
    let from = focus.window_start_ms - span.margin_ms;
    let to = focus.window_end_ms + span.margin_ms;
    let history_from = from - span.history_ms;
    let mut params = BTreeMap::new();
    params.insert("tenant".to_owned(), focus.tenant.clone());
    params.insert("agent".to_owned(), focus.agent.clone());
    params.insert("tool".to_owned(), focus.tool.clone());
    params.insert("from".to_owned(), rfc3339(from));
    params.insert("to".to_owned(), rfc3339(to));
    params.insert("window_start".to_owned(), rfc3339(focus.window_start_ms));
    params.insert(
        "window_end".to_owned(),
        rfc3339(focus.window_end_ms.max(focus.window_start_ms + 1)),
    );
    params.insert("history_from".to_owned(), rfc3339(history_from));
    params.insert("samples".to_owned(), focus.samples.join(","));
    params.insert(
        "margin_secs".to_owned(),
        format!("{}", span.margin_ms / 1000),
    );
    // The usual count over a span as long as [from, to).
    params.insert(
        "scale".to_owned(),
        format!("{}", (to - from) as f64 / span.history_ms.max(1) as f64),
    );
    let mut out = Vec::new();
    if let Some(s) = alert_section {
        out.push(s);
    }
    for q in sections::SECTIONS {
        let wanted: BTreeMap<String, String> = params
            .iter()
            .filter(|(k, _)| q.sql.contains(&format!("${k}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sql = q.shown();
        let (columns, rows) = run(ctx, &sql, &wanted).await?;
        // A full page may not be all: say how many more, never cut silently.
        let more = match q.limit {
            Some(limit) if rows.len() >= limit as usize => {
                let (_, counted) = run(ctx, &q.count(), &wanted).await?;
                let total = counted
                    .first()
                    .and_then(|r| r.first())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(rows.len() as u64);
                (total > rows.len() as u64).then(|| (total, q.sql.to_owned()))
            }
            _ => None,
        };
        out.push(Section {
            title: q.title,
            about: q.about.replace("{history}", &days(span.history_ms)),
            sql,
            params: wanted,
            columns,
            rows,
            more,
        });
    }
    let chart = chart::build(ctx, &params, focus.window_start_ms, focus.window_end_ms).await?;
    Ok(Report {
        title,
        summary,
        sections: out,
        chart,
        generated_at: rfc3339(Utc::now().timestamp_millis()),
    })
}

fn minutes(ms: i64) -> String {
    format!("{} min", ms / 60_000)
}

fn days(ms: i64) -> String {
    format!("{} days", ms / 86_400_000)
}

/// The alert's row, read for the summary and the focus.
struct AlertRow {
    rule: String,
    severity: String,
    observed: f64,
    expected: f64,
    score: f64,
    detail: String,
    focus: Focus,
}

impl AlertRow {
    fn keys(&self) -> String {
        let mut keys = vec![format!("tenant {}", self.focus.tenant)];
        if !self.focus.agent.is_empty() {
            keys.push(format!("agent {}", self.focus.agent));
        }
        if !self.focus.tool.is_empty() {
            keys.push(format!("tool {}", self.focus.tool));
        }
        keys.join(", ")
    }

    /// Why it fired: the numbers of a statistical rule, or the policy
    /// clause a rule quotes in its detail.
    fn why(&self) -> String {
        let window = format!(
            "{} to {}",
            rfc3339(self.focus.window_start_ms),
            rfc3339(self.focus.window_end_ms)
        );
        if self.expected > 0.0 || self.score > 0.0 {
            format!(
                "`{}` fired for {} in {window}: observed {} against {:.1} expected (score {:.2}). {}",
                self.rule,
                self.keys(),
                self.observed,
                self.expected,
                self.score,
                self.detail
            )
        } else {
            format!(
                "`{}` fired for {} in {window}: {}",
                self.rule,
                self.keys(),
                self.detail
            )
        }
    }
}

fn alert_row(batches: &[RecordBatch]) -> Option<AlertRow> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Float64Type, TimestampMillisecondType};
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let text = |name: &str| -> Option<String> {
        let c = b.column_by_name(name)?;
        let c = c.as_string_opt::<i32>()?;
        (!c.is_null(0)).then(|| c.value(0).to_owned())
    };
    let float = |name: &str| -> Option<f64> {
        Some(
            b.column_by_name(name)?
                .as_primitive_opt::<Float64Type>()?
                .value(0),
        )
    };
    let time = |name: &str| -> Option<i64> {
        let c = b.column_by_name(name)?;
        let cast = datafusion::arrow::compute::cast(
            c,
            &datafusion::arrow::datatypes::DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Millisecond,
                None,
            ),
        )
        .ok()?;
        Some(
            cast.as_primitive_opt::<TimestampMillisecondType>()?
                .value(0),
        )
    };
    Some(AlertRow {
        rule: text("rule")?,
        severity: text("severity")?,
        observed: float("observed")?,
        expected: float("expected")?,
        score: float("score")?,
        detail: text("detail").unwrap_or_default(),
        focus: Focus {
            tenant: text("tenant")?,
            agent: text("agent_id").unwrap_or_default(),
            tool: text("tool").unwrap_or_default(),
            window_start_ms: time("window_start")?,
            window_end_ms: time("window_end")?,
            samples: samples(b),
        },
    })
}

/// The alert's `sample_event_ids`, however the list is typed.
fn samples(b: &RecordBatch) -> Vec<String> {
    use datafusion::arrow::array::{Array, AsArray};
    let Some(c) = b.column_by_name("sample_event_ids") else {
        return Vec::new();
    };
    let Some(list) = c.as_list_opt::<i32>() else {
        return Vec::new();
    };
    if list.is_null(0) {
        return Vec::new();
    }
    let values = list.value(0);
    let Ok(text) =
        datafusion::arrow::compute::cast(&values, &datafusion::arrow::datatypes::DataType::Utf8)
    else {
        return Vec::new();
    };
    text.as_string::<i32>()
        .iter()
        .flatten()
        // A comma would split one id into two in the statement's list.
        .filter(|id| !id.contains(','))
        .map(str::to_owned)
        .collect()
}

/// A file name for the report of `subject`: only characters that are safe
/// in any file system.
pub fn file_stem(subject: &Subject) -> String {
    let raw = match subject {
        Subject::Alert(id) => format!("incident-{id}"),
        Subject::Around {
            tenant,
            agent,
            at_ms,
        } => format!(
            "incident-{tenant}-{}-{}",
            agent.as_deref().unwrap_or("all"),
            rfc3339(*at_ms)
        ),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect()
}
