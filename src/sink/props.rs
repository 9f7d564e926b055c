//! Props owns how the sink encodes Parquet: compression, statistics, row
//! group size, the sort order each table's row groups declare, and which
//! columns are kept out of dictionaries.

use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::SortingColumn;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use super::schema;
use crate::config::SinkConfig;

/// Columns whose values are (nearly) unique per row: a dictionary would only
/// cost hashing every value and then fall back to plain encoding anyway.
const UNIQUE_COLUMNS: [&str; 7] = [
    "event_id",
    "ts",
    "tool_call_id",
    "input",
    "output_sha256",
    "output_preview",
    "src_offset",
];

/// The properties `invocations` files are written with, for benchmarks that
/// must encode as the sink does.
pub fn invocations_writer_props(cfg: &SinkConfig) -> WriterProperties {
    writer_props(cfg, &schema::INVOCATIONS_SORT_KEY)
}

pub(super) fn writer_props(cfg: &SinkConfig, sort_key: &[usize]) -> WriterProperties {
    let level = ZstdLevel::try_new(cfg.zstd_level).unwrap_or_default();
    let mut builder = WriterProperties::builder();
    for column in UNIQUE_COLUMNS {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
    }
    builder
        .set_compression(Compression::ZSTD(level))
        // Page-level statistics also write the column and offset indexes.
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(cfg.row_group_rows))
        .set_sorting_columns(Some(
            sort_key
                .iter()
                .map(|&i| SortingColumn {
                    column_idx: i as i32,
                    descending: false,
                    nulls_first: false,
                })
                .collect(),
        ))
        .set_created_by(format!("agentaudit {}", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The properties of `dead_letter` and `alerts` files.
pub(super) fn dead_letter_props(cfg: &SinkConfig) -> WriterProperties {
    writer_props(cfg, &schema::DEAD_LETTER_SORT_KEY)
}

pub(super) fn alerts_props(cfg: &SinkConfig) -> WriterProperties {
    writer_props(cfg, &schema::ALERTS_SORT_KEY)
}
