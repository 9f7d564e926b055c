//! Claims own the commit on a shared lake (`s3://…`), where any number of
//! instances in one consumer group write one dataset and Kafka and the store
//! are the only coordination.
//!
//! A commit of one Kafka partition's rows `[start, end]`:
//! 1. uploads its staged Parquet files under `_staging/{writer}/`, a prefix
//!    no reader lists;
//! 2. creates `_claims/{topic}/{partition:05}/{start:020}.json` — naming
//!    `end`, the writer and each staged object's final key — with a
//!    conditional put (`If-None-Match: *`): **the commit point**. Exactly one
//!    writer's claim of a start offset ever exists;
//! 3. copies each staged object to its final key in `dt=/hour=/` (a copy is
//!    atomic: a reader sees the whole object or none) and deletes it;
//! 4. the next claim of the partition starts at `end + 1`.
//!
//! A claim is therefore a chain link: from any committed offset, following
//! the claims (`walk`) reaches the first offset no claim covers, and every
//! link on the way is completed by whoever follows it (copies overwrite with
//! the same staged bytes, so completing twice changes nothing). A writer that
//! loses the race for a start offset (a zombie still writing after its
//! partition moved, or the new owner beaten by the zombie) adopts the
//! winner's claim and keeps only its rows past the winner's end. Final keys
//! are named by `(topic, partition, start)`, so nothing but a winning claim
//! ever names one.

use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::error::SinkError;

/// Files above this are uploaded in parts of this size (S3's smallest part
/// is 5 MiB), at most `UPLOAD_CONCURRENCY` parts in flight: an upload holds
/// at most 16 MiB of a file in memory, however large the file.
pub const PART_BYTES: usize = 8 << 20;
const UPLOAD_CONCURRENCY: usize = 2;

/// A staged object and the key it takes in the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedObject {
    pub staged: String,
    pub final_key: String,
}

/// One chain link: the rows of `[start, end]` of a partition are exactly
/// the objects listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub version: u32,
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
    pub writer: String,
    pub objects: Vec<ClaimedObject>,
}

/// What a claim attempt found.
#[derive(Debug)]
pub enum ClaimOutcome {
    Won,
    /// Another writer claimed this start first; its claim stands.
    Lost(Claim),
}

/// The shared lake's store, seen from one writer: keys under the prefix and
/// a runtime to drive the store from the pipeline's threads.
#[derive(Clone)]
pub struct ClaimLog {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    writer: String,
    rt: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ClaimLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimLog")
            .field("prefix", &self.prefix)
            .field("writer", &self.writer)
            .finish()
    }
}

fn store_err(what: &str, key: &StorePath) -> impl FnOnce(object_store::Error) -> SinkError {
    let at = format!("{what} {key}");
    move |e| SinkError::Store(format!("{at}: {e}"))
}

impl ClaimLog {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        writer: &str,
    ) -> Result<ClaimLog, SinkError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("agentaudit-store")
            .enable_all()
            .build()
            .map_err(|e| SinkError::Store(format!("starting the store runtime: {e}")))?;
        Ok(ClaimLog {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
            writer: writer.to_owned(),
            rt: Arc::new(rt),
        })
    }

    /// This process's writer id: unique per start, names its staged objects.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// `rel` under the lake's prefix.
    pub fn key(&self, rel: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(rel)
        } else {
            StorePath::from(format!("{}/{rel}", self.prefix))
        }
    }

    pub fn claim_key(&self, topic: &str, partition: i32, start: i64) -> StorePath {
        self.key(&format!("_claims/{topic}/{partition:05}/{start:020}.json"))
    }

    /// Uploads a local file to `rel`: one put when small, else a multipart
    /// upload read from disk part by part.
    pub fn upload(&self, local: &Path, rel: &str) -> Result<u64, SinkError> {
        let key = self.key(rel);
        self.rt.block_on(async {
            let len = std::fs::metadata(local)
                .map_err(SinkError::io(local))?
                .len();
            if len <= PART_BYTES as u64 {
                let bytes = std::fs::read(local).map_err(SinkError::io(local))?;
                self.store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .map_err(store_err("uploading", &key))?;
                return Ok(len);
            }
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(store_err("starting the upload of", &key))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            let mut file = std::fs::File::open(local).map_err(SinkError::io(local))?;
            let mut buf = vec![0u8; PART_BYTES];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf).map_err(SinkError::io(local))?;
                if n == 0 {
                    break;
                }
                if let Err(e) = writer.wait_for_capacity(UPLOAD_CONCURRENCY).await {
                    let _ = writer.abort().await;
                    return Err(store_err("uploading a part of", &key)(e));
                }
                writer.write(&buf[..n]);
            }
            writer
                .finish()
                .await
                .map_err(store_err("completing the upload of", &key))?;
            Ok(len)
        })
    }

    /// Creates `claim` unless its start is claimed already; a claim of ours
    /// found there (an earlier attempt whose reply was lost) is a win.
    pub fn try_claim(&self, claim: &Claim) -> Result<ClaimOutcome, SinkError> {
        let key = self.claim_key(&claim.topic, claim.partition, claim.start);
        let body = serde_json::to_vec_pretty(claim)
            .map_err(|e| SinkError::Store(format!("encoding {key}: {e}")))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let put = self
            .rt
            .block_on(self.store.put_opts(&key, PutPayload::from(body), opts));
        match put {
            Ok(_) => Ok(ClaimOutcome::Won),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let theirs = self.read_claim(&key)?.ok_or_else(|| {
                    SinkError::Store(format!("{key} exists but cannot be read back"))
                })?;
                if theirs == *claim {
                    Ok(ClaimOutcome::Won)
                } else {
                    Ok(ClaimOutcome::Lost(theirs))
                }
            }
            Err(e) => Err(store_err("claiming", &key)(e)),
        }
    }

    fn read_claim(&self, key: &StorePath) -> Result<Option<Claim>, SinkError> {
        let got = self.rt.block_on(async {
            match self.store.get(key).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        let Some(bytes) = got.map_err(store_err("reading", key))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SinkError::Store(format!("{key} is not a claim: {e}")))
    }

    /// Puts every object of `claim` at its final key and removes the staged
    /// copies. Safe to run any number of times, by any writer.
    pub fn complete(&self, claim: &Claim) -> Result<(), SinkError> {
        self.rt.block_on(async {
            for o in &claim.objects {
                let (from, to) = (self.key(&o.staged), self.key(&o.final_key));
                match self.store.copy(&from, &to).await {
                    Ok(()) => {}
                    // Completed already, and the staged copy removed.
                    Err(object_store::Error::NotFound { .. }) => {
                        self.store
                            .head(&to)
                            .await
                            .map_err(store_err("a claimed object is missing:", &to))?;
                    }
                    Err(e) => return Err(store_err("publishing", &to)(e)),
                }
            }
            let staged: Vec<StorePath> =
                claim.objects.iter().map(|o| self.key(&o.staged)).collect();
            self.delete_all(staged).await
        })
    }

    /// Removes staged objects that no claim names.
    pub fn discard(&self, rels: &[String]) -> Result<(), SinkError> {
        let keys = rels.iter().map(|r| self.key(r)).collect();
        self.rt.block_on(self.delete_all(keys))
    }

    /// Deletes `keys`, absent ones included, in as few requests as the
    /// store allows (S3: one DeleteObjects per thousand keys).
    async fn delete_all(&self, keys: Vec<StorePath>) -> Result<(), SinkError> {
        if keys.is_empty() {
            return Ok(());
        }
        let first = keys[0].clone();
        let locations = futures::stream::iter(keys.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err("deleting staged objects from", &first)(e)),
            }
        }
        Ok(())
    }

    /// Follows the claims of a partition from `from` (its committed offset,
    /// or the first claim when the group has none), completing each, and
    /// returns the first offset no claim covers: where this writer's next
    /// claim starts and below which a message is already in the lake.
    /// `None` when the partition has no claim to start from.
    pub fn walk(
        &self,
        topic: &str,
        partition: i32,
        from: Option<i64>,
    ) -> Result<Option<i64>, SinkError> {
        let mut at = match from {
            Some(offset) => offset,
            None => match self.first_claim(topic, partition)? {
                Some(start) => start,
                None => return Ok(None),
            },
        };
        while let Some(claim) = self.read_claim(&self.claim_key(topic, partition, at))? {
            self.complete(&claim)?;
            if claim.end < at {
                return Err(SinkError::Store(format!(
                    "claim {topic}/{partition}@{at} ends before it starts ({})",
                    claim.end
                )));
            }
            at = claim.end + 1;
        }
        Ok(Some(at))
    }

    /// The lowest start offset claimed in a partition.
    fn first_claim(&self, topic: &str, partition: i32) -> Result<Option<i64>, SinkError> {
        let dir = self.key(&format!("_claims/{topic}/{partition:05}"));
        self.rt.block_on(async {
            let mut listing = self.store.list(Some(&dir));
            let mut lowest: Option<i64> = None;
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(store_err("listing", &dir))?;
                let start = meta
                    .location
                    .filename()
                    .and_then(|f| f.strip_suffix(".json"))
                    .and_then(|s| s.parse::<i64>().ok());
                if let Some(s) = start {
                    lowest = Some(lowest.map_or(s, |l| l.min(s)));
                }
            }
            Ok(lowest)
        })
    }
}
