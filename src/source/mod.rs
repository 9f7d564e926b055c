//! Source owns the Kafka side: the consumer, its rebalance handling, the
//! embedded broker, and handing messages to the writer in bounded batches,
//! each first passed through the pipeline's `Prepare` (decode and redact) on
//! this thread, so that work overlaps the writer's.
//!
//! Offsets are never committed here on a timer: the writer commits them once
//! the rows they produced are durable. On a revoke the consumer waits for the
//! writer to flush and commit before the partitions are released, so the next
//! owner starts exactly where the dataset ends.

pub mod embedded;
pub mod identity;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::{Config, KafkaConfig};
use crate::error::SourceError;
use crate::event::{KafkaCoords, Prepared};
use crate::metrics::Metrics;

/// One message as polled: its coordinates and its value, borrowed from
/// librdkafka's buffer for as long as `Prepare` looks at it.
#[derive(Debug)]
pub struct RawMessage<'a> {
    pub coords: KafkaCoords,
    pub payload: Option<&'a [u8]>,
}

/// Turns a polled message into what the writer takes, appended to the
/// batch: one row or more (an OTLP message holds many spans), or a marker
/// that only consumes the offset. Returns the bytes they hold (batches and
/// the queue are bounded by those bytes). A message's rows are never split
/// across batches, so they are made durable, and committed, together.
pub type Prepare = Box<dyn FnMut(RawMessage<'_>, &mut Vec<Prepared>) -> usize + Send>;

/// What flows from the consumer thread to the writer thread.
pub enum ToWriter {
    Batch(Vec<Prepared>),
    /// Flush everything received so far, commit synchronously, then reply.
    Barrier(SyncSender<Result<(), String>>),
    /// Like `Barrier`, then end the writer: the consumer is stopping.
    Finish(SyncSender<Result<(), String>>),
    /// These (topic, partition)s are now ours (before any of their messages).
    Assigned(Vec<(String, i32)>),
}

/// Next offset already durable in the dataset, per partition, per topic.
pub type Durable = Arc<Mutex<BTreeMap<String, BTreeMap<i32, i64>>>>;

/// At assignment, where the dataset ends for a partition of a topic, given
/// the group's committed offset (`None`: it has none): on a shared lake,
/// another writer may have made rows durable past the committed offset
/// (`ClaimLog::walk`).
pub type FloorLookup =
    Box<dyn Fn(&str, i32, Option<i64>) -> Result<Option<i64>, String> + Send + Sync>;

/// How often a floor lookup is tried before the consumer gives up: reading
/// on without the floor could store a message twice.
const FLOOR_ATTEMPTS: u32 = 6;

pub struct SourceContext {
    metrics: Arc<Metrics>,
    to_writer: SyncSender<ToWriter>,
    /// Bumped on every assignment so the poll loop reloads `Durable`.
    assignments: AtomicU64,
    /// Partitions revoked since the poll loop last looked: it drops what it
    /// polled from them and has not handed over.
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: AtomicBool,
    /// Set once the final flush is done: a revoke during close has nothing
    /// left to flush.
    writer_done: AtomicBool,
    floor_lookup: Option<FloorLookup>,
    durable: Durable,
    /// Why a floor lookup failed for good; the poll loop stops on it.
    floor_failed: Mutex<Option<String>>,
}

impl SourceContext {
    /// Sets the floor of each assigned partition from the lookup.
    fn look_up_floors(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let Some(lookup) = &self.floor_lookup else {
            return;
        };
        let committed = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(30)) {
            Ok(c) => c,
            Err(e) => {
                self.fail_floor(format!("reading committed offsets: {e}"));
                return;
            }
        };
        for e in committed.elements() {
            let from = match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            let mut delay = Duration::from_millis(200);
            let mut attempt = 1;
            let floor = loop {
                match lookup(e.topic(), e.partition(), from) {
                    Ok(floor) => break floor,
                    Err(why) if attempt < FLOOR_ATTEMPTS => {
                        tracing::warn!(partition = e.partition(), error = %why, "floor lookup failed; retrying");
                        std::thread::sleep(delay);
                        delay *= 2;
                        attempt += 1;
                    }
                    Err(why) => {
                        self.fail_floor(format!("partition {}: {why}", e.partition()));
                        return;
                    }
                }
            };
            if let Ok(mut d) = self.durable.lock() {
                let of_topic = d.entry(e.topic().to_owned()).or_default();
                match floor {
                    Some(f) => of_topic.insert(e.partition(), f),
                    None => of_topic.remove(&e.partition()),
                };
            }
            if let Some(f) = floor
                && from.is_some_and(|c| f > c)
            {
                tracing::info!(
                    partition = e.partition(),
                    committed = from,
                    floor = f,
                    "rows past the committed offset are in the lake already; they are skipped"
                );
            }
        }
    }

    fn fail_floor(&self, why: String) {
        tracing::error!(error = %why, "cannot tell where the lake ends; stopping");
        if let Ok(mut f) = self.floor_failed.lock() {
            f.get_or_insert(why);
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                self.metrics
                    .consumer_lag
                    .with_label_values(&[topic.as_str(), &self.metrics.partition_label(*partition)])
                    .set(p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked: flushing before release"
            );
            self.assigned.store(false, Ordering::SeqCst);
            self.metrics.partitions_assigned.set(0);
            if let Ok(mut revoked) = self.revoked.lock() {
                revoked.extend(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_owned(), e.partition())),
                );
            }
            if self.writer_done.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = barrier(&self.to_writer) {
                // The writer is gone (shutting down or failed); what it had
                // not made durable was never committed, so it is re-read.
                tracing::warn!(error = %e, "no flush on revoke");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
            self.look_up_floors(consumer, tpl);
            let partitions = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            if !self.writer_done.load(Ordering::SeqCst) {
                // Only fails when the writer is gone, which stops us anyway.
                let _ = self.to_writer.send(ToWriter::Assigned(partitions));
            }
            self.assignments.fetch_add(1, Ordering::SeqCst);
            self.assigned.store(tpl.count() > 0, Ordering::SeqCst);
            self.metrics.partitions_assigned.set(tpl.count() as i64);
        }
    }
}

/// Sends a barrier and waits until the writer has flushed and committed.
pub fn barrier(to_writer: &SyncSender<ToWriter>) -> Result<(), String> {
    flush_and_wait(to_writer, ToWriter::Barrier)
}

fn flush_and_wait(
    to_writer: &SyncSender<ToWriter>,
    message: fn(SyncSender<Result<(), String>>) -> ToWriter,
) -> Result<(), String> {
    let (tx, rx) = sync_channel(1);
    to_writer
        .send(message(tx))
        .map_err(|_| "writer stopped".to_owned())?;
    rx.recv().map_err(|_| "writer stopped".to_owned())?
}

pub type KafkaConsumer = BaseConsumer<SourceContext>;

/// Batches are cut at this many messages or bytes held after preparing
/// (decoded records are about three times their JSON), whichever first.
const BATCH_MESSAGES: usize = 2048;
const BATCH_BYTES: usize = 1024 * 1024;

/// The queue between consumer and writer holds at most this share of the
/// memory budget; librdkafka's prefetch gets another share.
fn queue_capacity(budget: usize) -> usize {
    (budget / 8 / BATCH_BYTES).clamp(2, 256)
}

pub struct Source {
    pub consumer: Arc<KafkaConsumer>,
    to_writer: SyncSender<ToWriter>,
    /// The subscribed topics, shared by every row's coordinates.
    topics: Vec<Arc<str>>,
    durable: Durable,
    metrics: Arc<Metrics>,
}

pub fn client_config(k: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (key, value) in &k.options {
        c.set(key, value);
    }
    c
}

impl Source {
    /// Creates the consumer and subscribes it. `durable` must already hold
    /// the dataset's durable offsets for the topic. The receiver is the
    /// writer's end of the queue.
    pub fn new(
        cfg: &Config,
        brokers: &str,
        durable: Durable,
        floor_lookup: Option<FloorLookup>,
        metrics: Arc<Metrics>,
    ) -> Result<(Source, Receiver<ToWriter>), SourceError> {
        let capacity = queue_capacity(cfg.sink.memory_budget_bytes);
        metrics.queue_capacity.set(capacity as i64);
        let (to_writer, writer_rx) = sync_channel(capacity);
        let context = SourceContext {
            metrics: metrics.clone(),
            to_writer: to_writer.clone(),
            assignments: AtomicU64::new(0),
            revoked: Mutex::new(Vec::new()),
            assigned: AtomicBool::new(false),
            writer_done: AtomicBool::new(false),
            floor_lookup,
            durable: durable.clone(),
            floor_failed: Mutex::new(None),
        };
        // librdkafka counts payload bytes only; each queued message also
        // holds its op and the fetch buffer it points into, about as much
        // again for ~500 B events, so the payload share is half of its 1/8.
        let prefetch_kib = (cfg.sink.memory_budget_bytes / 16 / 1024).clamp(1024, 2_097_151);
        // A fetch response stays in memory until its last message is copied
        // out, on top of the prefetch queue: bound it too (librdkafka's
        // default is 50 MB whatever the budget).
        let fetch_bytes = (cfg.sink.memory_budget_bytes / 16).clamp(1 << 20, 52_428_800);
        let mut cc = client_config(&cfg.kafka, brokers);
        cc.set("group.id", &cfg.kafka.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        for (key, default) in [
            ("auto.offset.reset", "earliest".to_owned()),
            ("statistics.interval.ms", "5000".to_owned()),
            ("queued.max.messages.kbytes", prefetch_kib.to_string()),
            ("fetch.max.bytes", fetch_bytes.to_string()),
            // With the prefetch bounded by the budget, a full queue is the
            // steady state whenever the writer is the slower side, and
            // librdkafka then parks each partition for a whole second by
            // default: a small budget cut throughput sevenfold for no memory
            // gained. A short pause keeps backpressure and lets fetching
            // resume as soon as the writer has made room.
            ("fetch.queue.backoff.ms", "20".to_owned()),
        ] {
            if cc.get(key).is_none() {
                cc.set(key, default);
            }
        }
        let consumer: KafkaConsumer = cc
            .create_with_context(context)
            .map_err(SourceError::kafka("creating the consumer"))?;
        let topics: Vec<Arc<str>> = cfg
            .inputs()
            .iter()
            .map(|i| Arc::from(i.topic.as_str()))
            .collect();
        let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
        consumer
            .subscribe(&names)
            .map_err(SourceError::kafka(format!(
                "subscribing to {}",
                names.join(", ")
            )))?;
        let source = Source {
            consumer: Arc::new(consumer),
            to_writer,
            topics,
            durable,
            metrics,
        };
        Ok((source, writer_rx))
    }

    pub fn is_assigned(consumer: &KafkaConsumer) -> bool {
        consumer.context().assigned.load(Ordering::SeqCst)
    }

    /// Polls until `stop` is set, handing batches to the writer. Returns
    /// after a final barrier, so everything consumed is durable and
    /// committed (or the writer failed, which is then the error).
    pub fn run(self, stop: &AtomicBool, mut prepare: Prepare) -> Result<(), SourceError> {
        let Source {
            consumer,
            to_writer,
            topics,
            durable,
            metrics,
        } = self;
        let mut seen_assignments = u64::MAX;
        // Per subscribed topic, in `topics`' order.
        let mut skip_below: Vec<BTreeMap<i32, i64>> = vec![BTreeMap::new(); topics.len()];
        let mut batch = Vec::with_capacity(BATCH_MESSAGES);
        let mut batch_bytes = 0usize;
        let send = |batch: &mut Vec<Prepared>, batch_bytes: &mut usize| {
            if batch.is_empty() {
                return Ok(());
            }
            let full = std::mem::replace(batch, Vec::with_capacity(BATCH_MESSAGES));
            *batch_bytes = 0;
            metrics.queue_batches.inc();
            to_writer
                .send(ToWriter::Batch(full))
                .map_err(|_| SourceError::SinkStopped("writer thread ended".into()))
        };
        while !stop.load(Ordering::SeqCst) {
            if let Some(why) = consumer
                .context()
                .floor_failed
                .lock()
                .ok()
                .and_then(|mut f| f.take())
            {
                return Err(SourceError::Floor(why));
            }
            let generation = consumer.context().assignments.load(Ordering::SeqCst);
            if generation != seen_assignments {
                seen_assignments = generation;
                if let Ok(d) = durable.lock() {
                    for (t, floors) in topics.iter().zip(skip_below.iter_mut()) {
                        *floors = d.get(&**t).cloned().unwrap_or_default();
                    }
                }
            }
            let timeout = if batch.is_empty() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            let polled = consumer.poll(timeout);
            let revoked = consumer
                .context()
                .revoked
                .lock()
                .map(|mut r| std::mem::take(&mut *r))
                .unwrap_or_default();
            if !revoked.is_empty() {
                // The revoke's barrier flushed and committed everything sent
                // before it. Messages of a revoked partition polled before it
                // but not sent would, sent now, be stored twice (the next
                // owner reads them too) and have their offsets committed for
                // a partition another consumer owns. Dropped, they are
                // fetched again from the committed offset by the owner.
                let before = batch.len();
                batch.retain(|p| {
                    let (topic, partition) = prepared_partition(p);
                    !revoked
                        .iter()
                        .any(|(t, rp)| *rp == partition && **t == *topic)
                });
                let dropped = before - batch.len();
                if dropped > 0 {
                    tracing::info!(
                        messages = dropped,
                        "dropped messages polled before their partitions were revoked; the owner consumes them again"
                    );
                    metrics.dropped_on_revoke.inc_by(dropped as u64);
                }
                if batch.is_empty() {
                    batch_bytes = 0;
                }
            }
            match polled {
                None => send(&mut batch, &mut batch_bytes)?,
                Some(Err(e)) => {
                    // Broker and transport errors are retried by librdkafka;
                    // they are logged, never fatal to the loop.
                    tracing::warn!(error = %e, "consumer error");
                }
                Some(Ok(m)) => {
                    let partition = m.partition();
                    let offset = m.offset();
                    // Only subscribed topics are ever fetched.
                    let Some(t) = topics.iter().position(|t| **t == *m.topic()) else {
                        tracing::warn!(topic = m.topic(), "a message from a topic not subscribed");
                        continue;
                    };
                    if skip_below[t].get(&partition).is_some_and(|&d| offset < d) {
                        metrics.skipped_durable.inc();
                        continue;
                    }
                    batch_bytes += prepare(
                        RawMessage {
                            coords: KafkaCoords {
                                topic: topics[t].clone(),
                                partition,
                                offset,
                                kafka_ts_ms: m.timestamp().to_millis(),
                            },
                            payload: m.payload(),
                        },
                        &mut batch,
                    );
                    if batch.len() >= BATCH_MESSAGES || batch_bytes >= BATCH_BYTES {
                        send(&mut batch, &mut batch_bytes)?;
                    }
                }
            }
        }
        send(&mut batch, &mut batch_bytes)?;
        flush_and_wait(&to_writer, ToWriter::Finish).map_err(SourceError::SinkStopped)?;
        consumer.context().writer_done.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn prepared_partition(p: &Prepared) -> (&str, i32) {
    let c = p.coords();
    (&c.topic, c.partition)
}

/// Commits the given next offsets for `topic`.
pub fn commit(
    consumer: &KafkaConsumer,
    offsets: &[(String, i32, i64)],
    mode: CommitMode,
    metrics: &Metrics,
) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, next) in offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::error!(error = %e, "building commit list");
            metrics.commit_failures.inc();
            return;
        }
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            for (topic, partition, next) in offsets {
                metrics
                    .committed_offset
                    .with_label_values(&[topic.as_str(), &metrics.partition_label(*partition)])
                    .set(*next);
            }
        }
        Err(e) => {
            // The dataset is already durable and the journal records these
            // offsets, so a failed commit costs only a re-read that the
            // durable-offset filter skips.
            tracing::warn!(error = %e, "offset commit failed");
            metrics.commit_failures.inc();
        }
    }
}
