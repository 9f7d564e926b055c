//! OTLP owns reading an OpenTelemetry export request — one Kafka message
//! from the Collector's `kafka` exporter, `otlp_proto` or `otlp_json` — and
//! turning each tool-execution span in it into a v1 event, with the GenAI
//! semantic conventions' names, so that the v1 decoder checks it (limits,
//! identifiers, the output digest) exactly as it checks a v1 message.
//!
//! Kept: spans with `gen_ai.operation.name = execute_tool`, and MCP
//! `tools/call` spans (`mcp.method.name`). Other spans (model calls,
//! `invoke_agent`) are counted and skipped. A tool span that lacks what v1
//! requires fails on its own, named by trace and span id; the rest of its
//! message stands.

mod scan;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::event::DeadLetterReason;

/// How the spans of a message are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpEncoding {
    Proto,
    Json,
}

/// Bounds and choices of the mapping.
#[derive(Debug, Clone)]
pub struct OtlpOptions {
    /// A message longer than this is refused before anything is read.
    pub max_message_bytes: usize,
    /// Spans per message beyond which the message is refused.
    pub max_spans: usize,
    /// Attributes of one resource beyond which the message is refused.
    pub max_resource_attributes: usize,
    /// What decoding a message may hold in memory (an estimate counted
    /// before decoding); a message that would hold more is refused.
    pub max_decoded_bytes: usize,
    /// Attributes per span beyond which the span is refused.
    pub max_attributes: usize,
    /// The resource or span attribute naming the tenant…
    pub tenant_attribute: String,
    /// …and the tenant when neither carries it.
    pub tenant_fallback: Option<String>,
    /// The remaining attributes are stored as v1 `attributes`, within v1's
    /// caps: at most this many (the first by key)…
    pub stored_attributes: usize,
    /// …each value at most this many characters; a longer value is
    /// replaced by a note of its length, never cut (a cut could leave half
    /// a secret that no detector recognises).
    pub attribute_value_chars: usize,
}

impl Default for OtlpOptions {
    fn default() -> Self {
        OtlpOptions {
            max_message_bytes: 4 << 20,
            max_spans: 10_000,
            max_resource_attributes: 128,
            max_decoded_bytes: 64 << 20,
            max_attributes: 256,
            tenant_attribute: "tenant.id".into(),
            tenant_fallback: None,
            stored_attributes: 64,
            attribute_value_chars: 1024,
        }
    }
}

/// What one span of a message became.
#[derive(Debug)]
pub enum SpanItem {
    /// A tool call, as a v1 JSON event for the v1 decoder; `span` is its
    /// `trace_id/span_id`.
    Tool { span: String, json: Vec<u8> },
    /// A tool span that cannot be an event: `trace_id/span_id`, why, and
    /// the span as OTLP JSON for the dead letter (redacted there).
    Refused {
        span: String,
        reason: DeadLetterReason,
        why: String,
        raw: Vec<u8>,
    },
    /// Not a tool call (a model call, `invoke_agent`, …), by its operation:
    /// one of [`SKIPPED_OPERATIONS`], so a metric label stays bounded.
    Skipped(&'static str),
}

/// The GenAI operations (semantic conventions' `gen_ai.operation.name`
/// well-known values) a skipped span is counted under; anything else is
/// `other`, and a span with no operation at all `none`.
pub const SKIPPED_OPERATIONS: [&str; 10] = [
    "chat",
    "generate_content",
    "text_completion",
    "embeddings",
    "retrieval",
    "create_agent",
    "invoke_agent",
    "invoke_workflow",
    "other",
    "none",
];

fn skipped_operation(attrs: &[KeyValue]) -> &'static str {
    match attr(attrs, "gen_ai.operation.name").and_then(text) {
        None => "none",
        Some(op) => SKIPPED_OPERATIONS[..8]
            .iter()
            .find(|known| **known == op)
            .copied()
            .unwrap_or("other"),
    }
}

/// Why a whole message is refused: not an export request, or over a
/// limit; with what its dead letter keeps of it (counts, never values).
#[derive(Debug, PartialEq, Eq)]
pub struct NotOtlp {
    pub why: String,
    pub reason: DeadLetterReason,
    /// The message as its dead letter keeps it: its size and what was
    /// counted of it, as JSON.
    pub summary: Vec<u8>,
}

fn summary(bytes: &[u8], encoding: OtlpEncoding, shape: Option<scan::Shape>) -> Vec<u8> {
    let mut v = serde_json::json!({
        "otlp_message": match encoding {
            OtlpEncoding::Proto => "otlp_proto",
            OtlpEncoding::Json => "otlp_json",
        },
        "bytes": bytes.len(),
    });
    if let Some(s) = shape {
        v["resources"] = s.resources.into();
        v["spans"] = s.spans.into();
        v["attributes"] = s.attributes.into();
        v["values"] = s.elements.into();
    }
    v.to_string().into_bytes()
}

/// A span as its dead letter keeps it: its ids, its attributes' names and
/// counts, never a value (an attribute named `db.password` holds one).
fn span_summary(id: &str, span: &Span) -> Vec<u8> {
    let names: Vec<&str> = span
        .attributes
        .iter()
        .take(64)
        .map(|kv| kv.key.as_str())
        .collect();
    serde_json::json!({
        "otlp_span": id,
        "attribute_names": names,
        "attributes": span.attributes.len(),
        "events": span.events.len(),
        "links": span.links.len(),
    })
    .to_string()
    .into_bytes()
}

/// The v1 event a span mapped to, as its dead letter keeps it when the v1
/// decoder refused it: the span id and the names of the fields and
/// attributes, never their values.
pub fn event_summary(span: &str, event_json: &[u8]) -> Vec<u8> {
    let names = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().take(64).cloned().collect())
            .unwrap_or_default()
    };
    let event: Value = serde_json::from_slice(event_json).unwrap_or(Value::Null);
    serde_json::json!({
        "otlp_span": span,
        "fields": names(&event),
        "attribute_names": names(&event["attributes"]),
    })
    .to_string()
    .into_bytes()
}

/// Reads `bytes` as an export request and maps each of its spans. The
/// size, the spans, the resource attributes and the memory decoding would
/// hold are checked first, by a scan that stops at the first limit.
pub fn spans(
    bytes: &[u8],
    encoding: OtlpEncoding,
    opts: &OtlpOptions,
) -> Result<Vec<SpanItem>, NotOtlp> {
    let refuse = |reason, why: String, shape| NotOtlp {
        why,
        reason,
        summary: summary(bytes, encoding, shape),
    };
    if bytes.len() > opts.max_message_bytes {
        return Err(refuse(
            DeadLetterReason::TooLarge,
            format!(
                "max_message_bytes: {} bytes, over the limit of {}",
                bytes.len(),
                opts.max_message_bytes
            ),
            None,
        ));
    }
    let limits = scan::Limits {
        max_spans: opts.max_spans,
        max_resource_attributes: opts.max_resource_attributes,
        max_decoded_bytes: opts.max_decoded_bytes,
    };
    let scanned = match encoding {
        OtlpEncoding::Proto => scan::protobuf(bytes, limits),
        OtlpEncoding::Json => scan::json(bytes, limits),
    };
    let shape = match scanned {
        Ok(shape) => shape,
        Err(scan::Refusal::Malformed(why)) => {
            return Err(refuse(DeadLetterReason::InvalidOtlp, why, None));
        }
        Err(scan::Refusal::Limit { limit, detail }) => {
            return Err(refuse(
                DeadLetterReason::TooLarge,
                format!("{limit}: {detail}"),
                None,
            ));
        }
    };
    let request = match encoding {
        OtlpEncoding::Proto => ExportTraceServiceRequest::decode(bytes).map_err(|e| {
            refuse(
                DeadLetterReason::InvalidOtlp,
                format!("not an OTLP protobuf export request: {e}"),
                Some(shape),
            )
        })?,
        OtlpEncoding::Json => serde_json::from_slice(bytes).map_err(|e| {
            refuse(
                DeadLetterReason::InvalidOtlp,
                format!("not an OTLP JSON export request: {e}"),
                Some(shape),
            )
        })?,
    };
    // Protobuf skips fields it does not know, so bytes of anything else
    // can read as a request with nothing in it; the Collector never ships
    // one, and an audit trail must not swallow a message unseen.
    if request.resource_spans.is_empty() {
        return Err(refuse(
            DeadLetterReason::InvalidOtlp,
            "an export request with no resource spans (no OTLP field at all)".into(),
            Some(shape),
        ));
    }
    let total: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    // Protobuf's spans and resource attributes were counted by the scan;
    // JSON was bounded by its objects only, so count them now (the memory
    // is bounded already).
    if encoding == OtlpEncoding::Json {
        let widest = request
            .resource_spans
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .map(|r| r.attributes.len())
            .max()
            .unwrap_or(0);
        let over = if total > opts.max_spans {
            Some(format!(
                "max_spans_per_message: {total} spans in one message, over the limit of {}",
                opts.max_spans
            ))
        } else if widest > opts.max_resource_attributes {
            Some(format!(
                "max_resource_attributes: a resource with {widest} attributes, over the limit of {}",
                opts.max_resource_attributes
            ))
        } else {
            None
        };
        if let Some(why) = over {
            return Err(refuse(DeadLetterReason::TooLarge, why, Some(shape)));
        }
    }
    let mut out = Vec::with_capacity(total);
    for rs in &request.resource_spans {
        let attributes: &[KeyValue] = rs.resource.as_ref().map_or(&[], |r| &r.attributes);
        // Read once per resource, not once per span: a span's lookups must
        // not cost the resource's size.
        let resource = ResourceView {
            tenant: attr(attributes, &opts.tenant_attribute),
            service_name: attr(attributes, "service.name"),
            environment: attr(attributes, "deployment.environment.name"),
        };
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                out.push(map_span(span, &resource, opts));
            }
        }
    }
    Ok(out)
}

/// The resource attributes a span's mapping reads, looked up once.
struct ResourceView<'a> {
    tenant: Option<&'a AnyValue>,
    service_name: Option<&'a AnyValue>,
    environment: Option<&'a AnyValue>,
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

fn text(v: &AnyValue) -> Option<Cow<'_, str>> {
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(Cow::Borrowed(s)),
        any_value::Value::IntValue(i) => Some(Cow::Owned(i.to_string())),
        any_value::Value::DoubleValue(d) => Some(Cow::Owned(d.to_string())),
        any_value::Value::BoolValue(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

/// An attribute value as JSON: arrays and key-value lists nest, bytes are
/// base64, as OTLP JSON writes them.
fn json(v: &AnyValue) -> Value {
    use base64::Engine as _;
    match v.value.as_ref() {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(json).collect()),
        Some(any_value::Value::KvlistValue(l)) => Value::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, json)))
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
    }
}

fn is_tool_span(attrs: &[KeyValue]) -> bool {
    let says = |key: &str, want: &str| attr(attrs, key).and_then(text).is_some_and(|v| v == want);
    says("gen_ai.operation.name", "execute_tool") || says("mcp.method.name", "tools/call")
}

/// Attributes the mapping consumes; the rest go to `attributes`.
const MAPPED: [&str; 13] = [
    "gen_ai.operation.name",
    "gen_ai.tool.name",
    "gen_ai.tool.call.id",
    "gen_ai.tool.type",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "gen_ai.agent.id",
    "gen_ai.agent.name",
    "gen_ai.conversation.id",
    "error.type",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "mcp.method.name",
];

fn map_span(span: &Span, resource: &ResourceView<'_>, opts: &OtlpOptions) -> SpanItem {
    let attrs = &span.attributes;
    if !is_tool_span(attrs) {
        return SpanItem::Skipped(skipped_operation(attrs));
    }
    let id = format!(
        "{}/{}",
        hex::encode(&span.trace_id),
        hex::encode(&span.span_id)
    );
    let refuse = |reason: DeadLetterReason, why: String| SpanItem::Refused {
        span: id.clone(),
        reason,
        why,
        // Names and counts only: a value of a refused span (an attribute
        // named `db.password`) is never kept.
        raw: span_summary(&id, span),
    };
    if attrs.len() > opts.max_attributes {
        return refuse(
            DeadLetterReason::TooLarge,
            format!(
                "{} attributes, over the limit of {}",
                attrs.len(),
                opts.max_attributes
            ),
        );
    }
    if span.trace_id.len() != 16 || span.span_id.len() != 8 {
        return refuse(
            DeadLetterReason::InvalidField,
            "trace or span id missing or malformed".into(),
        );
    }
    let get = |key: &str| attr(attrs, key).and_then(text);
    let latency_ms = (span.end_time_unix_nano >= span.start_time_unix_nano
        && span.end_time_unix_nano > 0)
        .then(|| (span.end_time_unix_nano - span.start_time_unix_nano) / 1_000_000);
    let failed = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32);
    let error_type = failed.then(|| {
        get("error.type")
            .or_else(|| {
                span.status
                    .as_ref()
                    .map(|s| Cow::Borrowed(s.message.as_str()))
            })
            .filter(|s| !s.is_empty())
            .unwrap_or(Cow::Borrowed("_OTHER"))
    });
    let tokens = |key: &str| attr(attrs, key).map(json).filter(Value::is_number);
    let rest = remaining_attributes(attrs, opts);
    let event = V1 {
        event_id: &id,
        ts: i64::try_from(span.start_time_unix_nano / 1_000_000).unwrap_or(i64::MAX),
        latency_ms,
        tenant: attr(attrs, &opts.tenant_attribute)
            .or(resource.tenant)
            .and_then(text)
            .or_else(|| opts.tenant_fallback.as_deref().map(Cow::Borrowed)),
        agent_id: get("gen_ai.agent.id")
            .or_else(|| get("gen_ai.agent.name"))
            .or_else(|| resource.service_name.and_then(text)),
        environment: resource.environment.and_then(text),
        tool: get("gen_ai.tool.name"),
        tool_call_id: get("gen_ai.tool.call.id"),
        tool_type: get("gen_ai.tool.type"),
        workflow_id: get("gen_ai.conversation.id"),
        tokens_in: tokens("gen_ai.usage.input_tokens"),
        tokens_out: tokens("gen_ai.usage.output_tokens"),
        input: attr(attrs, "gen_ai.tool.call.arguments").map(Payload::of),
        output: attr(attrs, "gen_ai.tool.call.result").map(Payload::of),
        status: if failed { "error" } else { "ok" },
        error_type,
        attributes: (!rest.is_empty()).then_some(rest),
    };
    match serde_json::to_vec(&event) {
        Ok(json) => SpanItem::Tool { span: id, json },
        Err(err) => refuse(
            DeadLetterReason::InvalidField,
            format!("cannot be written as an event: {err}"),
        ),
    }
}

/// The v1 event a tool span maps to, written straight from the span's
/// borrowed values (no intermediate JSON tree: that cost a third of a
/// span's time).
#[derive(serde::Serialize)]
struct V1<'a> {
    event_id: &'a str,
    ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_type: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workflow_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_in: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_out: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<Payload<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Payload<'a>>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_type: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<Map<String, Value>>,
}

/// Tool arguments or a result: a string that holds JSON is passed on as
/// that JSON, unparsed (the v1 decoder reads it once); any other value as
/// it is.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Json(&'a serde_json::value::RawValue),
    Value(Value),
}

impl<'a> Payload<'a> {
    fn of(v: &'a AnyValue) -> Payload<'a> {
        if let Some(any_value::Value::StringValue(s)) = v.value.as_ref()
            && let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(s)
        {
            return Payload::Json(raw);
        }
        Payload::Value(json(v))
    }
}

/// Key of the note saying how many attributes were left out by the cap.
const DROPPED_KEY: &str = "agentaudit.dropped_attributes";

/// The attributes the mapping did not consume, as v1 `attributes` (string
/// values: scalars as text, arrays and lists as JSON), within v1's caps.
fn remaining_attributes(attrs: &[KeyValue], opts: &OtlpOptions) -> Map<String, Value> {
    let mut rest: Vec<(&str, String)> = attrs
        .iter()
        .filter(|kv| !MAPPED.contains(&kv.key.as_str()) && kv.key != opts.tenant_attribute)
        .filter(|kv| !kv.key.is_empty() && kv.key.chars().count() <= 128 && kv.key != DROPPED_KEY)
        .map(|kv| {
            let value = kv.value.as_ref().map_or(Value::Null, json);
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let chars = text.chars().count();
            let text = if chars > opts.attribute_value_chars {
                format!("[OMITTED: {chars} characters, over the limit]")
            } else {
                text
            };
            (kv.key.as_str(), text)
        })
        .collect();
    rest.sort_by(|a, b| a.0.cmp(b.0));
    rest.dedup_by(|a, b| a.0 == b.0);
    let keep = opts.stored_attributes.saturating_sub(1);
    let mut out = Map::new();
    if rest.len() > opts.stored_attributes {
        out.insert(
            DROPPED_KEY.into(),
            Value::String((rest.len() - keep).to_string()),
        );
        rest.truncate(keep);
    }
    for (k, v) in rest {
        out.insert(k.to_owned(), Value::String(v));
    }
    out
}

#[cfg(test)]
mod tests;
