//! Lake checks: how many rows each Kafka offset has in a dataset (local or
//! on S3), where each partition stands, and on a shared lake, when an
//! offset is not stored exactly once, the claims and objects that say why.

use std::collections::BTreeMap;

use agentaudit::lake::{Lake, Location};
use agentaudit::query::{Format, render, run_blocking};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;

/// Rows per offset, per partition, both tables together.
pub fn offset_counts(lake: &Lake) -> BTreeMap<i64, BTreeMap<i64, u32>> {
    let sql = "SELECT src_partition, src_offset FROM invocations \
               UNION ALL SELECT src_partition, src_offset FROM dead_letter";
    let batches = run_blocking(lake, sql.into()).expect("query the lake");
    let text = render(&batches, Format::Jsonl).expect("render");
    let mut counts: BTreeMap<i64, BTreeMap<i64, u32>> = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if let (Some(p), Some(o)) = (v["src_partition"].as_i64(), v["src_offset"].as_i64()) {
            *counts.entry(p).or_default().entry(o).or_default() += 1;
        }
    }
    counts
}

/// Rows, and the lowest and highest offset, of each partition: where a
/// stalled partition stopped.
pub fn per_partition(lake: &Lake) -> String {
    offset_counts(lake)
        .iter()
        .map(|(p, offsets)| {
            let rows: u32 = offsets.values().sum();
            let lo = offsets.keys().next().copied().unwrap_or(0);
            let hi = offsets.keys().last().copied().unwrap_or(0);
            format!("partition {p}: {rows} rows over offsets {lo}..={hi}\n")
        })
        .collect()
}

/// Empty when every offset of each partition up to its highest is stored
/// exactly once; otherwise, per partition at fault, the offsets missing and
/// repeated, the event ids at a repeated offset, the objects holding the
/// partition (their Kafka ranges, from the footer) and its chain of claims.
pub fn not_exactly_once(lake: &Lake, topic: &str) -> String {
    let mut out = String::new();
    for (p, offsets) in offset_counts(lake) {
        let hi = offsets.keys().last().copied().unwrap_or(0);
        let missing: Vec<i64> = (0..=hi).filter(|o| !offsets.contains_key(o)).collect();
        let repeated: Vec<(&i64, &u32)> = offsets.iter().filter(|(_, n)| **n > 1).collect();
        if missing.is_empty() && repeated.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\npartition {p}: missing {missing:?}, more than once {repeated:?}\n"
        ));
        // One message stored twice, or several the broker gave one offset.
        for (o, _) in &repeated {
            let sql = format!(
                "SELECT event_id FROM invocations WHERE src_partition = {p} AND src_offset = {o}"
            );
            let ids = run_blocking(lake, sql)
                .and_then(|b| render(&b, Format::Csv))
                .unwrap_or_default();
            out.push_str(&format!(
                "  offset {o}: event ids {}\n",
                ids.replace('\n', " ")
            ));
        }
        out.push_str(&objects_holding(lake, topic, p));
        out.push_str(&claims_of(lake, topic, p));
    }
    out
}

/// The key prefix of an S3 lake.
pub fn prefix(lake: &Lake) -> String {
    match &lake.location {
        Location::S3 { prefix, .. } => prefix.clone(),
        Location::Local(_) => panic!("not an S3 lake"),
    }
}

/// Each data object holding rows of partition `p`, with its Kafka ranges.
fn objects_holding(lake: &Lake, topic: &str, p: i64) -> String {
    use datafusion::parquet::file::reader::FileReader;
    use datafusion::parquet::file::serialized_reader::SerializedFileReader;
    let store = lake.store().expect("an object store");
    let root = StorePath::from(prefix(lake));
    let wanted = format!("\"{topic}/{p}\"");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut metas: Vec<_> = store
            .list(Some(&root))
            .filter_map(|m| async move { m.ok() })
            .collect()
            .await;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let mut out = String::new();
        for meta in metas {
            let key = meta.location.to_string();
            if !key.ends_with(".parquet") || key.contains("/_") {
                continue;
            }
            let Ok(bytes) = async { store.get(&meta.location).await?.bytes().await }.await else {
                continue;
            };
            let Ok(file) = SerializedFileReader::new(bytes) else {
                continue;
            };
            let ranges = file
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|k| k.key == "agentaudit.offsets"))
                .and_then(|k| k.value.clone())
                .unwrap_or_default();
            if ranges.contains(&wanted) {
                out.push_str(&format!("  object {key}: {ranges}\n"));
            }
        }
        out
    })
}

/// Every claim of partition `p`, in key order, with what its record decided.
fn claims_of(lake: &Lake, topic: &str, p: i64) -> String {
    let store = lake.store().expect("an object store");
    let prefix = prefix(lake);
    let dir = StorePath::from(format!("{prefix}/_claims/{topic}/{p:05}"));
    fn json<B: AsRef<[u8]>>(bytes: Option<B>) -> serde_json::Value {
        bytes
            .and_then(|b| serde_json::from_slice(b.as_ref()).ok())
            .unwrap_or_default()
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut keys: Vec<_> = store
            .list(Some(&dir))
            .filter_map(|m| async move { m.ok().map(|m| m.location) })
            .collect()
            .await;
        keys.sort();
        let mut out = String::new();
        for key in keys {
            let claim = json(match store.get(&key).await {
                Ok(r) => r.bytes().await.ok(),
                Err(_) => None,
            });
            let record = StorePath::from(format!(
                "{prefix}/{}",
                claim["commit"].as_str().unwrap_or("")
            ));
            let state = match store.get(&record).await {
                Ok(r) => {
                    let v = json(r.bytes().await.ok());
                    format!(
                        "{} ({} objects)",
                        v["state"],
                        v["objects"].as_array().map_or(0, Vec::len)
                    )
                }
                Err(_) => "no record".into(),
            };
            out.push_str(&format!(
                "  claim {} start {} attempt {} end {} writer {} -> {state}\n",
                key.filename().unwrap_or(""),
                claim["start"],
                claim["attempt"],
                claim["end"],
                claim["writer"]
            ));
        }
        out
    })
}
