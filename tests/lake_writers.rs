//! Several writers, one lake: the claim protocol on a real S3 API (moto's
//! server, a separate process on loopback). Two sinks are given the same
//! Kafka partition, as a zombie and the partition's new owner would be, and
//! the lake must hold every offset exactly once, with no object overwritten
//! by different rows.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use agentaudit::config::{RedactConfig, SinkConfig};
use agentaudit::decode::{DecodeLimits, decode};
use agentaudit::event::KafkaCoords;
use agentaudit::lake::Lake;
use agentaudit::metrics::Metrics;
use agentaudit::redact::Redactor;
use agentaudit::sink::ParquetSink;
use agentaudit::sink::claims::{Claim, ClaimOutcome, ClaimedObject, CommitRecord};
use common::Corpus;
use common::s3::S3Server;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

const TOPIC: &str = "agent-events";

fn sink(server: &S3Server, url: &str, spool: &Path) -> (ParquetSink, Arc<Metrics>) {
    let cfg = SinkConfig {
        data_dir: url.into(),
        object_store: server.config(),
        spool_dir: Some(spool.to_owned()),
        stall_timeout_secs: 5,
        ..SinkConfig::default()
    };
    let metrics = Arc::new(Metrics::new());
    let sink = ParquetSink::open_for_topic(&cfg, TOPIC, metrics.clone()).expect("shared sink");
    (sink, metrics)
}

/// Pushes messages `offsets` of `corpus` as partition 0 at those offsets.
fn push(sink: &mut ParquetSink, corpus: &Corpus, offsets: std::ops::RangeInclusive<usize>) {
    let redactor = Redactor::new(&RedactConfig::default()).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for offset in offsets {
        let payload = &corpus.messages[offset].payload;
        let coords = KafkaCoords {
            topic: Arc::from(TOPIC),
            partition: 0,
            offset: offset as i64,
            kafka_ts_ms: None,
        };
        match decode(Some(payload), now, &DecodeLimits::default()) {
            Ok(e) => sink.push_record(redactor.redact_event(e, coords, now)),
            Err(f) => {
                sink.push_dead_letter(redactor.redact_dead_letter(Some(payload), f, coords, now))
            }
        }
    }
}

/// How many rows of each offset of partition 0 the lake holds.
fn offsets_stored(lake: &Lake) -> BTreeMap<i64, u32> {
    common::lake::offset_counts(lake)
        .remove(&0)
        .unwrap_or_default()
}

/// Every data object of the lake with its e-tag.
fn objects(lake: &Lake) -> BTreeMap<String, Option<String>> {
    let store = lake.store().expect("an object store");
    let prefix = object_store::path::Path::from(common::lake::prefix(lake));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut out = BTreeMap::new();
        let mut listing = store.list(Some(&prefix));
        while let Some(meta) = listing.next().await {
            let meta = meta.unwrap();
            let key = meta.location.to_string();
            if key.contains("/invocations/") || key.contains("/dead_letter/") {
                out.insert(key, meta.e_tag);
            }
        }
        out
    })
}

fn exactly_once(stored: &BTreeMap<i64, u32>, through: i64) {
    let missing: Vec<i64> = (0..=through).filter(|o| !stored.contains_key(o)).collect();
    let twice: Vec<(&i64, &u32)> = stored.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        missing.is_empty(),
        "offsets missing from the lake: {missing:?}"
    );
    assert!(twice.is_empty(), "offsets stored more than once: {twice:?}");
    assert_eq!(stored.keys().max().copied(), Some(through));
}

#[test]
fn a_zombie_and_the_new_owner_racing_for_one_partition_store_each_offset_once() {
    let server = S3Server::start();
    server.create_bucket("lake");
    let url = "s3://lake/shared";
    let corpus = Corpus::generate(300, 21);
    let spool = tempfile::tempdir().unwrap();
    let lake = Lake::open(Path::new(url), &server.config()).unwrap();

    // The zombie read offsets 0..=120 before its partition moved, and
    // commits them; the new owner, from the same committed offset (0), has
    // read further, 0..=200, and commits after it.
    let (mut zombie, zombie_metrics) = sink(&server, url, spool.path());
    let (mut owner, owner_metrics) = sink(&server, url, spool.path());
    push(&mut zombie, &corpus, 0..=120);
    push(&mut owner, &corpus, 0..=200);
    let z = zombie.flush().expect("zombie flush");
    assert_eq!(z.committable, vec![(TOPIC.to_owned(), 0, 121)]);
    let o = owner.flush().expect("owner flush");
    // The owner adopted the zombie's claim of 0..=120 and claimed the rest.
    assert_eq!(o.committable, vec![(TOPIC.to_owned(), 0, 201)]);
    assert_eq!(owner_metrics.claims_lost.get(), 1);
    exactly_once(&offsets_stored(&lake), 200);
    let before = objects(&lake);

    // The zombie writes late: what it read next (121..=160) lies inside the
    // owner's claim. It must neither add a row nor replace an object.
    push(&mut zombie, &corpus, 121..=160);
    let late = zombie.flush().expect("late zombie flush");
    assert_eq!(late.committable, vec![(TOPIC.to_owned(), 0, 201)]);
    assert_eq!(late.rows, 0, "the zombie published rows: {late:?}");
    assert_eq!(zombie_metrics.claims_lost.get(), 1);
    exactly_once(&offsets_stored(&lake), 200);
    assert_eq!(objects(&lake), before, "an object was added or overwritten");

    // Below its floor, the zombie no longer even stages rows.
    push(&mut zombie, &corpus, 0..=50);
    let again = zombie.flush().expect("flush below the floor");
    assert_eq!(again.rows, 0);
    assert_eq!(objects(&lake), before);

    // The owner goes on from where the chain ends.
    push(&mut owner, &corpus, 201..=299);
    owner.flush().expect("owner flush");
    exactly_once(&offsets_stored(&lake), 299);
}

#[test]
fn a_claim_left_unpublished_by_a_killed_writer_is_completed_by_the_next_one() {
    let server = S3Server::start();
    server.create_bucket("lake");
    let corpus = Corpus::generate(100, 22);
    let spool = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Offsets 0..=59 as a writer stages them, taken from a lake of their own.
    let source = Lake::open(Path::new("s3://lake/source"), &server.config()).unwrap();
    let (mut w, _) = sink(&server, "s3://lake/source", spool.path());
    push(&mut w, &corpus, 0..=59);
    w.flush().expect("flush");
    drop(w);

    // In the lake under test, a writer staged them, made its claim and its
    // commit record, and was killed before it published a single object:
    // the claim, the record and the staged objects are all there is.
    let url = "s3://lake/killed";
    let lake = Lake::open(Path::new(url), &server.config()).unwrap();
    let (mut next, next_metrics) = sink(&server, url, spool.path());
    let log = next.claim_log().expect("a shared lake");
    let store = lake.store().unwrap();
    let mut objects_claimed = Vec::new();
    for (i, key) in objects(&source).into_keys().enumerate() {
        let rel = key.strip_prefix("source/").unwrap().to_owned();
        let staged = format!("_staging/killed-writer/{i:04}.parquet");
        rt.block_on(store.copy(&key.as_str().into(), &log.key(&staged)))
            .unwrap();
        objects_claimed.push(ClaimedObject {
            staged,
            final_key: rel,
        });
    }
    let claim = Claim {
        version: 1,
        topic: TOPIC.into(),
        partition: 0,
        start: 0,
        attempt: 0,
        end: 59,
        writer: "killed-writer".into(),
        commit: "_commits/killed-writer/000000000001.json".into(),
    };
    assert!(matches!(log.try_claim(&claim), Ok(ClaimOutcome::Won)));
    assert!(log.commit(&claim.commit, objects_claimed).expect("commit"));
    assert!(objects(&lake).is_empty(), "nothing is published yet");

    // The next owner walks the chain from the committed offset (0) at
    // assignment: it publishes the claim and starts past it.
    assert_eq!(log.walk(TOPIC, 0, Some(0)).expect("walk"), Some(60));
    assert_eq!(log.walk(TOPIC, 0, None).expect("walk"), Some(60));
    exactly_once(&offsets_stored(&lake), 59);
    let floors = next.shared_floors().unwrap();
    floors
        .lock()
        .unwrap()
        .entry(TOPIC.into())
        .or_default()
        .insert(0, 60);

    // It re-reads from the committed offset: rows below the floor are
    // already in the lake and are not written again.
    push(&mut next, &corpus, 0..=99);
    let out = next.flush().expect("flush");
    assert_eq!(out.committable, vec![(TOPIC.to_owned(), 0, 100)]);
    assert_eq!(next_metrics.claims_lost.get(), 0);
    exactly_once(&offsets_stored(&lake), 99);
    // The staged objects are gone once published.
    let staged: Vec<String> = rt.block_on(async {
        let mut listing = store.list(Some(&"killed/_staging".into()));
        let mut out = Vec::new();
        while let Some(m) = listing.next().await {
            out.push(m.unwrap().location.to_string());
        }
        out
    });
    assert!(staged.is_empty(), "{staged:?}");
}

#[test]
fn a_file_larger_than_a_part_is_uploaded_in_parts_and_reads_back_whole() {
    let server = S3Server::start();
    server.create_bucket("lake");
    let spool = tempfile::tempdir().unwrap();
    let (sink, _) = sink(&server, "s3://lake/big", spool.path());
    let log = sink.claim_log().unwrap();
    // 2.5 parts, with content that would show a part out of place.
    let size = agentaudit::sink::claims::PART_BYTES * 5 / 2;
    let bytes: Vec<u8> = (0..size).map(|i| (i / 4096 % 251) as u8).collect();
    let local = spool.path().join("big.bin");
    std::fs::write(&local, &bytes).unwrap();
    assert_eq!(
        log.upload(&local, "_staging/t/big.bin").unwrap(),
        size as u64
    );
    let lake = Lake::open(Path::new("s3://lake/big"), &server.config()).unwrap();
    let store = lake.store().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let back = rt
        .block_on(async {
            store
                .get(&log.key("_staging/t/big.bin"))
                .await?
                .bytes()
                .await
        })
        .unwrap();
    assert_eq!(back.len(), size);
    assert!(
        back.as_ref() == bytes.as_slice(),
        "the object differs from the file"
    );
}

#[test]
fn a_claim_whose_writer_died_before_its_commit_record_is_voided_and_read_again() {
    let server = S3Server::start();
    server.create_bucket("lake");
    let url = "s3://lake/void";
    let corpus = Corpus::generate(80, 23);
    let spool = tempfile::tempdir().unwrap();
    let lake = Lake::open(Path::new(url), &server.config()).unwrap();
    let (mut next, _) = sink(&server, url, spool.path());
    let log = next.claim_log().expect("a shared lake");

    // A writer claimed offsets 0..=79 and died before its commit record:
    // nothing says its rows are anywhere.
    let dead = Claim {
        version: 1,
        topic: TOPIC.into(),
        partition: 0,
        start: 0,
        attempt: 0,
        end: 79,
        writer: "dead-writer".into(),
        commit: "_commits/dead-writer/000000000007.json".into(),
    };
    assert!(matches!(log.try_claim(&dead), Ok(ClaimOutcome::Won)));

    // The walk voids its record, so nothing of that claim counts, and the
    // partition starts where it did.
    assert_eq!(log.walk(TOPIC, 0, Some(0)).expect("walk"), Some(0));
    assert_eq!(
        log.resolve(&dead.commit).expect("resolve"),
        CommitRecord::Void
    );
    // The dead writer, were it only slow, can no longer commit it.
    assert!(!log.commit(&dead.commit, Vec::new()).expect("commit"));

    // The next owner reads the offsets again and claims them at the next
    // attempt.
    next.shared_floors()
        .unwrap()
        .lock()
        .unwrap()
        .entry(TOPIC.into())
        .or_default()
        .insert(0, 0);
    push(&mut next, &corpus, 0..=79);
    let out = next.flush().expect("flush");
    assert_eq!(out.committable, vec![(TOPIC.to_owned(), 0, 80)]);
    exactly_once(&offsets_stored(&lake), 79);
    assert_eq!(log.walk(TOPIC, 0, Some(0)).expect("walk"), Some(80));
}

#[test]
fn an_upload_to_a_store_that_is_gone_stalls_the_sink_then_fails_it() {
    let server = S3Server::start();
    server.create_bucket("lake");
    let corpus = Corpus::generate(50, 24);
    let spool = tempfile::tempdir().unwrap();
    // stall_timeout_secs = 5: retried with backoff for 5 s, then given up.
    let (mut sink, metrics) = sink(&server, "s3://lake/gone", spool.path());
    push(&mut sink, &corpus, 0..=49);
    drop(server);
    let started = std::time::Instant::now();
    let err = sink.flush().expect_err("nothing can be uploaded");
    assert!(err.to_string().contains("object store"), "{err}");
    assert!(metrics.sink_retries.get() > 0, "the upload was not retried");
    assert_eq!(metrics.sink_stalled.get(), 1, "/readyz would not say 503");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
