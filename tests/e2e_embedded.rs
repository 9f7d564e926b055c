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

/// Every (partition, offset) a local dataset holds, once per row.
fn offsets_in(dir: &std::path::Path) -> Vec<(i64, i64)> {
    common::lake::offset_counts(&agentaudit::lake::Lake::local(dir))
        .into_iter()
        .flat_map(|(p, offsets)| {
            offsets
                .into_iter()
                .flat_map(move |(o, n)| std::iter::repeat_n((p, o), n as usize))
        })
        .collect()
}

/// A second member joins while the first is reading a backlog: the first
/// drops what it polled and had not handed over (the revoke path), and gets
/// some partitions back. Whoever owns a partition next must read the dropped
/// messages again from the committed offset, or no one ever stores them.
#[test]
fn a_member_joining_mid_backlog_leaves_no_message_unread() {
    let topic = "join-events";
    let broker = EmbeddedBroker::start(topic, 6).expect("broker");
    let brokers = broker.bootstrap_servers();
    // About 4 MiB a partition: under the 5 MiB the embedded broker keeps,
    // and more than the first member reads before the second has joined.
    let total = 48_000;
    let corpus = Corpus::generate(total, 11);
    corpus.produce(&brokers, topic);

    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A short session: the in-process broker otherwise holds the rebalance
    // open for most of the default 45 s.
    let member = |dir: &std::path::Path| {
        Serve::start(&[
            "--brokers",
            &brokers,
            "--topic",
            topic,
            "--group",
            "join",
            "--data-dir",
            dir.to_str().unwrap(),
            "-X",
            "session.timeout.ms=6000",
            "-X",
            "heartbeat.interval.ms=500",
        ])
    };
    let mut a = member(dir_a.path());
    a.wait_until("the first member to read", Duration::from_secs(60), |s| {
        s.metric("agentaudit_events_consumed_total") >= 1000.0
    });
    let mut b = member(dir_b.path());
    let read = |a: &Serve, b: &Serve| {
        a.metric("agentaudit_events_consumed_total") + b.metric("agentaudit_events_consumed_total")
            - a.metric("agentaudit_messages_dropped_on_revoke_total")
            - b.metric("agentaudit_messages_dropped_on_revoke_total")
    };
    let started = std::time::Instant::now();
    while read(&a, &b) < total as f64 && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(250));
    }
    // Both stop cleanly, which flushes and commits what each consumed.
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "first member: {} consumed, {} dropped on revoke; second: {} consumed",
        a.metric("agentaudit_events_consumed_total"),
        a.metric("agentaudit_messages_dropped_on_revoke_total"),
        b.metric("agentaudit_events_consumed_total")
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());

    // Each dataset holds a message once; together they hold every message
    // (two local datasets may share a message across a rebalance, which
    // ARCHITECTURE.md has readers deduplicate, but none may miss one).
    let (in_a, in_b) = (offsets_in(dir_a.path()), offsets_in(dir_b.path()));
    for (name, rows) in [("first", &in_a), ("second", &in_b)] {
        let distinct: std::collections::BTreeSet<_> = rows.iter().collect();
        assert_eq!(
            distinct.len(),
            rows.len(),
            "the {name} dataset has a message twice"
        );
    }
    let union: std::collections::BTreeSet<(i64, i64)> = in_a.into_iter().chain(in_b).collect();
    let mut missing = Vec::new();
    for p in 0..6 {
        let hi = union
            .range((p, 0)..(p + 1, 0))
            .last()
            .map_or(-1, |(_, o)| *o);
        missing.extend(
            (0..=hi)
                .filter(|o| !union.contains(&(p, *o)))
                .map(|o| (p, o)),
        );
    }
    assert!(missing.is_empty(), "messages no member stored: {missing:?}");
    assert_eq!(union.len(), total, "messages stored by neither member");
}
