//! The staged Parquet files of the commit in progress, with a bound on how
//! many are open at once.
//!
//! Rows are partitioned by event hour, and the producer chooses the hour: a
//! burst of back-dated events could otherwise ask for one open file per hour
//! it names, until the process runs out of file descriptors and the sink
//! stops. So at most `max_open` files are open; opening one more first closes
//! (finishes and fsyncs) the least recently written, which stays staged and
//! is committed with the others. A partition written again after that gets a
//! second file in the same commit. Whatever the hour spread, rows land; a
//! wide spread costs more, smaller files, never a stall.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;

use super::PartitionKey;
use super::journal::Rename;
use crate::error::SinkError;
use crate::event::KafkaCoords;
use crate::metrics::Metrics;

/// A staged file that is complete and fsynced, waiting for the commit.
pub struct ClosedFile {
    pub table: &'static str,
    /// The directory `rename` is relative to.
    pub root: PathBuf,
    pub rows: usize,
    pub bytes: u64,
    pub rename: Rename,
}

/// The staged files of one commit: some open for appends, some closed early.
pub struct Staging {
    root: PathBuf,
    max_open: usize,
    open: BTreeMap<PartitionKey, OpenFile>,
    closed: Vec<ClosedFile>,
    /// Numbers the files of this commit; never reused within it.
    next_index: usize,
    /// Logical clock of appends, for least-recently-written.
    tick: u64,
    metrics: Arc<Metrics>,
}

impl Staging {
    pub fn new(root: &Path, max_open: usize, metrics: Arc<Metrics>) -> Staging {
        metrics.staged_files_limit.set(max_open as i64);
        Staging {
            root: root.to_owned(),
            max_open: max_open.max(1),
            open: BTreeMap::new(),
            closed: Vec::new(),
            next_index: 0,
            tick: 0,
            metrics,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.closed.is_empty()
    }

    /// Rows appended since the last commit.
    pub fn rows(&self) -> usize {
        self.open.values().map(|f| f.rows).sum::<usize>()
            + self.closed.iter().map(|f| f.rows).sum::<usize>()
    }

    /// Bytes on disk of the largest open staged file, for rolling by size.
    pub fn largest_open_bytes(&self) -> u64 {
        self.open
            .values()
            .map(|f| f.writer.bytes_written() as u64)
            .max()
            .unwrap_or(0)
    }

    /// Appends `batch` to the staged file of `key`, opening one (and closing
    /// the least recently written, at the bound) when it has none.
    pub fn append<'a>(
        &mut self,
        seq: u64,
        key: PartitionKey,
        batch: &RecordBatch,
        props: &WriterProperties,
        coords: impl Iterator<Item = &'a KafkaCoords>,
    ) -> Result<(), SinkError> {
        self.tick += 1;
        if !self.open.contains_key(&key) {
            while self.open.len() >= self.max_open {
                self.close_least_recent()?;
            }
            let file = self.create(seq, key, batch.schema(), props)?;
            self.open.insert(key, file);
            self.metrics.staged_files_open.set(self.open.len() as i64);
        }
        let tick = self.tick;
        let Entry::Occupied(mut e) = self.open.entry(key) else {
            unreachable!("the file was just opened");
        };
        let file = e.get_mut();
        file.last_write = tick;
        file.append(batch)?;
        for c in coords {
            let r = file
                .ranges
                .entry((c.topic.clone(), c.partition))
                .or_insert((c.offset, c.offset));
            r.0 = r.0.min(c.offset);
            r.1 = r.1.max(c.offset);
        }
        Ok(())
    }

    /// Creates the staged file; on "too many open files" from elsewhere in
    /// the process, gives back one of ours and tries again.
    fn create(
        &mut self,
        seq: u64,
        key: PartitionKey,
        schema: SchemaRef,
        props: &WriterProperties,
    ) -> Result<OpenFile, SinkError> {
        loop {
            let index = self.next_index;
            match OpenFile::create(&self.root, seq, index, key, schema.clone(), props.clone()) {
                Ok(f) => {
                    self.next_index += 1;
                    return Ok(f);
                }
                Err(SinkError::Io { source, .. })
                    if is_out_of_descriptors(&source) && !self.open.is_empty() =>
                {
                    self.close_least_recent()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn close_least_recent(&mut self) -> Result<(), SinkError> {
        let Some(key) = self
            .open
            .iter()
            .min_by_key(|(_, f)| f.last_write)
            .map(|(k, _)| *k)
        else {
            return Ok(());
        };
        if let Some(file) = self.open.remove(&key) {
            self.closed.push(file.close(key, &self.root)?);
            self.metrics.staged_files_closed_early.inc();
            self.metrics.staged_files_open.set(self.open.len() as i64);
        }
        Ok(())
    }

    /// Closes every open file and hands over all files of this commit.
    pub fn finish(&mut self) -> Result<Vec<ClosedFile>, SinkError> {
        for (key, file) in std::mem::take(&mut self.open) {
            self.closed.push(file.close(key, &self.root)?);
        }
        self.metrics.staged_files_open.set(0);
        self.next_index = 0;
        Ok(std::mem::take(&mut self.closed))
    }
}

/// `EMFILE` (this process) or `ENFILE` (the whole system).
fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The soft limit on open files of this process, where the platform says.
pub fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// How many staged files may be open: the configured bound, but never more
/// than a quarter of the process's descriptor limit, which Kafka sockets, the
/// HTTP server and queries share.
pub fn open_files_budget(configured: usize, soft_limit: Option<u64>) -> usize {
    let share = soft_limit.map_or(usize::MAX, |l| (l / 4).max(4) as usize);
    configured.min(share).max(1)
}

/// A staged Parquet file of the commit in progress: each append adds sorted
/// row groups, and the Kafka ranges of its rows go into its metadata on close.
struct OpenFile {
    writer: ArrowWriter<BufWriter<File>>,
    /// Absolute path of the staged file, for errors.
    path: PathBuf,
    rename: Rename,
    rows: usize,
    last_write: u64,
    /// First and last offset of the rows so far per (topic, partition),
    /// written as `{"topic/partition": [first, last]}` so that a file can be
    /// traced to the Kafka range it holds without reading its rows.
    ranges: BTreeMap<(Arc<str>, i32), (i64, i64)>,
}

impl OpenFile {
    fn create(
        root: &Path,
        seq: u64,
        index: usize,
        key: PartitionKey,
        schema: SchemaRef,
        props: WriterProperties,
    ) -> Result<OpenFile, SinkError> {
        let name = format!("part-{seq:012}-{index:04}.parquet");
        let staged = PathBuf::from("_staging").join(&name);
        let final_path = key.dir().join(&name);
        let path = root.join(&staged);
        let file = File::create(&path).map_err(SinkError::io(&path))?;
        let writer =
            ArrowWriter::try_new(BufWriter::new(file), schema, Some(props)).map_err(|source| {
                SinkError::Parquet {
                    path: path.clone(),
                    source,
                }
            })?;
        Ok(OpenFile {
            writer,
            path,
            rename: Rename { staged, final_path },
            rows: 0,
            last_write: 0,
            ranges: BTreeMap::new(),
        })
    }

    /// Appends `batch` and ends the row group, so that every row group is
    /// sorted on its own (Parquet's `sorting_columns` is per row group).
    fn append(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        let parquet_err = |source| SinkError::Parquet {
            path: self.path.clone(),
            source,
        };
        self.writer.write(batch).map_err(parquet_err)?;
        self.writer.flush().map_err(parquet_err)?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Writes the footer and fsyncs.
    fn close(mut self, key: PartitionKey, root: &Path) -> Result<ClosedFile, SinkError> {
        let path = self.path;
        let ranges: BTreeMap<String, (i64, i64)> = self
            .ranges
            .iter()
            .map(|((topic, partition), r)| (format!("{topic}/{partition}"), *r))
            .collect();
        let meta = serde_json::to_string(&ranges).unwrap_or_default();
        self.writer
            .append_key_value_metadata(KeyValue::new("agentaudit.offsets".to_owned(), meta));
        let parquet_err = |source| SinkError::Parquet {
            path: path.clone(),
            source,
        };
        let file = self
            .writer
            .into_inner()
            .map_err(parquet_err)?
            .into_inner()
            .map_err(|e| SinkError::io(&path)(e.into_error()))?;
        file.sync_all().map_err(SinkError::io(&path))?;
        let bytes = file.metadata().map_err(SinkError::io(&path))?.len();
        Ok(ClosedFile {
            table: key.table,
            root: root.to_owned(),
            rows: self.rows,
            bytes,
            rename: self.rename,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_quarter_of_the_descriptor_limit_at_most() {
        assert_eq!(open_files_budget(256, Some(1024)), 256);
        assert_eq!(open_files_budget(256, Some(512)), 128);
        assert_eq!(open_files_budget(256, None), 256);
        assert_eq!(open_files_budget(256, Some(3)), 4);
    }

    #[test]
    fn the_soft_limit_is_read_where_linux_reports_it() {
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files_soft_limit().is_some_and(|n| n > 0));
        }
    }
}
