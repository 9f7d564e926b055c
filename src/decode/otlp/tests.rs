use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use super::*;
use crate::decode::{DecodeLimits, decode};
use crate::event::Event;

const T0_NS: u64 = 1_795_852_800_000_000_000;

fn kv(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
    }
}

fn span(n: u8, attrs: Vec<KeyValue>, error: bool) -> Span {
    Span {
        trace_id: vec![0xab; 16],
        span_id: vec![n; 8],
        name: "span".into(),
        start_time_unix_nano: T0_NS + u64::from(n) * 1_000_000_000,
        end_time_unix_nano: T0_NS + u64::from(n) * 1_000_000_000 + 250_000_000,
        attributes: attrs,
        status: error.then(|| Status {
            message: "upstream 503".into(),
            code: StatusCode::Error as i32,
        }),
        ..Span::default()
    }
}

/// A small agent run: a model call, two tool calls (one failing, one whose
/// arguments carry a secret), an MCP tool call and a tool span with no tool.
fn request() -> ExportTraceServiceRequest {
    let tool = |name: &str| {
        vec![
            kv("gen_ai.operation.name", "execute_tool"),
            kv("gen_ai.tool.name", name),
            kv("gen_ai.tool.call.id", &format!("call-{name}")),
            kv("gen_ai.tool.type", "function"),
            kv("gen_ai.conversation.id", "conv-7"),
            kv("gen_ai.agent.id", "support-bot"),
        ]
    };
    let mut search = tool("search_kb");
    search.push(kv(
        "gen_ai.tool.call.arguments",
        r#"{"query":"refund","api_key":"sk-live-4f3c2a1b9e8d7c6b5a4f3e2d"}"#,
    ));
    search.push(kv("gen_ai.tool.call.result", "three articles"));
    search.push(kv("app.region", "eu"));
    let mut refund = tool("refund_order");
    refund.push(kv("error.type", "http_503"));
    let mcp = vec![
        kv("mcp.method.name", "tools/call"),
        kv("gen_ai.tool.name", "github.create_issue"),
    ];
    let nameless = vec![kv("gen_ai.operation.name", "execute_tool")];
    let chat = vec![kv("gen_ai.operation.name", "chat")];
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "agent-svc"),
                    kv("deployment.environment.name", "production"),
                    kv("tenant.id", "acme"),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(1, chat, false),
                    span(2, search, false),
                    span(3, refund, true),
                    span(4, mcp, false),
                    span(5, nameless, false),
                ],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn events(items: &[SpanItem]) -> Vec<Result<Event, String>> {
    items
        .iter()
        .filter_map(|i| match i {
            SpanItem::Tool { json, .. } => Some(
                decode(Some(json), i64::MAX / 2, &DecodeLimits::default())
                    .map_err(|f| f.detail.clone()),
            ),
            _ => None,
        })
        .collect()
}

fn check(items: &[SpanItem]) {
    assert_eq!(items.len(), 5);
    assert!(
        matches!(items[0], SpanItem::Skipped("chat")),
        "the model call, counted as chat"
    );
    let evs = events(items);
    assert_eq!(evs.len(), 4);
    let search = evs[0].as_ref().expect("search_kb");
    assert_eq!(
        search.event_id,
        format!("{}/{}", "ab".repeat(16), "02".repeat(8))
    );
    assert_eq!(search.ts_ms, 1_795_852_802_000);
    assert_eq!(search.latency_ms, Some(250.0));
    assert_eq!(
        (
            search.tenant.as_str(),
            search.agent_id.as_str(),
            search.environment.as_str()
        ),
        ("acme", "support-bot", "production")
    );
    assert_eq!(search.tool, "search_kb");
    assert_eq!(search.tool_call_id.as_deref(), Some("call-search_kb"));
    assert_eq!(search.tool_type.as_deref(), Some("function"));
    assert_eq!(search.workflow_id.as_deref(), Some("conv-7"));
    assert_eq!(
        search.input.as_ref().and_then(|i| i.get("query")),
        Some(&serde_json::json!("refund")),
        "string arguments are read as the JSON they hold"
    );
    assert!(search.output.is_some(), "the result is digested");
    assert_eq!(
        search.attributes,
        vec![("app.region".to_owned(), "eu".to_owned())]
    );
    let refund = evs[1].as_ref().expect("refund_order");
    assert_eq!(refund.status, crate::event::Status::Error);
    assert_eq!(refund.error_type.as_deref(), Some("http_503"));
    let mcp = evs[2].as_ref().expect("MCP tools/call");
    assert_eq!(mcp.tool, "github.create_issue");
    assert_eq!(
        mcp.agent_id, "agent-svc",
        "service.name stands in for the agent"
    );
    let nameless = evs[3].as_ref().expect_err("no tool name");
    assert!(nameless.contains("tool"), "{nameless}");
}

#[test]
fn tool_spans_of_a_protobuf_export_request_become_v1_events() {
    let bytes = request().encode_to_vec();
    let items = spans(&bytes, OtlpEncoding::Proto, &OtlpOptions::default()).expect("OTLP");
    check(&items);
}

#[test]
fn the_same_spans_as_otlp_json_map_alike() {
    let bytes = serde_json::to_vec(&request()).expect("OTLP JSON");
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("resourceSpans"),
        "OTLP JSON uses camelCase: {text}"
    );
    let items = spans(&bytes, OtlpEncoding::Json, &OtlpOptions::default()).expect("OTLP");
    check(&items);
}

#[test]
fn what_is_not_otlp_or_over_a_limit_is_refused_never_a_panic() {
    let opts = OtlpOptions::default();
    assert!(spans(b"{\"event_id\":\"x\"", OtlpEncoding::Json, &opts).is_err());
    assert!(spans(&[0xff, 0x13, 0x00, 0x91], OtlpEncoding::Proto, &opts).is_err());
    // Bytes protobuf reads as nothing but unknown fields, and `{}`, hold no
    // request: refused, not swallowed as an empty one.
    assert!(spans(&[0x08, 0x01], OtlpEncoding::Proto, &opts).is_err());
    assert!(spans(b"{}", OtlpEncoding::Json, &opts).is_err());
    let tight = OtlpOptions {
        max_spans: 4,
        ..OtlpOptions::default()
    };
    let bytes = request().encode_to_vec();
    assert!(spans(&bytes, OtlpEncoding::Proto, &tight).is_err());
    let few_attributes = OtlpOptions {
        max_attributes: 5,
        ..OtlpOptions::default()
    };
    let items = spans(&bytes, OtlpEncoding::Proto, &few_attributes).expect("OTLP");
    match &items[1] {
        SpanItem::Refused {
            span,
            reason,
            why,
            raw,
        } => {
            assert!(span.ends_with(&"02".repeat(8)), "{span}");
            assert!(why.contains("attributes"), "{why}");
            assert_eq!(*reason, crate::event::DeadLetterReason::TooLarge);
            let raw: serde_json::Value = serde_json::from_slice(raw).expect("a summary as JSON");
            assert_eq!(raw["otlp_span"].as_str(), Some(span.as_str()), "{raw}");
            assert!(raw["attribute_names"].is_array(), "{raw}");
        }
        other => panic!("{other:?}"),
    }
    // Without a tenant anywhere, the configured fallback stands in.
    let mut r = request();
    if let Some(res) = r.resource_spans[0].resource.as_mut() {
        res.attributes.retain(|kv| kv.key != "tenant.id");
    }
    let fallback = OtlpOptions {
        tenant_fallback: Some("unassigned".into()),
        ..OtlpOptions::default()
    };
    let items = spans(&r.encode_to_vec(), OtlpEncoding::Proto, &fallback).expect("OTLP");
    let evs = events(&items);
    assert_eq!(evs[0].as_ref().map(|e| e.tenant.as_str()), Ok("unassigned"));
}

#[test]
fn remaining_attributes_are_strings_within_v1s_caps_and_never_cut() {
    let mut r = request();
    let span = &mut r.resource_spans[0].scope_spans[0].spans[1];
    span.attributes.push(KeyValue {
        key: "server.port".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(8443)),
        }),
    });
    let long = format!("{}AKIAIOSFODNN7EXAMPLE", "x".repeat(1015));
    span.attributes.push(kv("app.a_note", &long));
    for i in 0..70 {
        span.attributes.push(kv(&format!("app.k{i:02}"), "v"));
    }
    let items = spans(
        &r.encode_to_vec(),
        OtlpEncoding::Proto,
        &OtlpOptions::default(),
    )
    .expect("OTLP");
    let search = events(&items).remove(0).expect("capped, not refused");
    assert_eq!(search.attributes.len(), 64, "v1's cap");
    let get = |k: &str| {
        search
            .attributes
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("agentaudit.dropped_attributes"), Some("10"));
    assert!(
        get("app.a_note").is_some_and(|v| v.starts_with("[OMITTED: 1035 characters")),
        "a long value is replaced whole, never cut mid-secret: {:?}",
        get("app.a_note")
    );
    assert!(
        !search.attributes.iter().any(|(_, v)| v.contains("AKIA")),
        "no part of the long value survives"
    );
}

#[test]
fn the_message_decoder_names_the_span_and_keeps_the_rest_of_its_message() {
    use crate::decode::input::{InputFormat, MessageDecoder, Piece};
    let decoder = MessageDecoder::default();
    let bytes = request().encode_to_vec();
    let mut pieces = Vec::new();
    decoder.decode(
        Some(&bytes),
        InputFormat::OtlpProto,
        i64::MAX / 2,
        &mut |p| pieces.push(p),
    );
    assert_eq!(pieces.len(), 5);
    assert!(matches!(pieces[0], Piece::Skipped("chat")));
    assert_eq!(
        pieces
            .iter()
            .filter(|p| matches!(p, Piece::Event(_)))
            .count(),
        3
    );
    match &pieces[4] {
        Piece::Failed { failure, raw } => {
            assert_eq!(failure.reason, crate::event::DeadLetterReason::MissingField);
            assert!(
                failure
                    .detail
                    .starts_with(&format!("span {}/{}", "ab".repeat(16), "05".repeat(8))),
                "{}",
                failure.detail
            );
            assert!(failure.detail.contains("tool"), "{}", failure.detail);
            assert!(
                raw.is_some(),
                "the span's own event is kept for the dead letter"
            );
        }
        other => panic!("{other:?}"),
    }
    // Not OTLP at all: one piece, the whole message.
    let mut pieces = Vec::new();
    decoder.decode(
        Some(b"{\"event_id\":1"),
        InputFormat::OtlpJson,
        0,
        &mut |p| pieces.push(p),
    );
    assert!(matches!(
        &pieces[..],
        [Piece::Failed { failure, raw: Some(_) }] if failure.reason == crate::event::DeadLetterReason::InvalidOtlp
    ));
    // A tombstone is empty, and a v1 topic decodes v1.
    let mut pieces = Vec::new();
    decoder.decode(None, InputFormat::OtlpProto, 0, &mut |p| pieces.push(p));
    assert!(
        matches!(&pieces[..], [Piece::Failed { failure, .. }] if failure.reason == crate::event::DeadLetterReason::Empty)
    );
    let mut pieces = Vec::new();
    decoder.decode(Some(&bytes), InputFormat::V1, 0, &mut |p| pieces.push(p));
    assert!(
        matches!(&pieces[..], [Piece::Failed { .. }]),
        "protobuf is no v1 event"
    );
}
