//! End to end against a hostile producer: each test sends what a compromised
//! agent could send through a real `agentaudit serve` process, and checks
//! that the monitor keeps storing, stays honest about its health, and
//! stores nothing secret.

mod common;

use std::time::Duration;

use agentaudit::source::embedded::EmbeddedBroker;
use common::{Serve, count};
use serde_json::Value;

/// A valid v1 event with the given id and epoch-millisecond timestamp.
fn event(id: &str, ts_ms: i64) -> String {
    serde_json::json!({
        "event_id": id,
        "ts": ts_ms,
        "tenant": "acme",
        "environment": "prod",
        "agent_id": "agent-1",
        "tool": "search",
        "status": "ok",
    })
    .to_string()
}

fn produce(brokers: &str, topic: &str, payloads: &[String]) {
    use rdkafka::producer::Producer;
    let producer = agentaudit::traffic::producer(brokers, &[]).expect("producer");
    for p in payloads {
        agentaudit::traffic::send(&producer, topic, None, p.as_bytes()).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// 3,000 events, each in its own hour since 2000-01-02, under the common
/// service default of 1,024 open files: before staged files were bounded,
/// every (table, hour) held one open, the flusher failed with "Too many open
/// files" and nothing more was stored while `/readyz` stayed 200.
#[test]
fn three_thousand_back_dated_hours_all_land_under_1024_open_files() {
    let topic = "hostile-hours";
    let broker = EmbeddedBroker::start(topic, 2).expect("broker");
    let brokers = broker.bootstrap_servers();
    const HOURS: i64 = 3000;
    let start_ms = 946_771_200_000; // 2000-01-02T00:00:00Z
    let payloads: Vec<String> = (0..HOURS)
        .map(|h| event(&format!("h{h}"), start_ms + h * 3_600_000 + 1_000))
        .collect();
    produce(&brokers, topic, &payloads);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().unwrap();
    let mut serve = Serve::start_with_open_files(
        1024,
        &[
            "--brokers",
            &brokers,
            "--topic",
            topic,
            "--group",
            "hours",
            "--data-dir",
            data,
        ],
    );
    serve.wait_until("all consumed", Duration::from_secs(120), |s| {
        s.metric("agentaudit_events_consumed_total") >= HOURS as f64
    });
    // Within one roll interval everything is durable, and the sink says so.
    serve.wait_until("every row committed", Duration::from_secs(120), |s| {
        s.metric("agentaudit_rows_written_total") >= HOURS as f64
    });
    assert_eq!(serve.metric("agentaudit_sink_stalled"), 0.0);
    assert_eq!(serve.get("/readyz").map(|r| r.0), Some(200));
    assert!(serve.terminate().success(), "clean stop exits 0");

    let rows = count(dir.path(), "SELECT count(*) AS n FROM invocations");
    assert_eq!(rows, HOURS, "every back-dated hour stored");
    let distinct = count(
        dir.path(),
        "SELECT count(DISTINCT date_trunc('hour', ts)) AS n FROM invocations",
    );
    assert_eq!(distinct, HOURS);
}

/// A sink that cannot make progress says so and gives up within its budget:
/// `/readyz` turns 503 and `agentaudit_sink_stalled` 1 while it retries, then
/// the process exits non-zero for its supervisor to restart. The restart,
/// with the obstacle gone, stores every row once.
#[test]
fn a_stalled_sink_turns_unready_exits_non_zero_and_recovers_on_restart() {
    let topic = "hostile-stall";
    let broker = EmbeddedBroker::start(topic, 1).expect("broker");
    let brokers = broker.bootstrap_servers();
    let hour_ms = 946_771_200_000; // 2000-01-02T00:00:00Z
    let payloads: Vec<String> = (0..50)
        .map(|i| event(&format!("s{i}"), hour_ms + i * 1_000))
        .collect();
    produce(&brokers, topic, &payloads);

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // A file where the partition directory must go: creating it fails (as
    // root too, unlike a read-only mode) until the file is removed.
    let obstacle = data.join("invocations").join("dt=2000-01-02");
    std::fs::create_dir_all(obstacle.parent().unwrap()).unwrap();
    std::fs::write(&obstacle, b"in the way").unwrap();
    let config = dir.path().join("agentaudit.toml");
    std::fs::write(
        &config,
        "[sink]\nmax_file_age_secs = 1\nstall_timeout_secs = 4\n",
    )
    .unwrap();
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--group",
        "stall",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut serve = Serve::start(&args);
    serve.wait_until("the stall to show", Duration::from_secs(60), |s| {
        s.metric("agentaudit_sink_stalled") == 1.0
            && s.get("/readyz").is_some_and(|(code, _)| code == 503)
    });
    assert!(serve.metric("agentaudit_sink_retries_total") >= 1.0);
    let status = serve.wait_for_exit(Duration::from_secs(60));
    assert!(
        !status.success(),
        "a failed sink exits non-zero: {status:?}"
    );

    std::fs::remove_file(&obstacle).unwrap();
    let mut serve = Serve::start(&args);
    serve.wait_until("ready again", Duration::from_secs(60), |s| {
        s.get("/readyz").is_some_and(|(code, _)| code == 200)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(serve.metric("agentaudit_sink_stalled"), 0.0);
    assert!(serve.terminate().success());
    let rows = count(&data, "SELECT count(*) AS n FROM invocations");
    assert_eq!(rows, 50, "every row once after the restart");
    let distinct = count(
        &data,
        "SELECT count(DISTINCT event_id) AS n FROM invocations",
    );
    assert_eq!(distinct, 50);
}

const POLICY: &str = r#"
[[agents]]
id = "agent-1"
business_owner = "Ops"
technical_owner = "ops@example.com"
environments = ["production"]
review_by = "2099-01-01"

[agents.tools.production]
read = ["search"]
"#;

fn metric_line(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// One call stamped hours ahead, from another tenant, used to move the one
/// event-time clock: it resolved every active alert. Now it is dead-lettered
/// as `timestamp_in_future`, and a call within the allowed skew counts at
/// its arrival: the other tenant's alert stays active.
#[test]
fn a_call_from_the_future_is_dead_lettered_and_resolves_no_alert() {
    let topic = "hostile-time";
    let broker = EmbeddedBroker::start(topic, 1).expect("broker");
    let brokers = broker.bootstrap_servers();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let data = dir.path().join("data");
    let mut serve = Serve::start(&[
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--group",
        "time",
        "--data-dir",
        data.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    serve.wait_until("readiness", Duration::from_secs(60), |s| {
        s.get("/readyz").is_some_and(|(code, _)| code == 200)
    });
    let now = chrono::Utc::now().timestamp_millis();
    let mut ghost: serde_json::Value = serde_json::from_str(&event("g1", now)).unwrap();
    ghost["agent_id"] = "ghost-bot".into();
    ghost["environment"] = "production".into();
    let forged = |id: &str, ts: i64| {
        let mut e: serde_json::Value = serde_json::from_str(&event(id, ts)).unwrap();
        e["tenant"] = "initech".into();
        e["environment"] = "production".into();
        e.to_string()
    };
    let hour = 3_600_000;
    produce(
        &brokers,
        topic,
        &[
            ghost.to_string(),
            forged("f1", now + 3 * hour),
            forged("f2", now + 9 * 60_000),
            forged("f3", now + 1_000),
        ],
    );
    let active = "agentaudit_alert_active{agent=\"ghost-bot\",rule=\"unregistered_agent\"";
    serve.wait_until(
        "the alert and the dead letter",
        Duration::from_secs(60),
        |s| {
            let body = s.get("/metrics").map(|r| r.1).unwrap_or_default();
            metric_line(&body, active) == Some(1.0)
                && metric_line(
                    &body,
                    "agentaudit_dead_letters_total{reason=\"timestamp_in_future\"}",
                ) == Some(1.0)
        },
    );
    // A few seconds of wall clock later the alert still holds (hold: 5
    // buckets of 60 s); before, the forged clock had resolved it at once.
    std::thread::sleep(Duration::from_secs(3));
    let body = serve.get("/metrics").unwrap().1;
    assert_eq!(metric_line(&body, active), Some(1.0), "{body}");
    assert!(serve.terminate().success());
    let reasons = common::query(&data, "SELECT reason FROM dead_letter", &[]);
    assert_eq!(reasons.len(), 1);
    assert_eq!(reasons[0]["reason"], "timestamp_in_future");
    assert_eq!(count(&data, "SELECT count(*) AS n FROM invocations"), 3);
}

/// The journal's offset floor used to outlive its Kafka: pointed at another
/// cluster (or a recreated topic), `serve` skipped every new event below the
/// old floor, silently. Now it refuses to start and says why.
#[test]
fn a_dataset_from_another_cluster_refuses_to_start_instead_of_skipping() {
    let topic = "hostile-cluster";
    let first = EmbeddedBroker::start(topic, 1).expect("broker");
    let payloads: Vec<String> = (0..20)
        .map(|i| {
            event(
                &format!("a{i}"),
                chrono::Utc::now().timestamp_millis() - 1_000,
            )
        })
        .collect();
    produce(&first.bootstrap_servers(), topic, &payloads);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().unwrap();
    let mut serve = Serve::consuming(&first.bootstrap_servers(), topic, "cluster", data);
    serve.wait_until("rows stored", Duration::from_secs(60), |s| {
        s.metric("agentaudit_events_consumed_total") >= 20.0
    });
    assert!(serve.terminate().success());
    assert_eq!(
        count(dir.path(), "SELECT count(*) AS n FROM invocations"),
        20
    );

    // Another cluster, where the topic has fewer events than the floor.
    let second = EmbeddedBroker::start(topic, 1).expect("broker");
    produce(&second.bootstrap_servers(), topic, &payloads[..5]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args(["serve", "--listen", "127.0.0.1:0", "--brokers"])
        .arg(second.bootstrap_servers())
        .args(["--topic", topic, "--group", "cluster", "--data-dir", data])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("serve started against another cluster's dataset");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("Refusing to start"), "{stderr}");
    assert!(
        stderr.contains("cluster") || stderr.contains("recreated"),
        "{stderr}"
    );
    assert_eq!(
        count(dir.path(), "SELECT count(*) AS n FROM invocations"),
        20
    );
}

/// A neighbour on the network opened connections to the metrics port and
/// sent nothing: each was held for ever, without limit, with a descriptor
/// each. Now a connection must send its headers within 5 s, at most 64 are
/// held, and `/metrics` answers again once the idle ones are closed.
#[test]
fn idle_connections_to_the_metrics_port_are_capped_and_timed_out() {
    let topic = "hostile-http";
    let broker = EmbeddedBroker::start(topic, 1).expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::consuming(
        &broker.bootstrap_servers(),
        topic,
        "http",
        dir.path().to_str().unwrap(),
    );
    serve.wait_until("readiness", Duration::from_secs(60), |s| {
        s.get("/readyz").is_some_and(|(code, _)| code == 200)
    });
    let idle: Vec<std::net::TcpStream> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(&serve.metrics_addr).ok())
        .collect();
    assert!(idle.len() >= 100, "connections opened: {}", idle.len());
    std::thread::sleep(Duration::from_secs(7));
    // Every idle connection was closed by the server: reading ends.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut s, &mut buf);
        assert!(
            n.is_ok()
                || n.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle connection is still held: {n:?}"
        );
    }
    let (code, body) = serve.get("/metrics").expect("metrics answer");
    assert_eq!(code, 200);
    assert!(common::metric_sum(&body, "agentaudit_http_connections_refused_total") >= 100.0);
    assert!(common::metric_sum(&body, "agentaudit_http_connections") <= 64.0);
    assert_eq!(
        common::metric_sum(&body, "agentaudit_http_connections_limit"),
        64.0
    );
}

/// A stop with the broker, and so the group coordinator, down used to wait
/// for the final offset commit and the group leave for ever. It is bounded:
/// the process exits within `serve.shutdown_timeout_secs` whatever Kafka
/// does, and the rows it had are durable.
#[test]
fn a_stop_with_the_coordinator_down_ends_within_its_timeout() {
    let topic = "hostile-stop";
    let broker = EmbeddedBroker::start(topic, 1).expect("broker");
    let payloads: Vec<String> = (0..30)
        .map(|i| {
            event(
                &format!("s{i}"),
                chrono::Utc::now().timestamp_millis() - 1_000,
            )
        })
        .collect();
    produce(&broker.bootstrap_servers(), topic, &payloads);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agentaudit.toml");
    std::fs::write(&config, "[serve]\nshutdown_timeout_secs = 10\n").unwrap();
    let data = dir.path().join("data");
    let mut serve = Serve::start(&[
        "--config",
        config.to_str().unwrap(),
        "--brokers",
        &broker.bootstrap_servers(),
        "--topic",
        topic,
        "--group",
        "stop",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    serve.wait_until("all consumed", Duration::from_secs(60), |s| {
        s.metric("agentaudit_events_consumed_total") >= 30.0
    });
    broker.set_down(true).expect("broker down");
    std::thread::sleep(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let _status = serve.terminate();
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the stop took {:?}",
        started.elapsed()
    );
    assert_eq!(count(&data, "SELECT count(*) AS n FROM invocations"), 30);
}

/// What the first review found in the stored dataset, sent again through a
/// real `serve`: secrets in identifier fields and in keys (none was scanned),
/// a secret only URL-encoded, a dead letter cut short after a secret key,
/// escape and bidirectional characters in identifiers, a step of i64::MAX,
/// and a four-digit output whose plain SHA-256 anyone could reverse.
#[test]
fn a_hostile_corpus_through_serve_stores_no_secret_and_nothing_deceptive() {
    use sha2::Digest;
    let topic = "hostile-corpus";
    let broker = EmbeddedBroker::start(topic, 1).expect("broker");
    let now = chrono::Utc::now().timestamp_millis() - 1_000;
    let secrets = [
        ("tool", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
        ("credential_id", "AKIAIOSFODNN7EXAMPLE"),
        ("workflow_id", "sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
        ("mcp_server", "xoxb-1234567890-abcdefghijklmnop"),
        (
            "agent_version",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ),
    ];
    let mut payloads = Vec::new();
    for (i, (field, secret)) in secrets.iter().enumerate() {
        let mut e: Value = serde_json::from_str(&event(&format!("id{i}"), now)).unwrap();
        e[*field] = Value::from(*secret);
        payloads.push(e.to_string());
    }
    let mut e: Value = serde_json::from_str(&event("approver", now)).unwrap();
    e["approval"] =
        serde_json::json!({"id": "a1", "approver": "jo.doe@example.org", "decision": "approved"});
    payloads.push(e.to_string());
    let mut e: Value = serde_json::from_str(&event("keys", now)).unwrap();
    e["input"] = serde_json::json!({"glpat-abcdefghijklmnopqrst12": "x", "url": "https://x/?k=%41KIAIOSFODNN7EXAMPLE"});
    e["attributes"] = serde_json::json!({"AIzaSyA1234567890abcdefghijklmnopqrstuv": "x"});
    payloads.push(e.to_string());
    let mut e: Value = serde_json::from_str(&event("pin", now)).unwrap();
    e["output"] = Value::from("4821");
    e["step"] = Value::from(i64::MAX);
    e["workflow_id"] = Value::from("wf-max");
    payloads.push(e.to_string());
    for (i, deceptive) in ["evil\u{1b}[2Jbot", "admin\u{202e}toor", "zero\u{200b}width"]
        .iter()
        .enumerate()
    {
        let mut e: Value = serde_json::from_str(&event(&format!("d{i}"), now)).unwrap();
        e["agent_id"] = Value::from(*deceptive);
        payloads.push(e.to_string());
    }
    // A dead letter cut short right after a secret-named key.
    payloads.push(r#"{"event_id":"cut","input":{"api_key":"s3cr3t-value-123456"#.to_owned());
    produce(&broker.bootstrap_servers(), topic, &payloads);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve = Serve::consuming(
        &broker.bootstrap_servers(),
        topic,
        "corpus",
        dir.path().to_str().unwrap(),
    );
    serve.wait_until("all consumed", Duration::from_secs(60), |s| {
        s.metric("agentaudit_events_consumed_total") >= payloads.len() as f64
    });
    let (_, metrics) = serve.get("/metrics").unwrap();
    assert!(serve.terminate().success());

    let stored = common::everything_stored(dir.path());
    let planted = secrets.iter().map(|(_, s)| *s).chain([
        "jo.doe@example.org",
        "glpat-abcdefghijklmnopqrst12",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "%41KIAIOSFODNN7EXAMPLE",
        "s3cr3t-value-123456",
    ]);
    for s in planted {
        assert!(!stored.contains(s), "{s} was stored");
        assert!(!metrics.contains(s), "{s} reached /metrics");
    }
    let redacted = count(
        dir.path(),
        "SELECT count(*) AS n FROM invocations WHERE cardinality(redactions) > 0",
    );
    assert_eq!(redacted, 7, "each planted row records its redactions");
    // Deceptive identifiers are refused, with their reason.
    let deceptive = count(
        dir.path(),
        "SELECT count(*) AS n FROM dead_letter WHERE reason = 'invalid_field'",
    );
    assert_eq!(deceptive, 3);
    // The raw message is kept as evidence in dead_letter; no stored
    // invocation or alert holds the characters.
    let records: String = common::query(dir.path(), "SELECT * FROM invocations", &[])
        .iter()
        .map(Value::to_string)
        .collect();
    for bad in ["\u{1b}", "\u{202e}", "\u{200b}", "\\u001b", "\\u202e"] {
        assert!(!records.contains(bad), "{bad:?} in an invocation");
    }
    // The step is stored as sent; the output only as a keyed digest.
    let rows = common::query(
        dir.path(),
        "SELECT step, output_sha256 FROM invocations WHERE event_id = 'pin'",
        &[],
    );
    assert_eq!(rows[0]["step"], Value::from(i64::MAX));
    let plain = hex::encode(sha2::Sha256::digest(b"4821"));
    assert_eq!(rows[0]["output_sha256"].as_str().map(str::len), Some(64));
    assert_ne!(rows[0]["output_sha256"].as_str(), Some(plain.as_str()));
    let key = std::fs::read_to_string(dir.path().join("_state").join("hash_key")).unwrap();
    assert_eq!(key.trim().len(), 64, "a generated dataset key");
}

const INVENTORY: &str = r#"
[[agents]]
id = "billing-bot"
business_owner = "Finance"
technical_owner = "fin@example.com"
environments = ["production"]
review_by = "2099-01-01"

[agents.tools.production]
read = ["search"]

[[tenants]]
id = "umbrella"
rate_limit_per_minute = 100000
"#;

/// 300 invented agent names used to fill the agent label's 200 values, so a
/// real agent's alert showed as `agent="other"` on /metrics and in every
/// Prometheus alert built from it. An inventoried agent keeps its name.
#[test]
fn invented_agents_never_hide_an_inventoried_agent_behind_other() {
    let topic = "hostile-labels";
    let broker = EmbeddedBroker::start(topic, 1).expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, INVENTORY).unwrap();
    let data = dir.path().join("data");
    let now = chrono::Utc::now().timestamp_millis() - 1_000;
    let mut payloads: Vec<String> = (0..300)
        .map(|i| {
            let mut e: Value = serde_json::from_str(&event(&format!("f{i}"), now)).unwrap();
            e["tenant"] = "umbrella".into();
            e["environment"] = "production".into();
            e["agent_id"] = format!("fake-{i}").into();
            e.to_string()
        })
        .collect();
    let mut real: Value = serde_json::from_str(&event("real", now)).unwrap();
    real["tenant"] = "umbrella".into();
    real["environment"] = "production".into();
    real["agent_id"] = "billing-bot".into();
    real["tool"] = "delete_ledger".into();
    payloads.push(real.to_string());
    produce(&broker.bootstrap_servers(), topic, &payloads);
    let serve = Serve::start(&[
        "--brokers",
        &broker.bootstrap_servers(),
        "--topic",
        topic,
        "--group",
        "labels",
        "--data-dir",
        data.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    serve.wait_until("all consumed", Duration::from_secs(60), |s| {
        s.metric("agentaudit_events_consumed_total") >= 301.0
    });
    let real_alert = "agentaudit_alert_active{agent=\"billing-bot\",rule=\"tool_not_allowed\"";
    serve.wait_until("the real agent's alert", Duration::from_secs(30), |s| {
        let body = s.get("/metrics").map(|r| r.1).unwrap_or_default();
        metric_line(&body, real_alert) == Some(1.0)
    });
    let body = serve.get("/metrics").unwrap().1;
    assert!(common::metric_sum(&body, "agentaudit_alert_label_overflow_total") >= 100.0);
    assert!(body.contains("agent=\"other\""), "the cap still holds");
}
