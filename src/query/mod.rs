//! Query owns read-only SQL over the dataset the sink wrote: DataFusion with
//! the tables `invocations`, `dead_letter` and `alerts`, Hive partition columns `dt`
//! and `hour` (pruned by filters on them), named `$parameters`, and the
//! output formats (`output.rs`). Anything that would write is refused.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;

use crate::error::QueryError;
use crate::lake::Lake;
use crate::sink::{self, schema};

mod output;
pub use output::{Format, atomically, render, write, write_file};

/// A session with every table of the dataset in `lake` registered, local
/// or on S3. Tables with nothing in them yet are registered empty: a query
/// reads and never creates anything, not even a directory.
pub async fn session(lake: &Lake) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .set_bool("datafusion.execution.parquet.pushdown_filters", true);
    let ctx = SessionContext::new_with_config(config);
    lake.register(&ctx)?;
    for (name, table_schema) in [
        (sink::INVOCATIONS, schema::INVOCATIONS.clone()),
        (sink::DEAD_LETTER, schema::DEAD_LETTER.clone()),
        (sink::ALERTS, schema::ALERTS.clone()),
        (crate::hook::ACTIONS, crate::hook::actions_schema()),
    ] {
        if !lake.has_table(name).await? {
            let mut fields: Vec<_> = table_schema.fields().iter().cloned().collect();
            for part in ["dt", "hour"] {
                fields.push(Arc::new(Field::new(part, DataType::Utf8, false)));
            }
            let empty = MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]])?;
            ctx.register_table(name, Arc::new(empty))?;
            continue;
        }
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("dt".to_owned(), DataType::Utf8),
                ("hour".to_owned(), DataType::Utf8),
            ]);
        ctx.register_listing_table(
            name,
            lake.table_url(name),
            options,
            Some(table_schema),
            None,
        )
        .await?;
    }
    Ok(ctx)
}

/// Parses `NAME=VALUE` pairs given with `--param`.
pub fn parse_params(raw: &[String]) -> Result<BTreeMap<String, String>, QueryError> {
    raw.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(QueryError::BadParam(p.clone())),
        })
        .collect()
}

/// Refuses a plan with a write anywhere in it — DDL, DML, COPY or a
/// session statement, under EXPLAIN or EXPLAIN ANALYZE (which runs its
/// input) or in a subquery — by DataFusion's own statement options, which
/// visit every node.
fn refuse_writes(plan: &LogicalPlan) -> Result<(), QueryError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| QueryError::NotReadOnly(e.strip_backtrace()))
}

/// Plans and runs one read-only statement. Parameters are bound as strings
/// (`$tenant`); CAST them in SQL where another type is needed.
pub async fn run(
    ctx: &SessionContext,
    sql: &str,
    params: &BTreeMap<String, String>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let plan = ctx.state().create_logical_plan(sql).await?;
    refuse_writes(&plan)?;
    let needed = plan.get_parameter_names()?;
    let mut missing: Vec<&String> = needed
        .iter()
        .filter(|n| !params.contains_key(n.trim_start_matches('$')))
        .collect();
    missing.sort();
    if let Some(name) = missing.first() {
        return Err(QueryError::MissingParam(
            name.trim_start_matches('$').to_owned(),
        ));
    }
    let df = ctx.execute_logical_plan(plan).await?;
    let df = if needed.is_empty() {
        df
    } else {
        let values: HashMap<String, ScalarValue> = params
            .iter()
            .map(|(k, v)| (k.clone(), ScalarValue::Utf8(Some(v.clone()))))
            .collect();
        df.with_param_values(values)?
    };
    // An empty result keeps its columns: a header in CSV, a schema in
    // Parquet.
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut batches = df.collect().await?;
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok(batches)
}

/// Runs `sql` over the dataset from synchronous code that may itself be
/// inside an async runtime (start-up, backtests): on its own thread, with its
/// own runtime.
pub fn run_blocking(lake: &Lake, sql: String) -> Result<Vec<RecordBatch>, QueryError> {
    run_blocking_with(lake, sql, BTreeMap::new())
}

/// `run_blocking` with `$parameters`.
pub fn run_blocking_with(
    lake: &Lake,
    sql: String,
    params: BTreeMap<String, String>,
) -> Result<Vec<RecordBatch>, QueryError> {
    let lake = lake.clone();
    on_own_runtime(async move {
        let ctx = session(&lake).await?;
        run(&ctx, &sql, &params).await
    })
}

/// Runs `work` to completion on a thread and runtime of its own, so that
/// synchronous code, inside an async runtime or not, can wait for it.
pub fn on_own_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, QueryError>> + Send + 'static,
) -> Result<T, QueryError> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| QueryError::Runtime(e.to_string()))?
            .block_on(work)
    })
    .join()
    .map_err(|_| QueryError::Runtime("the query thread panicked".into()))?
}

/// Reads a named query file.
pub fn read_query_file(path: &Path) -> Result<String, QueryError> {
    std::fs::read_to_string(path).map_err(|source| QueryError::File {
        path: path.to_owned(),
        source,
    })
}

/// `text` with every control (but newline), bidirectional and zero-width
/// character written as `\u{…}`.
pub fn escape_deceptive(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c != '\n' && crate::decode::fields::is_deceptive(c) {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_output_escapes_terminal_escapes_and_bidi_overrides() {
        let shown = super::escape_deceptive("ok\u{1b}[31mred\u{202e}txt\nnext");
        assert_eq!(shown, "ok\\u{001b}[31mred\\u{202e}txt\nnext");
    }
}
