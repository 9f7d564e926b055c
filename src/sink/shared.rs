//! The sink's side of a shared lake (`s3://…`): the local spool its staged
//! files are written to, which rows it may still write, and the commit that
//! turns each Kafka partition's staged files into a claim (see `claims`).
//!
//! The spool is scratch space: staged files live there until their claim is
//! made, and a crash leaves nothing in it that matters (the rows were never
//! claimed, so the next owner consumes them again). Spools of processes
//! that are gone are removed at start-up; each is locked by its writer.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::file::properties::WriterProperties;

use super::FlushOutcome;
use super::claims::{Claim, ClaimLog, ClaimOutcome, ClaimedObject};
use super::retry::Retry;
use super::staging::ClosedFile;
use crate::config::SinkConfig;
use crate::error::SinkError;
use crate::lake::Lake;
use crate::metrics::Metrics;

/// Next offset no claim covers, per partition of the topic: the start of
/// this writer's next claim, and the floor below which a message is in the
/// lake already. Set by the consumer at each assignment (`ClaimLog::walk`)
/// and by the sink after each claim.
pub type Floors = Arc<Mutex<BTreeMap<i32, i64>>>;

pub struct SharedSink {
    pub log: ClaimLog,
    topic: String,
    floors: Floors,
    /// First offset appended since the last commit, per partition: where a
    /// claim starts when no floor is known.
    first: BTreeMap<i32, i64>,
    /// Numbers this writer's commits, for unique staged and alert keys.
    seq: u64,
    /// How many partitions' claims are made at once: each holds up to two
    /// parts of a file in memory, and uploads get a quarter of the budget.
    upload_lanes: usize,
    metrics: Arc<Metrics>,
}

/// Opens the lake's store, and a fresh spool under `sink.spool_dir` for
/// this process; returns the shared sink, the spool and the spool's lock.
pub fn open(
    cfg: &SinkConfig,
    topic: &str,
    metrics: Arc<Metrics>,
) -> Result<(SharedSink, PathBuf, File), SinkError> {
    let lake = Lake::open(&cfg.data_dir, &cfg.object_store)
        .map_err(|e| SinkError::Store(e.to_string()))?;
    let (Some(store), crate::lake::Location::S3 { prefix, .. }) = (lake.store(), &lake.location)
    else {
        return Err(SinkError::Store(format!(
            "{} is not an object store URL",
            cfg.data_dir.display()
        )));
    };
    let writer = format!("{:016x}", rand::random::<u64>());
    let spools = cfg
        .spool_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("agentaudit-spool"));
    fs::create_dir_all(&spools).map_err(SinkError::io(&spools))?;
    remove_stale_spools(&spools);
    let spool = spools.join(&writer);
    let staging = spool.join("_staging");
    fs::create_dir_all(&staging).map_err(SinkError::io(&staging))?;
    let lock_path = spool.join("lock");
    let lock = File::create(&lock_path).map_err(SinkError::io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(SinkError::Locked { path: spool });
    }
    let log = ClaimLog::new(store, prefix, &writer)?;
    tracing::info!(writer = %writer, spool = %spool.display(), "writing to a shared lake");
    Ok((
        SharedSink {
            log,
            topic: topic.to_owned(),
            floors: Floors::default(),
            first: BTreeMap::new(),
            seq: 0,
            upload_lanes: (cfg.memory_budget_bytes / 4 / (2 * super::claims::PART_BYTES))
                .clamp(1, 16),
            metrics,
        },
        spool,
        lock,
    ))
}

/// Removes the spools of processes that are gone: their lock is free.
fn remove_stale_spools(spools: &Path) {
    let Ok(entries) = fs::read_dir(spools) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let free = File::open(dir.join("lock")).is_ok_and(|f| f.try_lock().is_ok());
        if free && fs::remove_dir_all(&dir).is_ok() {
            tracing::info!(spool = %dir.display(), "removed the spool of a stopped writer");
        }
    }
}

impl SharedSink {
    /// The floors the consumer sets at assignment and the sink reads.
    pub fn floors(&self) -> Floors {
        self.floors.clone()
    }

    fn floor(&self, partition: i32) -> Option<i64> {
        self.floors
            .lock()
            .ok()
            .and_then(|f| f.get(&partition).copied())
    }

    /// Whether a row at `offset` of `partition` is still to be written: not
    /// below the floor (another writer's claim holds it). Notes where this
    /// commit's rows of the partition begin.
    pub fn keep(&mut self, partition: i32, offset: i64) -> bool {
        if self.floor(partition).is_some_and(|f| offset < f) {
            self.metrics.skipped_durable.inc();
            return false;
        }
        let first = self.first.entry(partition).or_insert(offset);
        *first = (*first).min(offset);
        true
    }

    /// Claims and publishes the closed staged files of one commit: per
    /// partition, the range from its floor to the last offset appended;
    /// alerts under keys of this writer's own.
    pub fn commit(
        &mut self,
        closed: Vec<ClosedFile>,
        appended: BTreeMap<i32, i64>,
        retry: &Retry,
        props: &(dyn Fn(&str) -> WriterProperties + Sync),
    ) -> Result<FlushOutcome, SinkError> {
        self.seq += 1;
        let mut outcome = FlushOutcome::default();
        let mut by_partition: BTreeMap<i32, Vec<ClosedFile>> = BTreeMap::new();
        let mut alerts = Vec::new();
        for file in closed {
            match file.source {
                Some(p) => by_partition.entry(p).or_default().push(file),
                None => alerts.push(file),
            }
        }
        let first = std::mem::take(&mut self.first);
        let ranges: Vec<(i32, i64, i64, Vec<ClosedFile>)> = appended
            .into_iter()
            .map(|(partition, last)| {
                let files = by_partition.remove(&partition).unwrap_or_default();
                let start = self
                    .floor(partition)
                    .or_else(|| first.get(&partition).copied())
                    .unwrap_or(last);
                (partition, start, last, files)
            })
            .collect();
        // Partitions' claims are independent: they are made side by side,
        // as many at once as the memory budget's share for uploads allows.
        let lanes_n = self.upload_lanes.min(ranges.len()).max(1);
        let mut lanes: Vec<Vec<_>> = (0..lanes_n).map(|_| Vec::new()).collect();
        for (i, range) in ranges.into_iter().enumerate() {
            lanes[i % lanes_n].push(range);
        }
        let this = &*self;
        let results: Vec<Result<(i32, i64, FlushOutcome), SinkError>> = std::thread::scope(|s| {
            let handles: Vec<_> = lanes
                .into_iter()
                .map(|lane| {
                    s.spawn(move || {
                        let mut done = Vec::new();
                        for (partition, start, last, files) in lane {
                            let mut out = FlushOutcome::default();
                            let next = this
                                .claim_range(partition, start, last, files, retry, props, &mut out);
                            let failed = next.is_err();
                            done.push(next.map(|n| (partition, n, out)));
                            if failed {
                                break;
                            }
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(SinkError::Store("a commit thread panicked".into()))]
                    })
                })
                .collect()
        });
        let mut failure = None;
        for result in results {
            match result {
                Ok((partition, next, out)) => {
                    // Claimed, whatever happened to the others: the floor
                    // moves so that nothing is staged twice.
                    if let Ok(mut f) = self.floors.lock() {
                        f.insert(partition, next);
                    }
                    outcome.files += out.files;
                    outcome.rows += out.rows;
                    outcome.bytes += out.bytes;
                    outcome
                        .committable
                        .push((self.topic.clone(), partition, next));
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        for (i, file) in alerts.into_iter().enumerate() {
            let name = format!(
                "part-alerts-{}-{:012}-{i:04}.parquet",
                self.log.writer(),
                self.seq
            );
            let rel = final_rel(&file, &name);
            let local = spool_path(&file);
            retry.run("upload alerts", || self.log.upload(&local, &rel))?;
            count(&mut outcome, &file);
            remove_local(&local);
        }
        Ok(outcome)
    }

    /// Claims `[start, last]` of a partition with `files`; when another
    /// writer holds the claim, adopts it and claims what is left past its
    /// end. Returns the next offset no claim covers.
    #[allow(clippy::too_many_arguments)]
    fn claim_range(
        &self,
        partition: i32,
        mut start: i64,
        last: i64,
        mut files: Vec<ClosedFile>,
        retry: &Retry,
        props: &(dyn Fn(&str) -> WriterProperties + Sync),
        outcome: &mut FlushOutcome,
    ) -> Result<i64, SinkError> {
        loop {
            let mut objects = Vec::with_capacity(files.len());
            for (i, file) in files.iter().enumerate() {
                let staged = format!(
                    "_staging/{}/{:012}-{partition:05}-{start:020}-{i:04}.parquet",
                    self.log.writer(),
                    self.seq
                );
                let name = format!(
                    "part-{}-{partition:05}-{start:020}-{i:04}.parquet",
                    self.topic
                );
                let local = spool_path(file);
                retry.run("upload", || self.log.upload(&local, &staged))?;
                objects.push(ClaimedObject {
                    staged,
                    final_key: final_rel(file, &name),
                });
            }
            let claim = Claim {
                version: 1,
                topic: self.topic.clone(),
                partition,
                start,
                end: last.max(start - 1),
                writer: self.log.writer().to_owned(),
                objects,
            };
            match retry.run("claim", || self.log.try_claim(&claim))? {
                ClaimOutcome::Won => {
                    retry.run("publish", || self.log.complete(&claim))?;
                    for file in &files {
                        count(outcome, file);
                        remove_local(&spool_path(file));
                    }
                    return Ok(claim.end + 1);
                }
                ClaimOutcome::Lost(theirs) => {
                    tracing::warn!(
                        partition,
                        start,
                        their_end = theirs.end,
                        their_writer = %theirs.writer,
                        "another writer claimed these offsets first; adopting its claim"
                    );
                    self.metrics.claims_lost.inc();
                    retry.run("publish", || self.log.complete(&theirs))?;
                    let ours: Vec<String> = claim.objects.into_iter().map(|o| o.staged).collect();
                    retry.run("discard", || self.log.discard(&ours))?;
                    start = theirs.end + 1;
                    if last < start {
                        for file in &files {
                            remove_local(&spool_path(file));
                        }
                        return Ok(start);
                    }
                    // Keep only our rows past their end, and claim again.
                    let mut kept = Vec::new();
                    for file in files {
                        let local = spool_path(&file);
                        if let Some(f) = restage_after(&file, &local, theirs.end, props)? {
                            kept.push(f);
                        }
                        remove_local(&local);
                    }
                    files = kept;
                }
            }
        }
    }
}

fn count(outcome: &mut FlushOutcome, file: &ClosedFile) {
    outcome.files += 1;
    outcome.rows += file.rows;
    outcome.bytes += file.bytes;
}

fn spool_path(file: &ClosedFile) -> PathBuf {
    file.root.join(&file.rename.staged)
}

/// `table/dt=…/hour=…/name`, as a store key relative to the lake.
fn final_rel(file: &ClosedFile, name: &str) -> String {
    let dir = file.rename.final_path.parent().unwrap_or(Path::new(""));
    dir.join(name).to_string_lossy().replace('\\', "/")
}

fn remove_local(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "cannot remove a spooled file");
    }
}

/// Writes the rows of `file` past offset `end` to a new spooled file beside
/// it; `None` when it holds none.
fn restage_after(
    file: &ClosedFile,
    local: &Path,
    end: i64,
    props: &(dyn Fn(&str) -> WriterProperties + Sync),
) -> Result<Option<ClosedFile>, SinkError> {
    let parquet_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SinkError::Parquet { path, source }
    };
    let input = File::open(local).map_err(SinkError::io(local))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(input)
        .map_err(parquet_err(local))?
        .build()
        .map_err(parquet_err(local))?;
    let mut staged = file.rename.staged.clone();
    staged.set_extension("rest.parquet");
    let out_path = file.root.join(&staged);
    let mut writer: Option<ArrowWriter<File>> = None;
    let mut rows = 0;
    for batch in reader {
        let batch = batch?;
        let Some(offsets) = batch
            .column_by_name("src_offset")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
        else {
            continue;
        };
        let keep: BooleanArray = offsets
            .iter()
            .map(|o| Some(o.is_some_and(|o| o > end)))
            .collect();
        let kept = filter_record_batch(&batch, &keep)?;
        if kept.num_rows() == 0 {
            continue;
        }
        if writer.is_none() {
            let out = File::create(&out_path).map_err(SinkError::io(&out_path))?;
            writer = Some(
                ArrowWriter::try_new(out, kept.schema(), Some(props(file.table)))
                    .map_err(parquet_err(&out_path))?,
            );
        }
        if let Some(w) = writer.as_mut() {
            w.write(&kept).map_err(parquet_err(&out_path))?;
        }
        rows += kept.num_rows();
    }
    let Some(w) = writer else {
        return Ok(None);
    };
    let out = w.into_inner().map_err(parquet_err(&out_path))?;
    out.sync_all().map_err(SinkError::io(&out_path))?;
    let bytes = out.metadata().map_err(SinkError::io(&out_path))?.len();
    let mut rename = file.rename.clone();
    rename.staged = staged;
    Ok(Some(ClosedFile {
        table: file.table,
        source: file.source,
        root: file.root.clone(),
        rows,
        bytes,
        rename,
    }))
}
