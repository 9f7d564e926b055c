//! Lake owns where the dataset lives — a local directory, or an S3 URL
//! (`s3://bucket/prefix`, any S3-compatible server) — and the object store
//! that reaches it, so that the readers (`query`, `backtest --from/--to`,
//! the baseline warm-up) find the same tables, in the same Hive layout,
//! wherever the dataset is.
//!
//! S3 settings follow the AWS conventions: `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, …), each overridable in
//! `[sink.object_store]`. Secrets are never printed: the settings' `Debug`
//! shows whether a secret is set, not what it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use serde::Deserialize;

use crate::error::LakeError;

/// `[sink.object_store]`: overrides of the `AWS_*` environment.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// An S3-compatible server's URL (MinIO, moto, …); AWS when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Permit plain HTTP to the endpoint (test servers on loopback).
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    /// Prefer `AWS_SECRET_ACCESS_KEY` in the environment to a file.
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id.as_ref().map(|_| "…"))
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "…"),
            )
            .finish()
    }
}

/// Where the dataset is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    /// A bucket and a key prefix without leading or trailing `/`.
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl Location {
    /// `s3://bucket[/prefix]`, or else a local path.
    pub fn parse(data_dir: &Path) -> Result<Location, LakeError> {
        let text = data_dir.to_string_lossy();
        let Some(rest) = text.strip_prefix("s3://") else {
            if text.contains("://") {
                return Err(LakeError::Url(format!(
                    "`{text}`: only local paths and s3:// URLs are supported"
                )));
            }
            return Ok(Location::Local(data_dir.to_owned()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(LakeError::Url(format!("`{text}` names no bucket")));
        }
        Ok(Location::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }
}

/// The dataset's location with the store that reaches it.
#[derive(Debug, Clone)]
pub struct Lake {
    pub location: Location,
    store: Option<Arc<dyn ObjectStore>>,
}

impl Lake {
    /// Opens the lake at `data_dir`; for S3, builds the client from the
    /// environment and `cfg` (nothing is contacted yet).
    pub fn open(data_dir: &Path, cfg: &ObjectStoreConfig) -> Result<Lake, LakeError> {
        let location = Location::parse(data_dir)?;
        let store: Option<Arc<dyn ObjectStore>> = match &location {
            Location::Local(_) => None,
            Location::S3 { bucket, .. } => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(v) = &cfg.endpoint {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = &cfg.region {
                    b = b.with_region(v);
                }
                if let Some(v) = cfg.allow_http {
                    b = b.with_allow_http(v);
                }
                if let Some(v) = &cfg.access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &cfg.secret_access_key {
                    b = b.with_secret_access_key(v);
                }
                Some(Arc::new(b.build().map_err(LakeError::Store)?))
            }
        };
        Ok(Lake { location, store })
    }

    /// A local lake at `dir`, for callers that only ever write locally.
    pub fn local(dir: &Path) -> Lake {
        Lake {
            location: Location::Local(dir.to_owned()),
            store: None,
        }
    }

    /// The URL DataFusion lists `table` under, ending in `/`.
    pub fn table_url(&self, table: &str) -> String {
        match &self.location {
            Location::Local(dir) => {
                let d = dir.join(table);
                format!("{}/", std::path::absolute(&d).unwrap_or(d).display())
            }
            Location::S3 { bucket, prefix } if prefix.is_empty() => {
                format!("s3://{bucket}/{table}/")
            }
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}/{table}/"),
        }
    }

    /// Whether `table` holds anything yet. Reading never creates it.
    pub async fn has_table(&self, table: &str) -> Result<bool, LakeError> {
        match (&self.location, &self.store) {
            (Location::Local(dir), _) => Ok(dir.join(table).is_dir()),
            (Location::S3 { prefix, .. }, Some(store)) => {
                let key = if prefix.is_empty() {
                    StorePath::from(table)
                } else {
                    StorePath::from(format!("{prefix}/{table}"))
                };
                use futures::StreamExt;
                let mut listing = store.list(Some(&key));
                match listing.next().await {
                    None => Ok(false),
                    Some(Ok(_)) => Ok(true),
                    Some(Err(e)) => Err(LakeError::Store(e)),
                }
            }
            (Location::S3 { .. }, None) => Ok(false),
        }
    }

    /// Makes the lake's store known to `ctx`, so its URLs resolve.
    pub fn register(&self, ctx: &SessionContext) -> Result<(), LakeError> {
        if let (Location::S3 { bucket, .. }, Some(store)) = (&self.location, &self.store) {
            let url = url::Url::parse(&format!("s3://{bucket}"))
                .map_err(|e| LakeError::Url(e.to_string()))?;
            ctx.register_object_store(&url, store.clone());
        }
        Ok(())
    }

    /// The object store, when the lake is in one.
    pub fn store(&self) -> Option<Arc<dyn ObjectStore>> {
        self.store.clone()
    }

    /// The local directory, when the lake is one.
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.location {
            Location::Local(dir) => Some(dir),
            Location::S3 { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dirs_parse_as_local_paths_or_s3_urls() {
        assert_eq!(
            Location::parse(Path::new("./data")).unwrap(),
            Location::Local(PathBuf::from("./data"))
        );
        assert_eq!(
            Location::parse(Path::new("s3://lake/prod/agentaudit/")).unwrap(),
            Location::S3 {
                bucket: "lake".into(),
                prefix: "prod/agentaudit".into()
            }
        );
        assert_eq!(
            Location::parse(Path::new("s3://lake")).unwrap(),
            Location::S3 {
                bucket: "lake".into(),
                prefix: String::new()
            }
        );
        assert!(Location::parse(Path::new("s3:///x")).is_err());
        assert!(Location::parse(Path::new("gs://bucket")).is_err());
    }

    #[test]
    fn table_urls_keep_the_hive_layout_under_the_prefix() {
        let lake = Lake::open(
            Path::new("s3://lake/prod"),
            &ObjectStoreConfig {
                region: Some("us-east-1".into()),
                ..ObjectStoreConfig::default()
            },
        )
        .unwrap();
        assert_eq!(lake.table_url("invocations"), "s3://lake/prod/invocations/");
    }

    #[test]
    fn settings_never_print_their_secrets() {
        let cfg = ObjectStoreConfig {
            access_key_id: Some("AKIAIOSFODNN7EXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            ..ObjectStoreConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("AKIA") && !shown.contains("wJalr"),
            "{shown}"
        );
    }
}
