//! Bench owns the end-to-end benchmark (`agentaudit bench`): pre-fill a topic
//! on the embedded broker, measure the raw-consume floor of that topic, then
//! the full pipeline to durable Parquet on the same topic, in one run.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use crate::config::Config;
use crate::decode::InputFormat;
use crate::event::DeadLetterReason;
use crate::metrics::Metrics;
use crate::pipeline::{self, PipelineError};
use crate::sink::{DEAD_LETTER, INVOCATIONS};
use crate::source::embedded::EmbeddedBroker;
use crate::traffic::{GenOptions, Generator};

mod measure;
mod report;
use measure::{RssSampler, process_cpu_secs};
pub use measure::{baseline_memory, detect_cost};

pub struct BenchOptions {
    /// An external Kafka-protocol broker; `None` runs the embedded one.
    pub brokers: Option<String>,
    pub events: u64,
    pub partitions: i32,
    pub data_dir: PathBuf,
    pub memory_budget_bytes: usize,
    pub detect: bool,
    /// S3 settings over the `AWS_*` environment, for an `s3://` data_dir.
    pub object_store: crate::lake::ObjectStoreConfig,
    /// Also measure the same events shipped as OpenTelemetry spans in this
    /// format (`otlp_proto`, `otlp_json`), beside the v1 figure.
    pub input_format: InputFormat,
}

/// The pipeline over the same events as OTLP export requests.
pub struct OtlpRun {
    pub format: InputFormat,
    pub messages: u64,
    /// Message bytes per span, beside v1's bytes per event.
    pub mean_span_bytes: f64,
    /// Spans (tool calls) per second: the unit the v1 figure counts too.
    pub spans_per_sec: f64,
    pub cpu_per_span_secs: f64,
}

pub struct BenchReport {
    pub events: u64,
    pub mean_event_bytes: f64,
    pub raw_consume_eps: f64,
    pub pipeline_eps: f64,
    pub parquet_bytes: u64,
    pub parquet_files: u64,
    pub peak_rss_growth_bytes: u64,
    /// The same for the raw consume: the in-process broker's and
    /// librdkafka's share, which the pipeline's figure includes too.
    pub floor_rss_growth_bytes: u64,
    pub memory_budget_bytes: usize,
    /// CPU time of every thread of this process per event, broker included:
    /// what each run costs, whatever the machine's speed of the moment.
    pub floor_cpu_per_event_secs: f64,
    pub pipeline_cpu_per_event_secs: f64,
    /// The same pipeline into the S3 lake, when `--data-dir` is one.
    pub lake: Option<PipelineRun>,
    pub otlp: Option<OtlpRun>,
}

/// Creates `topic` with `partitions` on an external broker, through the
/// Kafka admin API.
fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), PipelineError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(runtime)?;
    let runtime_ = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(runtime)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = runtime_
        .block_on(admin.create_topics([&new], &AdminOptions::new()))
        .map_err(runtime)?;
    for r in results {
        r.map_err(|(t, e)| runtime(format!("creating topic {t}: {e}")))?;
    }
    Ok(())
}

/// The file that marks a directory as a benchmark's own, safe to clear.
const BENCH_MARK: &str = ".agentaudit-bench";

/// Empties `dir` for a run, but only a directory a benchmark made (or an
/// empty one), and only once no process holds its lock: `--data-dir` aimed
/// at a live dataset must not delete it.
fn clear_bench_dir(dir: &std::path::Path) -> Result<(), String> {
    let shown = dir.display();
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| format!("{shown}: {e}"))?
            .next()
            .is_none();
        if !empty && !dir.join(BENCH_MARK).exists() {
            return Err(format!(
                "refusing to clear {shown}: it is not a benchmark's directory (no {BENCH_MARK}); \
                 give bench a new or empty --data-dir"
            ));
        }
        let lock = dir.join("_state").join("lock");
        if let Ok(f) = std::fs::File::open(&lock)
            && f.try_lock().is_err()
        {
            return Err(format!(
                "refusing to clear {shown}: another process holds its lock"
            ));
        }
        std::fs::remove_dir_all(dir).map_err(|e| format!("clearing {shown}: {e}"))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{shown}: {e}"))?;
    std::fs::write(dir.join(BENCH_MARK), b"").map_err(|e| format!("{shown}: {e}"))
}

fn runtime(e: impl fmt::Display) -> PipelineError {
    PipelineError::Runtime(e.to_string())
}

pub fn run(opts: &BenchOptions) -> Result<BenchReport, PipelineError> {
    // An external broker keeps earlier runs' topics: each run gets its own.
    // The embedded broker lives as long as `_embedded`.
    let otlp_format = (opts.input_format != InputFormat::V1).then_some(opts.input_format);
    let (topic, otlp_topic, brokers, _embedded) = match &opts.brokers {
        Some(b) => {
            let now = chrono::Utc::now().timestamp_millis();
            let topic = format!("bench-events-{now}");
            let otlp_topic = format!("bench-spans-{now}");
            create_topic(b, &topic, opts.partitions)?;
            if otlp_format.is_some() {
                create_topic(b, &otlp_topic, opts.partitions)?;
            }
            (topic, otlp_topic, b.clone(), None)
        }
        None => {
            let (topic, otlp_topic) = ("bench-events".to_owned(), "bench-spans".to_owned());
            let broker = EmbeddedBroker::start(&topic, opts.partitions)?;
            // An OTLP span takes more bytes than its v1 event (attribute
            // names, resources): twice the partitions keep each under the
            // embedded broker's 5 MiB.
            broker.create_topic(&otlp_topic, opts.partitions.saturating_mul(2))?;
            (topic, otlp_topic, broker.bootstrap_servers(), Some(broker))
        }
    };
    let topic = topic.as_str();

    eprintln!("pre-filling {} events…", opts.events);
    // librdkafka's mock broker answers a fetch with one stored producer batch
    // per partition, so small batches would make its fetches, not our code,
    // the bottleneck. A long linger stores large batches, as a busy producer
    // into a real broker would.
    let batching = [
        ("linger.ms".to_owned(), "1000".to_owned()),
        (
            "queue.buffering.max.messages".to_owned(),
            "1000000".to_owned(),
        ),
    ];
    let producer = crate::traffic::producer(&brokers, &batching)?;
    let gen_options = GenOptions {
        malformed_ratio: 0.001,
        // Events are 10 ms apart: end an hour ago, so none is dead-lettered
        // as being from the future (`decode.max_future_secs`).
        start_ms: chrono::Utc::now().timestamp_millis()
            - i64::try_from(opts.events.saturating_mul(10)).unwrap_or(i64::MAX / 4)
            - 3_600_000,
        ..GenOptions::default()
    };
    let mut generator = Generator::new(gen_options.clone());
    let stop = AtomicBool::new(false);
    // Unkeyed, so the events spread over every partition: the embedded
    // broker keeps only the newest 5 MiB of each partition.
    let pace = crate::traffic::Pace {
        count: Some(opts.events),
        rate: None,
        keyed: false,
        format: crate::decode::InputFormat::V1,
    };
    crate::traffic::produce(&producer, topic, &mut generator, pace, &stop)?;
    // The same events again (same seed), as OTLP export requests.
    let otlp_messages = match otlp_format {
        Some(format) => {
            eprintln!("pre-filling the same events as {}…", format.as_str());
            let mut generator = Generator::new(gen_options);
            let mut batcher =
                crate::traffic::otlp::Batcher::new(format, crate::traffic::SPANS_PER_MESSAGE);
            let (mut messages, mut bytes) = (0u64, 0u64);
            let mut ship = |payload: &[u8]| {
                messages += 1;
                bytes += payload.len() as u64;
                crate::traffic::send(&producer, &otlp_topic, None, payload)
            };
            for _ in 0..opts.events {
                let g = generator.next_message();
                if let Some((_, payload)) = batcher.push(&g.key, &g.payload) {
                    ship(&payload)?;
                }
            }
            for (_, payload) in batcher.drain() {
                ship(&payload)?;
            }
            (messages, bytes)
        }
        None => (0, 0),
    };
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(120)).map_err(runtime)?;
    drop(producer);

    eprintln!("raw consume…");
    let raw: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(runtime)?;
    let floor_rss = RssSampler::start();
    raw.subscribe(&[topic]).map_err(runtime)?;
    let (mut n, mut bytes, mut started) = (0u64, 0u64, None);
    let mut floor_cpu_start = f64::NAN;
    while n < opts.events {
        if let Some(Ok(m)) = raw.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(|| {
                floor_cpu_start = process_cpu_secs();
                Instant::now()
            });
            // Copy the payload as the pipeline does, so the floor is honest.
            bytes += m
                .payload()
                .map(<[u8]>::to_vec)
                .map_or(0, |v| v.len() as u64);
            n += 1;
        }
    }
    let raw_secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let floor_cpu_secs = process_cpu_secs() - floor_cpu_start;
    drop(raw);
    let floor_rss_growth_bytes = floor_rss.stop();

    let s3 = opts.data_dir.to_string_lossy().starts_with("s3://");
    // Against S3 the local-disk figure is measured in the same run, as the
    // reference, in a directory of the benchmark's own.
    let local_dir = if s3 {
        std::env::temp_dir().join("agentaudit-bench-local")
    } else {
        opts.data_dir.clone()
    };
    // The lake runs first when there is one: a run's peak RSS growth is
    // measured from where the process stands, and the allocator keeps what
    // the run before it freed, so the first run's figure is the clean one.
    let lake = if s3 {
        // A prefix of the run's own: nothing of the bucket's is touched.
        let url = format!(
            "{}/agentaudit-bench-{}",
            opts.data_dir.to_string_lossy().trim_end_matches('/'),
            chrono::Utc::now().timestamp_millis()
        );
        eprintln!("pipeline to {url}…");
        let run = pipeline_run(
            opts,
            &brokers,
            (topic, InputFormat::V1, opts.events),
            "bench-pipeline-s3",
            url.clone().into(),
        )?;
        remove_lake_prefix(&url, &opts.object_store);
        Some(run)
    } else {
        None
    };
    eprintln!("pipeline to {}…", local_dir.display());
    clear_bench_dir(&local_dir).map_err(PipelineError::Runtime)?;
    let local = pipeline_run(
        opts,
        &brokers,
        (topic, InputFormat::V1, opts.events),
        "bench-pipeline",
        local_dir.clone(),
    )?;
    let otlp = match otlp_format {
        Some(format) => {
            eprintln!("pipeline over {} spans…", format.as_str());
            clear_bench_dir(&local_dir).map_err(PipelineError::Runtime)?;
            let run = pipeline_run(
                opts,
                &brokers,
                (&otlp_topic, format, otlp_messages.0),
                "bench-pipeline-otlp",
                local_dir,
            )?;
            Some(OtlpRun {
                format,
                messages: otlp_messages.0,
                mean_span_bytes: otlp_messages.1 as f64 / opts.events.max(1) as f64,
                spans_per_sec: run.eps,
                cpu_per_span_secs: run.cpu_per_event_secs,
            })
        }
        None => None,
    };
    Ok(BenchReport {
        events: opts.events,
        mean_event_bytes: bytes as f64 / opts.events.max(1) as f64,
        raw_consume_eps: opts.events as f64 / raw_secs.max(1e-9),
        pipeline_eps: local.eps,
        parquet_bytes: local.parquet_bytes,
        parquet_files: local.parquet_files,
        peak_rss_growth_bytes: local.peak_rss_growth_bytes,
        floor_rss_growth_bytes,
        memory_budget_bytes: opts.memory_budget_bytes,
        floor_cpu_per_event_secs: floor_cpu_secs / opts.events.max(1) as f64,
        pipeline_cpu_per_event_secs: local.cpu_per_event_secs,
        lake,
        otlp,
    })
}

/// One pipeline run over a pre-filled topic, as consumer group `group`,
/// into `data_dir`; `opts.events` rows are expected either way.
pub struct PipelineRun {
    pub eps: f64,
    pub parquet_bytes: u64,
    pub parquet_files: u64,
    pub peak_rss_growth_bytes: u64,
    pub cpu_per_event_secs: f64,
}

fn pipeline_run(
    opts: &BenchOptions,
    brokers: &str,
    (topic, format, messages): (&str, InputFormat, u64),
    group: &str,
    data_dir: PathBuf,
) -> Result<PipelineRun, PipelineError> {
    let mut cfg = Config::default();
    cfg.kafka.topic = topic.into();
    cfg.kafka.input_format = format;
    cfg.kafka.group = group.into();
    cfg.sink.data_dir = data_dir;
    cfg.sink.object_store = opts.object_store.clone();
    cfg.sink.memory_budget_bytes = opts.memory_budget_bytes;
    cfg.detect.enabled = opts.detect;
    // A shared lake needs a digest key for all its writers; the benchmark's
    // rows are thrown away, so any key of its own does.
    cfg.redact.hash_key = Some(format!("bench-{:032x}", rand::random::<u128>()));
    cfg.validate()?;
    let metrics = Arc::new(Metrics::new());
    let rss = RssSampler::start();
    let running = pipeline::start(&cfg, brokers, metrics.clone())?;
    // Like the floor, the clock starts with the first message, not with the
    // consumer-group join; events already processed then are not counted.
    while metrics.consumed.get() == 0 && !running.finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    let pipeline_cpu_start = process_cpu_secs();
    // Rows, not messages: an OTLP message holds many.
    let rows_seen = |m: &Metrics| {
        m.decoded.get()
            + DeadLetterReason::ALL
                .iter()
                .map(|r| m.dead_letters.with_label_values(&[r.as_str()]).get())
                .sum::<u64>()
    };
    let head_start = rows_seen(&metrics);
    let written = |m: &Metrics| {
        m.rows_written.with_label_values(&[INVOCATIONS]).get()
            + m.rows_written.with_label_values(&[DEAD_LETTER]).get()
    };
    // Rows are counted only once durable; the last partial buffer is made
    // durable by the flush that stopping performs, which is timed too.
    // A topic the embedded broker truncated (5 MiB per partition) never
    // delivers them all: say so rather than wait for ever.
    let (mut seen, mut moved_at) = (0, Instant::now());
    while metrics.consumed.get() < messages && !running.finished() {
        std::thread::sleep(Duration::from_millis(5));
        let now = metrics.consumed.get();
        if now != seen {
            (seen, moved_at) = (now, Instant::now());
        } else if moved_at.elapsed() > Duration::from_secs(30) {
            let _ = running.stop();
            return Err(runtime(format!(
                "consumption stopped at {now} of {messages} messages for 30 s: a partition of the embedded broker holds at most 5 MiB; give more --partitions"
            )));
        }
    }
    let consumed_secs = started.elapsed().as_secs_f64();
    running.stop()?;
    let pipeline_secs = started.elapsed().as_secs_f64();
    let pipeline_cpu_secs = process_cpu_secs() - pipeline_cpu_start;
    eprintln!(
        "consumed and decoded all events after {consumed_secs:.2} s; the final flush and \
         consumer close took {:.2} s more; {} flushes took {:.2} s in all",
        pipeline_secs - consumed_secs,
        metrics.flush_seconds.get_sample_count(),
        metrics.flush_seconds.get_sample_sum(),
    );
    let peak_rss_growth_bytes = rss.stop();
    let durable = written(&metrics);
    if durable != opts.events {
        return Err(runtime(format!(
            "pipeline made {durable} rows durable, expected {}",
            opts.events
        )));
    }
    let sum = |family: &prometheus::IntCounterVec| {
        [INVOCATIONS, DEAD_LETTER]
            .iter()
            .map(|t| family.with_label_values(&[t]).get())
            .sum()
    };
    Ok(PipelineRun {
        eps: (opts.events - head_start) as f64 / pipeline_secs.max(1e-9),
        parquet_bytes: sum(&metrics.bytes_written),
        parquet_files: sum(&metrics.files_written),
        peak_rss_growth_bytes,
        cpu_per_event_secs: pipeline_cpu_secs / (opts.events - head_start).max(1) as f64,
    })
}

/// Deletes what a benchmark run wrote under its own prefix of the lake.
fn remove_lake_prefix(url: &str, store_cfg: &crate::lake::ObjectStoreConfig) {
    use futures::StreamExt;
    let Ok(lake) = crate::lake::Lake::open(std::path::Path::new(url), store_cfg) else {
        return;
    };
    let (Some(store), crate::lake::Location::S3 { prefix, .. }) = (lake.store(), &lake.location)
    else {
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let prefix = object_store::path::Path::from(prefix.as_str());
    rt.block_on(async {
        let locations = store
            .list(Some(&prefix))
            .map(|m| m.map(|m| m.location))
            .boxed();
        let mut deleted = store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            if let Err(e) = result {
                eprintln!("could not remove the benchmark's lake objects: {e}");
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_clears_only_its_own_unlocked_directory() {
        let root = tempfile::tempdir().expect("tempdir");
        // A dataset that is not the benchmark's is left alone.
        let data = root.path().join("data");
        std::fs::create_dir_all(data.join("invocations")).unwrap();
        assert!(clear_bench_dir(&data).is_err());
        assert!(data.join("invocations").exists());
        // A new directory is made and marked; a marked one is cleared.
        let bench = root.path().join("bench");
        clear_bench_dir(&bench).expect("new");
        std::fs::write(bench.join("old.parquet"), b"x").unwrap();
        clear_bench_dir(&bench).expect("marked");
        assert!(!bench.join("old.parquet").exists());
        // Not while another process (here: handle) holds its lock.
        std::fs::create_dir_all(bench.join("_state")).unwrap();
        let held = std::fs::File::create(bench.join("_state").join("lock")).unwrap();
        held.try_lock().expect("lock");
        std::fs::write(bench.join("rows.parquet"), b"x").unwrap();
        assert!(clear_bench_dir(&bench).is_err());
        assert!(bench.join("rows.parquet").exists());
    }
}
