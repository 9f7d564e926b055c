//! The named incident queries in queries/, each run against a small dataset
//! whose answers are known, plus the read-only guarantees of `query`.

mod common;

use std::path::Path;
use std::sync::Arc;

use agentaudit::config::DetectConfig;
use agentaudit::config::{RedactConfig, SinkConfig};
use agentaudit::decode::{DecodeLimits, decode};
use agentaudit::detect::{AlertChange, Detector};
use agentaudit::event::KafkaCoords;
use agentaudit::metrics::Metrics;
use agentaudit::redact::Redactor;
use agentaudit::sink::ParquetSink;
use common::query;
use serde_json::json;

fn ev(
    id: &str,
    ts: &str,
    tenant: &str,
    agent: &str,
    tool: &str,
    status: &str,
) -> serde_json::Value {
    json!({"event_id": id, "ts": ts, "tenant": tenant, "agent_id": agent,
           "environment": "production", "tool": tool, "status": status})
}

fn build_dataset(dir: &Path) {
    let mut events = vec![
        ev(
            "e1",
            "2026-11-20T10:00:00Z",
            "acme",
            "a1",
            "search_orders",
            "ok",
        ),
        ev(
            "e2",
            "2026-11-20T10:00:05Z",
            "acme",
            "a1",
            "create_refund",
            "ok",
        ),
        ev(
            "e3",
            "2026-11-20T10:00:10Z",
            "acme",
            "a1",
            "create_refund",
            "ok",
        ),
        ev(
            "e4",
            "2026-11-20T10:01:00Z",
            "acme",
            "a1",
            "send_email",
            "error",
        ),
        ev(
            "e5",
            "2026-11-20T10:01:10Z",
            "acme",
            "a1",
            "send_email",
            "error",
        ),
        ev(
            "e6",
            "2026-11-20T10:01:20Z",
            "acme",
            "a1",
            "send_email",
            "denied",
        ),
        ev("e7", "2026-11-20T10:02:00Z", "acme", "a1", "http_get", "ok"),
        ev(
            "e8",
            "2026-11-20T11:00:00Z",
            "globex",
            "g1",
            "delete_record",
            "denied",
        ),
        ev(
            "e9",
            "2026-11-21T00:30:00Z",
            "globex",
            "g1",
            "query_db",
            "ok",
        ),
    ];
    for (i, step) in [(0, 1), (1, 2), (2, 3)] {
        events[i]["workflow_id"] = json!("wf1");
        events[i]["step"] = json!(step);
    }
    events[1]["approval"] = json!({"id": "ap-1", "approver": "lead", "decision": "approved"});
    events[6]["input"] = json!({"url": "https://s3.example", "note": "key AKIAIOSFODNN7EXAMPLE"});
    events[8]["input"] = json!({"sql": "select * from users where email = 'jo@example.org'"});

    let cfg = SinkConfig {
        data_dir: dir.to_owned(),
        ..SinkConfig::default()
    };
    let mut sink = ParquetSink::open(&cfg, Arc::new(Metrics::new())).expect("sink");
    let redactor = Redactor::new(&RedactConfig::default()).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let payloads: Vec<Vec<u8>> = events
        .iter()
        .map(|e| e.to_string().into_bytes())
        .chain([b"not json".to_vec(), br#"{"event_id":"x"}"#.to_vec()])
        .collect();
    // Detection runs as in serve (no policy file), so the alerts table holds
    // what it fired on this dataset.
    let mut detector = Detector::new(&DetectConfig::default(), false);
    let mut changes = Vec::new();
    for (offset, p) in payloads.iter().enumerate() {
        let coords = KafkaCoords {
            topic: Arc::from("q"),
            partition: 0,
            offset: offset as i64,
            kafka_ts_ms: None,
        };
        match decode(Some(p), now, &DecodeLimits::default()) {
            Ok(e) => {
                let record = redactor.redact_event(e, coords, now);
                detector.observe(&record, None, &mut changes);
                sink.push_record(record);
            }
            Err(f) => sink.push_dead_letter(redactor.redact_dead_letter(Some(p), f, coords, now)),
        }
    }
    let mut pending = agentaudit::sink::PendingRows::default();
    for c in changes {
        if let AlertChange::Fired(a) = c {
            pending.push_alert(a);
        }
    }
    let alerts = pending.rows();
    let outcome = sink.flush().expect("flush");
    assert_eq!(outcome.rows, 11);
    assert_eq!(sink.write(pending).expect("alerts").rows, alerts);
}

fn sql(name: &str) -> String {
    std::fs::read_to_string(format!("{}/queries/{name}.sql", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn ids(rows: &[serde_json::Value]) -> Vec<&str> {
    rows.iter().filter_map(|r| r["event_id"].as_str()).collect()
}

#[test]
fn named_queries_answer_the_known_dataset() {
    let dir = tempfile::tempdir().unwrap();
    build_dataset(dir.path());
    let d = dir.path();

    let rows = query(
        d,
        &sql("tenant_timeline"),
        &[
            ("tenant", "acme"),
            ("since", "2026-11-20T10:00:00Z"),
            ("until", "2026-11-20T10:01:30Z"),
        ],
    );
    assert_eq!(ids(&rows), ["e1", "e2", "e3", "e4", "e5", "e6"]);

    let rows = query(
        d,
        &sql("agent_timeline"),
        &[
            ("agent", "g1"),
            ("since", "2026-11-20T00:00:00Z"),
            ("until", "2026-11-22T00:00:00Z"),
        ],
    );
    assert_eq!(ids(&rows), ["e8", "e9"], "spans two dt partitions");

    let rows = query(d, &sql("workflow_replay"), &[("workflow", "wf1")]);
    assert_eq!(ids(&rows), ["e1", "e2", "e3"]);
    assert_eq!(rows[2]["step"], 3);

    let rows = query(
        d,
        &sql("secrets_by_tool"),
        &[("since", "2026-11-01T00:00:00Z")],
    );
    let found: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["tenant"].to_string(),
                r["tool"].to_string(),
                r["detector"].to_string(),
            )
        })
        .collect();
    assert_eq!(found.len(), 2, "{rows:?}");
    assert!(found.contains(&(
        "\"acme\"".into(),
        "\"http_get\"".into(),
        "\"aws_access_key\"".into()
    )));
    assert!(found.contains(&(
        "\"globex\"".into(),
        "\"query_db\"".into(),
        "\"email\"".into()
    )));

    let rows = query(
        d,
        &sql("error_bursts"),
        &[("since", "2026-11-20T00:00:00Z"), ("min_count", "3")],
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["errors"].as_i64(), rows[0]["denials"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(rows[0]["agent_id"], "a1");

    let rows = query(
        d,
        &sql("tier_a_approvals"),
        &[("since", "2026-11-20T00:00:00Z")],
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        rows[0]["event_id"], "e3",
        "the unapproved refund sorts first"
    );
    assert_eq!(rows[0]["unapproved"], true);
    assert!(rows[1..].iter().all(|r| r["unapproved"] == false));

    let rows = query(
        d,
        &sql("dead_letters"),
        &[("since", "2000-01-01T00:00:00Z")],
    );
    let mut reasons: Vec<&str> = rows.iter().filter_map(|r| r["reason"].as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid_json", "missing_field"]);
}

#[test]
fn every_named_query_opens_with_when_to_use() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(text.starts_with("-- When to use:"), "{text}");
        n += 1;
    }
    assert!(n >= 5);
}

#[test]
fn writes_are_refused_and_missing_params_named() {
    let dir = tempfile::tempdir().unwrap();
    build_dataset(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = |name: &str| outside.path().join(name).display().to_string();
    let files_before = parquet_files(dir.path());
    rt.block_on(async {
        let ctx = agentaudit::query::session(&agentaudit::lake::Lake::local(dir.path()))
            .await
            .unwrap();
        let none = Default::default();
        let copy = target("copy.csv");
        let location = target("y");
        let writes = [
            "CREATE TABLE x AS SELECT 1".to_owned(),
            format!("CREATE EXTERNAL TABLE y (c INT) STORED AS PARQUET LOCATION '{location}'"),
            "INSERT INTO invocations SELECT * FROM invocations".to_owned(),
            format!("COPY (SELECT 'x' AS c) TO '{copy}' STORED AS CSV"),
            "DROP TABLE invocations".to_owned(),
            "SET datafusion.execution.batch_size = 1".to_owned(),
        ];
        // A write is refused wherever it sits in the plan: EXPLAIN ANALYZE
        // runs its input, so checking the top node alone let it write.
        for write in &writes {
            for statement in [
                write.clone(),
                format!("EXPLAIN {write}"),
                format!("EXPLAIN ANALYZE {write}"),
                format!("EXPLAIN VERBOSE {write}"),
            ] {
                let err = agentaudit::query::run(&ctx, &statement, &none).await;
                let err = match err {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("{statement}: ran"),
                };
                assert!(err.contains("read-only"), "{statement}: {err}");
            }
        }
        assert!(
            std::fs::read_dir(outside.path()).unwrap().next().is_none(),
            "nothing written outside the dataset"
        );
        let err = agentaudit::query::run(
            &ctx,
            "SELECT * FROM invocations WHERE tenant = $tenant",
            &none,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("`tenant`"), "{err}");
    });
    assert_eq!(
        parquet_files(dir.path()),
        files_before,
        "no file added to the dataset"
    );
    // Querying a data directory that does not exist creates nothing.
    let absent = outside.path().join("no-such-dataset");
    rt.block_on(async {
        let ctx = agentaudit::query::session(&agentaudit::lake::Lake::local(&absent))
            .await
            .unwrap();
        let rows = agentaudit::query::run(
            &ctx,
            "SELECT count(*) FROM invocations",
            &Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    });
    assert!(!absent.exists(), "query created {}", absent.display());
}

fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn alert_queries_start_from_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    build_dataset(dir.path());
    let d = dir.path();
    let alerts = query(
        d,
        "SELECT alert_id, tenant, agent_id, tool FROM alerts WHERE rule = 'secret_in_tool_input' ORDER BY tool",
        &[],
    );
    let e7 = alerts
        .iter()
        .find(|a| a["tool"] == "http_get")
        .unwrap_or_else(|| panic!("the AWS key passed to http_get raised an alert: {alerts:?}"));
    assert_eq!(
        (e7["tenant"].as_str(), e7["agent_id"].as_str()),
        (Some("acme"), Some("a1"))
    );
    let id = e7["alert_id"].as_str().unwrap();
    let rows = query(d, &sql("alert_context"), &[("alert_id", id)]);
    assert_eq!(
        ids(&rows),
        ["e7"],
        "acme/a1/http_get calls around the alert's window"
    );
    assert!(rows[0]["redactions"].to_string().contains("aws_access_key"));

    let rows = query(
        d,
        &sql("alerts_overview"),
        &[("since", "2026-11-20T00:00:00Z")],
    );
    assert!(
        rows.iter()
            .any(|r| r["rule"] == "secret_in_tool_input" && r["alerts"].as_i64() >= Some(1)),
        "{rows:?}"
    );
}

/// Runs `agentaudit query --file queries/NAME.sql` with `params`, in
/// `format`, to `out`.
fn export(data: &Path, name: &str, params: &[(&str, &str)], format: &str, out: &Path) {
    let file = format!("{}/queries/{name}.sql", env!("CARGO_MANIFEST_DIR"));
    let mut args = vec![
        "query".to_owned(),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--file".to_owned(),
        file,
        "--format".to_owned(),
        format.to_owned(),
        "--out".to_owned(),
        out.display().to_string(),
    ];
    for (k, v) in params {
        args.push("--param".into());
        args.push(format!("{k}={v}"));
    }
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args(&args)
        .output()
        .expect("agentaudit query");
    assert!(
        run.status.success(),
        "{name} as {format}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Rows of a CSV export, read back by arrow's CSV reader with the schema it
/// infers: every row has every column, quoted as needed.
fn csv_rows(path: &Path) -> usize {
    use datafusion::arrow::csv::ReaderBuilder;
    use datafusion::arrow::csv::reader::Format;
    let mut file = std::fs::File::open(path).unwrap();
    let (schema, _) = Format::default()
        .with_header(true)
        .infer_schema(&mut file, None)
        .unwrap();
    let file = std::fs::File::open(path).unwrap();
    ReaderBuilder::new(Arc::new(schema))
        .with_header(true)
        .build(file)
        .unwrap()
        .map(|b| b.expect("a CSV batch").num_rows())
        .sum()
}

#[test]
fn every_shipped_query_exports_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    build_dataset(dir.path());
    let d = dir.path();
    let alert_id = query(
        d,
        "SELECT alert_id FROM alerts WHERE rule = 'secret_in_tool_input' AND tool = 'http_get'",
        &[],
    )[0]["alert_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let since = ("since", "2000-01-01T00:00:00Z");
    let window = [since, ("until", "2026-12-01T00:00:00Z")];
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "tenant_timeline",
            vec![("tenant", "acme"), window[0], window[1]],
        ),
        (
            "agent_timeline",
            vec![("agent", "g1"), window[0], window[1]],
        ),
        ("workflow_replay", vec![("workflow", "wf1")]),
        ("secrets_by_tool", vec![since]),
        ("error_bursts", vec![since, ("min_count", "3")]),
        ("tier_a_approvals", vec![since]),
        ("dead_letters", vec![since]),
        ("alerts_overview", vec![since]),
        ("alert_context", vec![("alert_id", alert_id.as_str())]),
    ];
    let shipped = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("queries"))
        .unwrap()
        .count();
    assert_eq!(cases.len(), shipped, "a shipped query has no export case");
    let out_dir = tempfile::tempdir().unwrap();
    for (name, params) in &cases {
        let rows = query(d, &sql(name), params).len();
        assert!(rows > 0, "{name} answers nothing on the dataset");
        let path = |ext: &str| out_dir.path().join(format!("{name}.{ext}"));

        export(d, name, params, "csv", &path("csv"));
        assert_eq!(csv_rows(&path("csv")), rows, "{name} as CSV");

        export(d, name, params, "json", &path("json"));
        let array: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(path("json")).unwrap()).unwrap();
        assert_eq!(array.len(), rows, "{name} as JSON");

        export(d, name, params, "jsonl", &path("jsonl"));
        let text = std::fs::read_to_string(path("jsonl")).unwrap();
        assert_eq!(text.lines().count(), rows, "{name} as JSON lines");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("a JSON line");
        }

        export(d, name, params, "parquet", &path("parquet"));
        let reader = datafusion::parquet::file::reader::SerializedFileReader::new(
            std::fs::File::open(path("parquet")).unwrap(),
        )
        .unwrap();
        use datafusion::parquet::file::reader::FileReader;
        assert_eq!(
            reader.metadata().file_metadata().num_rows() as usize,
            rows,
            "{name} as Parquet"
        );

        export(d, name, params, "table", &path("txt"));
        let table = std::fs::read_to_string(path("txt")).unwrap();
        assert!(table.starts_with('+'), "{name} as a table: {table}");
    }
    // The first incident query's list column is JSON text in CSV.
    let csv = std::fs::read_to_string(out_dir.path().join("tenant_timeline.csv")).unwrap();
    assert!(
        csv.contains(r#""[""aws_access_key""]""#),
        "redactions as a JSON list in one quoted cell: {csv}"
    );
    // Only the exports are left: the temporary files were renamed.
    let leftovers: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_export_that_fails_leaves_the_old_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    build_dataset(dir.path());
    let out = dir.path().join("answer.csv");
    std::fs::write(&out, "the previous answer\n").unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args(["query", "--data-dir"])
        .arg(dir.path())
        .args(["--format", "csv", "--out"])
        .arg(&out)
        .arg("SELECT no_such_column FROM invocations")
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "the previous answer\n"
    );
    let missing_dir = dir.path().join("no/such/dir/answer.csv");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args(["query", "--data-dir"])
        .arg(dir.path())
        .args(["--format", "json", "--out"])
        .arg(&missing_dir)
        .arg("SELECT 1 AS one")
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("cannot write the result to"), "{err}");
}
