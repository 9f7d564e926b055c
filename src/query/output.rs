//! Output owns how a query result leaves: a table for a terminal, CSV for a
//! ticket (lists and structs as JSON text, since CSV has no nesting), a JSON
//! array, JSON lines, or Parquet; to standard output or atomically to a
//! file, so a half-written export never sits where the reader looks.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;

use crate::error::QueryError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for a terminal; control characters escaped.
    Table,
    /// RFC 4180 with a header; lists, structs and maps as JSON text; a text
    /// cell that a spreadsheet would run as a formula (it starts with
    /// `= + - @`, a tab or a carriage return) gets a leading `'`, as OWASP
    /// advises (`--csv-raw` turns that off).
    Csv,
    /// CSV with every cell as stored, formulas and all (`--csv-raw`).
    #[value(skip)]
    CsvRaw,
    /// One JSON array of row objects.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A Parquet file (to --out, or to a standard output that is not a
    /// terminal).
    Parquet,
}

impl Format {
    /// Binary formats, which a terminal must not be sent.
    pub fn is_binary(self) -> bool {
        self == Format::Parquet
    }
}

fn arrow(e: ArrowError) -> QueryError {
    QueryError::DataFusion(e.into())
}

/// Writes `batches` as `format` to `out`.
pub fn write(
    batches: &[RecordBatch],
    format: Format,
    out: &mut dyn Write,
) -> Result<(), QueryError> {
    use datafusion::arrow::{csv, json};
    match format {
        // A terminal runs what it is sent: control and direction-changing
        // characters in stored text are shown escaped, never raw.
        Format::Table => {
            let text = datafusion::arrow::util::pretty::pretty_format_batches(batches)
                .map_err(arrow)?
                .to_string();
            writeln!(out, "{}", super::escape_deceptive(&text))?;
        }
        Format::Csv | Format::CsvRaw => {
            let mut w = csv::WriterBuilder::new().with_header(true).build(out);
            for b in batches {
                let b = nested_as_json_text(b)?;
                let b = if format == Format::Csv {
                    formulas_neutralised(&b)?
                } else {
                    b
                };
                w.write(&b).map_err(arrow)?;
            }
        }
        Format::Json => {
            let mut w = json::ArrayWriter::new(out);
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
            w.finish().map_err(arrow)?;
            // An empty result is `[]`, not nothing.
            if batches.iter().all(|b| b.num_rows() == 0) {
                w.into_inner().write_all(b"[]")?;
            }
        }
        Format::Jsonl => {
            let mut w = json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
            w.finish().map_err(arrow)?;
        }
        Format::Parquet => {
            let schema = batches
                .first()
                .map(RecordBatch::schema)
                .unwrap_or_else(|| Arc::new(Schema::empty()));
            let props = datafusion::parquet::file::properties::WriterProperties::builder()
                .set_compression(datafusion::parquet::basic::Compression::ZSTD(
                    Default::default(),
                ))
                .build();
            // The writer needs a `Send` sink, which a locked stdout is not:
            // the file is built in memory (query results are bounded by
            // what DataFusion collected already) and then written out.
            let mut bytes = Vec::new();
            let mut w =
                datafusion::parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, Some(props))
                    .map_err(|e| QueryError::DataFusion(e.into()))?;
            for b in batches {
                w.write(b).map_err(|e| QueryError::DataFusion(e.into()))?;
            }
            w.close().map_err(|e| QueryError::DataFusion(e.into()))?;
            out.write_all(&bytes)?;
        }
    }
    Ok(())
}

/// Renders a text format as a string.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String, QueryError> {
    let mut buf = Vec::new();
    write(batches, format, &mut buf)?;
    String::from_utf8(buf).map_err(|_| QueryError::Runtime(format!("{format:?} is not text")))
}

/// Writes the result to `path` whole or not at all.
pub fn write_file(batches: &[RecordBatch], format: Format, path: &Path) -> Result<(), QueryError> {
    atomically(path, |w| write(batches, format, w))
}

/// Runs `fill` on a temporary file beside `path`, syncs it and renames it
/// over `path`: a reader sees the old file or the whole new one, and a
/// failure leaves the old one as it was.
pub fn atomically(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<(), QueryError>,
) -> Result<(), QueryError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = |source: std::io::Error| QueryError::Export {
        path: path.to_owned(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".agentaudit-export-")
        .tempfile_in(dir)
        .map_err(io)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w)?;
        w.flush().map_err(io)?;
    }
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A cell a spreadsheet reads as a formula (CSV injection): its first
/// character is one of OWASP's list.
fn is_formula(text: &str) -> bool {
    text.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// `batch` with each column `text_of` turns into text replaced by that
/// text (a nullable Utf8 column of the same name); the others as they are.
fn with_text_columns(
    batch: &RecordBatch,
    mut text_of: impl FnMut(&Arc<Field>, &ArrayRef) -> Result<Option<StringArray>, QueryError>,
) -> Result<RecordBatch, QueryError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let mut changed = false;
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match text_of(field, column)? {
            Some(text) => {
                changed = true;
                fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
                columns.push(Arc::new(text));
            }
            None => {
                fields.push(field.clone());
                columns.push(column.clone());
            }
        }
    }
    if !changed {
        return Ok(batch.clone());
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow)
}

/// `batch` with every text cell that reads as a formula prefixed by `'`,
/// which spreadsheets show and never evaluate.
fn formulas_neutralised(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    with_text_columns(batch, |field, column| {
        if !matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Ok(None);
        }
        let text = datafusion::arrow::compute::cast(column, &DataType::Utf8).map_err(arrow)?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| QueryError::Runtime(format!("`{}` is not text", field.name())))?;
        if !text.iter().flatten().any(is_formula) {
            return Ok(None);
        }
        Ok(Some(
            text.iter()
                .map(|v| {
                    v.map(|v| {
                        if is_formula(v) {
                            format!("'{v}")
                        } else {
                            v.to_owned()
                        }
                    })
                })
                .collect(),
        ))
    })
}

fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(_, _)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::Struct(_)
            | DataType::Map(_, _)
            | DataType::Union(_, _)
    )
}

/// `batch` with every nested column replaced by its values as JSON text,
/// as arrow's JSON writer writes them (null stays null).
fn nested_as_json_text(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    with_text_columns(batch, |field, column| {
        if !is_nested(field.data_type()) {
            return Ok(None);
        }
        Ok(Some(StringArray::from(json_texts(field, column)?)))
    })
}

/// Each value of one column as JSON text, through arrow's own JSON writer.
fn json_texts(field: &Arc<Field>, column: &ArrayRef) -> Result<Vec<Option<String>>, QueryError> {
    let one = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "v",
            field.data_type().clone(),
            true,
        )])),
        vec![column.clone()],
    )
    .map_err(arrow)?;
    let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
    w.write(&one).map_err(arrow)?;
    w.finish().map_err(arrow)?;
    let lines = w.into_inner();
    let mut out = Vec::with_capacity(column.len());
    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let row: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| QueryError::Runtime(format!("re-reading a JSON row: {e}")))?;
        out.push(row.get("v").map(serde_json::Value::to_string));
    }
    if out.len() != column.len() {
        return Err(QueryError::Runtime(format!(
            "{} JSON rows for {} values of `{}`",
            out.len(),
            column.len(),
            field.name()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `query --format csv` wrote a tool named `=HYPERLINK(…)` as a live
    /// formula; by default each such cell now opens with `'`.
    #[test]
    fn csv_cells_that_read_as_formulas_are_neutralised_unless_raw() {
        let cells = [
            "=HYPERLINK(\"https://evil.example\",\"x\")",
            "+1+1",
            "-2+3",
            "@SUM(A1)",
            "\tcmd",
            "\rcmd",
            "search_kb",
            "a=b",
        ];
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("tool", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(cells.to_vec())) as ArrayRef],
        )
        .unwrap();
        let safe = render(std::slice::from_ref(&batch), Format::Csv).unwrap();
        let rows: Vec<String> = datafusion::arrow::csv::ReaderBuilder::new(batch.schema())
            .with_header(true)
            .build(std::io::Cursor::new(safe.clone()))
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                let col = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone();
                col.iter()
                    .map(|v| v.unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        for (cell, row) in cells.iter().zip(&rows) {
            if is_formula(cell) {
                assert_eq!(*row, format!("'{cell}"), "{safe}");
            } else {
                assert_eq!(row, cell);
            }
        }
        let raw = render(&[batch], Format::CsvRaw).unwrap();
        assert!(raw.contains("\n@SUM(A1)\n"), "{raw}");
        assert!(!safe.contains("\n@SUM"), "{safe}");
    }
}
