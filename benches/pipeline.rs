//! Per-event cost of each room: decode, redact (the single-pass scan), detect,
//! and Parquet encoding of a batch. Run with `cargo bench --bench pipeline`.

use std::hint::black_box;
use std::sync::Arc;

use agentaudit::config::RedactConfig;
use agentaudit::decode::{DecodeLimits, InputFormat, MessageDecoder, decode};
use agentaudit::event::KafkaCoords;
use agentaudit::redact::{Hits, Redactor};
use agentaudit::sink::schema;
use agentaudit::traffic::otlp;
use agentaudit::traffic::{GenOptions, Generator};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

// The allocator the binary runs with: allocation is a good part of each
// room's cost, and the system allocator would measure something else.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn corpus(n: usize, secret_ratio: f64) -> Vec<Vec<u8>> {
    let mut g = Generator::new(GenOptions {
        secret_ratio,
        ..GenOptions::default()
    });
    (0..n).map(|_| g.next_message().payload).collect()
}

fn coords() -> KafkaCoords {
    KafkaCoords {
        topic: Arc::from("bench"),
        partition: 0,
        offset: 0,
        kafka_ts_ms: None,
    }
}

fn benches(c: &mut Criterion) {
    let payloads = corpus(10_000, 0.02);
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let now = chrono::Utc::now().timestamp_millis();
    let limits = DecodeLimits::default();
    let redactor = Redactor::new(&RedactConfig::default()).expect("redactor");

    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(payloads.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(decode(Some(p), now, &limits).ok());
            }
        })
    });
    // The same calls as OTLP export requests of 32 spans: per tool call,
    // beside v1's decode above.
    let otlp: Vec<Vec<u8>> = payloads
        .chunks(32)
        .map(|chunk| {
            let events: Vec<serde_json::Value> = chunk
                .iter()
                .filter_map(|p| serde_json::from_slice(p).ok())
                .collect();
            otlp::encode(&otlp::export_request(&events), InputFormat::OtlpProto)
        })
        .collect();
    let decoder = MessageDecoder::default();
    g.bench_function("decode_otlp_proto", |b| {
        b.iter(|| {
            for m in &otlp {
                decoder.decode(Some(m), InputFormat::OtlpProto, now, &mut |piece| {
                    black_box(piece);
                });
            }
        })
    });
    let events: Vec<_> = payloads
        .iter()
        .filter_map(|p| decode(Some(p), now, &limits).ok())
        .collect();
    g.bench_function("redact", |b| {
        b.iter_batched(
            || events.clone(),
            |events| {
                for e in events {
                    black_box(redactor.redact_event(e, coords(), now));
                }
            },
            BatchSize::LargeInput,
        )
    });
    let records: Vec<_> = events
        .iter()
        .cloned()
        .map(|e| redactor.redact_event(e, coords(), now))
        .collect();
    let sink_cfg = agentaudit::config::SinkConfig::default();
    g.bench_function("parquet_encode", |b| {
        b.iter_batched(
            || records.clone(),
            |records| {
                let batch = schema::invocations_batch(&records).expect("batch");
                let mut out = Vec::with_capacity(4 << 20);
                let props = agentaudit::sink::invocations_writer_props(&sink_cfg);
                let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(
                    &mut out,
                    batch.schema(),
                    Some(props),
                )
                .expect("writer");
                w.write(&batch).expect("write");
                w.close().expect("close");
                black_box(out.len())
            },
            BatchSize::LargeInput,
        )
    });
    // Detection per event: baselines, workflow state and every policy rule,
    // under the inventory the generator's traffic complies with.
    let policy = agentaudit::detect::policy::Policy::parse(
        &agentaudit::traffic::scenario::benign_policy_toml(),
    )
    .expect("benign policy");
    g.bench_function("detect", |b| {
        b.iter_batched(
            || {
                agentaudit::detect::Detector::new(
                    &agentaudit::config::DetectConfig::default(),
                    false,
                )
            },
            |mut detector| {
                let mut changes = Vec::new();
                for r in &records {
                    detector.observe(r, Some(&policy), &mut changes);
                }
                black_box(changes.len())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // The scan alone, on text with and without secrets, in bytes per second.
    let clean: Vec<String> = payloads
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("one_pass_regexset", |b| {
        b.iter(|| {
            let mut hits = Hits::default();
            for t in &clean {
                black_box(redactor.scan(t, &mut hits));
            }
        })
    });
    g.finish();
}

criterion_group!(name = pipeline; config = Criterion::default().sample_size(10); targets = benches);
criterion_main!(pipeline);
