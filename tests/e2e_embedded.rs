//! End to end on librdkafka's in-process broker: a corpus with malformed
//! messages and planted secrets goes through a real `agentaudit serve`
//! process; the dataset must hold it exactly, with nothing secret.

mod common;

use std::time::Duration;

use agentaudit::source::embedded::EmbeddedBroker;
use common::{
    Corpus, Serve, assert_dataset_matches, assert_only_the_planted_spike, count,
    demo_with_planted_spike,
};

#[test]
fn corpus_lands_exactly_once_and_redacted() {
    let topic = "e2e-events";
    let broker = EmbeddedBroker::start(topic, 3).expect("broker");
    let brokers = broker.bootstrap_servers();
    let corpus = Corpus::generate(3000, 7);
    corpus.produce(&brokers, topic);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().unwrap();
    let mut serve = Serve::consuming(&brokers, topic, "e2e", data);
    serve.wait_until("readiness", Duration::from_secs(60), |s| {
        s.get("/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(serve.get("/healthz").map(|r| r.0), Some(200));
    serve.wait_until("all messages consumed", Duration::from_secs(120), |s| {
        s.metric("agentaudit_events_consumed_total") >= 3000.0
    });
    let (_, metrics) = serve.get("/metrics").expect("metrics");
    assert_eq!(
        common::metric_sum(&metrics, "agentaudit_dead_letters_total") as usize,
        corpus.malformed
    );
    assert!(common::metric_sum(&metrics, "agentaudit_redactions_total") > 0.0);
    for secret in &corpus.secrets {
        assert!(
            !metrics.contains(secret.as_str()),
            "a secret reached /metrics"
        );
    }
    let status = serve.terminate();
    assert!(status.success(), "clean stop exits 0: {status:?}");

    assert_dataset_matches(dir.path(), &corpus);
    // Every dead-letter reason the generator produces is named.
    let reasons = count(
        dir.path(),
        "SELECT count(DISTINCT reason) AS n FROM dead_letter",
    );
    assert!(reasons >= 6, "only {reasons} distinct dead-letter reasons");
    // Files are complete Parquet under Hive partitions; nothing left staged.
    let staged = std::fs::read_dir(dir.path().join("_staging"))
        .unwrap()
        .count();
    assert_eq!(staged, 0);

    // A restart on the same data directory and group adds nothing.
    let mut serve = Serve::consuming(&brokers, topic, "e2e", data);
    std::thread::sleep(Duration::from_secs(3));
    assert!(serve.terminate().success());
    assert_dataset_matches(dir.path(), &corpus);
}

#[test]
fn demo_mode_runs_the_whole_product_with_one_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().unwrap();
    let mut serve = Serve::start(&["--demo", "--demo-rate", "500", "--data-dir", data]);
    serve.wait_until("demo events consumed", Duration::from_secs(60), |s| {
        s.metric("agentaudit_events_consumed_total") >= 500.0
    });
    assert!(serve.terminate().success());
    let stored = count(dir.path(), "SELECT count(*) AS n FROM invocations");
    assert!(stored >= 400, "demo stored {stored} invocations");
    let secrets = count(
        dir.path(),
        "SELECT count(*) AS n FROM invocations WHERE array_length(redactions) > 0",
    );
    assert!(
        secrets > 0,
        "demo traffic carries secrets that get redacted"
    );
}

#[test]
fn demo_with_a_scenario_raises_its_alert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().unwrap();
    let mut serve = demo_with_planted_spike(data, &[]);
    assert!(serve.terminate().success());
    assert_only_the_planted_spike(dir.path(), "benign demo traffic");
}

/// `serve`'s log lines, written to a pipe, over a few seconds of demo
/// traffic, then a clean stop.
fn serve_logs(extra: &[&str]) -> String {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args(extra)
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("AGENTAUDIT_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    std::thread::sleep(Duration::from_secs(4));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().expect("wait").success());
    reader.join().expect("reader")
}

#[test]
fn logs_to_a_pipe_have_no_colour_and_json_logs_are_json() {
    let text = serve_logs(&[]);
    assert!(text.lines().count() >= 2, "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in logs written to a pipe: {text:?}"
    );
    let json = serve_logs(&["--log-format", "json"]);
    let mut lines = 0;
    for line in json.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "{json}");
}
