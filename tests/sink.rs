//! The sink's append/commit protocol: chunks become sorted row groups of one
//! staged file per partition, nothing is visible or committable before the
//! commit, and a stop between appends and the commit loses only what will be
//! consumed again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentaudit::config::{RedactConfig, SinkConfig};
use agentaudit::decode::{DecodeLimits, decode};
use agentaudit::event::{KafkaCoords, Record};
use agentaudit::metrics::Metrics;
use agentaudit::redact::Redactor;
use agentaudit::sink::{ParquetSink, PendingRows};
use datafusion::arrow::array::{Array, StringArray};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const HOUR: i64 = 3_600_000;
/// 2026-11-28T07:00:00Z
const T0: i64 = 1_795_849_200_000;

fn record(redactor: &Redactor, tenant: &str, ts: i64, offset: i64) -> Record {
    let json = format!(
        r#"{{"event_id":"e{offset}","ts":{ts},"tenant":"{tenant}","agent_id":"a1","environment":"production","tool":"search","status":"ok"}}"#
    );
    let e = decode(Some(json.as_bytes()), ts, &DecodeLimits::default()).expect("event");
    let coords = KafkaCoords {
        topic: Arc::from("t"),
        partition: 3,
        offset,
        kafka_ts_ms: None,
    };
    redactor.redact_event(e, coords, ts)
}

fn chunk(redactor: &Redactor, rows: &[(&str, i64, i64)]) -> PendingRows {
    let mut p = PendingRows::default();
    for &(tenant, ts, offset) in rows {
        p.push_record(record(redactor, tenant, ts, offset));
    }
    p
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The tenant column of each row group of `path`.
fn tenants_by_row_group(path: &Path) -> Vec<Vec<String>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let groups = builder.metadata().num_row_groups();
    (0..groups)
        .map(|g| {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
                .unwrap()
                .with_row_groups(vec![g])
                .build()
                .unwrap();
            let mut tenants = Vec::new();
            for batch in reader {
                let batch = batch.unwrap();
                let col = batch.column_by_name("tenant").unwrap();
                let col = col.as_any().downcast_ref::<StringArray>().unwrap();
                tenants.extend((0..col.len()).map(|i| col.value(i).to_owned()));
            }
            tenants
        })
        .collect()
}

/// A fresh data directory, its sink configuration, and a redactor.
fn setup() -> (tempfile::TempDir, SinkConfig, Redactor) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SinkConfig {
        data_dir: dir.path().to_owned(),
        ..SinkConfig::default()
    };
    (dir, cfg, Redactor::new(&RedactConfig::default()).unwrap())
}

#[test]
fn appends_are_sorted_row_groups_made_durable_together_by_commit() {
    let (dir, cfg, redactor) = setup();
    let mut sink = ParquetSink::open(&cfg, Arc::new(Metrics::new())).unwrap();
    let invocations = dir.path().join("invocations");

    let first = [
        ("zeta", T0 + 1, 10),
        ("acme", T0 + 2, 11),
        ("mid", T0 + 3, 12),
    ];
    sink.append(chunk(&redactor, &first)).unwrap();
    let second = [
        ("beta", T0 + 4, 13),
        ("alpha", T0 + HOUR + 5, 14),
        ("aaa", T0 + 6, 15),
    ];
    sink.append(chunk(&redactor, &second)).unwrap();
    assert_eq!(sink.uncommitted_rows(), 6);
    assert!(
        parquet_files(&invocations).is_empty(),
        "nothing is visible before the commit"
    );
    assert!(sink.durable_offsets().is_empty());

    let outcome = sink.commit().unwrap();
    assert_eq!((outcome.files, outcome.rows), (2, 6), "one file per hour");
    assert_eq!(outcome.committable, vec![("t".to_owned(), 3, 16)]);
    assert_eq!(sink.durable_offsets()["t"][&3], 16);

    let files = parquet_files(&invocations);
    assert_eq!(files.len(), 2);
    let hour7 = files
        .iter()
        .find(|p| p.to_string_lossy().contains("hour=07"))
        .unwrap();
    // Each chunk is its own row group, sorted on its own.
    assert_eq!(
        tenants_by_row_group(hour7),
        vec![vec!["acme", "mid", "zeta"], vec!["aaa", "beta"]]
    );
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(hour7).unwrap()).unwrap();
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap();
    let offsets = kv
        .iter()
        .find(|k| k.key == "agentaudit.offsets")
        .and_then(|k| k.value.clone())
        .unwrap();
    assert_eq!(offsets, r#"{"t/3":[10,15]}"#);
    assert_eq!(
        sink.commit().unwrap().files,
        0,
        "an empty commit writes nothing"
    );
}

#[test]
fn a_stop_before_the_commit_leaves_the_dataset_and_offsets_as_they_were() {
    let (dir, cfg, redactor) = setup();
    let metrics = Arc::new(Metrics::new());
    let mut sink = ParquetSink::open(&cfg, metrics.clone()).unwrap();
    sink.write(chunk(&redactor, &[("acme", T0, 0), ("acme", T0, 1)]))
        .unwrap();
    sink.append(chunk(&redactor, &[("acme", T0, 2), ("beta", T0, 3)]))
        .unwrap();
    assert_eq!(parquet_files(&dir.path().join("_staging")).len(), 1);
    drop(sink); // as if killed: the staged file was never committed

    let sink = ParquetSink::open(&cfg, metrics).unwrap();
    assert_eq!(
        sink.durable_offsets()["t"][&3],
        2,
        "offsets 2 and 3 are consumed again"
    );
    assert!(parquet_files(&dir.path().join("_staging")).is_empty());
    let files = parquet_files(&dir.path().join("invocations"));
    assert_eq!(files.len(), 1);
    let rows: usize = tenants_by_row_group(&files[0]).iter().map(Vec::len).sum();
    assert_eq!(rows, 2);
}

/// A producer picks the hours; the sink must not hold a file open per hour.
/// With room for 4 open files, 60 hours over two chunks still commit every
/// row: the least recently written file is closed early and committed with
/// the rest, and an hour written again gets a second file.
#[test]
fn staged_files_stay_within_the_open_file_bound_whatever_the_hour_spread() {
    let (dir, mut cfg, redactor) = setup();
    cfg.max_open_files = 4;
    let metrics = Arc::new(Metrics::new());
    let mut sink = ParquetSink::open(&cfg, metrics.clone()).unwrap();
    let hours: Vec<(&str, i64, i64)> = (0..60).map(|h| ("acme", T0 - h * HOUR, h)).collect();
    sink.append(chunk(&redactor, &hours)).unwrap();
    assert!(metrics.staged_files_open.get() <= 4);
    // The same hours again: each one already closed gets a second file.
    let again: Vec<(&str, i64, i64)> = (0..60)
        .map(|h| ("beta", T0 - h * HOUR + 1, 100 + h))
        .collect();
    sink.append(chunk(&redactor, &again)).unwrap();
    assert!(metrics.staged_files_open.get() <= 4);
    assert_eq!(metrics.staged_files_limit.get(), 4);
    assert!(metrics.staged_files_closed_early.get() >= 112);
    assert_eq!(sink.uncommitted_rows(), 120);

    let outcome = sink.commit().unwrap();
    assert_eq!(outcome.rows, 120);
    assert_eq!(outcome.files, 120, "each hour twice, in its own file");
    assert_eq!(sink.durable_offsets()["t"][&3], 160);
    let files = parquet_files(&dir.path().join("invocations"));
    assert_eq!(files.len(), 120);
    let hour_dirs: std::collections::BTreeSet<_> =
        files.iter().filter_map(|f| f.parent()).collect();
    assert_eq!(hour_dirs.len(), 60);
    assert_eq!(
        std::fs::read_dir(dir.path().join("_staging"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(metrics.staged_files_open.get(), 0);
}

/// Until several instances can write one lake exactly once, the sink says
/// so for an s3:// data directory instead of writing somewhere else.
#[test]
fn an_s3_data_dir_is_refused_by_the_writer_with_its_reason() {
    let cfg = SinkConfig {
        data_dir: PathBuf::from("s3://lake/prod"),
        ..SinkConfig::default()
    };
    let err = ParquetSink::open(&cfg, Arc::new(Metrics::new()))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("s3://lake/prod"), "{err}");
    assert!(
        !std::path::Path::new("s3:").exists(),
        "no local directory made"
    );
}
