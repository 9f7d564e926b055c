//! The shapes that travel down the pipeline: a decoded v1 event, the redacted
//! record the sink stores, and a dead letter for anything that failed.

use serde::Serialize;

/// Where a Kafka message came from. Every stored row carries it so a record
/// can be traced back to the exact message and so the sink can prove which
/// offsets are durable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaCoords {
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The broker's message timestamp in epoch milliseconds, when it had one.
    pub kafka_ts_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
    Denied,
    Timeout,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Denied => "denied",
            Status::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalDecision {
    Approved,
    Rejected,
}

impl ApprovalDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalDecision::Approved => "approved",
            ApprovalDecision::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub id: Option<String>,
    pub approver: Option<String>,
    pub decision: ApprovalDecision,
}

/// What is kept of a tool's output: never the output itself.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputDigest {
    /// Lower-case hex SHA-256 of the output bytes (a JSON string's content, or
    /// the JSON text of any other value, exactly as received).
    pub sha256: String,
    pub bytes: i64,
    /// The first characters of the output, present only when previews are
    /// enabled; still unredacted at decode time, scanned by `redact`.
    pub preview: Option<String>,
}

/// A valid v1 event, as decoded and before redaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: String,
    pub ts_ms: i64,
    pub tenant: String,
    pub agent_id: String,
    pub environment: String,
    pub tool: String,
    pub status: Status,
    pub actor: Option<String>,
    pub workflow_id: Option<String>,
    pub step: Option<i64>,
    pub tool_call_id: Option<String>,
    pub tool_type: Option<String>,
    pub agent_version: Option<String>,
    pub mcp_server: Option<String>,
    pub mcp_server_version: Option<String>,
    pub credential_id: Option<String>,
    pub latency_ms: Option<f64>,
    pub error_type: Option<String>,
    pub input: Option<serde_json::Value>,
    pub output: Option<OutputDigest>,
    pub tokens_in: Option<i64>,
    pub tokens_out: Option<i64>,
    pub approval: Option<Approval>,
    pub attributes: Vec<(String, String)>,
    /// How many top-level fields the decoder did not recognise.
    pub unknown_fields: u32,
    /// Prompt-injection markers found in the output before it was digested,
    /// and in the input: names only, never the text.
    pub output_markers: crate::decode::markers::Markers,
    pub input_markers: crate::decode::markers::Markers,
}

impl Event {
    /// Every injection marker of the call, input and output together.
    pub fn markers(&self) -> crate::decode::markers::Markers {
        self.output_markers.union(self.input_markers)
    }
}

/// An event after redaction: what the sink stores, one row per invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub event: Event,
    /// `input` serialised as JSON after redaction.
    pub input_json: Option<String>,
    /// `attributes` serialised as a JSON object after redaction.
    pub attributes_json: Option<String>,
    /// Names of the detectors and rules that fired, sorted and deduplicated.
    pub redactions: Vec<String>,
    /// A detector or key-name rule fired inside `input`: the tool was handed
    /// a secret or personal datum.
    pub secret_in_input: bool,
    pub coords: KafkaCoords,
    pub ingested_at_ms: i64,
}

/// Why a message could not be decoded as a v1 event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    Empty,
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    Truncated,
    NotAnObject,
    TooDeep,
    MissingField,
    InvalidField,
    InvalidTimestamp,
    TimestampOutOfRange,
    TimestampInFuture,
    /// An `otlp_*` topic's message that is not an OTLP trace export request.
    InvalidOtlp,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 13] = [
        DeadLetterReason::Empty,
        DeadLetterReason::TooLarge,
        DeadLetterReason::InvalidUtf8,
        DeadLetterReason::InvalidJson,
        DeadLetterReason::Truncated,
        DeadLetterReason::NotAnObject,
        DeadLetterReason::TooDeep,
        DeadLetterReason::MissingField,
        DeadLetterReason::InvalidField,
        DeadLetterReason::InvalidTimestamp,
        DeadLetterReason::TimestampOutOfRange,
        DeadLetterReason::TimestampInFuture,
        DeadLetterReason::InvalidOtlp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Empty => "empty",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::InvalidUtf8 => "invalid_utf8",
            DeadLetterReason::InvalidJson => "invalid_json",
            DeadLetterReason::Truncated => "truncated",
            DeadLetterReason::NotAnObject => "not_an_object",
            DeadLetterReason::TooDeep => "too_deep",
            DeadLetterReason::MissingField => "missing_field",
            DeadLetterReason::InvalidField => "invalid_field",
            DeadLetterReason::InvalidTimestamp => "invalid_timestamp",
            DeadLetterReason::TimestampOutOfRange => "timestamp_out_of_range",
            DeadLetterReason::TimestampInFuture => "timestamp_in_future",
            DeadLetterReason::InvalidOtlp => "invalid_otlp",
        }
    }
}

/// A decode failure: the reason plus a human-readable detail that never
/// contains payload text (only field names and limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure {
    pub reason: DeadLetterReason,
    pub detail: String,
}

/// A message that failed to decode, after its raw value was redacted and
/// truncated.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    pub detail: String,
    pub raw: String,
    pub raw_bytes: i64,
    pub redactions: Vec<String>,
    pub coords: KafkaCoords,
    pub ingested_at_ms: i64,
}

/// One consumed message after decode and redaction: a record, or the dead
/// letter it became. This is what crosses from the consumer thread to the
/// writer, so nothing unredacted ever leaves the consumer thread but bytes
/// it has not yet decoded.
#[derive(Debug)]
// Nearly every message is a record: boxing it to shrink the rare dead letter's
// variant would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Prepared {
    Record(Record),
    DeadLetter(DeadLetter),
    /// A message that yields no row (an OTLP request of model spans only):
    /// its offset is consumed and committed like any other.
    Consumed(KafkaCoords),
}

impl Prepared {
    pub fn coords(&self) -> &KafkaCoords {
        match self {
            Prepared::Record(r) => &r.coords,
            Prepared::DeadLetter(d) => &d.coords,
            Prepared::Consumed(c) => c,
        }
    }
}
