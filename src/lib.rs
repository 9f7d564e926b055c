//! agentaudit: consume AI-agent tool-invocation events from Kafka, redact them,
//! and keep them as partitioned Parquet that can be queried with SQL.
//!
//! The data flows one way — `source → decode → redact → sink` — and `query`
//! (and `incident`, through it) reads what the sink wrote. `pipeline` wires the rooms together; `serve`
//! exposes health and metrics while it runs.

pub mod bench;
pub mod config;
pub mod decode;
pub mod detect;
pub mod error;
pub mod escape;
pub mod eval;
pub mod event;
pub mod hook;
pub mod incident;
pub mod lake;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod redact;
pub mod serve;
pub mod sink;
pub mod source;
pub mod traffic;
