//! OpenTelemetry input end to end: spans recorded by the Python SDK, encoded
//! by its own OTLP encoder and produced by kafka-python to tansu, as
//! `otlp_proto` and OTLP JSON beside a v1 topic, all read by one consumer;
//! and detection on OTLP traffic from the embedded default.

mod common;

use std::process::Command;
use std::time::Duration;

use common::tansu::{create_topic, free_port, required_env, start_tansu};
use common::{
    Corpus, Serve, assert_only_the_planted_spike, count, demo_with_planted_spike,
    everything_stored, produce_foreign, query,
};

const SECRET: &str = "sk-live-4f3c2a1b9e8d7c6b5a4f3e2d1c0b9a8f";

/// The value of one labelled series in a /metrics body.
fn series(body: &str, name: &str, label: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn spans_from_the_python_sdk_land_as_rows_beside_a_v1_topic() {
    let bin = required_env("TANSU_BIN");
    let python = required_env("AGENTAUDIT_PYTHON");
    let port = free_port();
    let _tansu = start_tansu(&bin, port);
    let brokers = format!("127.0.0.1:{port}");
    for topic in ["otlp_spans", "otlp_json", "agent-events"] {
        create_topic(&bin, port, topic, 2);
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let corpus = Corpus::generate(60, 13);
    produce_foreign(
        &python,
        &brokers,
        "agent-events",
        &corpus.messages,
        scratch.path(),
    );
    let out = Command::new(&python)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/otel_agent.py"),
            &brokers,
            "otlp_spans",
            "otlp_json",
            SECRET,
        ])
        .output()
        .expect("run otel_agent.py");
    assert!(
        out.status.success(),
        "otel_agent.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert_eq!(recorded["kinds"]["execute_tool"], 4, "{recorded}");

    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().unwrap();
    let mut serve = Serve::start(&[
        "--brokers",
        &brokers,
        "--topic",
        "otlp_spans",
        "--input-format",
        "otlp_proto",
        "--extra-topic",
        "otlp_json=otlp_json",
        "--extra-topic",
        "agent-events=v1",
        "--group",
        "otlp-e2e",
        "--data-dir",
        dir,
    ]);
    // Two messages on each OTLP topic (a request and one that is not
    // OTLP), and the v1 corpus.
    let messages = 4.0 + corpus.messages.len() as f64;
    serve.wait_until("every message consumed", Duration::from_secs(120), |s| {
        s.metric("agentaudit_events_consumed_total") >= messages
    });
    let (_, body) = serve.get("/metrics").expect("/metrics");
    let skipped = |op: &str| {
        series(
            &body,
            "agentaudit_otlp_spans_skipped_total",
            &format!("operation=\"{op}\""),
        )
    };
    assert_eq!(skipped("chat"), 4.0, "two model calls, in each encoding");
    assert_eq!(skipped("invoke_agent"), 2.0);
    assert!(serve.terminate().success());

    // Every tool span is a row, from each encoding alike; the nameless one
    // is not.
    let rows = query(
        data.path(),
        "SELECT src_topic, event_id, tenant, agent_id, environment, tool, status, error_type, workflow_id, tool_call_id, latency_ms \
         FROM invocations WHERE src_topic <> 'agent-events' ORDER BY src_topic, tool",
        &[],
    );
    let tools: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["src_topic"].as_str().unwrap(),
                r["tool"].as_str().unwrap(),
            )
        })
        .collect();
    let four = [
        "create_refund",
        "github.create_issue",
        "lookup_order",
        "search_kb",
    ];
    let want: Vec<(&str, &str)> = ["otlp_json", "otlp_spans"]
        .iter()
        .flat_map(|t| four.iter().map(move |tool| (*t, *tool)))
        .collect();
    assert_eq!(tools, want);
    let span_ids: Vec<&str> = recorded["span_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for r in &rows {
        let id = r["event_id"].as_str().unwrap();
        assert!(span_ids.contains(&id), "event_id {id} is trace/span id");
        assert_eq!(r["tenant"], "acme", "from the resource's tenant.id");
        assert_eq!(r["environment"], "production");
        assert_eq!(r["workflow_id"], "conv-42");
        assert!(r["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
        match r["tool"].as_str().unwrap() {
            "create_refund" => {
                assert_eq!(r["status"], "error");
                assert_eq!(r["error_type"], "payment_gateway_timeout");
            }
            "github.create_issue" => {
                assert_eq!(r["agent_id"], "support-bot-svc", "service.name");
                assert_eq!(r["status"], "ok");
            }
            _ => {
                assert_eq!(r["agent_id"], "support-bot", "gen_ai.agent.id");
                assert!(
                    r["tool_call_id"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("call-"))
                );
            }
        }
    }
    // The secret in the arguments is redacted, in both copies.
    let redacted = count(
        data.path(),
        "SELECT count(*) AS n FROM invocations WHERE tool = 'lookup_order' AND array_length(redactions) > 0 AND input LIKE '%[REDACTED%'",
    );
    assert_eq!(redacted, 2);

    // The message that is not OTLP, and the tool span without a tool name,
    // are dead letters of their own, naming the span.
    let dead = query(
        data.path(),
        "SELECT src_topic, reason, detail FROM dead_letter WHERE src_topic <> 'agent-events' ORDER BY src_topic, reason",
        &[],
    );
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|r| {
            (
                r["src_topic"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("otlp_json", "invalid_otlp"),
            ("otlp_json", "missing_field"),
            ("otlp_spans", "invalid_otlp"),
            ("otlp_spans", "missing_field"),
        ]
    );
    for r in dead.iter().filter(|r| r["reason"] == "missing_field") {
        let detail = r["detail"].as_str().unwrap();
        assert!(
            span_ids
                .iter()
                .any(|id| detail.starts_with(&format!("span {id}"))),
            "names the span: {detail}"
        );
        assert!(detail.contains("tool"), "names the field: {detail}");
    }

    // The v1 topic, read by the same consumer, is whole.
    let v1 = count(
        data.path(),
        "SELECT count(*) AS n FROM invocations WHERE src_topic = 'agent-events'",
    );
    assert_eq!(v1 as usize, corpus.valid_ids.len());
    let stored = everything_stored(data.path());
    assert!(!stored.contains(SECRET), "the OTLP secret is stored");
    for s in &corpus.secrets {
        assert!(!stored.contains(s.as_str()), "a v1 secret is stored");
    }

    // `query` answers on the result.
    let out = Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args([
            "query",
            "--data-dir",
            dir,
            "--format",
            "csv",
            "SELECT tool, count(*) AS calls FROM invocations WHERE src_topic = 'otlp_spans' GROUP BY tool ORDER BY tool",
        ])
        .output()
        .expect("agentaudit query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("create_refund,1"), "{text}");
    assert!(text.contains("search_kb,1"), "{text}");
}

#[test]
fn a_spike_planted_in_otlp_traffic_raises_tool_frequency_spike() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().unwrap();
    let mut serve = demo_with_planted_spike(
        dir,
        &["--input-format", "otlp_proto", "--topic", "otlp_spans"],
    );
    assert!(serve.terminate().success());
    assert_only_the_planted_spike(data.path(), "benign OTLP demo traffic");
    let stored = count(
        data.path(),
        "SELECT count(*) AS n FROM invocations WHERE src_topic = 'otlp_spans'",
    );
    assert!(stored > 1000, "{stored} spans stored");
}
