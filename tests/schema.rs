//! The JSON Schema in docs/ and the decoder agree: what one accepts, the
//! other accepts, on generated traffic and on hand-written edge cases.

use agentaudit::decode::{DecodeLimits, decode};
use agentaudit::traffic::{GenOptions, Generator, Kind};

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../docs/event.schema.json")).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn generated_events_satisfy_the_schema_and_the_decoder() {
    let v = validator();
    let now = chrono::Utc::now().timestamp_millis();
    let mut g = Generator::new(GenOptions {
        secret_ratio: 0.3,
        ..GenOptions::default()
    });
    for _ in 0..2000 {
        let m = g.next_message();
        assert_eq!(m.kind, Kind::Valid);
        let doc: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
        assert!(v.is_valid(&doc), "schema rejects {doc}");
        decode(Some(&m.payload), now, &DecodeLimits::default()).expect("decoder accepts");
    }
}

#[test]
fn hand_written_cases_agree() {
    let v = validator();
    let now = chrono::Utc::now().timestamp_millis();
    let base = serde_json::json!({"event_id": "e", "ts": "2026-01-01T00:00:00Z", "tenant": "t",
        "agent_id": "a", "environment": "preview", "tool": "x", "status": "denied"});
    let mut cases: Vec<(serde_json::Value, bool)> = vec![(base.clone(), true)];
    let mut otel = base.clone();
    let o = otel.as_object_mut().unwrap();
    o.remove("tool");
    o.remove("agent_id");
    o.insert("gen_ai.tool.name".into(), "y".into());
    o.insert("gen_ai.agent.id".into(), "b".into());
    cases.push((otel, true));
    for (field, bad) in [
        ("status", serde_json::json!("unknown")),
        ("tenant", serde_json::json!("")),
        ("step", serde_json::json!(-1)),
        ("tokens_in", serde_json::json!(1.5)),
        ("approval", serde_json::json!({"decision": "maybe"})),
        ("attributes", serde_json::json!({"k": 1})),
        ("ts", serde_json::json!(12)),
    ] {
        let mut doc = base.clone();
        doc[field] = bad;
        cases.push((doc, false));
    }
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("event_id");
    cases.push((missing, false));
    for (doc, ok) in cases {
        assert_eq!(v.is_valid(&doc), ok, "schema on {doc}");
        let decoded = decode(
            Some(doc.to_string().as_bytes()),
            now,
            &DecodeLimits::default(),
        );
        assert_eq!(decoded.is_ok(), ok, "decoder on {doc}: {decoded:?}");
    }
}
