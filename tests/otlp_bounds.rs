//! OTLP input costs a bounded amount per message: the heap a message's
//! decode holds at its peak, measured by a counting allocator around each
//! decode, stays under a ceiling whatever the message is (a 1 MB message
//! once peaked at 353 MiB, a 4 MB one at 1.1 GiB), and so does its time
//! (1.5 M empty resource attributes once held the consumer thread 26 s).
//! Every message here is also dead-lettered with the limit it hit, or
//! decoded; none is lost.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentaudit::decode::input::{InputFormat, MessageDecoder, Piece};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use proptest::prelude::*;
use prost::Message;

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new) };
        if !q.is_null() {
            if new >= layout.size() {
                let now =
                    NOW.fetch_add(new - layout.size(), Ordering::Relaxed) + new - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                NOW.fetch_sub(layout.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The heap a decode may hold above what was held before it: the default
/// `max_decoded_bytes` (64 MiB) and what the mapped events add.
const HEAP_CEILING: usize = 96 << 20;
/// Time for one message of at most `max_message_bytes` (4 MiB), debug
/// build included; the review's message took 26.6 s.
const TIME_CEILING: Duration = Duration::from_secs(5);

/// Decodes as the consumer thread does; (pieces, failures' details, peak
/// heap above the start, time).
fn decode(bytes: &[u8], format: InputFormat) -> (usize, Vec<String>, usize, Duration) {
    let decoder = MessageDecoder::default();
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let mut pieces = 0;
    let mut failures = Vec::new();
    decoder.decode(Some(bytes), format, i64::MAX / 2, &mut |p| {
        pieces += 1;
        if let Piece::Failed { failure, .. } = p {
            failures.push(format!("{:?}: {}", failure.reason, failure.detail));
        }
    });
    let took = start.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (pieces, failures, peak, took)
}

/// One test at a time, whole: the counters are the process's, and another
/// test building its message while one measures would count in its peak.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn tool_span(i: usize, extra: usize) -> Span {
    let mut attributes = vec![
        kv("gen_ai.operation.name", "execute_tool"),
        kv("gen_ai.tool.name", "lookup"),
        kv("gen_ai.agent.id", "bot"),
        kv("gen_ai.tool.call.arguments", "{\"q\":\"weather\"}"),
    ];
    attributes.extend((0..extra).map(|k| kv(&format!("app.k{k}"), "v")));
    Span {
        trace_id: vec![0x11; 16],
        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
        name: "execute_tool lookup".into(),
        start_time_unix_nano: 1_795_852_700_000_000_000,
        end_time_unix_nano: 1_795_852_700_100_000_000,
        attributes,
        ..Span::default()
    }
}

fn request(resource: Vec<KeyValue>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: resource,
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn within_ceilings(what: &str, bytes: &[u8], format: InputFormat) -> (usize, Vec<String>) {
    let (pieces, failures, peak, took) = decode(bytes, format);
    // Seen with --nocapture: what each message cost.
    println!(
        "{what}: {} bytes, peak heap {:.1} MiB, {took:?}",
        bytes.len(),
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak <= HEAP_CEILING,
        "{what}: {} bytes peaked at {} MiB of heap",
        bytes.len(),
        peak >> 20
    );
    assert!(took <= TIME_CEILING, "{what}: took {took:?}");
    assert!(pieces >= 1, "{what}: nothing came of it");
    (pieces, failures)
}

#[test]
fn the_reviews_messages_are_refused_by_the_limit_they_hit() {
    let _serial = serial();
    let tenant = vec![kv("tenant.id", "acme")];
    // 1.5 M empty resource attributes in ~3.5 MB.
    let mut wide = request(tenant.clone(), vec![tool_span(0, 0)]);
    if let Some(r) = wide.resource_spans[0].resource.as_mut() {
        r.attributes
            .extend(std::iter::repeat_n(KeyValue::default(), 1_500_000));
    }
    let bytes = wide.encode_to_vec();
    let (_, failures) = within_ceilings("wide resource", &bytes, InputFormat::OtlpProto);
    assert!(
        failures[0].contains("max_resource_attributes"),
        "{failures:?}"
    );
    // Empty span attributes, as many as fit under the byte cap.
    let empty = request(
        tenant.clone(),
        vec![Span {
            attributes: vec![KeyValue::default(); 1_900_000],
            ..tool_span(0, 0)
        }],
    );
    let (_, failures) = within_ceilings(
        "empty attributes",
        &empty.encode_to_vec(),
        InputFormat::OtlpProto,
    );
    assert!(failures[0].contains("max_decoded_bytes"), "{failures:?}");
    // Over the byte cap: refused unread.
    let huge = request(tenant.clone(), vec![tool_span(0, 0); 1]);
    let mut bytes = huge.encode_to_vec();
    bytes.resize(5 << 20, 0);
    let (_, failures) = within_ceilings("5 MiB", &bytes, InputFormat::OtlpProto);
    assert!(failures[0].contains("max_message_bytes"), "{failures:?}");
    // The same as JSON: `{}` objects, 3 bytes each.
    let mut json = b"{\"resourceSpans\":[{\"resource\":{\"attributes\":[".to_vec();
    for i in 0..1_000_000 {
        json.extend_from_slice(if i == 0 { b"{}" } else { b",{}" });
    }
    json.extend_from_slice(b"]},\"scopeSpans\":[]}]}");
    let (_, failures) = within_ceilings("JSON objects", &json, InputFormat::OtlpJson);
    assert!(failures[0].contains("max_decoded_bytes"), "{failures:?}");
}

/// A Collector batch near the byte cap decodes whole within the ceilings.
#[test]
fn a_large_honest_batch_decodes_within_the_ceilings() {
    let _serial = serial();
    let spans: Vec<Span> = (0..9_000).map(|i| tool_span(i, 6)).collect();
    let resource = vec![
        kv("tenant.id", "acme"),
        kv("deployment.environment.name", "production"),
    ];
    let bytes = request(resource, spans).encode_to_vec();
    assert!(bytes.len() > 2 << 20, "{} bytes", bytes.len());
    let (pieces, failures) = within_ceilings("9 000 spans", &bytes, InputFormat::OtlpProto);
    assert_eq!(pieces, 9_000);
    assert!(
        failures.is_empty(),
        "{:?}",
        &failures[..failures.len().min(3)]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Shapes drawn at random up to the byte cap, and their bytes mutated:
    /// each message within the ceilings, decoded or refused.
    #[test]
    fn any_message_stays_within_the_ceilings(
        spans in 1usize..4_000,
        extra in 0usize..40,
        resource in 0usize..300,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        json in any::<bool>(),
    ) {
        let _serial = serial();
        let resource = (0..resource).map(|i| kv(&format!("r{i}"), "v")).collect();
        let r = request(resource, (0..spans).map(|i| tool_span(i, extra)).collect());
        let (mut bytes, format) = if json {
            (serde_json::to_vec(&r).unwrap(), InputFormat::OtlpJson)
        } else {
            (r.encode_to_vec(), InputFormat::OtlpProto)
        };
        for (at, b) in &flips {
            let n = bytes.len();
            bytes[at % n] = *b;
        }
        within_ceilings("a drawn message", &bytes, format);
    }
}
