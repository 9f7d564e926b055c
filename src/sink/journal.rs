//! The commit journal: the one small file whose atomic replacement is the
//! moment a flush becomes durable.
//!
//! A flush writes its Parquet files under `_staging/`, fsyncs them, then
//! replaces `_state/journal.json` with the list of staged→final renames and
//! the next offset of every partition written so far. Only then are the files
//! renamed into the dataset and the offsets committed to Kafka. Recovery
//! replays the renames of the newest journal and discards any staged file it
//! does not list, so a crash at any instant leaves each consumed offset in the
//! dataset exactly once or not at all (and then it is consumed again).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::SinkError;

/// Next offset to consume, per topic and partition.
pub type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Journal {
    pub version: u32,
    /// Sequence number of the flush this journal records.
    pub seq: u64,
    pub offsets: Offsets,
    /// The Kafka cluster the offsets belong to, when the broker names one;
    /// a floor is meaningless against another cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Renames of that flush, paths relative to the data directory.
    pub files: Vec<Rename>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rename {
    pub staged: PathBuf,
    pub final_path: PathBuf,
}

pub fn journal_path(root: &Path) -> PathBuf {
    root.join("_state").join("journal.json")
}

pub fn read(root: &Path) -> Result<Option<Journal>, SinkError> {
    let path = journal_path(root);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SinkError::io(&path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| SinkError::Journal {
            path,
            why: e.to_string(),
        })
}

/// Atomically replaces the journal: write a temporary file, fsync it, rename
/// it over the old one, fsync the directory.
pub fn write(root: &Path, journal: &Journal) -> Result<(), SinkError> {
    let path = journal_path(root);
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(journal).map_err(|e| SinkError::Journal {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let mut f = File::create(&tmp).map_err(SinkError::io(&tmp))?;
    f.write_all(&bytes).map_err(SinkError::io(&tmp))?;
    f.sync_all().map_err(SinkError::io(&tmp))?;
    fs::rename(&tmp, &path).map_err(SinkError::io(&path))?;
    sync_dir(path.parent().unwrap_or(root))
}

pub fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SinkError::io(dir))
}

/// Completes the renames of the newest journal and removes staged files of
/// any flush that never reached its journal. Returns the recovered journal.
pub fn recover(root: &Path) -> Result<(Journal, RecoveryReport), SinkError> {
    let journal = read(root)?.unwrap_or(Journal {
        version: 1,
        ..Journal::default()
    });
    let mut report = RecoveryReport::default();
    for r in &journal.files {
        let staged = root.join(&r.staged);
        let final_path = root.join(&r.final_path);
        if staged.exists() {
            let dir = final_path.parent().unwrap_or(root);
            fs::create_dir_all(dir).map_err(SinkError::io(dir))?;
            fs::rename(&staged, &final_path).map_err(SinkError::io(&final_path))?;
            sync_dir(dir)?;
            report.completed_renames += 1;
        } else if !final_path.exists() {
            report.missing_files.push(r.final_path.clone());
        }
    }
    let staging = root.join("_staging");
    for entry in fs::read_dir(&staging).map_err(SinkError::io(&staging))? {
        let entry = entry.map_err(SinkError::io(&staging))?;
        fs::remove_file(entry.path()).map_err(SinkError::io(entry.path()))?;
        report.discarded_staged += 1;
    }
    Ok((journal, report))
}

#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub completed_renames: usize,
    pub discarded_staged: usize,
    /// Files the journal names that exist neither staged nor final: removed
    /// by someone else after they were committed.
    pub missing_files: Vec<PathBuf>,
}
