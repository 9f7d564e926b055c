//! Decode owns turning one Kafka message value into a valid v1 [`Event`], or
//! into a [`DecodeFailure`] that names why it is not one.
//!
//! The decoder is strict on purpose: an event that is only half-understood is
//! worse for an audit trail than a dead letter an operator can look at. It
//! never panics on input and never echoes payload text in a failure detail.

mod depth;
pub mod fields;
pub mod input;
pub mod markers;
pub mod otlp;
mod wire;

pub use depth::{depth_over, json_depth};
pub use input::{InputFormat, MessageDecoder, Piece};

use std::borrow::Cow;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::event::{
    Approval, ApprovalDecision, DeadLetterReason, DecodeFailure, Event, OutputDigest, Status,
};
use fields::Field;
use wire::{Key, Scalar};

/// Bounds the decoder enforces; anything past them is dead-lettered.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub max_attribute_value_chars: usize,
    /// Characters of `output` kept as a preview (redacted later); 0 keeps none.
    pub output_preview_chars: usize,
    /// Events older than this epoch-millisecond instant are absurd.
    pub min_ts_ms: i64,
    /// The clock skew allowed: events further than this in the future of
    /// arrival are dead-lettered (`timestamp_in_future`). As Prometheus and
    /// Loki bound out-of-order samples from the future, 10 minutes.
    pub max_future_ms: i64,
    /// Key of the output digest. A plain SHA-256 of a short output (a PIN,
    /// an SSN) is reversed by trying every value; keyed, it still joins
    /// equal outputs within one dataset. `None` digests unkeyed (backtests,
    /// which store no output).
    pub output_key: Option<OutputKey>,
}

/// An HMAC-SHA256 key, prepared once; its `Debug` never shows it.
#[derive(Clone)]
pub struct OutputKey(Hmac<Sha256>);

impl OutputKey {
    pub fn new(key: &[u8]) -> OutputKey {
        OutputKey(
            <Hmac<Sha256> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length")),
        )
    }
}

impl std::fmt::Debug for OutputKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputKey(…)")
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 1024 * 1024,
            max_depth: 32,
            max_attributes: 64,
            max_attribute_value_chars: 1024,
            output_preview_chars: 0,
            // 2000-01-01T00:00:00Z
            min_ts_ms: 946_684_800_000,
            max_future_ms: 600 * 1000,
            output_key: None,
        }
    }
}

fn fail(reason: DeadLetterReason, detail: impl Into<String>) -> DecodeFailure {
    DecodeFailure {
        reason,
        detail: detail.into(),
    }
}

/// Decodes one message value. `now_ms` is the arrival time, used to reject
/// timestamps absurdly far in the future.
pub fn decode(
    payload: Option<&[u8]>,
    now_ms: i64,
    limits: &DecodeLimits,
) -> Result<Event, DecodeFailure> {
    let bytes = payload.unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(fail(DeadLetterReason::Empty, "message value is empty"));
    }
    if bytes.len() > limits.max_bytes {
        return Err(fail(
            DeadLetterReason::TooLarge,
            format!(
                "{} bytes exceeds the limit of {}",
                bytes.len(),
                limits.max_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        fail(
            DeadLetterReason::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    if let Some(depth) = depth_over(text.as_bytes(), limits.max_depth) {
        return Err(fail(
            DeadLetterReason::TooDeep,
            format!(
                "nesting depth {depth} exceeds the limit of {}",
                limits.max_depth
            ),
        ));
    }

    let mut failure = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = EventSeed {
        failure: &mut failure,
    };
    let parsed = seed.deserialize(&mut de).and_then(|fields| {
        de.end()?;
        Ok(fields)
    });
    let fields = match parsed {
        Ok(fields) => fields,
        Err(err) => {
            if let Some(f) = failure {
                return Err(f);
            }
            return Err(classify_json_error(&err));
        }
    };
    fields.into_event(now_ms, limits)
}

fn classify_json_error(err: &serde_json::Error) -> DecodeFailure {
    use serde_json::error::Category;
    match err.classify() {
        Category::Eof => fail(
            DeadLetterReason::Truncated,
            format!(
                "JSON ends early at line {} column {}",
                err.line(),
                err.column()
            ),
        ),
        Category::Data => fail(DeadLetterReason::NotAnObject, "value is not a JSON object"),
        Category::Syntax | Category::Io => fail(
            DeadLetterReason::InvalidJson,
            format!(
                "not valid JSON at line {} column {}",
                err.line(),
                err.column()
            ),
        ),
    }
}

/// Raw field values as they came off the wire, before type and range checks.
#[derive(Default)]
struct RawFields<'de> {
    values: [Option<Scalar<'de>>; fields::SCALAR_COUNT],
    input: Option<serde_json::Value>,
    output: Option<&'de serde_json::value::RawValue>,
    approval: Option<serde_json::Value>,
    attributes: Option<serde_json::Value>,
    unknown: u32,
}

struct EventSeed<'a> {
    failure: &'a mut Option<DecodeFailure>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = RawFields<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = RawFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawFields::default();
        let mut seen = [false; fields::FIELD_COUNT];
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let Some(field) = Field::from_name(&key) else {
                raw.unknown = raw.unknown.saturating_add(1);
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if std::mem::replace(&mut seen[field as usize], true) {
                *self.failure = Some(fail(
                    DeadLetterReason::InvalidField,
                    format!("field `{}` appears more than once", field.name()),
                ));
                return Err(de::Error::custom("duplicate field"));
            }
            match field {
                Field::Input => raw.input = Some(map.next_value()?),
                Field::Output => raw.output = Some(map.next_value()?),
                Field::Approval => raw.approval = Some(map.next_value()?),
                Field::Attributes => raw.attributes = Some(map.next_value()?),
                scalar => raw.values[scalar as usize] = Some(map.next_value()?),
            }
        }
        Ok(raw)
    }
}

impl<'de> RawFields<'de> {
    fn take(&mut self, f: Field) -> Option<Scalar<'de>> {
        match self.values[f as usize].take() {
            Some(Scalar::Null) | None => None,
            some => some,
        }
    }

    fn required_str(&mut self, f: Field, max_chars: usize) -> Result<String, DecodeFailure> {
        match self.take(f) {
            None => Err(fail(
                DeadLetterReason::MissingField,
                format!("required field `{}` is missing", f.name()),
            )),
            Some(v) => checked_str(f, v, max_chars),
        }
    }

    fn optional_str(
        &mut self,
        f: Field,
        max_chars: usize,
    ) -> Result<Option<String>, DecodeFailure> {
        self.take(f)
            .map(|v| checked_str(f, v, max_chars))
            .transpose()
    }

    fn optional_count(&mut self, f: Field) -> Result<Option<i64>, DecodeFailure> {
        match self.take(f) {
            None => Ok(None),
            Some(Scalar::Int(n)) if (0..=i64::MAX as i128).contains(&n) => Ok(Some(n as i64)),
            Some(Scalar::Int(_)) => Err(invalid(f, "must be an integer ≥ 0")),
            Some(other) => Err(invalid(
                f,
                &format!("must be an integer, not {}", other.kind()),
            )),
        }
    }

    fn into_event(mut self, now_ms: i64, limits: &DecodeLimits) -> Result<Event, DecodeFailure> {
        let event_id = self.required_str(Field::EventId, 128)?;
        let ts_ms = self.timestamp(now_ms, limits)?;
        let tenant = self.required_str(Field::Tenant, 128)?;
        let agent_id = self.required_str(Field::AgentId, 128)?;
        let environment = self.required_str(Field::Environment, 64)?.to_lowercase();
        let tool = self.required_str(Field::Tool, 256)?;
        let status = match self.required_str(Field::Status, 16)?.as_str() {
            "ok" => Status::Ok,
            "error" => Status::Error,
            "denied" => Status::Denied,
            "timeout" => Status::Timeout,
            _ => {
                return Err(invalid(
                    Field::Status,
                    "must be ok, error, denied or timeout",
                ));
            }
        };
        let latency_ms = match self.take(Field::LatencyMs) {
            None => None,
            Some(Scalar::Int(n)) if n >= 0 => Some(n as f64),
            Some(Scalar::Float(x)) if x.is_finite() && x >= 0.0 => Some(x),
            Some(_) => return Err(invalid(Field::LatencyMs, "must be a number ≥ 0")),
        };
        let (output, output_markers) = match self.output {
            None => (None, markers::Markers::default()),
            Some(raw) if raw.get() == "null" => (None, markers::Markers::default()),
            Some(raw) => {
                let (digest, found) =
                    digest_output(raw, limits.output_preview_chars, limits.output_key.as_ref());
                (Some(digest), found)
            }
        };
        let input = self.input.take().filter(|v| !v.is_null());
        let input_markers = input.as_ref().map(markers::scan_json).unwrap_or_default();
        Ok(Event {
            event_id,
            ts_ms,
            tenant,
            agent_id,
            environment,
            tool,
            status,
            actor: self.optional_str(Field::Actor, 1024)?,
            workflow_id: self.optional_str(Field::WorkflowId, 256)?,
            step: self.optional_count(Field::Step)?,
            tool_call_id: self.optional_str(Field::ToolCallId, 256)?,
            tool_type: self.optional_str(Field::ToolType, 128)?,
            agent_version: self.optional_str(Field::AgentVersion, 128)?,
            mcp_server: self.optional_str(Field::McpServer, 256)?,
            mcp_server_version: self.optional_str(Field::McpServerVersion, 128)?,
            credential_id: self.optional_str(Field::CredentialId, 256)?,
            latency_ms,
            error_type: self.optional_str(Field::ErrorType, 1024)?,
            input,
            output,
            tokens_in: self.optional_count(Field::TokensIn)?,
            tokens_out: self.optional_count(Field::TokensOut)?,
            approval: self.approval.take().map(approval).transpose()?.flatten(),
            attributes: self
                .attributes
                .take()
                .map(|v| attributes(v, limits))
                .transpose()?
                .unwrap_or_default(),
            unknown_fields: self.unknown,
            output_markers,
            input_markers,
        })
    }

    fn timestamp(&mut self, now_ms: i64, limits: &DecodeLimits) -> Result<i64, DecodeFailure> {
        let ts_ms = match self.take(Field::Ts) {
            None => {
                return Err(fail(
                    DeadLetterReason::MissingField,
                    "required field `ts` is missing",
                ));
            }
            Some(Scalar::Int(n)) => i64::try_from(n).map_err(|_| {
                fail(
                    DeadLetterReason::TimestampOutOfRange,
                    "`ts` does not fit in 64 bits",
                )
            })?,
            Some(Scalar::Str(s)) => chrono::DateTime::parse_from_rfc3339(&s)
                .map_err(|e| {
                    fail(
                        DeadLetterReason::InvalidTimestamp,
                        format!("`ts` is not RFC 3339: {e}"),
                    )
                })?
                .timestamp_millis(),
            Some(other) => {
                return Err(fail(
                    DeadLetterReason::InvalidTimestamp,
                    format!(
                        "`ts` must be an RFC 3339 string or integer epoch milliseconds, not {}",
                        other.kind()
                    ),
                ));
            }
        };
        if ts_ms < limits.min_ts_ms {
            return Err(fail(
                DeadLetterReason::TimestampOutOfRange,
                format!("`ts` {ts_ms} ms is before the accepted range"),
            ));
        }
        // The producer chooses `ts`: one event from far ahead would drag
        // event-time clocks with it, so the future is bounded by arrival
        // time plus the clock skew allowed.
        if ts_ms > now_ms.saturating_add(limits.max_future_ms) {
            return Err(fail(
                DeadLetterReason::TimestampInFuture,
                format!(
                    "`ts` {ts_ms} ms is more than {} s after arrival (decode.max_future_secs)",
                    limits.max_future_ms / 1000
                ),
            ));
        }
        Ok(ts_ms)
    }
}

fn invalid(f: Field, why: &str) -> DecodeFailure {
    fail(
        DeadLetterReason::InvalidField,
        format!("field `{}` {why}", f.name()),
    )
}

fn checked_str(f: Field, v: Scalar<'_>, max_chars: usize) -> Result<String, DecodeFailure> {
    let Scalar::Str(s) = v else {
        return Err(invalid(f, &format!("must be a string, not {}", v.kind())));
    };
    // No more bytes than the limit means no more characters either: the
    // count is needed only for long text.
    if s.is_empty() || (s.len() > max_chars && s.chars().count() > max_chars) {
        return Err(invalid(f, &format!("must be 1 to {max_chars} characters")));
    }
    // Control characters are below 0x20, 0x7f, or (C1) encoded from 0xc2:
    // a vectorised byte test spares decoding characters in the common case.
    if f.is_identifier()
        && s.bytes().any(|b| !(0x20..0x7f).contains(&b))
        && s.chars().any(fields::is_deceptive)
    {
        return Err(invalid(
            f,
            "must not contain control, bidirectional or zero-width characters",
        ));
    }
    Ok(s.into_owned())
}

/// The output's digest, and the injection markers of its content (scanned
/// here because the content is gone after this).
fn digest_output(
    raw: &serde_json::value::RawValue,
    preview_chars: usize,
    key: Option<&OutputKey>,
) -> (OutputDigest, markers::Markers) {
    let text = raw.get();
    // A JSON string is hashed by its content so that the digest matches what
    // the tool returned, not how the producer escaped it.
    let content: Cow<str> = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map(Cow::Owned)
            .unwrap_or(Cow::Borrowed(text))
    } else {
        Cow::Borrowed(text)
    };
    let mut hex_digest = [0u8; 64];
    // 32 bytes always fit 64 hex digits; `hex::encode` goes char by char.
    let digest: [u8; 32] = match key {
        Some(OutputKey(prepared)) => {
            let mut mac = prepared.clone();
            mac.update(content.as_bytes());
            mac.finalize().into_bytes().into()
        }
        None => Sha256::digest(content.as_bytes()).into(),
    };
    let sha256 = hex::encode_to_slice(digest, &mut hex_digest)
        .ok()
        .and_then(|()| std::str::from_utf8(&hex_digest).ok())
        .map(str::to_owned)
        .unwrap_or_default();
    let preview = (preview_chars > 0).then(|| content.chars().take(preview_chars).collect());
    // Structured output is scanned string by string, so escapes such as
    // \u200b are seen as the characters they stand for.
    let found = if text.starts_with('"') {
        markers::scan(&content)
    } else {
        serde_json::from_str::<serde_json::Value>(text)
            .map(|v| markers::scan_json(&v))
            .unwrap_or_else(|_| markers::scan(text))
    };
    (
        OutputDigest {
            sha256,
            bytes: content.len() as i64,
            preview,
        },
        found,
    )
}

fn approval(v: serde_json::Value) -> Result<Option<Approval>, DecodeFailure> {
    let obj = match v {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(o) => o,
        _ => return Err(invalid(Field::Approval, "must be an object")),
    };
    let text = |k: &str| -> Result<Option<String>, DecodeFailure> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if !s.is_empty() && s.chars().count() <= 256 => {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(invalid(
                Field::Approval,
                &format!("`{k}` must be a string of 1 to 256 characters"),
            )),
        }
    };
    let decision = match text("decision")?.as_deref() {
        Some("approved") => ApprovalDecision::Approved,
        Some("rejected") => ApprovalDecision::Rejected,
        _ => {
            return Err(invalid(
                Field::Approval,
                "`decision` must be approved or rejected",
            ));
        }
    };
    Ok(Some(Approval {
        id: text("id")?,
        approver: text("approver")?,
        decision,
    }))
}

fn attributes(
    v: serde_json::Value,
    limits: &DecodeLimits,
) -> Result<Vec<(String, String)>, DecodeFailure> {
    let obj = match v {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Object(o) => o,
        _ => return Err(invalid(Field::Attributes, "must be an object")),
    };
    if obj.len() > limits.max_attributes {
        return Err(invalid(
            Field::Attributes,
            &format!("has more than {} entries", limits.max_attributes),
        ));
    }
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let serde_json::Value::String(s) = v else {
            return Err(invalid(Field::Attributes, "values must be strings"));
        };
        if k.is_empty()
            || k.chars().count() > 128
            || s.chars().count() > limits.max_attribute_value_chars
        {
            return Err(invalid(
                Field::Attributes,
                &format!(
                    "keys must be 1 to 128 characters and values at most {}",
                    limits.max_attribute_value_chars
                ),
            ));
        }
        out.push((k, s));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
