//! Which Kafka the consumer talks to: the cluster id and the end of each
//! partition of the topic, read once at start-up so the sink can tell
//! whether its journal's offset floor belongs to this cluster and this
//! incarnation of the topic (see `sink::journal::check_floor`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use super::KafkaConsumer;
use crate::error::SourceError;

/// What the broker says about itself and the topic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KafkaIdentity {
    /// `None` when the broker reports none.
    pub cluster_id: Option<String>,
    /// Partitions the topic has now.
    pub partitions: Option<usize>,
    /// The high watermark (next offset to be written) per partition asked.
    pub high_watermarks: BTreeMap<i32, i64>,
}

/// Reads the cluster id, the topic's partition count and the high watermark
/// of each of `partitions`, within `timeout` in all.
pub fn read(
    consumer: &KafkaConsumer,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    timeout: Duration,
) -> Result<KafkaIdentity, SourceError> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let metadata = consumer
        .fetch_metadata(Some(topic), left())
        .map_err(SourceError::kafka("reading the topic's metadata"))?;
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len());
    // Reachable just now: a `None` here is a broker that has no id.
    let cluster_id = consumer.client().fetch_cluster_id(left());
    let mut high_watermarks = BTreeMap::new();
    for p in partitions {
        if count.is_some_and(|n| (p as usize) < n) {
            let (_, high) =
                consumer
                    .fetch_watermarks(topic, p, left())
                    .map_err(SourceError::kafka(format!(
                        "reading the end of partition {p}"
                    )))?;
            high_watermarks.insert(p, high);
        }
    }
    Ok(KafkaIdentity {
        cluster_id,
        partitions: count,
        high_watermarks,
    })
}

/// Why an offset floor recorded against `recorded_cluster` does not belong
/// to the Kafka described by `now`; `None` when it does, as far as can be
/// told. A topic recreated and already written past the floor is the one
/// case left undetected: Kafka's topic ids are not exposed by librdkafka's
/// metadata.
pub fn floor_mismatch(
    recorded_cluster: Option<&str>,
    floor: &BTreeMap<i32, i64>,
    topic: &str,
    now: &KafkaIdentity,
) -> Option<String> {
    if let (Some(then), Some(now_id)) = (recorded_cluster, now.cluster_id.as_deref())
        && then != now_id
    {
        return Some(format!(
            "the dataset's offsets were recorded against Kafka cluster `{then}`, but the brokers are cluster `{now_id}`"
        ));
    }
    if floor.is_empty() {
        return None;
    }
    let Some(count) = now.partitions else {
        return Some(format!(
            "the dataset holds offsets of topic `{topic}`, which does not exist now"
        ));
    };
    for (&p, &next) in floor {
        if p as usize >= count {
            return Some(format!(
                "the dataset holds offsets of partition {p} of `{topic}`, which has {count} partitions now"
            ));
        }
        if let Some(&high) = now.high_watermarks.get(&p)
            && next > high
        {
            return Some(format!(
                "the dataset holds partition {p} of `{topic}` up to offset {next}, but the topic ends at {high}: it was recreated or truncated"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cluster: &str, highs: &[(i32, i64)]) -> KafkaIdentity {
        KafkaIdentity {
            cluster_id: Some(cluster.into()),
            partitions: Some(highs.len()),
            high_watermarks: highs.iter().copied().collect(),
        }
    }

    #[test]
    fn a_floor_from_another_cluster_or_topic_incarnation_is_named() {
        let floor: BTreeMap<i32, i64> = [(0, 100), (1, 50)].into_iter().collect();
        let same = identity("c1", &[(0, 120), (1, 50)]);
        assert_eq!(floor_mismatch(Some("c1"), &floor, "t", &same), None);
        // A journal from before cluster ids were recorded is checked by offsets.
        assert_eq!(floor_mismatch(None, &floor, "t", &same), None);
        let other = identity("c2", &[(0, 120), (1, 50)]);
        let why = floor_mismatch(Some("c1"), &floor, "t", &other).unwrap();
        assert!(why.contains("`c1`") && why.contains("`c2`"), "{why}");
        let recreated = identity("c1", &[(0, 3), (1, 0)]);
        let why = floor_mismatch(Some("c1"), &floor, "t", &recreated).unwrap();
        assert!(why.contains("recreated"), "{why}");
        let fewer = identity("c1", &[(0, 120)]);
        assert!(floor_mismatch(Some("c1"), &floor, "t", &fewer).is_some());
        let gone = KafkaIdentity {
            partitions: None,
            ..identity("c1", &[])
        };
        assert!(floor_mismatch(Some("c1"), &floor, "t", &gone).is_some());
        // A fresh dataset has no floor to mismatch, on any cluster.
        assert_eq!(floor_mismatch(None, &BTreeMap::new(), "t", &other), None);
    }
}
