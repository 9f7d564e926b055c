//! Library error types. The binary wraps them in `anyhow` at its edge.

use std::path::PathBuf;

/// A configuration that cannot be used. The message names the file and line
/// (for parse errors) or the setting (for validation errors).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {why}")]
    Invalid { key: String, why: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            why: why.into(),
        }
    }
}

/// Failures of the Parquet sink. Each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding Parquet for {path}: {source}")]
    Parquet {
        path: PathBuf,
        source: datafusion::parquet::errors::ParquetError,
    },
    #[error("building Arrow batch: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("commit journal {path} is unreadable: {why}")]
    Journal { path: PathBuf, why: String },
    #[error("the dataset key {path} is unusable: {why}")]
    Key { path: PathBuf, why: String },
    #[error("{0}")]
    Unsupported(String),
    /// A step against the shared lake's object store failed.
    #[error("object store: {0}")]
    Store(String),
    #[error("data directory {path} is locked by another agentaudit process")]
    Locked { path: PathBuf },
}

impl SinkError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SinkError {
        let path = path.into();
        move |source| SinkError::Io { path, source }
    }
}

/// Failures reaching the lake: a URL we cannot use, or the store's error.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("data directory: {0}")]
    Url(String),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Failures talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Kafka: {context}: {source}")]
    Kafka {
        context: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("the sink stopped: {0}")]
    SinkStopped(String),
    #[error("cannot tell where the lake ends for an assigned partition: {0}")]
    Floor(String),
}

impl SourceError {
    pub fn kafka(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> SourceError {
        let context = context.into();
        move |source| SourceError::Kafka { context, source }
    }
}

/// Failures of `agentaudit query`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("read-only: {0}; agentaudit query only reads the dataset")]
    NotReadOnly(String),
    #[error("cannot read query file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the result to {path}: {source}")]
    Export {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the result: {0}")]
    Io(#[from] std::io::Error),
    #[error("parameter `{0}` is used by the query but was not given (--param {0}=…)")]
    MissingParam(String),
    #[error("bad --param `{0}`: expected NAME=VALUE")]
    BadParam(String),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("{0}")]
    Runtime(String),
}
