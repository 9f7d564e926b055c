//! Helpers shared by the end-to-end tests: a generated corpus with its ground
//! truth, a `serve` child process, and dataset queries.
#![allow(dead_code)]

pub mod daemons;
pub mod lake;
pub mod s3;
pub mod tansu;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agentaudit::traffic::{GenOptions, Generated, Generator, Kind};

/// Generated messages and what they must become.
pub struct Corpus {
    pub messages: Vec<Generated>,
    pub valid_ids: BTreeSet<String>,
    pub malformed: usize,
    pub secrets: Vec<String>,
}

impl Corpus {
    pub fn generate(n: usize, seed: u64) -> Corpus {
        let mut g = Generator::new(GenOptions {
            seed,
            secret_ratio: 0.2,
            malformed_ratio: 0.05,
            ..GenOptions::default()
        });
        let messages: Vec<Generated> = (0..n).map(|_| g.next_message()).collect();
        let valid_ids = messages
            .iter()
            .filter_map(|m| m.event_id.clone())
            .collect::<BTreeSet<_>>();
        let malformed = messages.iter().filter(|m| m.kind != Kind::Valid).count();
        let secrets = messages.iter().flat_map(|m| m.secrets.clone()).collect();
        assert_eq!(valid_ids.len() + malformed, n, "event ids are unique");
        Corpus {
            messages,
            valid_ids,
            malformed,
            secrets,
        }
    }

    /// Produces every message with our own (librdkafka) producer.
    pub fn produce(&self, brokers: &str, topic: &str) {
        produce_slice(&self.messages, brokers, topic);
    }
}

/// Produces `messages` keyed as generated with kafka-python, a client that
/// shares no code with ours (`tests/tools/produce.py`).
pub fn produce_foreign(
    python: &str,
    brokers: &str,
    topic: &str,
    messages: &[Generated],
    scratch: &Path,
) {
    run_produce_py(python, brokers, topic, messages, scratch, &[]);
}

/// `produce_foreign`, each message a record batch of its own: for tests
/// that hand partitions from one consumer to another on tansu, which skips
/// the rest of a batch when a fetch starts inside it (see produce.py).
pub fn produce_foreign_one_per_batch(
    python: &str,
    brokers: &str,
    topic: &str,
    messages: &[Generated],
    scratch: &Path,
) {
    run_produce_py(
        python,
        brokers,
        topic,
        messages,
        scratch,
        &["--one-per-batch"],
    );
}

fn run_produce_py(
    python: &str,
    brokers: &str,
    topic: &str,
    messages: &[Generated],
    scratch: &Path,
    options: &[&str],
) {
    let corpus_path = scratch.join(format!("corpus-{}.tsv", rand::random::<u32>()));
    let mut f = std::fs::File::create(&corpus_path).unwrap();
    for m in messages {
        writeln!(f, "{}\t{}", hex::encode(&m.key), hex::encode(&m.payload)).unwrap();
    }
    drop(f);
    let out = Command::new(python)
        .args([
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/produce.py"),
            brokers,
            topic,
            corpus_path.to_str().unwrap(),
        ])
        .args(options)
        .output()
        .expect("run produce.py");
    assert!(
        out.status.success(),
        "produce.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn produce_slice(messages: &[Generated], brokers: &str, topic: &str) {
    use rdkafka::producer::Producer;
    let producer = agentaudit::traffic::producer(brokers, &[]).expect("producer");
    for m in messages {
        // Unkeyed: spread over all partitions, since the embedded broker
        // keeps only the newest 5 MiB of each.
        agentaudit::traffic::send(&producer, topic, None, &m.payload).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Produces keyed by tenant, as agents ship: each tenant's calls stay in one
/// partition, in order.
pub fn produce_keyed(messages: &[Generated], brokers: &str, topic: &str) {
    use rdkafka::producer::Producer;
    let producer = agentaudit::traffic::producer(brokers, &[]).expect("producer");
    for m in messages {
        agentaudit::traffic::send(&producer, topic, Some(&m.key), &m.payload).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Produces hand-written `events` (JSON objects) to `topic`, keyed by
/// `key`, in order.
pub fn produce_json(brokers: &str, topic: &str, key: &str, events: &[serde_json::Value]) {
    use rdkafka::producer::Producer;
    let producer = agentaudit::traffic::producer(brokers, &[]).expect("producer");
    for e in events {
        agentaudit::traffic::send(&producer, topic, Some(key), e.to_string().as_bytes())
            .expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// A running `agentaudit serve` child, killed if the test fails first.
pub struct Serve {
    pub child: Child,
    pub metrics_addr: String,
    /// The newest lines of its log (stderr), at most `LOG_LINES`.
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// Lines of a `serve` log a test keeps to read.
const LOG_LINES: usize = 10_000;

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Serve {
    pub fn start(args: &[&str]) -> Serve {
        Serve::spawn(Command::new(env!("CARGO_BIN_EXE_agentaudit")), args)
    }

    /// `serve` with `env` added to its environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, String)]) -> Serve {
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentaudit"));
        command.envs(env.iter().map(|(k, v)| (k, v)));
        Serve::spawn(command, args)
    }

    /// `serve` under `ulimit -n nofile`, as a service manager might run it.
    pub fn start_with_open_files(nofile: u32, args: &[&str]) -> Serve {
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_agentaudit"),
        ]);
        Serve::spawn(sh, args)
    }

    fn spawn(mut command: Command, args: &[&str]) -> Serve {
        let mut child = command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env(
                "AGENTAUDIT_LOG",
                std::env::var("AGENTAUDIT_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agentaudit serve");
        // Each line of its log, prefixed with the process id: several
        // instances of one test log side by side. Written to stderr itself,
        // as the child's own lines were, not to the test's captured output.
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(std::io::stderr().lock(), "[serve {pid}] {line}");
                if let Ok(mut kept) = kept.lock() {
                    if kept.len() >= LOG_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let metrics_addr = loop {
            let line = lines
                .next()
                .expect("serve exited before printing its metrics address")
                .expect("read stdout");
            if let Some(rest) = line.split("metrics at http://").nth(1) {
                break rest.split('/').next().unwrap_or_default().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Serve {
            child,
            metrics_addr,
            log,
        }
    }

    /// The lines of its log so far (the newest `LOG_LINES`).
    pub fn log_lines(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `serve` consuming `topic` from `brokers` as `group` into `data_dir`.
    pub fn consuming(brokers: &str, topic: &str, group: &str, data_dir: &str) -> Serve {
        Serve::start(&[
            "--brokers",
            brokers,
            "--topic",
            topic,
            "--group",
            group,
            "--data-dir",
            data_dir,
        ])
    }

    /// GET a path on the serve HTTP surface; (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.metrics_addr, path)
    }

    /// Sum of every series of a metric family (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return 0.0;
        };
        metric_sum(&body, name)
    }

    /// The series of /metrics whose line names any of `names`.
    pub fn metric_lines(&self, names: &[&str]) -> Vec<String> {
        let Some((_, body)) = self.get("/metrics") else {
            return Vec::new();
        };
        body.lines()
            .filter(|l| !l.starts_with('#') && names.iter().any(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }

    pub fn wait_until(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Serve) -> bool) {
        let start = Instant::now();
        while !ok(self) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait: a clean stop flushes and commits.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(start.elapsed() < timeout, "serve did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no flush, no commit, no goodbye.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs SQL over a dataset and returns the rows as JSON objects.
pub fn query(data_dir: &Path, sql: &str, params: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let params: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let text = rt
        .block_on(async {
            let ctx = agentaudit::query::session(&agentaudit::lake::Lake::local(data_dir)).await?;
            let batches = agentaudit::query::run(&ctx, sql, &params).await?;
            agentaudit::query::render(&batches, agentaudit::query::Format::Jsonl)
        })
        .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

pub fn count(data_dir: &Path, sql: &str) -> i64 {
    let rows = query(data_dir, sql, &[]);
    rows.first()
        .and_then(|r| r.as_object()?.values().next()?.as_i64())
        .unwrap_or(0)
}

/// Every stored string of both tables, as one text, for secret checks.
pub fn everything_stored(data_dir: &Path) -> String {
    let mut all = String::new();
    for table in ["invocations", "dead_letter", "alerts"] {
        for row in query(data_dir, &format!("SELECT * FROM {table}"), &[]) {
            all.push_str(&row.to_string());
            all.push('\n');
        }
    }
    all
}

/// Asserts the dataset holds exactly the corpus, once, with nothing secret.
pub fn assert_dataset_matches(data_dir: &Path, corpus: &Corpus) {
    let ids: BTreeSet<String> = query(data_dir, "SELECT event_id FROM invocations", &[])
        .into_iter()
        .filter_map(|r| r["event_id"].as_str().map(str::to_owned))
        .collect();
    let rows = count(data_dir, "SELECT count(*) AS n FROM invocations");
    assert_eq!(
        rows as usize,
        corpus.valid_ids.len(),
        "one row per valid event"
    );
    assert_eq!(ids, corpus.valid_ids, "exactly the valid events");
    let dead = count(data_dir, "SELECT count(*) AS n FROM dead_letter");
    let distinct_dead = count(
        data_dir,
        "SELECT count(*) AS n FROM (SELECT DISTINCT src_partition, src_offset FROM dead_letter)",
    );
    assert_eq!(
        dead as usize, corpus.malformed,
        "every malformed message dead-lettered"
    );
    assert_eq!(distinct_dead, dead, "each dead letter once");
    let stored = everything_stored(data_dir);
    for s in &corpus.secrets {
        assert!(!stored.contains(s.as_str()), "secret {s:?} was stored");
    }
    assert!(!corpus.secrets.is_empty(), "the corpus plants secrets");
}

/// Runs the reader script `tests/tools/{script}` with `args` and `env`
/// added, and returns the JSON report it prints.
pub fn tool_report(
    python: &str,
    script: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> serde_json::Value {
    let out = Command::new(python)
        .arg(format!(
            "{}/tests/tools/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// What every reader's report must say of a dataset of `corpus`: each valid
/// event once, every malformed message dead-lettered, the Hive partition
/// columns, and no planted secret.
pub fn assert_report_matches(report: &serde_json::Value, corpus: &Corpus) {
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
    assert_eq!(report["leaked"], serde_json::json!([]), "{report}");
}

/// `serve --demo` (2000 calls/s) with `injection_spike` planted, and
/// `extra` flags, into `data_dir`, returned once the spike's alert on
/// `export_csv` is active in /metrics.
pub fn demo_with_planted_spike(data_dir: &str, extra: &[&str]) -> Serve {
    let mut args = vec![
        "--demo",
        "--demo-rate",
        "2000",
        "--scenario",
        "injection_spike",
        "--data-dir",
        data_dir,
    ];
    args.extend_from_slice(extra);
    let serve = Serve::start(&args);
    serve.wait_until(
        "the injected spike in /metrics",
        Duration::from_secs(120),
        |s| {
            s.get("/metrics").is_some_and(|(_, body)| {
                body.lines().any(|l| {
                    l.starts_with("agentaudit_alert_active{")
                        && l.contains("rule=\"tool_frequency_spike\"")
                        && l.contains("tool=\"export_csv\"")
                })
            })
        },
    );
    serve
}

/// The planted spike is in the alerts table, and no other tool spiked
/// (`what` names the benign traffic in the failure).
pub fn assert_only_the_planted_spike(data_dir: &Path, what: &str) {
    let spikes = count(
        data_dir,
        "SELECT count(*) AS n FROM alerts WHERE rule = 'tool_frequency_spike' AND tool = 'export_csv'",
    );
    assert!(spikes >= 1, "the spike is in the alerts table");
    let other = count(
        data_dir,
        "SELECT count(*) AS n FROM alerts WHERE rule = 'tool_frequency_spike' AND tool <> 'export_csv'",
    );
    assert_eq!(other, 0, "{what} raised a spike");
}
