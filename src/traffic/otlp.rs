//! OTLP owns shaping generated v1 events as the OpenTelemetry Collector's
//! `kafka` exporter ships spans: one export request per message, spans
//! grouped under their resource (agent, tenant, environment), with the
//! GenAI semantic conventions' attribute names. `gen`, `bench` and the
//! tests use it to make OTLP traffic from the same generator as v1.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::decode::InputFormat;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn string(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn id<const N: usize>(domain: &str, of: &str) -> Vec<u8> {
    let digest = Sha256::new()
        .chain_update(domain)
        .chain_update(of)
        .finalize();
    digest[..N].to_vec()
}

/// The span an `execute_tool` instrumentation would record for `event`, or
/// `None` for a message that is not a JSON object with the fields a span
/// needs (`gen` mixes malformed messages in; those are shipped as they are).
fn span_of(event: &Value) -> Option<Span> {
    let str_of = |k: &str| event.get(k).and_then(Value::as_str);
    let event_id = str_of("event_id")?;
    let ts_ms = event.get("ts").and_then(Value::as_i64)?;
    let start = u64::try_from(ts_ms).ok()?.saturating_mul(1_000_000);
    let latency_ns = event
        .get("latency_ms")
        .and_then(Value::as_f64)
        .map_or(0, |ms| (ms.max(0.0) * 1e6) as u64);
    let mut attributes = vec![string("gen_ai.operation.name", "execute_tool")];
    if let Some(tool) = str_of("tool") {
        attributes.push(string("gen_ai.tool.name", tool));
    }
    attributes.push(string("gen_ai.tool.call.id", event_id));
    attributes.push(string("gen_ai.tool.type", "function"));
    if let Some(agent) = str_of("agent_id") {
        attributes.push(string("gen_ai.agent.id", agent));
    }
    if let Some(wf) = str_of("workflow_id") {
        attributes.push(string("gen_ai.conversation.id", wf));
    }
    // Instrumentations record arguments and results as JSON text.
    if let Some(input) = event.get("input") {
        attributes.push(string("gen_ai.tool.call.arguments", input.to_string()));
    }
    if let Some(output) = event.get("output") {
        let text = output
            .as_str()
            .map_or_else(|| output.to_string(), str::to_owned);
        attributes.push(string("gen_ai.tool.call.result", text));
    }
    let failed = str_of("status").is_some_and(|s| s != "ok");
    if failed {
        attributes.push(string(
            "error.type",
            str_of("error_type").unwrap_or("tool_error"),
        ));
    }
    let trace_of = str_of("workflow_id").unwrap_or(event_id);
    Some(Span {
        trace_id: id::<16>("trace", trace_of),
        span_id: id::<8>("span", event_id),
        name: format!("execute_tool {}", str_of("tool").unwrap_or("")),
        kind: span::SpanKind::Internal as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start.saturating_add(latency_ns),
        attributes,
        status: Some(Status {
            message: String::new(),
            code: if failed {
                StatusCode::Error as i32
            } else {
                StatusCode::Ok as i32
            },
        }),
        ..Span::default()
    })
}

/// The resource a span of `event` is exported under.
fn resource_of(event: &Value) -> [String; 3] {
    let s = |k: &str| {
        event
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    [s("agent_id"), s("tenant"), s("environment")]
}

/// One export request holding `events` (v1 JSON objects) as spans, each
/// under its agent's resource. Events that cannot be spans are left out.
pub fn export_request(events: &[Value]) -> ExportTraceServiceRequest {
    let mut by_resource: BTreeMap<[String; 3], Vec<Span>> = BTreeMap::new();
    for e in events {
        if let Some(span) = span_of(e) {
            by_resource.entry(resource_of(e)).or_default().push(span);
        }
    }
    let resource_spans = by_resource
        .into_iter()
        .map(|([agent, tenant, env], spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", agent),
                    string("tenant.id", tenant),
                    string("deployment.environment.name", env),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "agentaudit.gen".into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

/// `request` in the exporter's encoding for `format` (`v1` is not OTLP:
/// it is written as protobuf).
pub fn encode(request: &ExportTraceServiceRequest, format: InputFormat) -> Vec<u8> {
    match format {
        InputFormat::OtlpJson => serde_json::to_vec(request).unwrap_or_default(),
        InputFormat::V1 | InputFormat::OtlpProto => request.encode_to_vec(),
    }
}

/// Gathers generated messages into export requests of `spans_per_message`
/// spans, per tenant (the message key), so a tenant's spans stay on one
/// partition, as a Collector per tenant would ship them.
pub struct Batcher {
    format: InputFormat,
    spans_per_message: usize,
    pending: BTreeMap<String, Vec<Value>>,
}

/// A message ready to produce: its key and payload.
pub type Keyed = (String, Vec<u8>);

impl Batcher {
    pub fn new(format: InputFormat, spans_per_message: usize) -> Batcher {
        Batcher {
            format,
            spans_per_message: spans_per_message.max(1),
            pending: BTreeMap::new(),
        }
    }

    /// Takes one generated message: a v1 event joins its tenant's batch
    /// (returned when full); anything else, a malformed message, is shipped
    /// as it is, as a broken exporter would.
    pub fn push(&mut self, key: &str, payload: &[u8]) -> Option<Keyed> {
        let event = serde_json::from_slice::<Value>(payload)
            .ok()
            .filter(|e| span_of(e).is_some());
        let Some(event) = event else {
            return Some((key.to_owned(), payload.to_vec()));
        };
        let batch = self.pending.entry(key.to_owned()).or_default();
        batch.push(event);
        if batch.len() < self.spans_per_message {
            return None;
        }
        let events = std::mem::take(batch);
        Some((
            key.to_owned(),
            encode(&export_request(&events), self.format),
        ))
    }

    /// The partly filled batches, one message per tenant.
    pub fn drain(&mut self) -> Vec<Keyed> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|(_, events)| !events.is_empty())
            .map(|(key, events)| (key, encode(&export_request(&events), self.format)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::MessageDecoder;
    use crate::decode::Piece;

    #[test]
    fn generated_events_round_trip_through_the_otlp_mapping() {
        let mut g = crate::traffic::Generator::new(crate::traffic::GenOptions {
            secret_ratio: 0.0,
            ..Default::default()
        });
        let events: Vec<Value> = (0..50)
            .map(|_| serde_json::from_slice(&g.next_message().payload).expect("v1"))
            .collect();
        for format in [InputFormat::OtlpProto, InputFormat::OtlpJson] {
            let bytes = encode(&export_request(&events), format);
            let mut decoded = Vec::new();
            MessageDecoder::default()
                .decode(Some(&bytes), format, i64::MAX / 4, &mut |p| decoded.push(p));
            assert_eq!(decoded.len(), 50, "{format:?}");
            let mut tools: Vec<String> = decoded
                .iter()
                .map(|p| match p {
                    Piece::Event(e) => e.tool.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            let mut want: Vec<String> = events
                .iter()
                .map(|e| e["tool"].as_str().unwrap_or_default().to_owned())
                .collect();
            tools.sort();
            want.sort();
            assert_eq!(tools, want);
            if let Some(Piece::Event(e)) = decoded.first() {
                let source = events
                    .iter()
                    .find(|v| v["agent_id"] == e.agent_id.as_str())
                    .expect("the span's agent");
                assert_eq!(e.tenant, source["tenant"].as_str().unwrap_or_default());
            }
        }
    }
}
