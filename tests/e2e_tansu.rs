//! End to end against a separate Kafka-compatible broker process (tansu),
//! with the corpus produced by kafka-python (a client other than ours) and
//! the dataset read back by DuckDB with Hive partitioning.
//!
//! Needs TANSU_BIN and AGENTAUDIT_PYTHON, which ./scripts/test.sh installs
//! and sets; without them this test fails and says so.

mod common;

use std::time::Duration;

use common::tansu::{create_topic, free_port, required_env, start_tansu};
use common::{
    Corpus, Serve, assert_dataset_matches, assert_report_matches, produce_foreign, tool_report,
};

#[test]
fn foreign_client_through_tansu_lands_once_and_duckdb_reads_it() {
    let tansu_bin = required_env("TANSU_BIN");
    let python = required_env("AGENTAUDIT_PYTHON");
    let port = free_port();
    let _tansu = start_tansu(&tansu_bin, port);
    let topic = "tansu-events";
    create_topic(&tansu_bin, port, topic, 3);

    let corpus = Corpus::generate(2000, 3);
    let dir = tempfile::tempdir().unwrap();
    let brokers = format!("127.0.0.1:{port}");
    produce_foreign(&python, &brokers, topic, &corpus.messages, dir.path());

    let data = dir.path().join("data");
    let mut serve = Serve::consuming(&brokers, topic, "tansu-e2e", data.to_str().unwrap());
    serve.wait_until("all messages consumed", Duration::from_secs(180), |s| {
        s.metric("agentaudit_events_consumed_total") >= corpus.messages.len() as f64
    });
    assert!(serve.terminate().success());
    assert_dataset_matches(&data, &corpus);

    let secrets_path = dir.path().join("secrets.txt");
    std::fs::write(&secrets_path, corpus.secrets.join("\n")).unwrap();
    let report = tool_report(
        &python,
        "duckdb_check.py",
        &[data.to_str().unwrap(), secrets_path.to_str().unwrap()],
        &[],
    );
    assert_report_matches(&report, &corpus);
    assert!(
        report["ts_type"]
            .as_str()
            .unwrap_or_default()
            .starts_with("TIMESTAMP"),
        "{report}"
    );
}
