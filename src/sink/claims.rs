//! Claims own the commit on a shared lake (`s3://…`), where any number of
//! instances in one consumer group write one dataset and Kafka and the store
//! are the only coordination.
//!
//! A writer's commit covers the rows of several Kafka partitions, staged as
//! one Parquet file per (table, hour) like a local commit:
//! 1. it uploads the staged files under `_staging/{writer}/`, a prefix no
//!    reader lists;
//! 2. for each partition P with rows `[S, E]`, it creates the **claim**
//!    `_claims/{topic}/{P:05}/{S:020}-{attempt:04}.json` naming `E` and the
//!    commit record's key, with a conditional put (`If-None-Match: *`): one
//!    claim of each (P, S, attempt) ever exists;
//! 3. it creates the **commit record** `_commits/{writer}/{seq}.json` listing
//!    the staged objects and their final keys, again conditionally: **the
//!    commit point**. A record is either committed or void, never both,
//!    since whoever creates it first decides;
//! 4. it copies each object to its final key in `dt=/hour=/` (a copy is
//!    atomic: a reader sees the whole object or none) and deletes the
//!    staged ones in bulk.
//!
//! Following a partition's claims from its committed offset (`walk`): a claim
//! whose record is committed covers `[S, E]` (its objects are published, the
//! walk goes on at `E + 1`); one whose record is void covers nothing (the
//! next attempt at S is read); one whose record does not exist yet belongs to
//! a writer that died, or is a zombie, before its commit point, and the walk
//! voids the record itself, which stops that writer from ever committing it.
//! A writer whose claim is beaten adopts the winner's record and keeps only
//! its rows past the winner's end; one whose record was voided claims again
//! at the next attempt. Final keys are named by writer and commit, and only
//! a committed record names any.

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

/// One partition's offsets `[start, end]`, as far as the commit record
/// named decides: covered if it is committed, not at all if it is void.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub version: u32,
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub attempt: u32,
    pub end: i64,
    pub writer: String,
    /// The key (under the lake's prefix) of the commit record.
    pub commit: String,
}

/// What a commit record says: its objects are in the lake (or are to be
/// copied there by whoever finds it first), or nothing of it ever will be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CommitRecord {
    Committed { objects: Vec<ClaimedObject> },
    Void,
}

/// What a claim attempt found.
#[derive(Debug)]
pub enum ClaimOutcome {
    Won,
    /// Another writer claimed this start and attempt first.
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

    pub fn claim_key(&self, topic: &str, partition: i32, start: i64, attempt: u32) -> StorePath {
        self.key(&format!(
            "_claims/{topic}/{partition:05}/{start:020}-{attempt:04}.json"
        ))
    }

    /// The key of this writer's commit record number `seq`, relative.
    pub fn commit_rel(&self, seq: u64) -> String {
        format!("_commits/{}/{seq:012}.json", self.writer)
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
        let key = self.claim_key(&claim.topic, claim.partition, claim.start, claim.attempt);
        match self.create(&key, claim)? {
            None => Ok(ClaimOutcome::Won),
            Some(theirs) if theirs == *claim => Ok(ClaimOutcome::Won),
            Some(theirs) => Ok(ClaimOutcome::Lost(theirs)),
        }
    }

    /// Creates `key` holding `value` unless it exists; returns what is
    /// there when it does (an earlier attempt of ours included).
    fn create<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        key: &StorePath,
        value: &T,
    ) -> Result<Option<T>, SinkError> {
        let body = serde_json::to_vec_pretty(value)
            .map_err(|e| SinkError::Store(format!("encoding {key}: {e}")))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let put = self
            .rt
            .block_on(self.store.put_opts(key, PutPayload::from(body), opts));
        match put {
            Ok(_) => Ok(None),
            Err(object_store::Error::AlreadyExists { .. }) => self
                .read(key)?
                .map(Some)
                .ok_or_else(|| SinkError::Store(format!("{key} exists but cannot be read back"))),
            Err(e) => Err(store_err("creating", key)(e)),
        }
    }

    fn read<T: serde::de::DeserializeOwned>(
        &self,
        key: &StorePath,
    ) -> Result<Option<T>, SinkError> {
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
            .map_err(|e| SinkError::Store(format!("{key} is unreadable: {e}")))
    }

    /// Makes this writer's commit record `rel` committed with `objects`,
    /// unless it was voided first (`Ok(false)`).
    pub fn commit(&self, rel: &str, objects: Vec<ClaimedObject>) -> Result<bool, SinkError> {
        let record = CommitRecord::Committed { objects };
        match self.create(&self.key(rel), &record)? {
            None => Ok(true),
            Some(found) => Ok(found == record),
        }
    }

    /// What the commit record `rel` decided; one not written yet is voided
    /// here, so its writer can never commit it.
    pub fn resolve(&self, rel: &str) -> Result<CommitRecord, SinkError> {
        let key = self.key(rel);
        if let Some(found) = self.read(&key)? {
            return Ok(found);
        }
        Ok(self
            .create(&key, &CommitRecord::Void)?
            .unwrap_or(CommitRecord::Void))
    }

    /// Puts every object of a committed record at its final key and removes
    /// the staged copies. Safe to run any number of times, by any writer.
    pub fn complete(&self, objects: &[ClaimedObject]) -> Result<(), SinkError> {
        self.rt.block_on(async {
            for o in objects {
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
            let staged: Vec<StorePath> = objects.iter().map(|o| self.key(&o.staged)).collect();
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
    /// or the first claim when the group has none), publishing each
    /// committed one and voiding any whose writer never reached its commit
    /// point, and returns the first offset no claim covers: where this
    /// writer's next claim starts and below which a message is already in
    /// the lake. `None` when the partition has no claim to start from.
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
        let mut attempt = 0;
        while let Some(claim) =
            self.read::<Claim>(&self.claim_key(topic, partition, at, attempt))?
        {
            match self.resolve(&claim.commit)? {
                CommitRecord::Committed { objects } => {
                    self.complete(&objects)?;
                    if claim.end < at {
                        return Err(SinkError::Store(format!(
                            "claim {topic}/{partition}@{at} ends before it starts ({})",
                            claim.end
                        )));
                    }
                    at = claim.end + 1;
                    attempt = 0;
                }
                CommitRecord::Void => attempt += 1,
            }
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
                    .and_then(|f| f.split('-').next())
                    .and_then(|s| s.parse::<i64>().ok());
                if let Some(s) = start {
                    lowest = Some(lowest.map_or(s, |l| l.min(s)));
                }
            }
            Ok(lowest)
        })
    }
}
