//! Property-based fuzz of decode and redact, the two steps every hostile
//! byte goes through: decode never panics, whatever the bytes (arbitrary,
//! deep and wide JSON, duplicate and aliased keys, huge numbers, invalid and
//! mixed UTF-8), and nothing stored ever holds a planted secret, wherever it
//! is planted and however it is encoded.
//!
//! OTLP input gets the same: decode never panics on arbitrary or mutated
//! export requests, and a secret planted in a span, whether it becomes a
//! row or a dead letter, is never stored.
//!
//! The test command runs a bounded number of cases; a longer run:
//! `cargo test --test fuzz -- --ignored`.

use std::sync::{Arc, LazyLock};

use agentaudit::config::RedactConfig;
use agentaudit::decode::otlp::OtlpOptions;
use agentaudit::decode::{DecodeLimits, InputFormat, MessageDecoder, OutputKey, Piece, decode};
use agentaudit::event::KafkaCoords;
use agentaudit::redact::Redactor;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Value, json};

const NOW: i64 = 1_795_852_800_000;

static REDACTOR: LazyLock<Redactor> =
    LazyLock::new(|| Redactor::new(&RedactConfig::default()).expect("redactor"));

static LIMITS: LazyLock<DecodeLimits> = LazyLock::new(|| DecodeLimits {
    output_key: Some(OutputKey::new(b"fuzzing key, 16+ bytes")),
    ..DecodeLimits::default()
});

fn coords() -> KafkaCoords {
    KafkaCoords {
        topic: Arc::from("fuzz"),
        partition: 0,
        offset: 0,
        kafka_ts_ms: None,
    }
}

/// Decodes and redacts `bytes` as the consumer thread does; returns all that
/// would be stored, as text.
fn stored(bytes: &[u8]) -> String {
    let coords = coords();
    match decode(Some(bytes), NOW, &LIMITS) {
        Ok(event) => format!("{:?}", REDACTOR.redact_event(event, coords, NOW)),
        Err(failure) => format!(
            "{:?}",
            REDACTOR.redact_dead_letter(Some(bytes), failure, coords, NOW)
        ),
    }
}

fn base_event() -> Value {
    json!({
        "event_id": "e-1", "ts": NOW - 1_000, "tenant": "acme",
        "agent_id": "support-bot", "environment": "production",
        "tool": "search", "status": "ok"
    })
}

/// Any JSON: scalars, strings of any characters, arrays and objects up to
/// 48 deep (beyond the decoder's limit of 32) and 16 wide.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(48, 512, 16, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..16).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..16)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text edits a hostile producer might make to a valid event.
#[derive(Debug, Clone)]
enum Mutation {
    /// A field written twice, or under its OpenTelemetry alias as well.
    Duplicate(&'static str),
    /// A number no 64-bit type holds, in a numeric field.
    HugeNumber(&'static str, &'static str),
    /// Invalid UTF-8 bytes spliced in at a position.
    InvalidUtf8(usize, Vec<u8>),
    /// Cut short.
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::sample::select(vec![
            r#""tool":"other""#,
            r#""gen_ai.tool.name":"other""#,
            r#""agent_id":"x""#,
            r#""gen_ai.agent.id":"x""#,
            r#""ts":1"#,
            r#""status":"error""#,
        ])
        .prop_map(Mutation::Duplicate),
        (
            prop::sample::select(vec!["step", "latency_ms", "tokens_in", "ts"]),
            prop::sample::select(vec![
                "1e400",
                "-1e400",
                "123456789012345678901234567890",
                "-9223372036854775809",
                "18446744073709551616",
                "0.0000000000000000000000000001",
            ]),
        )
            .prop_map(|(f, n)| Mutation::HugeNumber(f, n)),
        (
            0usize..400,
            prop::collection::vec(
                prop::sample::select(vec![0x80u8, 0xC3, 0xFF, 0xED, 0xA0]),
                1..4
            ),
        )
            .prop_map(|(at, b)| Mutation::InvalidUtf8(at, b)),
        (0usize..400).prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut text: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Duplicate(field) => {
            let mut out = b"{".to_vec();
            out.extend_from_slice(field.as_bytes());
            out.push(b',');
            out.extend_from_slice(&text[1..]);
            out
        }
        Mutation::HugeNumber(field, n) => {
            let mut out = text[..text.len() - 1].to_vec();
            out.extend_from_slice(format!(r#","{field}":{n}}}"#).as_bytes());
            out
        }
        Mutation::InvalidUtf8(at, bytes) => {
            let at = (*at).min(text.len());
            text.splice(at..at, bytes.iter().copied());
            text
        }
        Mutation::Truncate(at) => {
            text.truncate((*at).min(text.len()));
            text
        }
    }
}

/// A secret of a kind the detectors know, random in its variable part.
fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        "(AKIA|ASIA)[0-9A-Z]{16}",
        "ghp_[A-Za-z0-9]{36}",
        "glpat-[A-Za-z0-9_-]{20}",
        "xoxb-[0-9]{10}-[A-Za-z0-9]{16}",
        "sk_live_[A-Za-z0-9]{24}",
        "AIza[0-9A-Za-z_-]{35}",
        "sk-ant-[A-Za-z0-9]{32}",
        "eyJ[A-Za-z0-9_-]{10}\\.eyJ[A-Za-z0-9_-]{10}\\.[A-Za-z0-9_-]{16}",
        "[a-z]{3,10}@[a-z]{3,10}\\.(com|org)",
    ]
}

/// Where in an event a secret is planted.
const PLACES: &[&str] = &[
    "input value",
    "input key",
    "deep input value",
    "attributes value",
    "attributes key",
    "actor",
    "workflow_id",
    "tool",
    "agent_id",
    "tenant",
    "credential_id",
    "mcp_server",
    "agent_version",
    "tool_call_id",
    "error_type",
    "approval.approver",
    "truncated message",
];

/// How the secret is written.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Plain,
    /// Every character as `%XX`, as in a URL.
    Percent,
    /// Its first character as a JSON `\u` escape: decode sees it plain.
    JsonEscape,
    /// Its first character as `\u` text inside the string: JSON escaped a
    /// second time.
    JsonTwice,
}

fn encode(secret: &str, e: Encoding) -> String {
    match e {
        Encoding::Plain | Encoding::JsonEscape => secret.to_owned(),
        Encoding::Percent => secret.bytes().map(|b| format!("%{b:02X}")).collect(),
        Encoding::JsonTwice => {
            let mut c = secret.chars();
            let first = c.next().map(|f| format!("\\u{:04x}", f as u32));
            format!("{}{}", first.unwrap_or_default(), c.as_str())
        }
    }
}

/// The event's JSON text with `value` planted at `place`.
fn planted(place: &str, value: &str, encoding: Encoding) -> Vec<u8> {
    let mut e = base_event();
    let v = Value::from(value);
    match place {
        "input value" => e["input"] = json!({"note": v}),
        "input key" => e["input"] = json!({ value: "x" }),
        "deep input value" => e["input"] = json!({"a": [{"b": {"c": [1, {"d": v}]}}]}),
        "attributes value" => e["attributes"] = json!({"note": v}),
        "attributes key" => e["attributes"] = json!({ value: "x" }),
        "approval.approver" => {
            e["approval"] = json!({"id": "ap-1", "approver": v, "decision": "approved"})
        }
        "truncated message" => e["input"] = json!({"note": v, "more": "x".repeat(50)}),
        field => e[field] = v,
    }
    let mut text = e.to_string();
    if let Encoding::JsonEscape = encoding
        && let Some(first) = value.chars().next()
    {
        // The first occurrence of the value, its first character escaped.
        let escaped = format!("\\u{:04x}{}", first as u32, &value[first.len_utf8()..]);
        text = text.replacen(value, &escaped, 1);
    }
    if place == "truncated message" {
        let cut = text.find("\"more\"").unwrap_or(text.len());
        text.truncate(cut);
    }
    text.into_bytes()
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop::sample::select(vec![
        Encoding::Plain,
        Encoding::Percent,
        Encoding::JsonEscape,
        Encoding::JsonTwice,
    ])
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "key: ", "(", "x=", "/", ", "])
}

fn check_arbitrary_bytes(bytes: &[u8]) {
    stored(bytes);
}

fn check_any_json(input: Value, attributes: Value, top: Value) {
    let mut e = base_event();
    e["input"] = input;
    e["attributes"] = attributes;
    stored(e.to_string().as_bytes());
    stored(top.to_string().as_bytes());
}

fn check_mutated(m: &Mutation) {
    let text = base_event().to_string().into_bytes();
    stored(&mutate(text, m));
}

fn check_planted(secret: &str, place: &str, encoding: Encoding, before: &str) {
    let written = encode(secret, encoding);
    let value = format!("{before}{written} end");
    let out = stored(&planted(place, &value, encoding));
    assert!(
        !out.contains(secret),
        "{secret} planted in {place} ({encoding:?}) was stored: {out}"
    );
    assert!(
        !out.contains(&written),
        "{written} planted in {place} ({encoding:?}) was stored: {out}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_arbitrary_bytes(&bytes);
    }

    #[test]
    fn decode_never_panics_on_deep_and_wide_json(
        input in json_value(), attributes in json_value(), top in json_value()
    ) {
        check_any_json(input, attributes, top);
    }

    #[test]
    fn decode_never_panics_on_duplicates_huge_numbers_and_bad_utf8(m in mutation()) {
        check_mutated(&m);
    }

    #[test]
    fn a_planted_secret_is_never_stored(
        secret in secret(),
        place in prop::sample::select(PLACES.to_vec()),
        encoding in encoding(),
        before in separator(),
    ) {
        check_planted(&secret, place, encoding, before);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    #[ignore = "long fuzz run: cargo test --test fuzz -- --ignored"]
    fn long_decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..8192)) {
        check_arbitrary_bytes(&bytes);
    }

    #[test]
    #[ignore = "long fuzz run: cargo test --test fuzz -- --ignored"]
    fn long_decode_never_panics_on_deep_and_wide_json(
        input in json_value(), attributes in json_value(), top in json_value()
    ) {
        check_any_json(input, attributes, top);
    }

    #[test]
    #[ignore = "long fuzz run: cargo test --test fuzz -- --ignored"]
    fn long_a_planted_secret_is_never_stored(
        secret in secret(),
        place in prop::sample::select(PLACES.to_vec()),
        encoding in encoding(),
        before in separator(),
    ) {
        check_planted(&secret, place, encoding, before);
    }
}

// OTLP input.

static OTLP: LazyLock<MessageDecoder> = LazyLock::new(|| MessageDecoder {
    limits: LIMITS.clone(),
    // Low, so that a span with a few extra attributes is refused and its
    // dead letter is fuzzed too.
    otlp: OtlpOptions {
        max_attributes: 12,
        ..OtlpOptions::default()
    },
});

/// Decodes and redacts an OTLP message as the consumer thread does.
fn stored_otlp(bytes: &[u8], format: InputFormat) -> String {
    let mut out = String::new();
    OTLP.decode(Some(bytes), format, NOW, &mut |piece| {
        let text = match piece {
            Piece::Event(e) => format!("{:?}", REDACTOR.redact_event(e, coords(), NOW)),
            Piece::Failed { failure, raw } => format!(
                "{:?}",
                REDACTOR.redact_dead_letter(raw.as_deref(), failure, coords(), NOW)
            ),
            Piece::Skipped(operation) => operation.to_owned(),
        };
        out.push_str(&text);
        out.push('\n');
    });
    out
}

mod spans {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    pub fn kv(key: &str, v: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }

    /// Where in a span a secret is planted.
    pub const PLACES: &[&str] = &[
        "arguments",
        "arguments key",
        "result",
        "attribute value",
        "attribute key",
        "tool name",
        "conversation id",
        "error type",
        "service name",
        "tenant",
        "refused span attribute",
        "refused span name",
    ];

    /// A message of one model span and one tool span carrying `value` at
    /// `place` (a refused span has more attributes than the limit).
    pub fn request(place: &str, value: &str) -> ExportTraceServiceRequest {
        let mut attrs = vec![
            kv("gen_ai.operation.name", "execute_tool"),
            kv("gen_ai.tool.name", "lookup"),
            kv("gen_ai.agent.id", "bot"),
        ];
        let mut resource = vec![
            kv("tenant.id", "acme"),
            kv("deployment.environment.name", "production"),
        ];
        let mut name = "execute_tool lookup".to_owned();
        match place {
            "arguments" => attrs.push(kv(
                "gen_ai.tool.call.arguments",
                &serde_json::json!({ "note": value }).to_string(),
            )),
            "arguments key" => attrs.push(kv(
                "gen_ai.tool.call.arguments",
                &serde_json::json!({ value: 1 }).to_string(),
            )),
            "result" => attrs.push(kv("gen_ai.tool.call.result", value)),
            "attribute value" => attrs.push(kv("app.note", value)),
            "attribute key" => attrs.push(kv(value, "x")),
            "tool name" => attrs[1] = kv("gen_ai.tool.name", value),
            "conversation id" => attrs.push(kv("gen_ai.conversation.id", value)),
            "error type" => attrs.push(kv("error.type", value)),
            "service name" => {
                attrs.remove(2);
                resource.push(kv("service.name", value));
            }
            "tenant" => resource[0] = kv("tenant.id", value),
            "refused span attribute" | "refused span name" => {
                for i in 0..12 {
                    attrs.push(kv(&format!("app.k{i}"), "v"));
                }
                if place == "refused span name" {
                    name = format!("execute_tool {value}");
                } else {
                    attrs.push(kv("app.note", value));
                }
            }
            other => panic!("no place {other}"),
        }
        let span = |id: u8, attributes: Vec<KeyValue>, name: String| Span {
            trace_id: vec![0x11; 16],
            span_id: vec![id; 8],
            name,
            start_time_unix_nano: 1_795_852_700_000_000_000,
            end_time_unix_nano: 1_795_852_700_100_000_000,
            attributes,
            ..Span::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: resource,
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![
                        span(1, vec![kv("gen_ai.operation.name", "chat")], "chat".into()),
                        span(2, attrs, name),
                    ],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }
}

fn check_otlp_planted(secret: &str, place: &str, json: bool) {
    use prost::Message;
    let request = spans::request(place, secret);
    let (bytes, format) = if json {
        (
            serde_json::to_vec(&request).expect("OTLP JSON"),
            InputFormat::OtlpJson,
        )
    } else {
        (request.encode_to_vec(), InputFormat::OtlpProto)
    };
    let out = stored_otlp(&bytes, format);
    assert!(
        !out.contains(secret),
        "{secret} planted in {place} (json: {json}) was stored: {out}"
    );
}

/// A value no detector knows, under a name that says it is secret.
fn check_otlp_opaque_under_a_secret_name(opaque: &str, refused: bool) {
    use prost::Message;
    let mut request = spans::request(
        if refused {
            "refused span attribute"
        } else {
            "attribute value"
        },
        "x",
    );
    let span = &mut request.resource_spans[0].scope_spans[0].spans[1];
    span.attributes.push(spans::kv("api_key", opaque));
    let out = stored_otlp(&request.encode_to_vec(), InputFormat::OtlpProto);
    assert!(
        !out.contains(opaque),
        "{opaque} under api_key (refused: {refused}) was stored: {out}"
    );
}

/// A valid request with bytes overwritten: protobuf that is wrong in
/// every way short of random.
fn check_otlp_mutated(flips: &[(usize, u8)]) {
    use prost::Message;
    let mut bytes = spans::request("arguments", "x").encode_to_vec();
    for (at, b) in flips {
        let n = bytes.len();
        bytes[at % n] = *b;
    }
    stored_otlp(&bytes, InputFormat::OtlpProto);
    let mut text = serde_json::to_vec(&spans::request("arguments", "x")).expect("JSON");
    for (at, b) in flips {
        let n = text.len();
        text[at % n] = *b;
    }
    stored_otlp(&text, InputFormat::OtlpJson);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn otlp_decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        stored_otlp(&bytes, InputFormat::OtlpProto);
        stored_otlp(&bytes, InputFormat::OtlpJson);
    }

    #[test]
    fn otlp_decode_never_panics_on_mutated_requests(
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)
    ) {
        check_otlp_mutated(&flips);
    }

    #[test]
    fn a_secret_planted_in_a_span_is_never_stored(
        secret in secret(),
        place in prop::sample::select(spans::PLACES.to_vec()),
        json in any::<bool>(),
    ) {
        check_otlp_planted(&secret, place, json);
    }

    #[test]
    fn an_opaque_value_under_a_secret_name_is_never_stored(
        opaque in "[a-z0-9]{16}",
        refused in any::<bool>(),
    ) {
        check_otlp_opaque_under_a_secret_name(&opaque, refused);
    }
}

/// `db.password` survived, in the review of issue 21, in `too_large` and
/// `invalid_otlp` protobuf dead letters (they kept the message's bytes) and
/// in JSON spans of over ~80 KiB. OTLP dead letters keep names and counts.
#[test]
fn a_secret_named_otlp_attribute_is_in_no_dead_letter() {
    use prost::Message;
    let opaque = "q7w8e9r0t1y2u3i4o5p6";
    let with_password = |place: &str| {
        let mut r = spans::request(place, "x");
        r.resource_spans[0].scope_spans[0].spans[1]
            .attributes
            .push(spans::kv("db.password", opaque));
        r
    };
    // Too many spans: the whole message is refused.
    let mut many = with_password("attribute value");
    let one = many.resource_spans[0].scope_spans[0].spans[1].clone();
    many.resource_spans[0].scope_spans[0].spans = vec![one; 10_001];
    // Not protobuf any more: cut inside the password.
    let whole = with_password("attribute value").encode_to_vec();
    let at = whole
        .windows(opaque.len())
        .position(|w| w == opaque.as_bytes())
        .expect("the password is in the bytes");
    let cut = whole[..at + 8].to_vec();
    // A refused JSON span past 80 KiB.
    let mut big = with_password("refused span attribute");
    big.resource_spans[0].scope_spans[0].spans[1]
        .attributes
        .push(spans::kv("app.blob", &"z".repeat(90 * 1024)));
    for (what, bytes, format) in [
        ("too_large", many.encode_to_vec(), InputFormat::OtlpProto),
        ("invalid_otlp", cut, InputFormat::OtlpProto),
        (
            "a refused span over 80 KiB",
            serde_json::to_vec(&big).unwrap(),
            InputFormat::OtlpJson,
        ),
    ] {
        let out = stored_otlp(&bytes, format);
        assert!(out.contains("DeadLetter"), "{what}: no dead letter: {out}");
        assert!(
            !out.contains(&opaque[..8]),
            "{what}: the password is stored: {out}"
        );
    }
}
