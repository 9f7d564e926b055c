//! Produce owns shipping generated traffic: a throughput-tuned Kafka
//! producer, pacing, and writing the same messages as JSON lines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::Generator;
use crate::decode::InputFormat;
use crate::error::SourceError;

/// A producer tuned for throughput, with `extra` librdkafka properties.
pub fn producer(
    brokers: &str,
    extra: &[(String, String)],
) -> Result<ThreadedProducer<DefaultProducerContext>, SourceError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        // Unkeyed messages go to a random partition each, not in sticky runs,
        // so every partition stays under the embedded broker's 5 MiB cap.
        .set("sticky.partitioning.linger.ms", "0");
    for (k, v) in extra {
        cc.set(k, v);
    }
    cc.create()
        .map_err(SourceError::kafka("creating the producer"))
}

/// Hands one message to the producer, waiting while its queue is full.
pub fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: Option<&str>,
    payload: &[u8],
) -> Result<(), SourceError> {
    let mut record = BaseRecord::<str, [u8]>::to(topic).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(SourceError::kafka("producing")(e)),
        }
    }
}

/// How much and how fast `produce` sends.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Stop after this many messages; `None` runs until `stop`.
    pub count: Option<u64>,
    /// At most this many messages per second; `None` is as fast as possible.
    pub rate: Option<u32>,
    /// Key messages by tenant (per-tenant ordering) instead of spreading them
    /// over all partitions.
    pub keyed: bool,
    /// v1 events one per message, or OTLP export requests of many spans
    /// (`count` and `rate` then count spans).
    pub format: InputFormat,
}

/// Spans per OTLP message `produce` ships: a Collector batch of a busy
/// agent fleet, a few kB to a few tens of kB per message.
pub const SPANS_PER_MESSAGE: usize = 32;

/// Produces messages until `pace.count` or `stop`. Returns how many were
/// handed to the producer; all of them are delivered when this returns.
pub fn produce(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    generator: &mut Generator,
    pace: Pace,
    stop: &AtomicBool,
) -> Result<u64, SourceError> {
    let Pace {
        count,
        rate,
        keyed,
        format,
    } = pace;
    let mut batcher =
        (format != InputFormat::V1).then(|| super::otlp::Batcher::new(format, SPANS_PER_MESSAGE));
    let started = Instant::now();
    let mut sent = 0u64;
    while count.is_none_or(|c| sent < c) && !stop.load(Ordering::Relaxed) {
        if let Some(r) = rate {
            let due = started + Duration::from_secs_f64(sent as f64 / f64::from(r.max(1)));
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                continue;
            }
        }
        let g = generator.next_message();
        sent += 1;
        let Some(b) = batcher.as_mut() else {
            send(producer, topic, keyed.then_some(g.key.as_str()), &g.payload)?;
            continue;
        };
        if let Some((key, payload)) = b.push(&g.key, &g.payload) {
            send(producer, topic, keyed.then_some(key.as_str()), &payload)?;
        }
    }
    for (key, payload) in batcher.as_mut().map(|b| b.drain()).unwrap_or_default() {
        send(producer, topic, keyed.then_some(key.as_str()), &payload)?;
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(SourceError::kafka("flushing the producer"))?;
    Ok(sent)
}

/// Writes `count` messages of `generator` as JSON lines, or fewer if the
/// event time reaches `until_ms` first (malformed ones that are not
/// single-line text are written as they are, so a reader sees them too).
pub fn write_jsonl(
    path: &std::path::Path,
    generator: &mut Generator,
    count: u64,
    until_ms: Option<i64>,
) -> std::io::Result<u64> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut written = 0;
    while written < count && until_ms.is_none_or(|u| (generator.clock_ms as i64) < u) {
        let m = generator.next_message();
        out.write_all(&m.payload)?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}
