//! Warm owns reading the last hours of stored history back into the
//! baselines — at start-up, or on a shared lake for each partition as it is
//! assigned — so a restart or a moved partition does not forget what normal
//! is. It aggregates with DataFusion (one row per key and bucket), never rows.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};

use super::Detector;
use crate::error::QueryError;
use crate::lake::Lake;

/// Feeds the buckets of `[now - hours, now)` into `detector`, of the rows
/// from `partitions` of the topic only when given; returns the number of
/// (key, bucket) aggregates read.
pub fn from_history(
    lake: &Lake,
    detector: &mut Detector,
    bucket_ms: i64,
    hours: u32,
    now_ms: i64,
    partitions: Option<&[i32]>,
) -> Result<usize, QueryError> {
    if hours == 0 || partitions.is_some_and(<[i32]>::is_empty) {
        return Ok(0);
    }
    let only = partitions.map_or(String::new(), |p| {
        let list: Vec<String> = p.iter().map(i32::to_string).collect();
        format!("AND src_partition IN ({}) ", list.join(", "))
    });
    let since = now_ms - i64::from(hours) * 3_600_000;
    let sql = format!(
        "SELECT tenant, agent_id, tool, \
                CAST(CAST(ts AS BIGINT) / {bucket_ms} AS BIGINT) AS bucket, \
                COUNT(*) AS calls, \
                SUM(CASE WHEN status IN ('error', 'denied') THEN 1 ELSE 0 END) AS errors \
         FROM invocations \
         WHERE ts >= to_timestamp_millis({since}) AND ts < to_timestamp_millis({now_ms}) \
           AND dt >= '{}' {only}\
         GROUP BY 1, 2, 3, 4 ORDER BY bucket, tenant, agent_id, tool",
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(since)
            .unwrap_or_default()
            .format("%Y-%m-%d")
    );
    let batches = crate::query::run_blocking(lake, sql)?;
    let mut n = 0;
    for b in &batches {
        // Whatever string and integer types the plan chose, read them as
        // Utf8 and Int64.
        let column = |i: usize, t: &DataType| {
            cast(b.column(i), t).map_err(|e| QueryError::Runtime(e.to_string()))
        };
        let (tenant, agent, tool) = (
            column(0, &DataType::Utf8)?,
            column(1, &DataType::Utf8)?,
            column(2, &DataType::Utf8)?,
        );
        let (bucket, calls, errors) = (
            column(3, &DataType::Int64)?,
            column(4, &DataType::Int64)?,
            column(5, &DataType::Int64)?,
        );
        let (tenant, agent, tool) = (
            tenant.as_string::<i32>(),
            agent.as_string::<i32>(),
            tool.as_string::<i32>(),
        );
        let (bucket, calls, errors) = (
            bucket.as_primitive::<Int64Type>(),
            calls.as_primitive::<Int64Type>(),
            errors.as_primitive::<Int64Type>(),
        );
        for row in 0..b.num_rows() {
            if bucket.is_null(row) {
                continue;
            }
            detector.warm(
                tenant.value(row),
                agent.value(row),
                tool.value(row),
                bucket.value(row) * bucket_ms,
                u32::try_from(calls.value(row)).unwrap_or(u32::MAX),
                u32::try_from(errors.value(row)).unwrap_or(u32::MAX),
            );
            n += 1;
        }
    }
    Ok(n)
}
