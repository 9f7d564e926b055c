//! Decoder unit tests: one case per dead-letter reason, plus the accepted forms.

use super::*;

const NOW: i64 = 1_790_000_000_000; // 2026-09-21T13:33:20Z
const TS_2026_09_21_10H: i64 = 1_789_984_800_000;

fn ok_json() -> serde_json::Value {
    serde_json::json!({
        "event_id": "e-1", "ts": "2026-09-21T10:00:00Z", "tenant": "acme",
        "agent_id": "support-bot", "environment": "Production", "tool": "search_orders",
        "status": "ok"
    })
}

fn dec(v: &serde_json::Value) -> Result<Event, DecodeFailure> {
    decode(
        Some(v.to_string().as_bytes()),
        NOW,
        &DecodeLimits::default(),
    )
}

fn reason_of(bytes: &[u8]) -> DeadLetterReason {
    decode(Some(bytes), NOW, &DecodeLimits::default())
        .expect_err("must fail")
        .reason
}

#[test]
fn minimal_event_decodes_and_normalises_environment() {
    let e = dec(&ok_json()).expect("valid");
    assert_eq!(e.environment, "production");
    assert_eq!(e.ts_ms, TS_2026_09_21_10H);
    assert_eq!(e.status, Status::Ok);
    assert_eq!(e.unknown_fields, 0);
}

#[test]
fn epoch_millis_and_otel_aliases_are_accepted() {
    let v = serde_json::json!({
        "event_id": "e-2", "ts": NOW - 1000, "tenant": "acme", "gen_ai.agent.id": "a1",
        "environment": "staging", "gen_ai.tool.name": "http_get", "status": "error",
        "gen_ai.tool.call.id": "call_9", "gen_ai.conversation.id": "wf-7",
        "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 30,
        "error.type": "Timeout", "gen_ai.tool.call.arguments": {"url": "https://x"},
        "gen_ai.tool.call.result": "body", "surprise": 1, "another": [1,2]
    });
    let e = dec(&v).expect("valid");
    assert_eq!(e.ts_ms, NOW - 1000);
    assert_eq!(e.agent_id, "a1");
    assert_eq!(e.tool, "http_get");
    assert_eq!(e.tool_call_id.as_deref(), Some("call_9"));
    assert_eq!(e.workflow_id.as_deref(), Some("wf-7"));
    assert_eq!((e.tokens_in, e.tokens_out), (Some(12), Some(30)));
    assert_eq!(e.error_type.as_deref(), Some("Timeout"));
    assert_eq!(e.input, Some(serde_json::json!({"url": "https://x"})));
    assert_eq!(e.unknown_fields, 2);
    let out = e.output.expect("output digest");
    assert_eq!(out.bytes, 4);
    assert_eq!(out.sha256, hex::encode(Sha256::digest(b"body")));
    assert_eq!(out.preview, None, "previews are off by default");
}

#[test]
fn output_preview_is_kept_only_when_enabled() {
    let mut v = ok_json();
    v["output"] = serde_json::json!({"rows": [1, 2, 3]});
    let limits = DecodeLimits {
        output_preview_chars: 5,
        ..DecodeLimits::default()
    };
    let e = decode(Some(v.to_string().as_bytes()), NOW, &limits).expect("valid");
    let out = e.output.expect("digest");
    assert_eq!(out.preview.as_deref(), Some("{\"row"));
    assert_eq!(out.bytes, r#"{"rows":[1,2,3]}"#.len() as i64);
}

#[test]
fn approval_and_attributes_are_typed() {
    let mut v = ok_json();
    v["approval"] = serde_json::json!({"id": "ap-1", "approver": "bob", "decision": "approved"});
    v["attributes"] = serde_json::json!({"region": "eu"});
    v["step"] = serde_json::json!(3);
    v["latency_ms"] = serde_json::json!(12.5);
    let e = dec(&v).expect("valid");
    let a = e.approval.expect("approval");
    assert_eq!(a.decision, ApprovalDecision::Approved);
    assert_eq!(a.approver.as_deref(), Some("bob"));
    assert_eq!(e.attributes, vec![("region".into(), "eu".into())]);
    assert_eq!(e.step, Some(3));
    assert_eq!(e.latency_ms, Some(12.5));
}

#[test]
fn every_dead_letter_reason_is_reachable() {
    use DeadLetterReason::*;
    assert_eq!(
        decode(None, NOW, &DecodeLimits::default())
            .unwrap_err()
            .reason,
        Empty
    );
    assert_eq!(reason_of(b"  \n"), Empty);
    let big = vec![b' '; 10];
    let small = DecodeLimits {
        max_bytes: 5,
        ..DecodeLimits::default()
    };
    assert_eq!(
        decode(Some(&[b"{}".as_slice(), &big].concat()), NOW, &small)
            .unwrap_err()
            .reason,
        TooLarge
    );
    assert_eq!(reason_of(b"{\"event_id\": \"\xff\"}"), InvalidUtf8);
    assert_eq!(reason_of(b"{not json}"), InvalidJson);
    assert_eq!(reason_of(b"{\"a\":1} trailing"), InvalidJson);
    assert_eq!(reason_of(b"{\"event_id\": \"e-1\", \"ts\""), Truncated);
    assert_eq!(reason_of(b"[1,2,3]"), NotAnObject);
    assert_eq!(reason_of(b"\"just a string\""), NotAnObject);
    let deep = format!("{{\"input\":{}{}}}", "[".repeat(40), "]".repeat(40));
    assert_eq!(reason_of(deep.as_bytes()), TooDeep);

    let mut v = ok_json();
    v.as_object_mut().unwrap().remove("tenant");
    assert_eq!(dec(&v).unwrap_err().reason, MissingField);
    assert!(dec(&v).unwrap_err().detail.contains("tenant"));

    let mut v = ok_json();
    v["tenant"] = serde_json::json!(42);
    assert_eq!(dec(&v).unwrap_err().reason, InvalidField);
    let mut v = ok_json();
    v["status"] = serde_json::json!("maybe");
    assert_eq!(dec(&v).unwrap_err().reason, InvalidField);
    let mut v = ok_json();
    v["event_id"] = serde_json::json!("x".repeat(129));
    assert_eq!(dec(&v).unwrap_err().reason, InvalidField);
    let mut v = ok_json();
    v["step"] = serde_json::json!(-1);
    assert_eq!(dec(&v).unwrap_err().reason, InvalidField);
    let mut v = ok_json();
    v["tool"] = serde_json::json!("a\nb");
    assert_eq!(dec(&v).unwrap_err().reason, InvalidField);
    let dup = br#"{"event_id":"e","ts":1790000000000,"tenant":"a","agent_id":"b","environment":"p","tool":"t","gen_ai.tool.name":"u","status":"ok"}"#;
    assert_eq!(reason_of(dup), InvalidField);

    let mut v = ok_json();
    v["ts"] = serde_json::json!("yesterday");
    assert_eq!(dec(&v).unwrap_err().reason, InvalidTimestamp);
    let mut v = ok_json();
    v["ts"] = serde_json::json!(true);
    assert_eq!(dec(&v).unwrap_err().reason, InvalidTimestamp);
    let mut v = ok_json();
    v["ts"] = serde_json::json!(5);
    assert_eq!(dec(&v).unwrap_err().reason, TimestampOutOfRange);
    let mut v = ok_json();
    v["ts"] = serde_json::json!("2999-01-01T00:00:00Z");
    assert_eq!(dec(&v).unwrap_err().reason, TimestampInFuture);
}

#[test]
fn failure_details_never_echo_payload_text() {
    let mut v = ok_json();
    v["status"] = serde_json::json!("AKIAIOSFODNN7EXAMPLE");
    let f = dec(&v).unwrap_err();
    assert!(!f.detail.contains("AKIA"), "{}", f.detail);
}

#[test]
fn depth_scan_ignores_brackets_inside_strings() {
    assert_eq!(json_depth(br#"{"a":"[[[[{{{{\"]]"}"#), 1);
    assert_eq!(json_depth(br#"{"a":[{"b":[]}]}"#), 4);
    // Escaped backslashes end before the quote; an escape at the very end and
    // an unterminated string stop the scan without reading past the end.
    assert_eq!(json_depth(br#"{"a":"\\\\","b":[[1]]}"#), 3);
    assert_eq!(json_depth(br#"{"a":"x\"#), 1);
    assert_eq!(json_depth(br#"{"a":"[[[["#), 1);
    assert_eq!(json_depth(br#"[{"k\"[":[{}]}]"#), 4);
}

#[test]
fn depth_over_counts_openers_first_and_walks_only_past_the_limit() {
    // Two openers cannot nest three deep, whatever the strings hold.
    assert_eq!(depth_over(br#"{"a":[1]}"#, 2), None);
    // Many openers, all inside a string: walked, and still shallow.
    assert_eq!(depth_over(br#"{"a":"[[[[[[[["}"#, 2), None);
    assert_eq!(depth_over(br#"{"a":[[[1]]]}"#, 3), Some(4));
    assert_eq!(depth_over(br#"{"a":[[[1]]]}"#, 4), None);
    // Siblings are many openers but little depth.
    assert_eq!(depth_over(br#"[[],[],[],[],[]]"#, 2), None);
}

#[test]
fn identifiers_refuse_every_control_character_and_keep_other_text() {
    for bad in ["a\u{0}b", "a\tb", "a\u{7f}b", "a\u{85}b", "a\u{9f}b"] {
        let mut v = ok_json();
        v["tenant"] = serde_json::json!(bad);
        let f = dec(&v).expect_err("control character in an identifier");
        assert_eq!(f.reason, DeadLetterReason::InvalidField, "{bad:?}");
    }
    // ESC, bidirectional overrides and zero-width characters too, in every
    // identifier (issue 11: they passed into tool_call_id and friends, and
    // a reversed tenant name read as another in a terminal).
    for field in [
        "tenant",
        "tool",
        "tool_call_id",
        "agent_version",
        "mcp_server_version",
    ] {
        for bad in [
            "a\u{1b}[31mb",
            "admin\u{202e}txt",
            "acme\u{200b}",
            "\u{2066}x",
        ] {
            let mut v = ok_json();
            v[field] = serde_json::json!(bad);
            let f = dec(&v).expect_err("deceptive character in an identifier");
            assert_eq!(f.reason, DeadLetterReason::InvalidField, "{field} {bad:?}");
        }
    }
    // Every invisible kind the issue-21 review slipped past the check:
    // `support-bot` + U+E0020 printed as `support-bot`.
    for bad in [
        "support-bot\u{E0020}",
        "support-bot\u{FE0F}",
        "sup\u{AD}port-bot",
        "sup\u{34F}port-bot",
        "support-bot\u{3164}",
        "support-bot\u{115F}",
        "support-bot\u{FFA0}",
        "support\u{180E}-bot",
        "support-bot\u{E0100}",
    ] {
        for field in ["agent_id", "tenant", "tool", "credential_id"] {
            let mut v = ok_json();
            v[field] = serde_json::json!(bad);
            let f = dec(&v).expect_err("invisible character in an identifier");
            assert_eq!(f.reason, DeadLetterReason::InvalidField, "{field} {bad:?}");
        }
    }
    // Non-ASCII that is not a control character (U+00A0 follows C1) stays.
    for good in ["caf\u{e9}", "a\u{a0}b", "\u{1F600}", "\u{7e}"] {
        let mut v = ok_json();
        v["tenant"] = serde_json::json!(good);
        assert_eq!(dec(&v).expect("valid").tenant, good);
    }
}

/// A short output (a PIN) under a plain SHA-256 is reversed by hashing all
/// 10,000 PINs; keyed, the digest matches none of them and still joins
/// equal outputs under one key.
#[test]
fn a_keyed_output_digest_cannot_be_reversed_by_trying_every_pin() {
    let mut v = ok_json();
    v["output"] = serde_json::json!("4821");
    let keyed = |key: &[u8]| {
        let limits = DecodeLimits {
            output_key: Some(crate::decode::OutputKey::new(key)),
            ..DecodeLimits::default()
        };
        decode(Some(v.to_string().as_bytes()), NOW, &limits)
            .expect("valid")
            .output
            .expect("output")
            .sha256
    };
    let digest = keyed(b"0123456789abcdef0123");
    let table: std::collections::HashMap<String, String> = (0..10_000)
        .map(|pin| {
            let pin = format!("{pin:04}");
            (hex::encode(Sha256::digest(pin.as_bytes())), pin)
        })
        .collect();
    let unkeyed = dec(&v).unwrap().output.unwrap().sha256;
    assert_eq!(table.get(&unkeyed).map(String::as_str), Some("4821"));
    assert!(!table.contains_key(&digest));
    assert_eq!(digest, keyed(b"0123456789abcdef0123"), "equal outputs join");
    assert_ne!(digest, keyed(b"another key entirely"));
}
