//! The Arrow schemas of the stored tables and the conversion of buffered rows
//! into sorted record batches.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;

use crate::detect::Alert;
use crate::event::{DeadLetter, Record};

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn redactions_field() -> Field {
    Field::new(
        "redactions",
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        false,
    )
}

/// Columns of `invocations`, in the order they are written. The sort key
/// (tenant, agent_id, tool, ts) makes tenant/agent/tool filters prune row
/// groups and pages through their statistics.
pub static INVOCATIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("event_id", false),
        Field::new("ts", ts_type(), false),
        utf8("tenant", false),
        utf8("agent_id", false),
        utf8("environment", false),
        utf8("tool", false),
        utf8("status", false),
        utf8("actor", true),
        utf8("workflow_id", true),
        Field::new("step", DataType::Int64, true),
        utf8("tool_call_id", true),
        utf8("tool_type", true),
        utf8("agent_version", true),
        utf8("mcp_server", true),
        utf8("mcp_server_version", true),
        utf8("credential_id", true),
        Field::new("latency_ms", DataType::Float64, true),
        utf8("error_type", true),
        utf8("input", true),
        utf8("output_sha256", true),
        Field::new("output_bytes", DataType::Int64, true),
        utf8("output_preview", true),
        Field::new("tokens_in", DataType::Int64, true),
        Field::new("tokens_out", DataType::Int64, true),
        utf8("approval_id", true),
        utf8("approval_approver", true),
        utf8("approval_decision", true),
        utf8("attributes", true),
        redactions_field(),
        // Nullable: files written before the column existed read as null.
        Field::new(
            "injection_markers",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        Field::new("unknown_fields", DataType::Int32, false),
        utf8("src_topic", false),
        Field::new("src_partition", DataType::Int32, false),
        Field::new("src_offset", DataType::Int64, false),
        Field::new("ingested_at", ts_type(), false),
    ]))
});

/// Column indices of the invocations sort key, for Parquet sorting metadata.
pub const INVOCATIONS_SORT_KEY: [usize; 4] = [2, 3, 5, 1];

pub static DEAD_LETTER: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("reason", false),
        utf8("detail", false),
        utf8("raw", false),
        Field::new("raw_bytes", DataType::Int64, false),
        redactions_field(),
        utf8("src_topic", false),
        Field::new("src_partition", DataType::Int32, false),
        Field::new("src_offset", DataType::Int64, false),
        Field::new("kafka_ts", ts_type(), true),
        Field::new("ingested_at", ts_type(), false),
    ]))
});

pub const DEAD_LETTER_SORT_KEY: [usize; 2] = [6, 7];

/// Columns of `alerts`: one row per alert as it fired.
pub static ALERTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("alert_id", false),
        utf8("rule", false),
        utf8("severity", false),
        utf8("tenant", false),
        utf8("agent_id", false),
        utf8("tool", false),
        Field::new("window_start", ts_type(), false),
        Field::new("window_end", ts_type(), false),
        Field::new("observed", DataType::Float64, false),
        Field::new("expected", DataType::Float64, false),
        Field::new("score", DataType::Float64, false),
        Field::new(
            "sample_event_ids",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        utf8("detail", false),
        Field::new("detected_at", ts_type(), false),
        // Nullable: files written before incidents read it as null.
        utf8("incident_id", true),
    ]))
});

pub const ALERTS_SORT_KEY: [usize; 2] = [6, 1];

/// Alerts in firing order (window, then rule and keys).
pub fn alerts_batch(rows: &[Alert]) -> Result<RecordBatch, ArrowError> {
    let mut order: Vec<&Alert> = rows.iter().collect();
    order.sort_by(|a, b| {
        (
            a.window_start_ms,
            a.rule.name(),
            &a.tenant,
            &a.agent_id,
            &a.tool,
        )
            .cmp(&(
                b.window_start_ms,
                b.rule.name(),
                &b.tenant,
                &b.agent_id,
                &b.tool,
            ))
    });
    let n = rows.len();
    let s = || StringBuilder::with_capacity(n, n * 16);
    let (mut alert_id, mut rule, mut severity, mut tenant) = (s(), s(), s(), s());
    let (mut agent_id, mut tool, mut detail) = (s(), s(), s());
    let ts = || tz(TimestampMillisecondBuilder::with_capacity(n));
    let (mut window_start, mut window_end, mut detected_at) = (ts(), ts(), ts());
    let f = || Float64Builder::with_capacity(n);
    let (mut observed, mut expected, mut score) = (f(), f(), f());
    let mut samples = list_of(n);
    let mut incident = s();
    for a in order {
        alert_id.append_value(a.id());
        rule.append_value(a.rule.name());
        severity.append_value(a.severity.as_str());
        tenant.append_value(&a.tenant);
        agent_id.append_value(&a.agent_id);
        tool.append_value(&a.tool);
        window_start.append_value(a.window_start_ms);
        window_end.append_value(a.window_end_ms);
        observed.append_value(a.observed);
        expected.append_value(a.expected);
        score.append_value(a.score);
        for id in &a.sample_event_ids {
            samples.values().append_value(id);
        }
        samples.append(true);
        detail.append_value(&a.detail);
        detected_at.append_value(a.detected_at_ms);
        incident.append_value(&a.incident_id);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(alert_id.finish()),
        Arc::new(rule.finish()),
        Arc::new(severity.finish()),
        Arc::new(tenant.finish()),
        Arc::new(agent_id.finish()),
        Arc::new(tool.finish()),
        Arc::new(window_start.finish()),
        Arc::new(window_end.finish()),
        Arc::new(observed.finish()),
        Arc::new(expected.finish()),
        Arc::new(score.finish()),
        Arc::new(samples.finish()),
        Arc::new(detail.finish()),
        Arc::new(detected_at.finish()),
        Arc::new(incident.finish()),
    ];
    RecordBatch::try_new(ALERTS.clone(), columns)
}

fn tz(b: TimestampMillisecondBuilder) -> TimestampMillisecondBuilder {
    b.with_timezone("UTC")
}

fn list_of(rows: usize) -> ListBuilder<StringBuilder> {
    ListBuilder::with_capacity(StringBuilder::new(), rows)
}

/// Turns records into one batch sorted by the sort key. The columns are
/// built in arrival order, which reads the records (and the strings the
/// writer allocated for them in that order) front to back, and then reordered
/// column by column with `take`: gathering the rows in sorted order instead
/// jumped across the whole chunk for each of them.
pub fn invocations_batch(rows: &[Record]) -> Result<RecordBatch, ArrowError> {
    let order = UInt32Array::from(sort_order(rows));
    let unsorted = invocations_batch_in_arrival_order(rows)?;
    datafusion::arrow::compute::take_record_batch(&unsorted, &order)
}

fn invocations_batch_in_arrival_order(rows: &[Record]) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let s = || StringBuilder::with_capacity(n, n * 16);
    let (mut event_id, mut tenant, mut agent_id, mut environment, mut tool, mut status) =
        (s(), s(), s(), s(), s(), s());
    let (mut actor, mut workflow_id, mut tool_call_id, mut tool_type) = (s(), s(), s(), s());
    let (mut agent_version, mut mcp_server, mut mcp_server_version, mut credential_id) =
        (s(), s(), s(), s());
    let (mut error_type, mut output_sha256, mut output_preview) = (s(), s(), s());
    // The input is the one large column: size it exactly, not by doubling.
    let input_bytes = rows
        .iter()
        .filter_map(|r| r.input_json.as_ref())
        .map(String::len);
    let mut input = StringBuilder::with_capacity(n, input_bytes.sum());
    let (mut approval_id, mut approval_approver, mut approval_decision, mut attributes) =
        (s(), s(), s(), s());
    let mut src_topic = s();
    let mut ts = tz(TimestampMillisecondBuilder::with_capacity(n));
    let mut ingested_at = tz(TimestampMillisecondBuilder::with_capacity(n));
    let i64b = || Int64Builder::with_capacity(n);
    let (mut step, mut output_bytes, mut tokens_in, mut tokens_out, mut src_offset) =
        (i64b(), i64b(), i64b(), i64b(), i64b());
    let mut latency_ms = Float64Builder::with_capacity(n);
    let mut unknown_fields = Int32Builder::with_capacity(n);
    let mut src_partition = Int32Builder::with_capacity(n);
    let mut redactions = list_of(n);
    let mut injection_markers = list_of(n);

    for r in rows {
        let e = &r.event;
        event_id.append_value(&e.event_id);
        ts.append_value(e.ts_ms);
        tenant.append_value(&e.tenant);
        agent_id.append_value(&e.agent_id);
        environment.append_value(&e.environment);
        tool.append_value(&e.tool);
        status.append_value(e.status.as_str());
        actor.append_option(e.actor.as_deref());
        workflow_id.append_option(e.workflow_id.as_deref());
        step.append_option(e.step);
        tool_call_id.append_option(e.tool_call_id.as_deref());
        tool_type.append_option(e.tool_type.as_deref());
        agent_version.append_option(e.agent_version.as_deref());
        mcp_server.append_option(e.mcp_server.as_deref());
        mcp_server_version.append_option(e.mcp_server_version.as_deref());
        credential_id.append_option(e.credential_id.as_deref());
        latency_ms.append_option(e.latency_ms);
        error_type.append_option(e.error_type.as_deref());
        input.append_option(r.input_json.as_deref());
        output_sha256.append_option(e.output.as_ref().map(|o| o.sha256.as_str()));
        output_bytes.append_option(e.output.as_ref().map(|o| o.bytes));
        output_preview.append_option(e.output.as_ref().and_then(|o| o.preview.as_deref()));
        tokens_in.append_option(e.tokens_in);
        tokens_out.append_option(e.tokens_out);
        let a = e.approval.as_ref();
        approval_id.append_option(a.and_then(|a| a.id.as_deref()));
        approval_approver.append_option(a.and_then(|a| a.approver.as_deref()));
        approval_decision.append_option(a.map(|a| a.decision.as_str()));
        attributes.append_option(r.attributes_json.as_deref());
        for name in &r.redactions {
            redactions.values().append_value(name);
        }
        redactions.append(true);
        for name in e.markers().names() {
            injection_markers.values().append_value(name);
        }
        injection_markers.append(true);
        unknown_fields.append_value(i32::try_from(e.unknown_fields).unwrap_or(i32::MAX));
        src_topic.append_value(&*r.coords.topic);
        src_partition.append_value(r.coords.partition);
        src_offset.append_value(r.coords.offset);
        ingested_at.append_value(r.ingested_at_ms);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(event_id.finish()),
        Arc::new(ts.finish()),
        Arc::new(tenant.finish()),
        Arc::new(agent_id.finish()),
        Arc::new(environment.finish()),
        Arc::new(tool.finish()),
        Arc::new(status.finish()),
        Arc::new(actor.finish()),
        Arc::new(workflow_id.finish()),
        Arc::new(step.finish()),
        Arc::new(tool_call_id.finish()),
        Arc::new(tool_type.finish()),
        Arc::new(agent_version.finish()),
        Arc::new(mcp_server.finish()),
        Arc::new(mcp_server_version.finish()),
        Arc::new(credential_id.finish()),
        Arc::new(latency_ms.finish()),
        Arc::new(error_type.finish()),
        Arc::new(input.finish()),
        Arc::new(output_sha256.finish()),
        Arc::new(output_bytes.finish()),
        Arc::new(output_preview.finish()),
        Arc::new(tokens_in.finish()),
        Arc::new(tokens_out.finish()),
        Arc::new(approval_id.finish()),
        Arc::new(approval_approver.finish()),
        Arc::new(approval_decision.finish()),
        Arc::new(attributes.finish()),
        Arc::new(redactions.finish()),
        Arc::new(injection_markers.finish()),
        Arc::new(unknown_fields.finish()),
        Arc::new(src_topic.finish()),
        Arc::new(src_partition.finish()),
        Arc::new(src_offset.finish()),
        Arc::new(ingested_at.finish()),
    ];
    RecordBatch::try_new(INVOCATIONS.clone(), columns)
}

/// The row order of a file: by (tenant, agent_id, tool, ts). The few distinct
/// (tenant, agent_id, tool) groups are ranked once, so the sort compares
/// integers; comparing strings per row pair was most of a flush's time.
fn sort_order(rows: &[Record]) -> Vec<u32> {
    // foldhash, not SipHash: hashing three strings per row was a tenth of
    // the flusher. It is still randomly seeded, as the names are the
    // producers' choice.
    let mut groups: foldhash::HashMap<(&str, &str, &str), u32> = foldhash::HashMap::default();
    let group_of: Vec<u32> = rows
        .iter()
        .map(|r| {
            let e = &r.event;
            let next = u32::try_from(groups.len()).unwrap_or(u32::MAX);
            *groups
                .entry((&e.tenant, &e.agent_id, &e.tool))
                .or_insert(next)
        })
        .collect();
    let mut by_name: Vec<(&(&str, &str, &str), &u32)> = groups.iter().collect();
    by_name.sort_unstable();
    let mut rank = vec![0u32; by_name.len()];
    for (r, &(_, &g)) in by_name.iter().enumerate() {
        rank[g as usize] = u32::try_from(r).unwrap_or(u32::MAX);
    }
    // Row indices as `take` wants them; a chunk is far below 2^32 rows.
    let mut keys: Vec<(u32, i64, u32)> = rows
        .iter()
        .zip(&group_of)
        .enumerate()
        .map(|(i, (r, &g))| {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            (rank[g as usize], r.event.ts_ms, index)
        })
        .collect();
    // The index makes every key distinct, so an unstable sort is deterministic.
    keys.sort_unstable();
    keys.into_iter().map(|(_, _, i)| i).collect()
}

/// Sorts dead letters by their Kafka coordinates and turns them into a batch.
pub fn dead_letter_batch(rows: &mut [DeadLetter]) -> Result<RecordBatch, ArrowError> {
    rows.sort_by_key(|d| (d.coords.partition, d.coords.offset));
    let n = rows.len();
    let s = || StringBuilder::with_capacity(n, n * 32);
    let (mut reason, mut detail, mut raw, mut src_topic) = (s(), s(), s(), s());
    let mut raw_bytes = Int64Builder::with_capacity(n);
    let mut redactions = list_of(n);
    let mut src_partition = Int32Builder::with_capacity(n);
    let mut src_offset = Int64Builder::with_capacity(n);
    let mut kafka_ts = tz(TimestampMillisecondBuilder::with_capacity(n));
    let mut ingested_at = tz(TimestampMillisecondBuilder::with_capacity(n));
    for d in rows.iter() {
        reason.append_value(d.reason.as_str());
        detail.append_value(&d.detail);
        raw.append_value(&d.raw);
        raw_bytes.append_value(d.raw_bytes);
        for name in &d.redactions {
            redactions.values().append_value(name);
        }
        redactions.append(true);
        src_topic.append_value(&*d.coords.topic);
        src_partition.append_value(d.coords.partition);
        src_offset.append_value(d.coords.offset);
        kafka_ts.append_option(d.coords.kafka_ts_ms);
        ingested_at.append_value(d.ingested_at_ms);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(reason.finish()),
        Arc::new(detail.finish()),
        Arc::new(raw.finish()),
        Arc::new(raw_bytes.finish()),
        Arc::new(redactions.finish()),
        Arc::new(src_topic.finish()),
        Arc::new(src_partition.finish()),
        Arc::new(src_offset.finish()),
        Arc::new(kafka_ts.finish()),
        Arc::new(ingested_at.finish()),
    ];
    RecordBatch::try_new(DEAD_LETTER.clone(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedactConfig;
    use crate::decode::{DecodeLimits, decode};
    use crate::event::KafkaCoords;
    use crate::redact::Redactor;

    fn record(tenant: &str, agent: &str, tool: &str, ts: i64, offset: i64) -> Record {
        let json = format!(
            r#"{{"event_id":"e{offset}","ts":{ts},"tenant":"{tenant}","agent_id":"{agent}","environment":"production","tool":"{tool}","status":"ok"}}"#
        );
        let event = decode(Some(json.as_bytes()), ts, &DecodeLimits::default()).expect("valid");
        let coords = KafkaCoords {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            kafka_ts_ms: None,
        };
        Redactor::new(&RedactConfig::default())
            .expect("redactor")
            .redact_event(event, coords, ts)
    }

    #[test]
    fn rows_sort_by_tenant_agent_tool_then_time() {
        let t = 1_795_852_800_000;
        let rows = vec![
            record("b", "a1", "search", t, 0),
            record("a", "a2", "search", t + 5, 1),
            record("a", "a1", "wire", t, 2),
            record("a", "a1", "search", t + 9, 3),
            record("a", "a1", "search", t + 1, 4),
            record("a", "a10", "search", t, 5),
        ];
        let offsets: Vec<i64> = sort_order(&rows)
            .into_iter()
            .map(|i| rows[i as usize].coords.offset)
            .collect();
        assert_eq!(offsets, vec![4, 3, 2, 5, 1, 0]);
    }
}
