//! Actions owns the `actions` table: a row when the revoke-hook starts a
//! revocation, another when it ends, and one per alert it declined, written
//! as Parquet files under `actions/dt=…/hour=…/` whole or not at all,
//! beside the tables the sink writes, so `agentaudit query` shows that the
//! kill switch fired — and a restarted hook knows which alerts it has
//! already started.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::QueryError;
use crate::lake::{Lake, Location};

pub const ACTIONS: &str = "actions";

/// One action, as its row.
#[derive(Debug, Clone)]
pub struct Action {
    pub at_ms: i64,
    pub alert_id: String,
    pub rule: String,
    pub severity: String,
    pub tenant: String,
    pub agent_id: String,
    /// The inventory's credentials of the agent, comma-separated; empty
    /// when declined.
    pub credential_id: String,
    pub command: String,
    pub exit_code: Option<i32>,
    /// `started`, then `ran` or `failed: …`; or `declined: …`.
    pub outcome: String,
    /// What the command printed, redacted, then cut to a bound.
    pub output: String,
    /// Alertmanager's fingerprint of the alert.
    pub fingerprint: String,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        text("alert_id"),
        text("rule"),
        text("severity"),
        text("tenant"),
        text("agent_id"),
        text("credential_id"),
        text("command"),
        Field::new("exit_code", DataType::Int32, true),
        text("outcome"),
        text("output"),
        text("fingerprint"),
    ]))
});

pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

fn batch(rows: &[Action]) -> Result<RecordBatch, QueryError> {
    let s =
        |f: fn(&Action) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as _;
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|a| a.at_ms))
                    .with_timezone("UTC"),
            ),
            s(|a| &a.alert_id),
            s(|a| &a.rule),
            s(|a| &a.severity),
            s(|a| &a.tenant),
            s(|a| &a.agent_id),
            s(|a| &a.credential_id),
            s(|a| &a.command),
            Arc::new(Int32Array::from(
                rows.iter().map(|a| a.exit_code).collect::<Vec<_>>(),
            )),
            s(|a| &a.outcome),
            s(|a| &a.output),
            s(|a| &a.fingerprint),
        ],
    )
    .map_err(|e| QueryError::DataFusion(e.into()))
}

/// Writes `a` as a new file of the `actions` table.
pub fn record(lake: &Lake, a: &Action) -> Result<(), QueryError> {
    record_all(lake, std::slice::from_ref(a))
}

/// Writes `rows` (at least one) as one new file of the `actions` table, in
/// the hour of the first: a flood of declined alerts is one file a
/// request, not one each.
pub fn record_all(lake: &Lake, rows: &[Action]) -> Result<(), QueryError> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let mut bytes = Vec::new();
    {
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(&mut bytes, schema(), None)
            .map_err(|e| QueryError::DataFusion(e.into()))?;
        w.write(&batch(rows)?)
            .map_err(|e| QueryError::DataFusion(e.into()))?;
        w.close().map_err(|e| QueryError::DataFusion(e.into()))?;
    }
    let dir = crate::sink::PartitionKey::for_time(ACTIONS, first.at_ms).dir();
    let name = format!(
        "part-action-{}-{:016x}.parquet",
        first.at_ms,
        rand::random::<u64>()
    );
    match &lake.location {
        Location::Local(root) => {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir)?;
            crate::query::atomically(&dir.join(name), |w| Ok(w.write_all(&bytes)?))
        }
        Location::S3 { prefix, .. } => {
            let store = lake
                .store()
                .ok_or_else(|| QueryError::Runtime("the lake has no store".into()))?;
            let key = [prefix.as_str(), &dir.to_string_lossy(), &name]
                .iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("/");
            let put = async move {
                store
                    .put_opts(
                        &object_store::path::Path::from(key),
                        bytes.into(),
                        object_store::PutMode::Create.into(),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| QueryError::Runtime(format!("writing an action: {e}")))
            };
            crate::query::on_own_runtime(put)
        }
    }
}

/// What the table says of past alerts, read at start.
#[derive(Debug, Default)]
pub struct Past {
    /// Every `alert_id` with a row, newest first: started (whether it then
    /// ran, failed or never finished) or declined. None runs again.
    pub settled: Vec<String>,
    /// Revocations started and never finished: the hook stopped mid-run.
    /// Not run again (a half-done revocation may not be safe to repeat);
    /// a human looks.
    pub unfinished: Vec<String>,
}

/// Reads back what the `actions` table settled, at most `most` ids.
pub fn past(lake: &Lake, most: usize) -> Result<Past, QueryError> {
    let text = |b: &RecordBatch| -> Result<Vec<String>, QueryError> {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| QueryError::Runtime("actions.alert_id is not text".into()))?;
        Ok(ids.iter().flatten().map(str::to_owned).collect())
    };
    let mut past = Past::default();
    let settled = format!(
        "SELECT alert_id FROM {ACTIONS} WHERE alert_id <> '' \
         GROUP BY alert_id ORDER BY max(at) DESC LIMIT {most}"
    );
    for b in crate::query::run_blocking(lake, settled)? {
        past.settled.extend(text(&b)?);
    }
    let unfinished = format!(
        "SELECT alert_id FROM {ACTIONS} WHERE alert_id <> '' GROUP BY alert_id \
         HAVING bool_or(outcome = 'started') \
            AND NOT bool_or(outcome = 'ran' OR outcome LIKE 'ran:%' OR outcome LIKE 'failed%') \
         ORDER BY alert_id LIMIT 1000"
    );
    for b in crate::query::run_blocking(lake, unfinished)? {
        past.unfinished.extend(text(&b)?);
    }
    Ok(past)
}
