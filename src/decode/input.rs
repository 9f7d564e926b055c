//! Input owns the per-topic message format: one Kafka message value to the
//! pieces it decodes to. A v1 message is one event or one failure; an OTLP
//! export request is one piece per span, each a tool call, a failure named
//! by its span, or a span that is not a tool call and is only counted.

use std::borrow::Cow;

use serde::Deserialize;

use super::otlp::{self, OtlpEncoding, OtlpOptions, SpanItem};
use super::{DecodeLimits, decode};
use crate::event::{DeadLetterReason, DecodeFailure, Event};

/// How a topic's messages are encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// One v1 JSON event per message (docs/event.schema.json).
    #[default]
    V1,
    /// The Collector's `kafka` exporter, `encoding: otlp_proto`.
    OtlpProto,
    /// The Collector's `kafka` exporter, `encoding: otlp_json`.
    OtlpJson,
}

impl InputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::V1 => "v1",
            InputFormat::OtlpProto => "otlp_proto",
            InputFormat::OtlpJson => "otlp_json",
        }
    }
}

impl std::str::FromStr for InputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" => Ok(InputFormat::V1),
            "otlp_proto" => Ok(InputFormat::OtlpProto),
            "otlp_json" => Ok(InputFormat::OtlpJson),
            other => Err(format!(
                "`{other}` is not an input format (v1, otlp_proto, otlp_json)"
            )),
        }
    }
}

/// One thing a message decoded to.
#[derive(Debug)]
// Nearly every piece is an event: boxing it to shrink the rest would cost an
// allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Piece<'a> {
    Event(Event),
    /// A failure, with the bytes its dead letter keeps (once redacted): the
    /// message itself, or for a span, that span alone.
    Failed {
        failure: DecodeFailure,
        raw: Option<Cow<'a, [u8]>>,
    },
    /// A span that is not a tool call, by its GenAI operation.
    Skipped(&'static str),
}

/// What decoding a message needs besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct MessageDecoder {
    pub limits: DecodeLimits,
    pub otlp: OtlpOptions,
}

impl MessageDecoder {
    /// Decodes `payload` as `format`, handing each piece to `emit` in the
    /// message's order. A v1 message is always one piece; an export request
    /// with no spans is none.
    pub fn decode<'a>(
        &self,
        payload: Option<&'a [u8]>,
        format: InputFormat,
        now_ms: i64,
        emit: &mut dyn FnMut(Piece<'a>),
    ) {
        let encoding = match format {
            InputFormat::V1 => {
                emit(match decode(payload, now_ms, &self.limits) {
                    Ok(event) => Piece::Event(event),
                    Err(failure) => Piece::Failed {
                        failure,
                        raw: payload.map(Cow::Borrowed),
                    },
                });
                return;
            }
            InputFormat::OtlpProto => OtlpEncoding::Proto,
            InputFormat::OtlpJson => OtlpEncoding::Json,
        };
        let whole = |reason, detail: String| Piece::Failed {
            failure: DecodeFailure { reason, detail },
            raw: payload.map(Cow::Borrowed),
        };
        let bytes = match payload {
            None | Some([]) => {
                emit(whole(DeadLetterReason::Empty, "empty message".into()));
                return;
            }
            Some(b) => b,
        };
        let items = match otlp::spans(bytes, encoding, &self.otlp) {
            Ok(items) => items,
            Err(otlp::NotOtlp {
                why,
                reason,
                summary,
            }) => {
                // Counts only: a message that is not read cannot be
                // redacted field by field, so none of its bytes are kept.
                emit(Piece::Failed {
                    failure: DecodeFailure {
                        reason,
                        detail: why,
                    },
                    raw: Some(Cow::Owned(summary)),
                });
                return;
            }
        };
        for item in items {
            emit(match item {
                SpanItem::Skipped(operation) => Piece::Skipped(operation),
                SpanItem::Refused {
                    span,
                    reason,
                    why,
                    raw,
                } => Piece::Failed {
                    failure: DecodeFailure {
                        reason,
                        detail: format!("span {span}: {why}"),
                    },
                    raw: Some(Cow::Owned(raw)),
                },
                SpanItem::Tool { span, json } => match decode(Some(&json), now_ms, &self.limits) {
                    Ok(event) => Piece::Event(event),
                    Err(f) => Piece::Failed {
                        failure: DecodeFailure {
                            reason: f.reason,
                            detail: format!("span {span}: {}", f.detail),
                        },
                        raw: Some(Cow::Owned(otlp::event_summary(&span, &json))),
                    },
                },
            });
        }
    }
}
