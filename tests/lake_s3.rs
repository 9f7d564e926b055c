//! The lake on object storage, read side: a dataset in the Hive layout on a
//! real S3 API (moto's server, a separate process on loopback) answers
//! `query`, the `query` command and `backtest --from/--to` exactly as the
//! same dataset on local disk does.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use agentaudit::config::{Config, RedactConfig, SinkConfig};
use agentaudit::decode::{DecodeLimits, decode};
use agentaudit::event::KafkaCoords;
use agentaudit::lake::Lake;
use agentaudit::metrics::Metrics;
use agentaudit::redact::Redactor;
use agentaudit::sink::ParquetSink;
use common::Corpus;
use common::s3::S3Server;
use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3Builder;

/// A local dataset of `corpus`, as the sink writes it.
fn write_local(dir: &Path, corpus: &Corpus) {
    let cfg = SinkConfig {
        data_dir: dir.to_owned(),
        ..SinkConfig::default()
    };
    let mut sink = ParquetSink::open(&cfg, Arc::new(Metrics::new())).expect("sink");
    let redactor = Redactor::new(&RedactConfig::default()).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for (offset, m) in corpus.messages.iter().enumerate() {
        let coords = KafkaCoords {
            topic: Arc::from("lake"),
            partition: 0,
            offset: offset as i64,
            kafka_ts_ms: None,
        };
        match decode(Some(&m.payload), now, &DecodeLimits::default()) {
            Ok(e) => sink.push_record(redactor.redact_event(e, coords, now)),
            Err(f) => {
                sink.push_dead_letter(redactor.redact_dead_letter(Some(&m.payload), f, coords, now))
            }
        }
    }
    sink.flush().expect("flush");
}

/// Uploads every table file under `dir` to `bucket/prefix/…`, same layout.
fn upload(dir: &Path, server: &S3Server, bucket: &str, prefix: &str) -> usize {
    let store = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_endpoint(&server.endpoint)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .expect("store");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut n = 0;
    for table in ["invocations", "dead_letter", "alerts"] {
        for file in files(&dir.join(table)) {
            let rel = file
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let key = object_store::path::Path::from(format!("{prefix}/{rel}"));
            let bytes = std::fs::read(&file).unwrap();
            rt.block_on(store.put(&key, bytes.into())).expect("put");
            n += 1;
        }
    }
    n
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn answer(lake: &Lake, sql: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = agentaudit::query::session(lake).await?;
        let batches = agentaudit::query::run(&ctx, sql, &Default::default()).await?;
        agentaudit::query::render(&batches, agentaudit::query::Format::Jsonl)
    })
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn a_dataset_on_s3_answers_query_and_backtest_as_on_local_disk() {
    let server = S3Server::start();
    server.create_bucket("lake");
    let dir = tempfile::tempdir().unwrap();
    let corpus = Corpus::generate(3000, 9);
    write_local(dir.path(), &corpus);
    assert!(upload(dir.path(), &server, "lake", "prod/agentaudit") >= 2);

    let local = Lake::local(dir.path());
    let s3 = Lake::open(Path::new("s3://lake/prod/agentaudit"), &server.config()).unwrap();
    for sql in [
        "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM invocations",
        "SELECT tenant, tool, count(*) AS n FROM invocations GROUP BY 1, 2 ORDER BY 1, 2",
        "SELECT reason, count(*) AS n FROM dead_letter GROUP BY 1 ORDER BY 1",
        "SELECT dt, hour, count(*) AS n FROM invocations WHERE dt >= '2000-01-01' GROUP BY 1, 2 ORDER BY 1, 2",
        "SELECT count(*) AS n FROM alerts",
    ] {
        let here = answer(&local, sql);
        assert!(!here.is_empty());
        assert_eq!(answer(&s3, sql), here, "{sql}");
    }
    let rows: serde_json::Value =
        serde_json::from_str(answer(&s3, "SELECT count(*) AS n FROM invocations").trim()).unwrap();
    assert_eq!(rows["n"], corpus.valid_ids.len());
    // An empty prefix is an empty lake, not an error, and nothing is created.
    let empty = Lake::open(Path::new("s3://lake/nothing-here"), &server.config()).unwrap();
    assert_eq!(
        answer(&empty, "SELECT count(*) AS n FROM invocations").trim(),
        r#"{"n":0}"#
    );

    // The `query` command, configured by the AWS environment alone.
    let out = Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args([
            "query",
            "--format",
            "jsonl",
            "--data-dir",
            "s3://lake/prod/agentaudit",
        ])
        .arg("SELECT count(*) AS n FROM invocations")
        .envs(server.env())
        .output()
        .expect("query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(r#"{{"n":{}}}"#, corpus.valid_ids.len())
    );

    // backtest --from/--to replays the same events from either lake. The
    // range is a century: only the hours holding calls are read (one query
    // per calendar hour never finished).
    let (from, to) = (946_684_800_000, 4_102_444_800_000);
    let cfg = Config::default();
    let replay = |lake: Lake| {
        let out = tempfile::tempdir().unwrap();
        let input = agentaudit::detect::backtest::Input::Dataset {
            lake,
            from_ms: from,
            to_ms: to,
        };
        agentaudit::detect::backtest::run(&cfg, &input, out.path())
            .expect("backtest")
            .events
    };
    let events = replay(Lake::local(dir.path()));
    assert_eq!(events, corpus.valid_ids.len());
    assert_eq!(
        replay(Lake::open(Path::new("s3://lake/prod/agentaudit"), &server.config()).unwrap()),
        events
    );
}
