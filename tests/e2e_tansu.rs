//! End to end against a separate Kafka-compatible broker process (tansu),
//! with the corpus produced by kafka-python (a client other than ours) and
//! the dataset read back by DuckDB with Hive partitioning.
//!
//! Needs TANSU_BIN and AGENTAUDIT_PYTHON, which ./scripts/test.sh installs
//! and sets; without them this test fails and says so.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Corpus, Serve, assert_dataset_matches};

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run ./scripts/test.sh, which installs tansu and the Python tools"
        )
    })
}

struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_tansu(bin: &str, port: u16) -> Tansu {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    let tansu = Tansu(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tansu did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    tansu
}

#[test]
fn foreign_client_through_tansu_lands_once_and_duckdb_reads_it() {
    let tansu_bin = required_env("TANSU_BIN");
    let python = required_env("AGENTAUDIT_PYTHON");
    let port = free_port();
    let _tansu = start_tansu(&tansu_bin, port);
    let topic = "tansu-events";
    let status = Command::new(&tansu_bin)
        .args(["topic", "create", topic, "--partitions", "3"])
        .args(["--broker", &format!("tcp://127.0.0.1:{port}")])
        .status()
        .expect("tansu topic create");
    assert!(status.success());

    let corpus = Corpus::generate(2000, 3);
    let dir = tempfile::tempdir().unwrap();
    let corpus_path = dir.path().join("corpus.tsv");
    let mut f = std::fs::File::create(&corpus_path).unwrap();
    for m in &corpus.messages {
        writeln!(f, "{}\t{}", hex::encode(&m.key), hex::encode(&m.payload)).unwrap();
    }
    drop(f);
    let tools = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools");
    let brokers = format!("127.0.0.1:{port}");
    let out = Command::new(&python)
        .args([
            &format!("{tools}/produce.py"),
            &brokers,
            topic,
            corpus_path.to_str().unwrap(),
        ])
        .output()
        .expect("run produce.py");
    assert!(
        out.status.success(),
        "produce.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data = dir.path().join("data");
    let mut serve = Serve::consuming(&brokers, topic, "tansu-e2e", data.to_str().unwrap());
    serve.wait_until("all messages consumed", Duration::from_secs(180), |s| {
        s.metric("agentaudit_events_consumed_total") >= corpus.messages.len() as f64
    });
    assert!(serve.terminate().success());
    assert_dataset_matches(&data, &corpus);

    let secrets_path = dir.path().join("secrets.txt");
    std::fs::write(&secrets_path, corpus.secrets.join("\n")).unwrap();
    let out = Command::new(&python)
        .args([
            &format!("{tools}/duckdb_check.py"),
            data.to_str().unwrap(),
            secrets_path.to_str().unwrap(),
        ])
        .output()
        .expect("run duckdb_check.py");
    assert!(
        out.status.success(),
        "duckdb_check.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let valid = corpus.valid_ids.len() as u64;
    assert_eq!(report["invocations"].as_u64(), Some(valid), "{report}");
    assert_eq!(
        report["distinct_event_ids"].as_u64(),
        Some(valid),
        "{report}"
    );
    assert_eq!(
        report["dead_letters"].as_u64(),
        Some(corpus.malformed as u64),
        "{report}"
    );
    assert_eq!(
        report["partition_columns"],
        serde_json::json!(["dt", "hour"]),
        "{report}"
    );
    assert!(
        report["ts_type"]
            .as_str()
            .unwrap_or_default()
            .starts_with("TIMESTAMP"),
        "{report}"
    );
    assert_eq!(report["leaked"], serde_json::json!([]), "{report}");
}
