//! Sink owns the dataset on disk: buffering redacted rows, writing them as
//! sorted, zstd-compressed Parquet under Hive-style `dt=/hour=` directories,
//! and the commit protocol that makes a flush durable exactly once.
//!
//! Rows arrive in chunks. Each chunk is sorted and appended as row groups to
//! one staged file per partition (`append`), so encoding keeps pace with the
//! stream; `commit` closes the staged files and makes them durable together.
//!
//! Invariant: a Parquet file is visible in the dataset only after it is
//! complete and fsynced, and the offsets of its rows are reported as
//! committable only after the journal naming it is durable (see `journal`).

pub mod alertmanager;
pub mod claims;
pub mod dataset_key;
pub mod journal;
mod props;
pub mod retry;
pub mod schema;
pub mod shared;
mod sizes;
pub mod staging;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Timelike, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::file::properties::WriterProperties;

use crate::config::SinkConfig;
use crate::detect::Alert;
use crate::error::SinkError;
use crate::event::{DeadLetter, KafkaCoords, Record};
use crate::metrics::Metrics;
use journal::{Journal, Offsets};
pub use props::invocations_writer_props;
use retry::Retry;
use shared::{Floors, SharedSink};
pub use sizes::prepared_size;
use sizes::{dead_letter_size, record_size};
use staging::Staging;

pub const INVOCATIONS: &str = "invocations";
pub const DEAD_LETTER: &str = "dead_letter";
pub const ALERTS: &str = "alerts";

/// A Hive partition: table and UTC hour. Kept as an hour number, not as the
/// `dt` text, because every buffered row computes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionKey {
    pub table: &'static str,
    epoch_hour: i64,
}

impl PartitionKey {
    pub fn for_time(table: &'static str, ts_ms: i64) -> PartitionKey {
        PartitionKey {
            table,
            epoch_hour: ts_ms.div_euclid(3_600_000),
        }
    }

    /// `invocations/dt=2026-11-28/hour=07`, relative to the data directory.
    pub fn dir(&self) -> PathBuf {
        let t = DateTime::<Utc>::from_timestamp(self.epoch_hour.saturating_mul(3600), 0)
            .unwrap_or_default();
        PathBuf::from(self.table)
            .join(format!(
                "dt={:04}-{:02}-{:02}",
                t.year(),
                t.month(),
                t.day()
            ))
            .join(format!("hour={:02}", t.hour()))
    }
}

/// Rows waiting for the next flush, grouped by partition. The pipeline fills
/// one while the sink writes the previous one, so decoding never waits on
/// Parquet encoding or fsync.
#[derive(Default)]
pub struct PendingRows {
    invocations: BTreeMap<PartitionKey, Vec<Record>>,
    dead_letters: BTreeMap<PartitionKey, Vec<DeadLetter>>,
    alerts: BTreeMap<PartitionKey, Vec<Alert>>,
    /// Highest offset buffered per (topic, partition).
    pending: BTreeMap<(Arc<str>, i32), i64>,
    bytes: usize,
    rows: usize,
    oldest: Option<Instant>,
}

impl PendingRows {
    fn note(&mut self, coords: &KafkaCoords, bytes: usize) {
        self.mark_consumed(coords);
        self.bytes += bytes;
        self.rows += 1;
    }

    pub fn push_record(&mut self, r: Record) {
        self.note(&r.coords, record_size(&r));
        let key = PartitionKey::for_time(INVOCATIONS, r.event.ts_ms);
        self.invocations.entry(key).or_default().push(r);
    }

    pub fn push_dead_letter(&mut self, d: DeadLetter) {
        self.note(&d.coords, dead_letter_size(&d));
        let key = PartitionKey::for_time(DEAD_LETTER, d.ingested_at_ms);
        self.dead_letters.entry(key).or_default().push(d);
    }

    /// A message that yielded no row: its offset is committed with these
    /// rows all the same, so a partition whose tail is skipped spans shows
    /// no lag.
    pub fn mark_consumed(&mut self, coords: &KafkaCoords) {
        let slot = self
            .pending
            .entry((coords.topic.clone(), coords.partition))
            .or_insert(coords.offset);
        *slot = (*slot).max(coords.offset);
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Nothing to write and no offset to commit.
    pub fn is_empty(&self) -> bool {
        self.rows == 0 && self.pending.is_empty()
    }

    /// Alerts carry no Kafka offsets of their own: they are durable with the
    /// flush of the records that fired them.
    pub fn push_alert(&mut self, a: Alert) {
        self.bytes += 256 + a.detail.len();
        self.rows += 1;
        self.oldest.get_or_insert_with(Instant::now);
        let key = PartitionKey::for_time(ALERTS, a.window_start_ms);
        self.alerts.entry(key).or_default().push(a);
    }

    /// Estimated memory held, for the budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// When the oldest of these rows was buffered.
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }
}

/// What a flush made durable.
#[derive(Debug, Default)]
pub struct FlushOutcome {
    pub files: usize,
    pub rows: usize,
    pub bytes: u64,
    /// Offsets now safe to commit: the next offset to consume per partition.
    pub committable: Vec<(String, i32, i64)>,
}

pub struct ParquetSink {
    root: PathBuf,
    cfg: SinkConfig,
    props_invocations: WriterProperties,
    props_dead_letter: WriterProperties,
    props_alerts: WriterProperties,
    journal: Journal,
    buffer: PendingRows,
    /// Staged files of the commit in progress.
    staging: Staging,
    retry: Retry,
    /// Highest offset appended since the last commit, per (topic, partition).
    appended: BTreeMap<(Arc<str>, i32), i64>,
    metrics: Arc<Metrics>,
    /// On a shared lake: the claims, and `root` is this writer's spool.
    shared: Option<SharedSink>,
    /// Held for the sink's lifetime: one writer per data directory (per
    /// spool, on a shared lake).
    _lock: File,
}

impl ParquetSink {
    /// Opens a local data directory, takes its lock and recovers from any
    /// crash. A shared lake needs the topic: see `open_for_topic`.
    pub fn open(cfg: &SinkConfig, metrics: Arc<Metrics>) -> Result<ParquetSink, SinkError> {
        ParquetSink::open_for_topic(cfg, "", metrics)
    }

    /// Opens the dataset that `topic` is written to: a local directory
    /// (locked, recovered from any crash) or a shared lake (`s3://…`), whose
    /// claims name the topic.
    pub fn open_for_topic(
        cfg: &SinkConfig,
        topic: &str,
        metrics: Arc<Metrics>,
    ) -> Result<ParquetSink, SinkError> {
        if cfg.data_dir.to_string_lossy().contains("://") {
            if topic.is_empty() {
                return Err(SinkError::Unsupported(format!(
                    "{}: a shared lake's claims name the topic its rows come from",
                    cfg.data_dir.display()
                )));
            }
            let (shared, spool, lock) = shared::open(cfg, topic, metrics.clone())?;
            return Ok(ParquetSink::assemble(
                cfg,
                spool,
                Journal {
                    version: 1,
                    ..Journal::default()
                },
                Some(shared),
                lock,
                metrics,
            ));
        }
        let root = cfg.data_dir.clone();
        for dir in ["_state", "_staging", INVOCATIONS, DEAD_LETTER, ALERTS] {
            let d = root.join(dir);
            fs::create_dir_all(&d).map_err(SinkError::io(&d))?;
        }
        let lock_path = root.join("_state").join("lock");
        let lock = File::create(&lock_path).map_err(SinkError::io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(SinkError::Locked { path: root });
        }
        let (journal, report) = journal::recover(&root)?;
        if report.completed_renames + report.discarded_staged > 0 {
            tracing::warn!(
                completed_renames = report.completed_renames,
                discarded_staged = report.discarded_staged,
                "recovered the data directory after an unclean stop"
            );
        }
        for missing in &report.missing_files {
            tracing::error!(file = %missing.display(), "a committed file is missing from the dataset");
        }
        metrics
            .recovered_renames
            .inc_by(report.completed_renames as u64);
        metrics
            .discarded_staged_files
            .inc_by(report.discarded_staged as u64);
        Ok(ParquetSink::assemble(
            cfg, root, journal, None, lock, metrics,
        ))
    }

    fn assemble(
        cfg: &SinkConfig,
        root: PathBuf,
        journal: Journal,
        shared: Option<SharedSink>,
        lock: File,
        metrics: Arc<Metrics>,
    ) -> ParquetSink {
        let soft_limit = staging::open_files_soft_limit();
        let max_open = staging::open_files_budget(cfg.max_open_files, soft_limit);
        if max_open < cfg.max_open_files {
            tracing::warn!(
                configured = cfg.max_open_files,
                used = max_open,
                descriptor_limit = soft_limit,
                "sink.max_open_files lowered to a quarter of the open-file limit (ulimit -n)"
            );
        }
        ParquetSink {
            staging: Staging::new(&root, max_open, metrics.clone()),
            retry: Retry::new(Duration::from_secs(cfg.stall_timeout_secs), metrics.clone()),
            props_invocations: invocations_writer_props(cfg),
            props_dead_letter: props::dead_letter_props(cfg),
            props_alerts: props::alerts_props(cfg),
            root,
            cfg: cfg.clone(),
            journal,
            buffer: PendingRows::default(),
            appended: BTreeMap::new(),
            metrics,
            shared,
            _lock: lock,
        }
    }

    /// On a shared lake, the floors that the consumer sets at assignment
    /// (by walking the claims) and that each claim starts from.
    pub fn shared_floors(&self) -> Option<Floors> {
        self.shared.as_ref().map(SharedSink::floors)
    }

    /// On a shared lake, its claims, for the consumer's walk at assignment.
    pub fn claim_log(&self) -> Option<claims::ClaimLog> {
        self.shared.as_ref().map(|s| s.log.clone())
    }

    /// Next offset per partition that the dataset already holds durably.
    pub fn durable_offsets(&self) -> &Offsets {
        &self.journal.offsets
    }

    /// The Kafka cluster the journal's offsets were recorded against.
    pub fn recorded_cluster(&self) -> Option<&str> {
        self.journal.cluster_id.as_deref()
    }

    /// Records offsets against `cluster_id` from the next commit on; with
    /// `forget_topic`, drops the floor of that topic first (its offsets
    /// belong to a broker that is gone).
    pub fn bind_cluster(&mut self, cluster_id: Option<String>, forget_topic: Option<&str>) {
        if let Some(topic) = forget_topic {
            self.journal.offsets.remove(topic);
        }
        self.journal.cluster_id = cluster_id;
    }

    pub fn push_record(&mut self, r: Record) {
        self.buffer.push_record(r);
    }

    pub fn push_dead_letter(&mut self, d: DeadLetter) {
        self.buffer.push_dead_letter(d);
    }

    /// The file-size and file-age limits of the configuration.
    pub fn roll_limits(&self) -> (usize, u64) {
        (self.cfg.max_file_bytes, self.cfg.max_file_age_secs)
    }

    /// Writes every row pushed so far and makes it durable.
    pub fn flush(&mut self) -> Result<FlushOutcome, SinkError> {
        let rows = std::mem::take(&mut self.buffer);
        self.write(rows)
    }

    /// Writes `buffer` as files and makes them durable; see the module docs.
    pub fn write(&mut self, buffer: PendingRows) -> Result<FlushOutcome, SinkError> {
        self.append(buffer)?;
        self.commit()
    }

    /// Rows appended since the last commit.
    pub fn uncommitted_rows(&self) -> usize {
        self.staging.rows()
    }

    /// Bytes on disk of the largest open staged file, for rolling by size.
    pub fn largest_staged_bytes(&self) -> u64 {
        self.staging.largest_open_bytes()
    }

    /// Sorts `buffer` and appends it as row groups to the staged file of each
    /// partition it touches. Nothing is durable or visible until `commit`.
    pub fn append(&mut self, mut buffer: PendingRows) -> Result<(), SinkError> {
        if buffer.rows == 0 {
            return Ok(());
        }
        if let Some(shared) = self.shared.as_mut() {
            shared.keep_unclaimed(&mut buffer);
        }
        for (key, rows) in &buffer.invocations {
            let batch = schema::invocations_batch(rows)?;
            self.append_batch(*key, batch, rows.iter().map(|r| &r.coords))?;
        }
        for (key, rows) in buffer.dead_letters.iter_mut() {
            let batch = schema::dead_letter_batch(rows)?;
            self.append_batch(*key, batch, rows.iter().map(|r| &r.coords))?;
        }
        for (key, rows) in &buffer.alerts {
            let batch = schema::alerts_batch(rows)?;
            self.append_batch(*key, batch, std::iter::empty())?;
        }
        for (partition, last) in buffer.pending {
            let slot = self.appended.entry(partition).or_insert(last);
            *slot = (*slot).max(last);
        }
        Ok(())
    }

    fn append_batch<'a>(
        &mut self,
        key: PartitionKey,
        batch: RecordBatch,
        coords: impl Iterator<Item = &'a KafkaCoords>,
    ) -> Result<(), SinkError> {
        let props = match key.table {
            INVOCATIONS => &self.props_invocations,
            DEAD_LETTER => &self.props_dead_letter,
            _ => &self.props_alerts,
        };
        self.staging
            .append(self.journal.seq + 1, key, &batch, props, coords)
    }

    /// Closes and fsyncs every staged file, then makes them and their offsets
    /// durable at once through the journal.
    pub fn commit(&mut self) -> Result<FlushOutcome, SinkError> {
        let mut outcome = FlushOutcome::default();
        if self.staging.is_empty() && self.appended.is_empty() {
            return Ok(outcome);
        }
        let started = Instant::now();
        if self.shared.is_some() {
            return self.commit_shared(started);
        }
        let seq = self.journal.seq + 1;
        let closed = self.staging.finish()?;
        let mut renames = Vec::with_capacity(closed.len());
        let mut written = Vec::with_capacity(closed.len());
        for file in closed {
            outcome.files += 1;
            outcome.rows += file.rows;
            outcome.bytes += file.bytes;
            written.push((file.table, file.rows, file.bytes));
            renames.push(file.rename);
        }
        let mut offsets = self.journal.offsets.clone();
        for ((topic, partition), last) in std::mem::take(&mut self.appended) {
            let next = last + 1;
            let slot = offsets
                .entry(topic.to_string())
                .or_default()
                .entry(partition)
                .or_insert(next);
            *slot = (*slot).max(next);
            outcome
                .committable
                .push((topic.to_string(), partition, *slot));
        }
        let journal = Journal {
            version: 1,
            seq,
            offsets,
            cluster_id: self.journal.cluster_id.clone(),
            files: renames,
        };
        // The staged files' directory entries must be durable before a
        // journal names them: fsyncing a file does not persist its name, and
        // a journal whose files vanished in a power loss would have recovery
        // skip rows whose offsets are committed.
        let staging_dirs: BTreeSet<PathBuf> = journal
            .files
            .iter()
            .filter_map(|r| self.root.join(&r.staged).parent().map(Path::to_owned))
            .collect();
        // Each step from here on can run twice with one effect, so an I/O
        // error is retried (and the sink reported stalled) within the budget.
        for dir in &staging_dirs {
            self.retry.run("sync staging", || journal::sync_dir(dir))?;
        }
        // The commit point: from here on the flush is durable.
        self.retry
            .run("write journal", || journal::write(&self.root, &journal))?;
        let mut dirs = BTreeSet::new();
        for r in &journal.files {
            let dst = self.root.join(&r.final_path);
            if let Some(parent) = dst.parent()
                && dirs.insert(parent.to_owned())
            {
                self.retry.run("create partition", || {
                    fs::create_dir_all(parent).map_err(SinkError::io(parent))
                })?;
            }
            let src = self.root.join(&r.staged);
            self.retry.run("rename", || match fs::rename(&src, &dst) {
                // Done by an earlier attempt whose reply was lost.
                Err(_) if !src.exists() && dst.exists() => Ok(()),
                other => other.map_err(SinkError::io(&dst)),
            })?;
        }
        // A new partition directory is durable only once its parents (dt=…,
        // then the table directory) have been fsynced too; each once.
        let mut synced = BTreeSet::new();
        for dir in &dirs {
            let mut d = dir.as_path();
            while d != self.root && synced.insert(d.to_owned()) {
                self.retry.run("sync partition", || journal::sync_dir(d))?;
                match d.parent() {
                    Some(p) => d = p,
                    None => break,
                }
            }
        }
        self.journal = journal;
        self.count_written(written, started);
        Ok(outcome)
    }

    /// `commit` on a shared lake: each partition's staged files become one
    /// claim (see `claims`).
    fn commit_shared(&mut self, started: Instant) -> Result<FlushOutcome, SinkError> {
        let closed = self.staging.finish()?;
        let written: Vec<_> = closed.iter().map(|f| (f.table, f.rows, f.bytes)).collect();
        let appended = std::mem::take(&mut self.appended)
            .into_iter()
            .map(|((_, partition), last)| (partition, last))
            .collect();
        let props = |table: &str| match table {
            INVOCATIONS => self.props_invocations.clone(),
            DEAD_LETTER => self.props_dead_letter.clone(),
            _ => self.props_alerts.clone(),
        };
        let Some(shared) = self.shared.as_mut() else {
            return Ok(FlushOutcome::default());
        };
        let outcome = shared.commit(closed, appended, &self.retry, &props)?;
        self.count_written(written, started);
        Ok(outcome)
    }

    fn count_written(&self, written: Vec<(&'static str, usize, u64)>, started: Instant) {
        for (table, rows, bytes) in written {
            self.metrics
                .rows_written
                .with_label_values(&[table])
                .inc_by(rows as u64);
            self.metrics.files_written.with_label_values(&[table]).inc();
            self.metrics
                .bytes_written
                .with_label_values(&[table])
                .inc_by(bytes);
        }
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_paths_use_utc_day_and_hour() {
        // 2026-11-28T07:59:59.999Z
        let k = PartitionKey::for_time(INVOCATIONS, 1_795_852_799_999);
        assert_eq!(k.dir(), PathBuf::from("invocations/dt=2026-11-28/hour=07"));
        let k = PartitionKey::for_time(DEAD_LETTER, 1_795_852_800_000);
        assert_eq!(k.dir(), PathBuf::from("dead_letter/dt=2026-11-28/hour=08"));
        // Midnight rolls the day, not just the hour.
        let k = PartitionKey::for_time(INVOCATIONS, 1_795_910_400_000);
        assert_eq!(k.dir(), PathBuf::from("invocations/dt=2026-11-29/hour=00"));
    }
}
