//! Actions owns the `actions` table: one row per action the revoke-hook
//! took (or declined), written as its own Parquet file under
//! `actions/dt=…/hour=…/` whole or not at all, beside the tables the sink
//! writes, so `agentaudit query` shows that the kill switch fired. It also
//! looks up the credential an alert's calls used.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::WebhookAlert;
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
    /// Empty when the calls named none the hook could find.
    pub credential_id: String,
    pub command: String,
    pub exit_code: Option<i32>,
    /// `ran`, `failed: …` or `skipped: …`.
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

fn batch(a: &Action) -> Result<RecordBatch, QueryError> {
    let s = |v: &str| Arc::new(StringArray::from(vec![v.to_owned()])) as _;
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMillisecondArray::from(vec![a.at_ms]).with_timezone("UTC")),
            s(&a.alert_id),
            s(&a.rule),
            s(&a.severity),
            s(&a.tenant),
            s(&a.agent_id),
            s(&a.credential_id),
            s(&a.command),
            Arc::new(Int32Array::from(vec![a.exit_code])),
            s(&a.outcome),
            s(&a.output),
            s(&a.fingerprint),
        ],
    )
    .map_err(|e| QueryError::DataFusion(e.into()))
}

/// Writes `a` as a new file of the `actions` table.
pub fn record(lake: &Lake, a: &Action) -> Result<(), QueryError> {
    let mut bytes = Vec::new();
    {
        let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(&mut bytes, schema(), None)
            .map_err(|e| QueryError::DataFusion(e.into()))?;
        w.write(&batch(a)?)
            .map_err(|e| QueryError::DataFusion(e.into()))?;
        w.close().map_err(|e| QueryError::DataFusion(e.into()))?;
    }
    let dir = crate::sink::PartitionKey::for_time(ACTIONS, a.at_ms).dir();
    let name = format!(
        "part-action-{}-{:016x}.parquet",
        a.at_ms,
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

/// The `alert_id`s of the episodes already settled (a command that
/// succeeded, or an alert declined), newest first, at most `most`: a repeat
/// of one needs nothing more, across restarts of the hook.
pub fn settled(lake: &Lake, most: usize) -> Result<Vec<String>, QueryError> {
    let sql = format!(
        "SELECT alert_id FROM {ACTIONS} \
         WHERE alert_id <> '' AND (exit_code = 0 OR outcome LIKE 'skipped%') \
         GROUP BY alert_id ORDER BY max(at) DESC LIMIT {most}"
    );
    let mut out = Vec::new();
    for b in crate::query::run_blocking(lake, sql)? {
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| QueryError::Runtime("actions.alert_id is not text".into()))?;
        out.extend(ids.iter().flatten().map(str::to_owned));
    }
    Ok(out)
}

/// The credential the alert's calls used: of its sample events when they
/// are stored, else the agent's newest in the past week.
pub fn credential_of(
    lake: &Lake,
    tenant: &str,
    agent: &str,
    alert: &WebhookAlert,
) -> Option<String> {
    let week_ago = chrono::Utc::now() - chrono::Duration::days(7);
    let mut params = BTreeMap::new();
    params.insert("tenant".to_owned(), tenant.to_owned());
    params.insert("agent".to_owned(), agent.to_owned());
    params.insert(
        "ids".to_owned(),
        alert
            .annotations
            .get("sample_event_ids")
            .cloned()
            .unwrap_or_default(),
    );
    params.insert(
        "since_day".to_owned(),
        week_ago.format("%Y-%m-%d").to_string(),
    );
    let sql = "\
SELECT credential_id FROM invocations
WHERE tenant = $tenant AND agent_id = $agent AND credential_id IS NOT NULL
  AND dt >= $since_day
ORDER BY array_has(string_to_array($ids, ','), event_id) DESC, ts DESC
LIMIT 1";
    let batches = crate::query::run_blocking_with(lake, sql.to_owned(), params).ok()?;
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let col = b.column(0).as_any().downcast_ref::<StringArray>()?;
    Some(col.value(0).to_owned()).filter(|c| !c.is_empty())
}
