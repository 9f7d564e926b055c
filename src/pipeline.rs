//! Pipeline wires the rooms together for `serve` and `bench`: a consumer
//! thread (source) feeding a writer thread that runs decode → redact → sink
//! and commits offsets once the sink reports them durable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::CommitMode;

use crate::config::Config;
use crate::decode::{self, DecodeLimits};
use crate::detect::labels::{LabelCap, LabelName};
use crate::detect::policy::{Policy, PolicyError};
use crate::detect::{AlertChange, Detector, SharedPolicy};
use crate::error::{ConfigError, SinkError, SourceError};
use crate::event::{Prepared, Record};
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::sink::alertmanager::AlertmanagerPush;
use crate::sink::{ParquetSink, PendingRows};
use crate::source::{self, Durable, KafkaConsumer, Prepare, RawMessage, Source, ToWriter};

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
    limits: DecodeLimits,
    metrics: Arc<Metrics>,
}

impl Preparer {
    fn prepare(&self, m: RawMessage<'_>) -> (Prepared, usize) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let prepared = match decode::decode(m.payload, now_ms, &self.limits) {
            Ok(event) => {
                self.metrics.decoded.inc();
                if event.unknown_fields > 0 {
                    self.metrics
                        .unknown_fields
                        .inc_by(u64::from(event.unknown_fields));
                }
                let record = self.redactor.redact_event(event, m.coords, now_ms);
                self.count_redactions(&record.redactions);
                Prepared::Record(record)
            }
            Err(failure) => {
                self.metrics
                    .dead_letters
                    .with_label_values(&[failure.reason.as_str()])
                    .inc();
                let dl = self
                    .redactor
                    .redact_dead_letter(m.payload, failure, m.coords, now_ms);
                self.count_redactions(&dl.redactions);
                Prepared::DeadLetter(dl)
            }
        };
        let bytes = crate::sink::prepared_size(&prepared);
        (prepared, bytes)
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

/// Detection as the writer runs it: the detector, the policy it reads, and
/// where alert changes go (the alerts table, metrics, Alertmanager).
struct DetectStage {
    detector: Detector,
    policy: SharedPolicy,
    labels: LabelCap,
    redactor: Arc<Redactor>,
    alertmanager: Option<AlertmanagerPush>,
    changes: Vec<AlertChange>,
    /// The gauge labels each active alert was exported with.
    exported: HashMap<String, [String; 5]>,
    reported_evictions: (u64, u64),
    busiest_exported: u32,
}

impl DetectStage {
    fn current_policy(&self) -> Option<Arc<Policy>> {
        self.policy.read().ok().and_then(|p| p.clone())
    }

    fn observe(&mut self, record: &Record, policy: Option<&Policy>) {
        self.detector.observe(record, policy, &mut self.changes);
    }

    /// Applies what the batch changed: alert rows, metrics, Alertmanager.
    fn end_batch(&mut self, rows: &mut PendingRows, metrics: &Metrics) {
        self.detector.advance(&mut self.changes);
        let policy = self.current_policy();
        let policy = policy.as_deref();
        for change in std::mem::take(&mut self.changes) {
            match &change {
                AlertChange::Fired(a) => {
                    let rule = a.rule.name();
                    let severity = a.severity.as_str();
                    metrics.alerts.with_label_values(&[rule, severity]).inc();
                    let labels = [
                        rule.to_owned(),
                        severity.to_owned(),
                        self.labels
                            .value(LabelName::Tenant, &a.tenant, &self.redactor, policy),
                        self.labels
                            .value(LabelName::Agent, &a.agent_id, &self.redactor, policy),
                        self.labels
                            .value(LabelName::Tool, &a.tool, &self.redactor, policy),
                    ];
                    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                    metrics.alert_active.with_label_values(&refs).inc();
                    self.exported.insert(a.id_without_window(), labels);
                    rows.push_alert(a.clone());
                }
                AlertChange::Resolved(a) => {
                    if let Some(labels) = self.exported.remove(&a.id_without_window()) {
                        let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                        if let Ok(g) = metrics.alert_active.get_metric_with_label_values(&refs) {
                            g.dec();
                            if g.get() <= 0 {
                                let _ = metrics.alert_active.remove_label_values(&refs);
                            }
                        }
                    }
                }
            }
            if let Some(am) = &self.alertmanager {
                am.notify(&change);
            }
        }
        let (busiest, bucket) = self.detector.busiest();
        if bucket != self.busiest_exported {
            // A new bucket closed: the series are the new top keys only.
            self.busiest_exported = bucket;
            metrics.baseline_observed.reset();
            metrics.baseline_expected.reset();
            for k in busiest {
                let labels = [
                    k.kind.to_owned(),
                    self.labels
                        .value(LabelName::Tenant, &k.tenant, &self.redactor, policy),
                    self.labels
                        .value(LabelName::Agent, &k.agent_id, &self.redactor, policy),
                    self.labels
                        .value(LabelName::Tool, &k.tool, &self.redactor, policy),
                ];
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                metrics
                    .baseline_observed
                    .with_label_values(&refs)
                    .set(i64::from(k.observed));
                metrics
                    .baseline_expected
                    .with_label_values(&refs)
                    .set(k.expected);
            }
        }
        metrics
            .active_alerts
            .set(self.detector.active_alerts() as i64);
        metrics
            .baseline_keys
            .set(self.detector.baseline_keys() as i64);
        metrics
            .baseline_profiles
            .set(self.detector.baseline_profiles() as i64);
        let (b, d) = (
            self.detector.baseline_evictions(),
            self.detector.state_evictions(),
        );
        metrics
            .baseline_evictions
            .inc_by(b - self.reported_evictions.0);
        metrics
            .detector_evictions
            .inc_by(d - self.reported_evictions.1);
        self.reported_evictions = (b, d);
        let overflow = self.labels.overflowed;
        metrics
            .label_overflow
            .inc_by(overflow.saturating_sub(metrics.label_overflow.get()));
        let (tables, refused) = self.detector.baseline_burst_tables();
        metrics.burst_tables.set(tables as i64);
        metrics
            .burst_tables_refused
            .inc_by(refused.saturating_sub(metrics.burst_tables_refused.get()));
        metrics
            .silence_watched
            .set(self.detector.silence_watched() as i64);
        let refused = self.detector.silence_watch_refused;
        metrics
            .silence_watch_refused
            .inc_by(refused.saturating_sub(metrics.silence_watch_refused.get()));
        let late = self.detector.baseline_late();
        metrics
            .baseline_late
            .inc_by(late.saturating_sub(metrics.baseline_late.get()));
    }
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
        if self.rows.rows() == 0 && reply.is_none() && nothing_to_commit {
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
        let consumed = batch.len() as u64;
        for item in batch {
            match item {
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
    topic: String,
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
        if let Ok(mut d) = self.durable.lock()
            && let Some(offsets) = self.sink.durable_offsets().get(&self.topic)
        {
            d.extend(offsets.iter().map(|(p, o)| (*p, *o)));
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
    let mut sink = ParquetSink::open(&cfg.sink, metrics.clone())?;
    // The key of output digests and `hash` rules: configured, or the
    // dataset's own (generated on first start, under the lock just taken).
    let mut cfg = cfg.clone();
    let key = match cfg.redact.hash_key.take() {
        Some(k) => k,
        None => crate::sink::dataset_key::load_or_create(&cfg.sink.data_dir)?,
    };
    let mut limits = cfg.decode_limits();
    limits.output_key = Some(crate::decode::OutputKey::new(key.as_bytes()));
    cfg.redact.hash_key = Some(key);
    let cfg = &cfg;
    let redactor = Arc::new(Redactor::new(&cfg.redact)?);
    let durable: Durable = Arc::new(Mutex::new(
        sink.durable_offsets()
            .get(&cfg.kafka.topic)
            .cloned()
            .unwrap_or_default(),
    ));
    let (source, rx) = Source::new(cfg, brokers, durable.clone(), metrics.clone())?;
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
        topic: cfg.kafka.topic.clone(),
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
        limits,
        metrics: metrics.clone(),
    };
    let prepare: Prepare = Box::new(move |m| preparer.prepare(m));
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

/// Checks that the journal's offset floor belongs to the cluster and topic
/// now consumed, and records the cluster id with the next commit. Against
/// the embedded broker, which starts empty every time, a stale floor is
/// reset; against real brokers it refuses to start.
fn verify_kafka(
    sink: &mut ParquetSink,
    consumer: &KafkaConsumer,
    cfg: &Config,
    durable: &Durable,
) -> Result<(), PipelineError> {
    let topic = &cfg.kafka.topic;
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
            tracing::warn!(error = %e, "cannot read the Kafka cluster id yet");
            source::identity::KafkaIdentity::default()
        }
        Err(e) => {
            return Err(PipelineError::Runtime(format!(
                "cannot verify that the dataset's offsets belong to these brokers: {e}"
            )));
        }
    };
    let recorded = sink.recorded_cluster().map(str::to_owned);
    let cluster = identity.cluster_id.clone().or(recorded.clone());
    match source::identity::floor_mismatch(recorded.as_deref(), &floor, topic, &identity) {
        None => sink.bind_cluster(cluster, None),
        Some(why) if cfg.kafka.brokers.is_none() => {
            tracing::warn!(
                reason = %why,
                "the embedded broker starts empty: the dataset's offset floor is reset"
            );
            sink.bind_cluster(identity.cluster_id, Some(topic));
            if let Ok(mut d) = durable.lock() {
                d.clear();
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
    Ok(())
}

/// Loads the policy (refusing to start on a bad file), warms the baselines
/// from stored history and starts the Alertmanager push when configured.
fn detect_stage(
    cfg: &Config,
    redactor: Arc<Redactor>,
    metrics: Arc<Metrics>,
) -> Result<(DetectStage, SharedPolicy), PipelineError> {
    let d = &cfg.detect;
    let policy: SharedPolicy = Arc::new(std::sync::RwLock::new(None));
    if let Some(path) = &d.policy_file {
        let p = Policy::load(path)?;
        install_policy(&policy, p, &metrics);
    }
    let mut detector = Detector::new(d, false);
    detector.bound_by_arrival();
    let bucket_ms = i64::try_from(d.bucket_secs * 1000).unwrap_or(60_000);
    let now = chrono::Utc::now().timestamp_millis();
    match crate::detect::warm::from_history(
        &cfg.sink.data_dir,
        &mut detector,
        bucket_ms,
        d.warm_hours,
        now,
    ) {
        Ok(n) if n > 0 => tracing::info!(
            aggregates = n,
            hours = d.warm_hours,
            "baselines warmed from stored history"
        ),
        Ok(_) => {}
        // Detection still works cold; say so rather than refuse to start.
        Err(e) => {
            tracing::warn!(error = %e, "could not warm baselines from history; starting cold")
        }
    }
    metrics.baseline_max_keys.set(d.max_keys as i64);
    metrics.baseline_max_profiles.set(d.max_profiles as i64);
    let alertmanager = d.alertmanager_url.as_deref().map(|url| {
        AlertmanagerPush::start(
            url,
            d.alertmanager_queue,
            &d.runbook_base_url,
            metrics.clone(),
        )
    });
    let stage = DetectStage {
        detector,
        policy: policy.clone(),
        labels: LabelCap::new(d.max_label_values),
        redactor,
        alertmanager,
        changes: Vec::new(),
        exported: HashMap::new(),
        reported_evictions: (0, 0),
        busiest_exported: 0,
    };
    Ok((stage, policy))
}

/// Puts a checked policy in force and updates what depends on it.
pub fn install_policy(shared: &SharedPolicy, policy: Policy, metrics: &Metrics) {
    for (agent, env) in policy.write_heavy_agents() {
        tracing::warn!(
            agent,
            environment = env,
            "allowlist has as many write tools as read tools or more"
        );
    }
    metrics.inventory_review_overdue.reset();
    let today = chrono::Utc::now().date_naive();
    for agent in crate::detect::overdue_agents(&policy, today) {
        metrics
            .inventory_review_overdue
            .with_label_values(&[&crate::detect::labels::sanitise(&agent)])
            .set(1);
    }
    if let Ok(mut p) = shared.write() {
        *p = Some(Arc::new(policy));
    }
    metrics.policy_loaded.set(1);
}

/// Re-reads the policy file; a bad file keeps the old policy in force.
pub fn reload_policy(path: &std::path::Path, shared: &SharedPolicy, metrics: &Metrics) {
    match Policy::load(path) {
        Ok(p) => {
            install_policy(shared, p, metrics);
            metrics.policy_reloads.inc();
            tracing::info!(file = %path.display(), "policy reloaded");
        }
        Err(e) => {
            metrics.policy_reload_failures.inc();
            tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
        }
    }
}

/// `agentaudit serve`: starts the embedded broker when no brokers are
/// configured, the HTTP surface, the pipeline and (with `demo_rate`) the demo
/// traffic generator; runs until SIGINT or SIGTERM, then flushes, commits
/// and returns.
/// Demo traffic for `serve --demo`.
pub struct Demo {
    pub rate: u32,
    pub scenarios: Vec<crate::traffic::scenario::Scenario>,
}

/// Demo events advance event time 10 ms each; scenarios start after this
/// many, once 5-s baselines are warm.
const DEMO_SCENARIO_START: u64 = 12_000;

pub async fn serve(mut cfg: Config, demo: Option<Demo>) -> Result<(), PipelineError> {
    if let Some(d) = demo.as_ref().filter(|d| !d.scenarios.is_empty()) {
        // A demo is watched live: small buckets so a scenario alerts in
        // minutes, and the inventory its benign traffic complies with.
        cfg.detect.bucket_secs = 5;
        cfg.detect.warmup_buckets = 10;
        cfg.detect.new_tool_warmup_buckets = 10;
        if cfg.detect.policy_file.is_none() {
            std::fs::create_dir_all(&cfg.sink.data_dir)
                .map_err(|e| PipelineError::Runtime(format!("creating the data directory: {e}")))?;
            let path = cfg.sink.data_dir.join("demo-policy.toml");
            std::fs::write(&path, crate::traffic::scenario::benign_policy_toml())
                .map_err(|e| PipelineError::Runtime(format!("writing {}: {e}", path.display())))?;
            cfg.detect.policy_file = Some(path);
        }
        let names: Vec<_> = d.scenarios.iter().map(|s| s.name()).collect();
        println!(
            "agentaudit: demo scenarios {} start after {DEMO_SCENARIO_START} events (~{} s); detection on 5-s buckets",
            names.join(", "),
            DEMO_SCENARIO_START / u64::from(d.rate.max(1))
        );
    }
    let demo_rate = demo.as_ref().map(|d| d.rate);
    let demo_scenarios = demo.map(|d| d.scenarios).unwrap_or_default();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(crate::serve::Health::default());
    let embedded = match &cfg.kafka.brokers {
        Some(_) => None,
        None => Some(crate::source::embedded::EmbeddedBroker::start(
            &cfg.kafka.topic,
            cfg.kafka.embedded_partitions,
        )?),
    };
    let brokers = match (&cfg.kafka.brokers, &embedded) {
        (Some(b), _) => b.clone(),
        (None, Some(e)) => e.bootstrap_servers(),
        (None, None) => unreachable!("an embedded broker is started when no brokers are set"),
    };
    if embedded.is_some() {
        println!(
            "agentaudit: embedded Kafka broker at {brokers} (in memory), topic `{}`; produce with any Kafka client, e.g.\n  kcat -P -b {brokers} -t {}",
            cfg.kafka.topic, cfg.kafka.topic
        );
    }
    let listen = cfg.listen_addr()?;
    let (listener, bound) = crate::serve::bind(listen)
        .await
        .map_err(|e| ConfigError::invalid("serve.listen", format!("cannot bind {listen}: {e}")))?;
    println!(
        "agentaudit: metrics at http://{bound}/metrics, data in {}",
        cfg.sink.data_dir.display()
    );
    let app = crate::serve::router(metrics.clone(), health.clone());
    let http = tokio::spawn(crate::serve::run(listener, app, metrics.clone()));

    let running = tokio::task::block_in_place(|| start(&cfg, &brokers, metrics.clone()))?;
    health.alive.store(true, Ordering::SeqCst);

    let demo_stop = Arc::new(AtomicBool::new(false));
    let demo = match demo_rate {
        None => None,
        Some(rate) => {
            let producer = crate::traffic::producer(&brokers, &[])?;
            let topic = cfg.kafka.topic.clone();
            let stop = demo_stop.clone();
            println!("agentaudit: demo traffic at {rate} events/s into `{topic}`");
            Some(std::thread::spawn(move || {
                let mut g = crate::traffic::Generator::new(crate::traffic::GenOptions {
                    malformed_ratio: 0.005,
                    // Event time runs at `rate / 100` times real time; from
                    // 12 h back it stays behind the clock for 12 h at the
                    // default rate, so no demo event is "from the future".
                    start_ms: chrono::Utc::now().timestamp_millis() - 12 * 3_600_000,
                    scenario_start: DEMO_SCENARIO_START,
                    scenario_events: u64::MAX / 2,
                    scenarios: demo_scenarios,
                    ..Default::default()
                });
                let pace = crate::traffic::Pace {
                    count: None,
                    rate: Some(rate),
                    keyed: true,
                };
                crate::traffic::produce(&producer, &topic, &mut g, pace, &stop)
            }))
        }
    };

    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut last_report = std::time::Instant::now();
    let mut terminate = signal_terminate()?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| PipelineError::Runtime(format!("installing the SIGHUP handler: {e}")))?;
    let policy_file = cfg.detect.policy_file.clone();
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut policy_mtime = policy_file.as_deref().and_then(modified);
    let reload = |metrics: &Metrics| {
        if let (Some(path), Some(shared)) = (&policy_file, &running.policy) {
            reload_policy(path, shared, metrics);
        }
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => reload(&metrics),
            _ = ticker.tick() => {
                let now_mtime = policy_file.as_deref().and_then(modified);
                if now_mtime != policy_mtime {
                    policy_mtime = now_mtime;
                    reload(&metrics);
                }
                health.ready.store(
                    crate::source::Source::is_assigned(&running.consumer)
                        && metrics.sink_stalled.get() == 0,
                    Ordering::SeqCst,
                );
                if running.finished() {
                    tracing::error!("a pipeline thread stopped unexpectedly");
                    break;
                }
                if last_report.elapsed() >= Duration::from_secs(10) {
                    last_report = std::time::Instant::now();
                    report_progress(&metrics);
                }
            }
        }
    }
    tracing::info!("stopping: flushing and committing");
    health.ready.store(false, Ordering::SeqCst);
    demo_stop.store(true, Ordering::SeqCst);
    if let Some(d) = demo
        && let Ok(Err(e)) = d.join()
    {
        tracing::warn!(error = %e, "demo generator");
    }
    // A plain thread, not the runtime's blocking pool: a stop stuck in
    // librdkafka must not hold the runtime's shutdown, or the process, open.
    let timeout = Duration::from_secs(cfg.serve.shutdown_timeout_secs);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(running.stop());
    });
    let result = match tokio::time::timeout(timeout, done_rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(PipelineError::Panicked("the stop thread ended".into())),
        Err(_) => {
            tracing::error!(
                timeout_secs = timeout.as_secs(),
                "the stop did not finish in time (is the Kafka group coordinator down?); exiting without it"
            );
            Err(PipelineError::Runtime(format!(
                "the stop did not finish within serve.shutdown_timeout_secs = {}; what was flushed is durable, the rest is consumed again",
                timeout.as_secs()
            )))
        }
    };
    health.alive.store(false, Ordering::SeqCst);
    http.abort();
    report_progress(&metrics);
    drop(embedded);
    result
}

fn report_progress(m: &Metrics) {
    let sum = |v: &prometheus::IntCounterVec, label: &str| v.with_label_values(&[label]).get();
    tracing::info!(
        consumed = m.consumed.get(),
        decoded = m.decoded.get(),
        dead_lettered = m.consumed.get().saturating_sub(m.decoded.get()),
        rows_written = sum(&m.rows_written, crate::sink::INVOCATIONS)
            + sum(&m.rows_written, crate::sink::DEAD_LETTER),
        files_written = sum(&m.files_written, crate::sink::INVOCATIONS)
            + sum(&m.files_written, crate::sink::DEAD_LETTER),
        "progress"
    );
}

fn signal_terminate() -> Result<tokio::signal::unix::Signal, PipelineError> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| PipelineError::Runtime(format!("installing the SIGTERM handler: {e}")))
}
