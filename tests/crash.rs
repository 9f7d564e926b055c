//! Crash safety: SIGKILL `serve` at random points while it consumes, restart
//! it each time; the final dataset holds every event exactly once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentaudit::source::embedded::EmbeddedBroker;
use common::{Corpus, Serve, assert_dataset_matches, count};
use rand::{Rng, SeedableRng};

#[test]
fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let topic = "crash-events";
    let broker = EmbeddedBroker::start(topic, 8).expect("broker");
    let brokers = broker.bootstrap_servers();
    let corpus = Arc::new(Corpus::generate(16_000, 11));
    let total = corpus.messages.len();

    // Traffic keeps arriving while serve is being killed and restarted.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (corpus, brokers, producing) = (corpus.clone(), brokers.clone(), producing.clone());
        std::thread::spawn(move || {
            for chunk in corpus.messages.chunks(800) {
                common::produce_slice(chunk, &brokers, topic);
                std::thread::sleep(Duration::from_millis(300));
            }
            producing.store(false, Ordering::SeqCst);
        })
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().unwrap();
    let config = dir.path().join("crash.toml");
    // Commit often, and append several chunks (budget/8 = 512 KiB of rows)
    // to each file before its commit (at 1 s: the files stay under 1 MiB),
    // so that kills land between appends, during commits and after them.
    std::fs::write(
        &config,
        "[sink]\nmax_file_age_secs = 1\nmax_file_bytes = 1048576\nmemory_budget_bytes = 4194304\n",
    )
    .unwrap();
    let args = [
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--group",
        "crash",
        "--data-dir",
        data,
        "--config",
        config.to_str().unwrap(),
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
    ];
    let kills = kill_repeatedly(&args, &producing, 6);
    producer.join().expect("producer");

    let mut serve = Serve::start(&args);
    wait_for_rows(dir.path(), total, &serve);
    assert!(serve.terminate().success());
    assert!(
        stored(dir.path()) == total,
        "{} rows stored for {total} messages after {kills} kills",
        stored(dir.path())
    );
    assert_dataset_matches(dir.path(), &corpus);
    assert!(
        max_row_groups(&dir.path().join("invocations")) > 1,
        "no file was appended to more than once: the test missed the window between appends and commits"
    );
}

/// Starts `serve` with `args` and SIGKILLs it at a random point once it
/// consumes, `kills` times; returns how many kills there were.
fn kill_repeatedly(args: &[&str], producing: &AtomicBool, kills: usize) -> usize {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
    for _ in 0..kills {
        let mut serve = Serve::start(args);
        serve.wait_until("consumption", Duration::from_secs(60), |s| {
            s.metric("agentaudit_events_consumed_total") > 0.0 || !producing.load(Ordering::SeqCst)
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(100..2500)));
        serve.kill();
    }
    kills
}

/// Rows in both tables of the dataset at `dir`.
fn stored(dir: &std::path::Path) -> usize {
    count(dir, "SELECT count(*) AS n FROM invocations") as usize
        + count(dir, "SELECT count(*) AS n FROM dead_letter") as usize
}

/// Waits until `total` rows are stored, or fails saying where each
/// partition stands.
fn wait_for_rows(dir: &std::path::Path, total: usize, serve: &Serve) {
    let start = std::time::Instant::now();
    while stored(dir) < total {
        if start.elapsed() > Duration::from_secs(120) {
            let per_partition = common::lake::per_partition(&agentaudit::lake::Lake::local(dir));
            let lag = serve.metric_lines(&[
                "consumer_lag",
                "committed_offset",
                "skipped",
                "recovered",
                "discarded",
            ]);
            let journal =
                std::fs::read_to_string(dir.join("_state/journal.json")).unwrap_or_default();
            panic!(
                "only {} of {total} stored; per partition\n{per_partition}{lag:#?}\n{journal}",
                stored(dir)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The same with OTLP input, where one message holds 32 spans: a kill
/// between two spans' rows, before their commit, must leave the message
/// to be read again whole, and one after it none of it.
#[test]
fn sigkill_between_the_spans_of_a_message_loses_and_duplicates_none() {
    use agentaudit::decode::InputFormat;
    use agentaudit::traffic::otlp::Batcher;
    let topic = "crash-spans";
    let broker = EmbeddedBroker::start(topic, 4).expect("broker");
    let brokers = broker.bootstrap_servers();
    let corpus = Corpus::generate(12_000, 17);
    let total = corpus.messages.len();
    let mut batcher = Batcher::new(InputFormat::OtlpProto, 32);
    let mut messages: Vec<Vec<u8>> = corpus
        .messages
        .iter()
        .filter_map(|m| batcher.push(&m.key, &m.payload).map(|(_, p)| p))
        .collect();
    messages.extend(batcher.drain().into_iter().map(|(_, p)| p));
    assert!(messages.len() < total / 10, "{} messages", messages.len());

    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (brokers, producing) = (brokers.clone(), producing.clone());
        std::thread::spawn(move || {
            let p = agentaudit::traffic::producer(&brokers, &[]).expect("producer");
            for chunk in messages.chunks(40) {
                for m in chunk {
                    agentaudit::traffic::send(&p, topic, None, m).expect("send");
                }
                rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).expect("flush");
                std::thread::sleep(Duration::from_millis(300));
            }
            producing.store(false, Ordering::SeqCst);
        })
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().unwrap();
    let config = dir.path().join("crash.toml");
    std::fs::write(
        &config,
        "[kafka]\ninput_format = \"otlp_proto\"\n[sink]\nmax_file_age_secs = 1\nmax_file_bytes = 1048576\nmemory_budget_bytes = 4194304\n",
    )
    .unwrap();
    let args = [
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--group",
        "crash-otlp",
        "--data-dir",
        data,
        "--config",
        config.to_str().unwrap(),
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
    ];
    let kills = kill_repeatedly(&args, &producing, 5);
    producer.join().expect("producer");
    let mut serve = Serve::start(&args);
    wait_for_rows(dir.path(), total, &serve);
    assert!(serve.terminate().success());
    assert_eq!(
        stored(dir.path()),
        total,
        "rows for {total} generated calls after {kills} kills"
    );
    let distinct = count(
        dir.path(),
        "SELECT count(DISTINCT event_id) AS n FROM invocations",
    ) as usize;
    let rows = count(dir.path(), "SELECT count(*) AS n FROM invocations") as usize;
    assert_eq!(distinct, rows, "a span was stored twice");
    // A malformed v1 message that still reads as a call can make a valid
    // span (the mapping takes only the fields a span has), so only this:
    assert!(
        rows >= corpus.valid_ids.len(),
        "{rows} span rows for {} valid calls",
        corpus.valid_ids.len()
    );
}

/// The most row groups any Parquet file under `dir` has.
fn max_row_groups(dir: &std::path::Path) -> usize {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let mut most = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        most = most.max(if path.is_dir() {
            max_row_groups(&path)
        } else {
            let file = std::fs::File::open(&path).expect("open");
            SerializedFileReader::new(file)
                .expect("parquet")
                .metadata()
                .num_row_groups()
        });
    }
    most
}
