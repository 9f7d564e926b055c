//! The dataset's secret key: `_state/hash_key`, generated on first start
//! when `redact.hash_key` is not configured, and kept with the data it keys.
//!
//! It keys the output digest (`output_sha256` is an HMAC-SHA256) and the
//! `hash` field rules. A key known to readers would let them reverse short
//! values by trying every one, so the file is created readable by its owner
//! only; readers of the Parquet files need no access to `_state/`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::error::SinkError;

/// Bytes of a generated key.
const KEY_BYTES: usize = 32;

pub fn path(root: &Path) -> PathBuf {
    root.join("_state").join("hash_key")
}

/// Reads the dataset's key, or generates and durably stores one. Call with
/// the data directory's lock held, so two processes never race to create it.
pub fn load_or_create(root: &Path) -> Result<String, SinkError> {
    let path = path(root);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim();
            if key.len() < 2 * KEY_BYTES || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(SinkError::Key {
                    path,
                    why: format!("the dataset key must be {} hex digits", 2 * KEY_BYTES),
                });
            }
            Ok(key.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(root, &path),
        Err(e) => Err(SinkError::io(&path)(e)),
    }
}

fn create(root: &Path, path: &Path) -> Result<String, SinkError> {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let key = hex::encode(bytes);
    let tmp = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(SinkError::io(&tmp))?;
    f.write_all(key.as_bytes()).map_err(SinkError::io(&tmp))?;
    f.sync_all().map_err(SinkError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(SinkError::io(path))?;
    super::journal::sync_dir(path.parent().unwrap_or(root))?;
    tracing::info!(path = %path.display(), "generated the dataset's hash key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_generated_once_owner_only_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("_state")).unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = tempfile::tempdir().unwrap();
        fs::create_dir_all(other.path().join("_state")).unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), first);
    }

    #[test]
    fn a_damaged_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("_state")).unwrap();
        fs::write(path(dir.path()), "short").unwrap();
        assert!(load_or_create(dir.path()).is_err());
        assert_eq!(fs::read_to_string(path(dir.path())).unwrap(), "short");
    }
}
