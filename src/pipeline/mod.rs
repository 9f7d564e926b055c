//! Pipeline wires the rooms together for `serve` and `bench` on three
//! threads: the consumer thread polls and runs decode → redact, the writer
//! thread runs detection and buffers rows, and the flusher thread makes them
//! durable and commits their offsets once the sink reports them so.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::CommitMode;

use crate::config::Config;
use crate::decode::{InputFormat, MessageDecoder, Piece};
use crate::detect::SharedPolicy;
use crate::detect::policy::PolicyError;
use crate::error::{ConfigError, SinkError, SourceError};
use crate::event::Prepared;
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::sink::{ParquetSink, PendingRows};
use crate::source::{
    self, Durable, FloorLookup, KafkaConsumer, Prepare, RawMessage, Source, ToWriter,
};

mod command;
mod detect_stage;

pub use command::{Demo, hold_stop_signals, serve};
use detect_stage::{DetectStage, detect_stage};
pub use detect_stage::{install_policy, reload_policy};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("a pipeline thread panicked: {0}")]
    Panicked(String),
    #[error(
        "{0}. Refusing to start: skipping offsets below a floor from another Kafka would lose events silently. If the topic was recreated on purpose, move {1} aside; the dataset keeps its files and consumption starts from the group's committed offsets"
    )]
    ForeignKafka(String, String),
    #[error("{0}")]
    Runtime(String),
}

/// Decode → redact, run by the consumer thread on each message as it is
/// polled: the most expensive steps per event, taken off the writer thread
/// (which was the one saturated core) so they overlap detection and
/// encoding. The counters it bumps all precede the writer's `consumed`.
struct Preparer {
    redactor: Arc<Redactor>,
    decoder: MessageDecoder,
    /// Each consumed topic's format.
    formats: Vec<(Arc<str>, InputFormat)>,
    metrics: Arc<Metrics>,
}

impl Preparer {
    /// Appends the message's rows to `out` (or a marker consuming its
    /// offset when it has none) and returns the bytes they hold.
    fn prepare(&self, m: RawMessage<'_>, out: &mut Vec<Prepared>) -> usize {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let format = self
            .formats
            .iter()
            .find(|(t, _)| *t == m.coords.topic)
            .map_or(InputFormat::V1, |(_, f)| *f);
        let before = out.len();
        let mut bytes = 0;
        self.decoder
            .decode(m.payload, format, now_ms, &mut |piece| {
                let prepared = match piece {
                    Piece::Event(event) => {
                        self.metrics.decoded.inc();
                        if event.unknown_fields > 0 {
                            self.metrics
                                .unknown_fields
                                .inc_by(u64::from(event.unknown_fields));
                        }
                        let record = self.redactor.redact_event(event, m.coords.clone(), now_ms);
                        self.count_redactions(&record.redactions);
                        Prepared::Record(record)
                    }
                    Piece::Failed { failure, raw } => {
                        self.metrics
                            .dead_letters
                            .with_label_values(&[failure.reason.as_str()])
                            .inc();
                        let dl = self.redactor.redact_dead_letter(
                            raw.as_deref(),
                            failure,
                            m.coords.clone(),
                            now_ms,
                        );
                        self.count_redactions(&dl.redactions);
                        Prepared::DeadLetter(dl)
                    }
                    Piece::Skipped(operation) => {
                        self.metrics
                            .otlp_spans_skipped
                            .with_label_values(&[operation])
                            .inc();
                        return;
                    }
                };
                bytes += crate::sink::prepared_size(&prepared);
                out.push(prepared);
            });
        if out.len() == before {
            let marker = Prepared::Consumed(m.coords);
            bytes += crate::sink::prepared_size(&marker);
            out.push(marker);
        }
        bytes
    }

    fn count_redactions(&self, detectors: &[String]) {
        for name in detectors {
            self.metrics.redactions.with_label_values(&[name]).inc();
        }
    }
}

/// The writer: detection and pending rows, on one thread. Rows go to the
/// flusher in chunks, so the next chunk fills while the previous one is
/// encoded, and the flusher is told when to commit (roll) the files.
struct Writer {
    rows: PendingRows,
    metrics: Arc<Metrics>,
    /// Rows are handed over at this size: small enough that encoding keeps
    /// pace with the writer, large enough for useful row groups.
    chunk_bytes: usize,
    /// Files roll (commit) when the largest staged file reaches this size
    /// on disk, as the flusher reports it, or the oldest uncommitted row
    /// this age.
    roll_bytes: u64,
    staged_bytes: Arc<AtomicU64>,
    roll_age_secs: u64,
    /// When the oldest row handed over since the last commit was buffered.
    uncommitted_since: Option<std::time::Instant>,
    flusher: Flusher,
    detect: Option<DetectStage>,
}

/// A chunk of rows for the flusher to append; with `commit`, the files are
/// then closed and committed, and `reply` waits for that.
struct FlushJob {
    rows: PendingRows,
    commit: Option<CommitMode>,
    reply: Option<SyncSender<Result<(), String>>>,
}

/// The writer's handle on the flusher thread.
struct Flusher {
    tx: Option<SyncSender<FlushJob>>,
    thread: Option<JoinHandle<Result<(), SinkError>>>,
}

impl Flusher {
    /// Hands `job` over, waiting while the previous one is still written. A
    /// flusher that has stopped can only have stopped on an error: return it.
    fn send(&mut self, job: FlushJob) -> Result<(), PipelineError> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if sent { Ok(()) } else { self.finish() }
    }

    /// Lets the flusher drain what it was given and waits for it.
    fn finish(&mut self) -> Result<(), PipelineError> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => join(Some(t))?.map_err(PipelineError::from),
            None => Err(PipelineError::Runtime("the flusher already stopped".into())),
        }
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<ToWriter>) -> Result<(), PipelineError> {
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(ToWriter::Batch(batch)) => {
                    self.metrics.queue_batches.dec();
                    self.process(batch);
                    self.hand_over_if_due()?;
                }
                Ok(ToWriter::Barrier(reply)) => {
                    self.hand_over(Some(CommitMode::Sync), Some(reply))?
                }
                Ok(ToWriter::Assigned(partitions)) => {
                    if let Some(detect) = self.detect.as_mut() {
                        detect.on_assigned(&partitions, &self.metrics);
                    }
                }
                Ok(ToWriter::Finish(reply)) => {
                    self.hand_over(Some(CommitMode::Sync), Some(reply))?;
                    return self.finish();
                }
                Err(RecvTimeoutError::Timeout) => self.hand_over_if_due()?,
                Err(RecvTimeoutError::Disconnected) => {
                    self.hand_over(Some(CommitMode::Sync), None)?;
                    return self.finish();
                }
            }
        }
    }

    fn finish(&mut self) -> Result<(), PipelineError> {
        if let Some(am) = self.detect.as_mut().and_then(|d| d.alertmanager.take()) {
            am.stop();
        }
        self.flusher.finish()
    }

    fn hand_over_if_due(&mut self) -> Result<(), PipelineError> {
        let oldest = self.uncommitted_since.or(self.rows.oldest());
        let roll = self.staged_bytes.load(Ordering::Relaxed) >= self.roll_bytes
            || oldest.is_some_and(|t| t.elapsed().as_secs() >= self.roll_age_secs);
        if roll {
            self.hand_over(Some(CommitMode::Async), None)?;
        } else if self.rows.bytes() >= self.chunk_bytes {
            self.hand_over(None, None)?;
        }
        Ok(())
    }

    fn hand_over(
        &mut self,
        commit: Option<CommitMode>,
        reply: Option<SyncSender<Result<(), String>>>,
    ) -> Result<(), PipelineError> {
        let nothing_to_commit = commit.is_none() || self.uncommitted_since.is_none();
        if self.rows.is_empty() && reply.is_none() && nothing_to_commit {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        self.uncommitted_since = match commit {
            Some(_) => None,
            None => self.uncommitted_since.or(rows.oldest()),
        };
        self.metrics.buffered_bytes.set(0);
        self.metrics.buffered_rows.set(0);
        self.flusher.send(FlushJob {
            rows,
            commit,
            reply,
        })?;
        if commit.is_some() {
            // The flusher has taken the commit, so the size it reported is of
            // files now rolling: without this, the next check would see it
            // and roll again, into a file of a few rows.
            self.staged_bytes.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    fn process(&mut self, batch: Vec<Prepared>) {
        // One policy per batch: a reload lands between batches, never inside.
        let policy = self.detect.as_ref().and_then(DetectStage::current_policy);
        // Messages, not rows: the rows of one message sit together.
        let mut consumed = 0u64;
        // The source interns each topic's name once, so its address names it.
        let mut last: Option<(*const u8, i32, i64)> = None;
        for item in batch {
            let c = item.coords();
            let here = (Arc::as_ptr(&c.topic).cast::<u8>(), c.partition, c.offset);
            if last != Some(here) {
                consumed += 1;
                last = Some(here);
            }
            match item {
                Prepared::Consumed(coords) => self.rows.mark_consumed(&coords),
                Prepared::Record(record) => {
                    if let Some(d) = self.detect.as_mut() {
                        d.observe(&record, policy.as_deref());
                    }
                    self.rows.push_record(record);
                }
                Prepared::DeadLetter(dl) => self.rows.push_dead_letter(dl),
            }
        }
        if let Some(d) = self.detect.as_mut() {
            d.end_batch(&mut self.rows, &self.metrics);
        }
        self.metrics.buffered_bytes.set(self.rows.bytes() as i64);
        self.metrics.buffered_rows.set(self.rows.rows() as i64);
        // Counted last, so a reader that sees N consumed also sees every
        // decode, dead letter and redaction of those N.
        self.metrics.consumed.inc_by(consumed);
    }
}

/// The flusher thread: writes each job's rows durably, then tells the
/// consumer's skip filter and commits their offsets, in the order given.
struct FlushThread {
    sink: ParquetSink,
    consumer: Arc<KafkaConsumer>,
    durable: Durable,
    metrics: Arc<Metrics>,
    /// The largest staged file's size, for the writer's roll decision.
    staged_bytes: Arc<AtomicU64>,
    /// Set when the sink has failed for good, for `serve` to stop on.
    failed: Arc<AtomicBool>,
}

impl FlushThread {
    fn run(mut self, rx: Receiver<FlushJob>) -> Result<(), SinkError> {
        for job in rx {
            let result = self.flush(job.rows, job.commit);
            if let Some(reply) = job.reply {
                // The requester may have gone away; the flush stands either way.
                let _ = reply.send(result.as_ref().map_err(ToString::to_string).copied());
            }
            if let Err(e) = result {
                tracing::error!(error = %e, "the sink cannot make progress; stopping");
                self.metrics.sink_stalled.set(1);
                self.failed.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    fn flush(&mut self, rows: PendingRows, commit: Option<CommitMode>) -> Result<(), SinkError> {
        let failed = |_: &SinkError| self.metrics.flush_failures.inc();
        self.sink.append(rows).inspect_err(failed)?;
        let Some(mode) = commit else {
            self.staged_bytes
                .store(self.sink.largest_staged_bytes(), Ordering::Relaxed);
            return Ok(());
        };
        let outcome = self.sink.commit().inspect_err(failed)?;
        self.staged_bytes.store(0, Ordering::Relaxed);
        if outcome.rows > 0 {
            tracing::debug!(
                files = outcome.files,
                rows = outcome.rows,
                bytes = outcome.bytes,
                "flushed"
            );
        }
        if let Ok(mut d) = self.durable.lock() {
            for (topic, offsets) in self.sink.durable_offsets() {
                d.entry(topic.clone())
                    .or_default()
                    .extend(offsets.iter().map(|(p, o)| (*p, *o)));
            }
        }
        source::commit(&self.consumer, &outcome.committable, mode, &self.metrics);
        Ok(())
    }
}

/// A running pipeline: two threads and the flag that stops them.
pub struct Running {
    stop: Arc<AtomicBool>,
    source: Option<JoinHandle<Result<(), SourceError>>>,
    writer: Option<JoinHandle<Result<(), PipelineError>>>,
    pub consumer: Arc<KafkaConsumer>,
    /// The policy in force, for reloads; `None` when detection is off.
    pub policy: Option<SharedPolicy>,
    sink_failed: Arc<AtomicBool>,
}

impl Running {
    /// True once a thread has ended (normally only after `stop`) or the
    /// sink has failed for good.
    pub fn finished(&self) -> bool {
        self.sink_failed.load(Ordering::SeqCst)
            || self.source.as_ref().is_none_or(JoinHandle::is_finished)
            || self.writer.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops consuming, flushes, commits and joins both threads.
    pub fn stop(mut self) -> Result<(), PipelineError> {
        self.stop.store(true, Ordering::SeqCst);
        let source = join(self.source.take());
        let writer = join(self.writer.take()).and_then(|r| r);
        // The writer's error is the cause when both failed.
        writer?;
        source?.map_err(PipelineError::from)
    }
}

fn join<T>(handle: Option<JoinHandle<T>>) -> Result<T, PipelineError> {
    match handle {
        None => Err(PipelineError::Panicked("thread already joined".into())),
        Some(h) => h.join().map_err(|p| {
            PipelineError::Panicked(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
            )
        }),
    }
}

/// Opens the dataset, recovers it, and starts consuming from `brokers`.
pub fn start(cfg: &Config, brokers: &str, metrics: Arc<Metrics>) -> Result<Running, PipelineError> {
    metrics
        .memory_budget_bytes
        .set(cfg.sink.memory_budget_bytes as i64);
    let mut sink = ParquetSink::open_for_topic(&cfg.sink, &cfg.kafka.topic, metrics.clone())?;
    // The key of output digests and `hash` rules: configured, or the
    // dataset's own (generated on first start, under the lock just taken).
    let mut cfg = cfg.clone();
    let key = match cfg.redact.hash_key.take() {
        Some(k) => k,
        // Every writer of a shared lake must digest alike, and a key kept
        // in the bucket would be readable by everyone who may query it.
        None if sink.claim_log().is_some() => {
            return Err(ConfigError::invalid(
                "redact.hash_key",
                "a shared lake (s3://…) needs the output-digest key set for every instance (AGENTAUDIT_REDACT_HASH_KEY, from your secret store)",
            )
            .into());
        }
        None => crate::sink::dataset_key::load_or_create(&cfg.sink.data_dir)?,
    };
    let mut limits = cfg.decode_limits();
    limits.output_key = Some(crate::decode::OutputKey::new(key.as_bytes()));
    let decoder = MessageDecoder {
        limits,
        otlp: cfg.otlp_options(),
    };
    cfg.redact.hash_key = Some(key);
    let cfg = &cfg;
    let redactor = Arc::new(Redactor::new(&cfg.redact)?);
    // On a shared lake the floors are the sink's own, set at each
    // assignment by walking the claims; locally, the journal's.
    let durable: Durable = sink
        .shared_floors()
        .unwrap_or_else(|| Arc::new(Mutex::new(sink.durable_offsets().clone())));
    let floor_lookup: Option<FloorLookup> = sink.claim_log().map(|log| {
        Box::new(move |topic: &str, partition, committed| {
            log.walk(topic, partition, committed)
                .map_err(|e| e.to_string())
        }) as FloorLookup
    });
    let (source, rx) = Source::new(cfg, brokers, durable.clone(), floor_lookup, metrics.clone())?;
    let consumer = source.consumer.clone();
    verify_kafka(&mut sink, &consumer, cfg, &durable)?;
    let (roll_bytes, roll_age_secs) = sink.roll_limits();
    let staged_bytes = Arc::new(AtomicU64::new(0));
    let sink_failed = Arc::new(AtomicBool::new(false));
    let flush_thread = FlushThread {
        failed: sink_failed.clone(),
        staged_bytes: staged_bytes.clone(),
        sink,
        consumer: consumer.clone(),
        durable,
        metrics: metrics.clone(),
    };
    // A rendezvous: the writer waits to hand rows over until the previous
    // ones are written, which is the backpressure from a slow disk.
    let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel(0);
    let flusher = std::thread::Builder::new()
        .name("agentaudit-flush".into())
        .spawn(move || flush_thread.run(flush_rx))
        .map_err(|e| PipelineError::Runtime(format!("spawning the flusher: {e}")))?;
    let (detect, policy) = if cfg.detect.enabled {
        let (stage, policy) = detect_stage(cfg, redactor.clone(), metrics.clone())?;
        (Some(stage), Some(policy))
    } else {
        (None, None)
    };
    let preparer = Preparer {
        redactor,
        decoder,
        formats: cfg
            .inputs()
            .into_iter()
            .map(|i| (Arc::from(i.topic.as_str()), i.input_format))
            .collect(),
        metrics: metrics.clone(),
    };
    let prepare: Prepare = Box::new(move |m, out| preparer.prepare(m, out));
    let writer = Writer {
        detect,
        rows: PendingRows::default(),
        metrics,
        // The chunk being filled and the one being encoded take a quarter of
        // the budget; what is already encoded sits in the staged files.
        chunk_bytes: cfg.sink.memory_budget_bytes / 8,
        roll_bytes: roll_bytes as u64,
        staged_bytes,
        roll_age_secs,
        uncommitted_since: None,
        flusher: Flusher {
            tx: Some(flush_tx),
            thread: Some(flusher),
        },
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writer = std::thread::Builder::new()
        .name("agentaudit-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| PipelineError::Runtime(format!("spawning the writer: {e}")))?;
    let source_stop = stop.clone();
    let source = std::thread::Builder::new()
        .name("agentaudit-consumer".into())
        .spawn(move || source.run(&source_stop, prepare))
        .map_err(|e| PipelineError::Runtime(format!("spawning the consumer: {e}")))?;
    Ok(Running {
        stop,
        source: Some(source),
        writer: Some(writer),
        consumer,
        policy,
        sink_failed,
    })
}

/// Checks that the journal's offset floor of each consumed topic belongs
/// to the cluster and topic now consumed, and records the cluster id with
/// the next commit. Against the embedded broker, which starts empty every
/// time, a stale floor is reset; against real brokers it refuses to start.
fn verify_kafka(
    sink: &mut ParquetSink,
    consumer: &KafkaConsumer,
    cfg: &Config,
    durable: &Durable,
) -> Result<(), PipelineError> {
    let recorded = sink.recorded_cluster().map(str::to_owned);
    let mut cluster = recorded.clone();
    for input in cfg.inputs() {
        let topic = &input.topic;
        let floor = sink
            .durable_offsets()
            .get(topic)
            .cloned()
            .unwrap_or_default();
        let identity = match source::identity::read(
            consumer,
            topic,
            floor.keys().copied(),
            Duration::from_secs(30),
        ) {
            Ok(identity) => identity,
            // Nothing to verify yet; the id is recorded at a later start.
            Err(e) if floor.is_empty() => {
                tracing::warn!(error = %e, topic, "cannot read the Kafka cluster id yet");
                source::identity::KafkaIdentity::default()
            }
            Err(e) => {
                return Err(PipelineError::Runtime(format!(
                    "cannot verify that the dataset's offsets of `{topic}` belong to these brokers: {e}"
                )));
            }
        };
        match source::identity::floor_mismatch(recorded.as_deref(), &floor, topic, &identity) {
            None => cluster = identity.cluster_id.or(cluster),
            Some(why) if cfg.kafka.brokers.is_none() => {
                tracing::warn!(
                    reason = %why,
                    topic,
                    "the embedded broker starts empty: the dataset's offset floor is reset"
                );
                sink.bind_cluster(identity.cluster_id.clone(), Some(topic));
                cluster = identity.cluster_id;
                if let Ok(mut d) = durable.lock() {
                    d.remove(topic);
                }
            }
            Some(why) => {
                let journal = crate::sink::journal::journal_path(&cfg.sink.data_dir);
                return Err(PipelineError::ForeignKafka(
                    why,
                    journal.display().to_string(),
                ));
            }
        }
    }
    sink.bind_cluster(cluster, None);
    Ok(())
}
