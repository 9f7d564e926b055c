//! End to end, several instances, one lake: `serve` processes in one
//! consumer group on tansu (a separate Kafka-compatible broker) write one
//! dataset on a real S3 API (moto's server), while one is killed with
//! SIGKILL mid-stream and another joins later. The corpus, with malformed
//! messages and planted secrets, is produced by kafka-python, one record
//! batch a message (tansu 0.6 skips the rest of a batch when a new owner's
//! fetch starts inside it: see tests/tools/produce.py); the lake is read
//! back from S3 by pyarrow's S3 filesystem and queried with DuckDB, with no
//! deduplication.
//!
//! Needs TANSU_BIN, AGENTAUDIT_PYTHON and MOTO_SERVER_BIN, which
//! ./scripts/test.sh installs and sets.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use agentaudit::lake::Lake;
use common::s3::S3Server;
use common::tansu::{create_topic, free_port, required_env, start_tansu};
use common::{Corpus, Serve, assert_report_matches, produce_foreign_one_per_batch, tool_report};

const HASH_KEY: &str = "e2e-lake-digest-key-0123456789";

/// Rows in both tables of the lake, duplicates included.
fn stored(lake: &Lake) -> usize {
    let sql = "SELECT (SELECT count(*) FROM invocations) + (SELECT count(*) FROM dead_letter) AS n";
    let batches = agentaudit::query::run_blocking(lake, sql.into()).expect("query the lake");
    let text = agentaudit::query::render(&batches, agentaudit::query::Format::Jsonl).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    v["n"].as_u64().unwrap_or(0) as usize
}

/// An instance's view of its partitions: assignment, lag, committed
/// offsets, claims lost, rows skipped and messages dropped.
fn partition_metrics(serve: &Serve) -> Vec<String> {
    serve.metric_lines(&[
        "agentaudit_partitions_assigned",
        "agentaudit_consumer_lag",
        "agentaudit_committed_offset",
        "agentaudit_lake_claims_lost_total",
        "agentaudit_events_skipped_durable_total",
        "agentaudit_messages_dropped_on_revoke_total",
    ])
}

fn wait_assigned(serve: &Serve, who: &str) {
    serve.wait_until(
        &format!("{who} to be assigned partitions"),
        Duration::from_secs(90),
        |s| s.metric("agentaudit_partitions_assigned") > 0.0,
    );
}

#[test]
fn three_instances_write_one_lake_on_s3_exactly_once_through_a_sigkill_and_a_late_joiner() {
    let tansu_bin = required_env("TANSU_BIN");
    let python = required_env("AGENTAUDIT_PYTHON");
    let port = free_port();
    let _tansu = start_tansu(&tansu_bin, port);
    let topic = "lake-events";
    create_topic(&tansu_bin, port, topic, 6);
    let brokers = format!("127.0.0.1:{port}");
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let url = "s3://lake/agentaudit";
    let lake = Lake::open(Path::new(url), &s3.config()).unwrap();

    let corpus = Corpus::generate(6000, 31);
    let total = corpus.messages.len();
    let (first, rest) = corpus.messages.split_at(2000);
    let (second, third) = rest.split_at(2000);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lake.toml");
    // Commit every second, so the kill lands among many claims.
    std::fs::write(
        &config,
        format!(
            "[sink]\nmax_file_age_secs = 1\nspool_dir = \"{}\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let mut env = s3.env();
    env.push(("AGENTAUDIT_REDACT_HASH_KEY", HASH_KEY.into()));
    let args = [
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--group",
        "lake-e2e",
        "--data-dir",
        url,
        "--config",
        config.to_str().unwrap(),
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
    ];

    produce_foreign_one_per_batch(&python, &brokers, topic, first, dir.path());
    let mut a = Serve::start_with_env(&args, &env);
    wait_assigned(&a, "the first instance");
    let mut b = Serve::start_with_env(&args, &env);
    wait_assigned(&b, "the second instance");
    let mut c = Serve::start_with_env(&args, &env);
    wait_assigned(&c, "the third instance");

    // Mid-stream: the second instance is killed while traffic arrives, once
    // it has published claims of its own, so that its last claims and
    // uncommitted offsets are left for the next owners.
    let producer = {
        let (python, brokers, scratch) = (python.clone(), brokers.clone(), dir.path().to_owned());
        let second = second.to_vec();
        std::thread::spawn(move || {
            produce_foreign_one_per_batch(&python, &brokers, topic, &second, &scratch)
        })
    };
    let published = b.metric("agentaudit_rows_written_total");
    b.wait_until(
        "the second instance to publish",
        Duration::from_secs(60),
        |s| s.metric("agentaudit_rows_written_total") > published,
    );
    b.kill();
    producer.join().expect("producer");
    produce_foreign_one_per_batch(&python, &brokers, topic, third, dir.path());
    // Another instance joins later, once the killed one's session has
    // expired (6 s). tansu 0.6 hands the survivors their old assignment
    // again when a member times out (same generation, the dead member's
    // partitions orphaned); the join starts a new generation, in which every
    // partition has a live owner. A join before the expiry would be folded
    // into a generation that still counts the dead member.
    std::thread::sleep(Duration::from_secs(10));
    let mut d = Serve::start_with_env(&args, &env);
    let started = Instant::now();
    let owned = |a: &Serve, c: &Serve, d: &Serve| {
        [a, c, d]
            .iter()
            .map(|s| s.metric("agentaudit_partitions_assigned"))
            .sum::<f64>()
    };
    while owned(&a, &c, &d) < 6.0 || d.metric("agentaudit_partitions_assigned") == 0.0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the killed instance's partitions never found a live owner: {} owned",
            owned(&a, &c, &d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let started = Instant::now();
    while stored(&lake) < total {
        if started.elapsed() > Duration::from_secs(240) {
            panic!(
                "only {} of {total} rows in the lake; per partition {}; gaps {}; the instances say {:#?}",
                stored(&lake),
                common::lake::per_partition(&lake),
                common::lake::not_exactly_once(&lake, topic),
                [&a, &c, &d].map(partition_metrics)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for s in [&mut a, &mut c, &mut d] {
        assert!(s.terminate().success());
    }
    let gaps = common::lake::not_exactly_once(&lake, topic);
    assert!(gaps.is_empty(), "offsets not stored exactly once: {gaps}");

    let secrets_path = dir.path().join("secrets.txt");
    std::fs::write(&secrets_path, corpus.secrets.join("\n")).unwrap();
    let report = tool_report(
        &python,
        "lake_check.py",
        &[
            &s3.endpoint,
            "lake/agentaudit",
            secrets_path.to_str().unwrap(),
        ],
        &s3.env(),
    );
    assert_report_matches(&report, &corpus);
    assert_eq!(
        report["distinct_dead_offsets"].as_u64(),
        Some(corpus.malformed as u64),
        "{report}"
    );
    // Every event is in the lake once, by id, as the corpus planted it.
    let ids = agentaudit::query::run_blocking(
        &lake,
        "SELECT event_id FROM invocations ORDER BY event_id".into(),
    )
    .unwrap();
    let text = agentaudit::query::render(&ids, agentaudit::query::Format::Csv).unwrap();
    let stored_ids: std::collections::BTreeSet<String> =
        text.lines().skip(1).map(str::to_owned).collect();
    assert_eq!(stored_ids, corpus.valid_ids);
}
