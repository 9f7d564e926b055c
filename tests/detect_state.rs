//! Detection state across restarts and reloads: baselines warmed from the
//! stored dataset alert at once after a restart, and a broken policy file
//! on reload is refused while the previous policy stays in force.

use std::sync::{Arc, RwLock};

use agentaudit::config::{DetectConfig, RedactConfig, SinkConfig};
use agentaudit::decode::{DecodeLimits, decode};
use agentaudit::detect::{AlertChange, Detector, RuleId, SharedPolicy};
use agentaudit::event::KafkaCoords;
use agentaudit::metrics::Metrics;
use agentaudit::redact::Redactor;
use agentaudit::sink::ParquetSink;

fn record(id: &str, ts: i64, redactor: &Redactor) -> agentaudit::event::Record {
    let json = format!(
        r#"{{"event_id":"{id}","ts":{ts},"tenant":"acme","agent_id":"a1","environment":"production","tool":"search","status":"ok"}}"#
    );
    let e = decode(Some(json.as_bytes()), ts, &DecodeLimits::default()).expect("event");
    let coords = KafkaCoords {
        topic: Arc::from("t"),
        partition: 0,
        offset: 0,
        kafka_ts_ms: None,
    };
    redactor.redact_event(e, coords, ts)
}

#[test]
fn baselines_warmed_from_history_alert_without_a_new_warm_up() {
    let dir = tempfile::tempdir().unwrap();
    let redactor = Redactor::new(&RedactConfig::default()).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let minute = 60_000;
    let start = (now - 120 * minute).div_euclid(minute) * minute;
    // Two hours of history: 5 calls a minute.
    let cfg = SinkConfig {
        data_dir: dir.path().to_owned(),
        ..SinkConfig::default()
    };
    let mut sink = ParquetSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
    for m in 0..115 {
        for i in 0..5 {
            sink.push_record(record(
                &format!("h{m}-{i}"),
                start + m * minute + i * 1000,
                &redactor,
            ));
        }
    }
    sink.flush().unwrap();
    drop(sink);

    let detect = DetectConfig::default();
    let mut detector = Detector::new(&detect, false);
    let aggregates = agentaudit::detect::warm::from_history(
        &agentaudit::lake::Lake::local(dir.path()),
        &mut detector,
        minute,
        24,
        now,
        None,
    )
    .unwrap();
    assert_eq!(aggregates, 115, "one aggregate per minute of history");
    assert!(detector.baseline_keys() >= 3);

    // Right after the restart, a burst of 100 calls in one minute alerts:
    // the baselines did not start cold.
    let burst = start + 116 * minute;
    let mut changes = Vec::new();
    for i in 0..100 {
        detector.observe(
            &record(&format!("b{i}"), burst + i * 100, &redactor),
            None,
            &mut changes,
        );
    }
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, AlertChange::Fired(a) if a.rule == RuleId::ToolFrequencySpike)),
        "{changes:?}"
    );

    // A cold detector says nothing about the same burst.
    let mut cold = Detector::new(&detect, false);
    let mut quiet = Vec::new();
    for i in 0..100 {
        cold.observe(
            &record(&format!("c{i}"), burst + i * 100, &redactor),
            None,
            &mut quiet,
        );
    }
    assert!(quiet.is_empty(), "{quiet:?}");
}

#[test]
fn a_broken_policy_on_reload_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let good = "[[agents]]\nid = \"a1\"\nbusiness_owner = \"b\"\ntechnical_owner = \"t\"\nenvironments = [\"production\"]\nreview_by = \"2099-01-01\"\n";
    std::fs::write(&path, good).unwrap();
    let shared: SharedPolicy = Arc::new(RwLock::new(None));
    let metrics = Metrics::new();
    agentaudit::pipeline::reload_policy(&path, &shared, &metrics);
    assert_eq!(metrics.policy_reloads.get(), 1);
    let before = shared.read().unwrap().clone().expect("loaded");
    assert!(before.agents.contains_key("a1"));

    std::fs::write(&path, format!("{good}bogus_field = 1\n")).unwrap();
    agentaudit::pipeline::reload_policy(&path, &shared, &metrics);
    assert_eq!(metrics.policy_reload_failures.get(), 1);
    let after = shared.read().unwrap().clone().expect("still loaded");
    assert!(
        Arc::ptr_eq(&before, &after),
        "the old policy stays in force"
    );
    assert_eq!(metrics.policy_loaded.get(), 1);
}
