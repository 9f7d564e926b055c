//! The sink's side of a shared lake (`s3://…`): the local spool its staged
//! files are written to, which rows it may still write, and the commit that
//! claims each Kafka partition's range and decides them with one commit
//! record (see `claims`).
//!
//! The spool is scratch space: staged files live there until their commit
//! record is made, and a crash leaves nothing in it that matters (the rows
//! were never committed, so the next owner consumes them again). Spools of processes
//! that are gone are removed at start-up; each is locked by its writer.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Int32Type, Int64Type};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::file::properties::WriterProperties;

use super::FlushOutcome;
use super::claims::{Claim, ClaimLog, ClaimOutcome, ClaimedObject, CommitRecord};
use super::retry::Retry;
use super::staging::ClosedFile;
use crate::config::SinkConfig;
use crate::error::SinkError;
use crate::lake::Lake;
use crate::metrics::Metrics;

/// Next offset no claim covers, per partition of the topic (keyed by topic
/// like the consumer's `Durable`, which it is): the start of this writer's
/// next claim, and the floor below which a message is in the lake already.
/// Set by the consumer at each assignment (`ClaimLog::walk`) and by the
/// sink after each claim.
pub type Floors = Arc<Mutex<super::journal::Offsets>>;

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
            .and_then(|f| f.get(&self.topic)?.get(&partition).copied())
    }

    /// Drops the rows of `buffer` below their partition's floor (another
    /// writer's claim holds them) and notes where this commit's rows of each
    /// partition begin. The floors are read once per buffer, not per row.
    pub(super) fn keep_unclaimed(&mut self, buffer: &mut super::PendingRows) {
        let floors = self
            .floors
            .lock()
            .ok()
            .and_then(|f| f.get(&self.topic).cloned())
            .unwrap_or_default();
        let mut skipped = 0;
        let first = &mut self.first;
        let mut keep = |partition: i32, offset: i64| {
            if floors.get(&partition).is_some_and(|f| offset < *f) {
                skipped += 1;
                return false;
            }
            let slot = first.entry(partition).or_insert(offset);
            *slot = (*slot).min(offset);
            true
        };
        for rows in buffer.invocations.values_mut() {
            rows.retain(|r| keep(r.coords.partition, r.coords.offset));
        }
        for rows in buffer.dead_letters.values_mut() {
            rows.retain(|r| keep(r.coords.partition, r.coords.offset));
        }
        buffer
            .pending
            .retain(|(_, partition), last| floors.get(partition).is_none_or(|f| *last >= *f));
        // A partition emptied by the floor must not stage an empty file.
        buffer.invocations.retain(|_, rows| !rows.is_empty());
        buffer.dead_letters.retain(|_, rows| !rows.is_empty());
        if skipped > 0 {
            tracing::debug!(skipped, floors = ?floors, "rows below their floor are another writer's");
        }
        self.metrics.skipped_durable.inc_by(skipped);
    }

    /// Claims and publishes the closed staged files of one commit: each
    /// partition's range from its floor to the last offset appended, all
    /// decided at once by one commit record (see `claims`).
    pub fn commit(
        &mut self,
        mut files: Vec<ClosedFile>,
        appended: BTreeMap<i32, i64>,
        retry: &Retry,
        props: &(dyn Fn(&str) -> WriterProperties + Sync),
    ) -> Result<FlushOutcome, SinkError> {
        let first = std::mem::take(&mut self.first);
        let mut ranges: BTreeMap<i32, (i64, i64)> = appended
            .into_iter()
            .map(|(partition, last)| {
                let start = self
                    .floor(partition)
                    .or_else(|| first.get(&partition).copied())
                    .unwrap_or(last);
                (partition, (start, last))
            })
            .collect();
        for _ in 0..MAX_ROUNDS {
            self.seq += 1;
            let record = self.log.commit_rel(self.seq);
            let mut objects = self.upload(&files, "", retry)?;
            // Claims of the partitions' ranges, side by side; each names the
            // record, which does not exist yet.
            let claims: Vec<(i32, i64, i64)> =
                ranges.iter().map(|(p, (s, l))| (*p, *s, *l)).collect();
            let claimed = in_lanes(claims, self.upload_lanes, |(p, start, last)| {
                self.claim_partition(p, start, last, &record, retry)
                    .map(|(start, cut)| (p, start, cut))
            })?;
            let mut cuts = BTreeMap::new();
            for (p, start, cut) in claimed {
                if let Some(slot) = ranges.get_mut(&p) {
                    slot.0 = start;
                }
                if let Some(cut) = cut {
                    cuts.insert(p, cut);
                }
            }
            if !cuts.is_empty() {
                // Another writer's records hold some of these rows: keep
                // only ours past their ends, and stage those again.
                let staged: Vec<String> = objects.into_iter().map(|o| o.staged).collect();
                retry.run("discard", || self.log.discard(&staged))?;
                let mut kept = Vec::new();
                for file in files {
                    let local = spool_path(&file);
                    if let Some(f) = restage_without(&file, &local, &cuts, props)? {
                        kept.push(f);
                    }
                    remove_local(&local);
                }
                files = kept;
                objects = self.upload(&files, "r", retry)?;
            }
            let claimed_any = ranges.values().any(|(s, l)| s <= l);
            let committed = if claimed_any || !files.is_empty() {
                retry.run("commit", || self.log.commit(&record, objects.clone()))?
            } else {
                true
            };
            if !committed {
                // A walker voided the record before we made it: claim again.
                tracing::warn!(record = %record, "this commit was voided by another writer; claiming again");
                let staged: Vec<String> = objects.into_iter().map(|o| o.staged).collect();
                retry.run("discard", || self.log.discard(&staged))?;
                continue;
            }
            retry.run("publish", || self.log.complete(&objects))?;
            let mut outcome = FlushOutcome::default();
            for file in &files {
                count(&mut outcome, file);
                remove_local(&spool_path(file));
            }
            for (partition, (start, last)) in ranges {
                let next = if start <= last { last + 1 } else { start };
                if let Ok(mut f) = self.floors.lock() {
                    f.entry(self.topic.clone())
                        .or_default()
                        .insert(partition, next);
                }
                outcome
                    .committable
                    .push((self.topic.clone(), partition, next));
            }
            return Ok(outcome);
        }
        Err(SinkError::Store(format!(
            "no commit after {MAX_ROUNDS} rounds: other writers kept voiding this one's records"
        )))
    }

    /// Uploads `files` as this commit's staged objects, side by side, and
    /// names the final key of each.
    fn upload(
        &self,
        files: &[ClosedFile],
        round: &str,
        retry: &Retry,
    ) -> Result<Vec<ClaimedObject>, SinkError> {
        let writer = self.log.writer();
        let numbered: Vec<(usize, &ClosedFile)> = files.iter().enumerate().collect();
        in_lanes(numbered, self.upload_lanes, |(i, file)| {
            let staged = format!("_staging/{writer}/{:012}{round}-{i:04}.parquet", self.seq);
            let name = format!("part-{writer}-{:012}{round}-{i:04}.parquet", self.seq);
            let local = spool_path(file);
            retry.run("upload", || self.log.upload(&local, &staged))?;
            Ok(ClaimedObject {
                staged,
                final_key: final_rel(file, &name),
            })
        })
    }

    /// Claims `[start, last]` of a partition for `record`; past another
    /// writer's committed claims, which it publishes, and void ones. Returns
    /// where its claim starts (past `last`: all of it was another's) and,
    /// when another's claim covered some of it, the last offset it covered.
    fn claim_partition(
        &self,
        partition: i32,
        mut start: i64,
        last: i64,
        record: &str,
        retry: &Retry,
    ) -> Result<(i64, Option<i64>), SinkError> {
        let mut attempt = 0;
        let mut cut = None;
        while start <= last {
            let claim = Claim {
                version: 1,
                topic: self.topic.clone(),
                partition,
                start,
                attempt,
                end: last,
                writer: self.log.writer().to_owned(),
                commit: record.to_owned(),
            };
            let ClaimOutcome::Lost(theirs) = retry.run("claim", || self.log.try_claim(&claim))?
            else {
                tracing::debug!(partition, start, attempt, end = last, record, "claimed");
                break;
            };
            match retry.run("resolve", || self.log.resolve(&theirs.commit))? {
                CommitRecord::Committed { objects } => {
                    tracing::warn!(
                        partition,
                        start,
                        their_end = theirs.end,
                        their_writer = %theirs.writer,
                        "another writer committed these offsets first; adopting its claim"
                    );
                    self.metrics.claims_lost.inc();
                    retry.run("publish", || self.log.complete(&objects))?;
                    cut = Some(theirs.end);
                    start = theirs.end + 1;
                    attempt = 0;
                }
                CommitRecord::Void => attempt += 1,
            }
        }
        Ok((start, cut))
    }
}

/// Rounds of claiming a commit may take when other writers void its record
/// (each void means a walker judged its writer gone); beyond, it fails.
const MAX_ROUNDS: usize = 8;

/// Runs `f` over `items` on up to `lanes` threads; the first error wins.
fn in_lanes<T: Send, R: Send>(
    items: Vec<T>,
    lanes: usize,
    f: impl Fn(T) -> Result<R, SinkError> + Sync,
) -> Result<Vec<R>, SinkError> {
    let lanes = lanes.min(items.len()).max(1);
    let mut split: Vec<Vec<T>> = (0..lanes).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        split[i % lanes].push(item);
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = split
            .into_iter()
            .map(|lane| s.spawn(move || lane.into_iter().map(f).collect::<Result<Vec<R>, _>>()))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| SinkError::Store("a commit thread panicked".into()))??,
            );
        }
        Ok(out)
    })
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

/// Writes the rows of `file` that no cut covers (a row of partition P at an
/// offset up to `cuts[P]` is another writer's) to a new spooled file beside
/// it; `None` when none is left. Alerts, with no offsets, are all kept.
fn restage_without(
    file: &ClosedFile,
    local: &Path,
    cuts: &BTreeMap<i32, i64>,
    props: &dyn Fn(&str) -> WriterProperties,
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
        let offsets = batch
            .column_by_name("src_offset")
            .and_then(|c| c.as_primitive_opt::<Int64Type>());
        let partitions = batch
            .column_by_name("src_partition")
            .and_then(|c| c.as_primitive_opt::<Int32Type>());
        let kept = match (offsets, partitions) {
            (Some(offsets), Some(partitions)) => {
                let keep: BooleanArray = offsets
                    .iter()
                    .zip(partitions.iter())
                    .map(|(o, p)| {
                        let covered = p
                            .and_then(|p| cuts.get(&p))
                            .is_some_and(|cut| o.is_some_and(|o| o <= *cut));
                        Some(!covered)
                    })
                    .collect();
                filter_record_batch(&batch, &keep)?
            }
            _ => batch,
        };
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
        root: file.root.clone(),
        rows,
        bytes,
        rename,
    }))
}
