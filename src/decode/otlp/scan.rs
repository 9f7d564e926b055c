//! Scan owns the bounded look at an OTLP message before anything is
//! decoded: one linear pass over the protobuf wire format (or a count of
//! the JSON's objects) that counts resources, spans, attributes and nested
//! values, estimates what decoding would hold in memory, and stops at the
//! first limit crossed — so a 4 MB message of 1.5 M empty attributes is
//! refused in milliseconds with the limit it hit, instead of costing a
//! gigabyte and half a minute of the consumer thread. It allocates nothing
//! per field, and never recurses deeper than `MAX_DEPTH`.

/// Limits a message must keep to be decoded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_spans: usize,
    pub max_resource_attributes: usize,
    /// Estimated bytes the decoded request would hold.
    pub max_decoded_bytes: usize,
}

/// What the scan counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub resources: usize,
    pub spans: usize,
    /// Attributes of all spans, events, links and scopes.
    pub attributes: usize,
    /// The most attributes one resource has.
    pub max_resource_attributes: usize,
    /// Messages of any kind (each costs a heap object once decoded).
    pub elements: usize,
    pub decoded_estimate: usize,
}

/// Why a message is refused before decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not protobuf of an export request's shape, at a byte offset.
    Malformed(String),
    /// Over a limit: which, and by how much.
    Limit { limit: &'static str, detail: String },
}

/// Bytes a decoded message of any kind holds beyond its strings (a
/// `KeyValue` is a `String` and an `Option<AnyValue>`: about 80 bytes on
/// 64-bit, rounded up for the allocator).
const ELEMENT_BYTES: usize = 96;
/// A decoded `Span` (ids, name, times, status and five vectors).
const SPAN_BYTES: usize = 320;
/// Nesting deeper than this is refused (prost's own limit is 100).
pub const MAX_DEPTH: usize = 64;

/// What decoding holds for a message of `bytes` with `elements` values of
/// which `spans` are spans.
fn estimate(bytes: usize, elements: usize, spans: usize) -> usize {
    bytes + elements * ELEMENT_BYTES + spans * SPAN_BYTES
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    Event,
    Link,
    KeyValue,
    AnyValue,
    ArrayValue,
    KvList,
}

/// The message a length-delimited field of `kind` holds, for the fields
/// that hold messages; every other field is skipped.
fn child(kind: Kind, field: u64) -> Option<Kind> {
    use Kind::*;
    Some(match (kind, field) {
        (Request, 1) => ResourceSpans,
        (ResourceSpans, 1) => Resource,
        (ResourceSpans, 2) => ScopeSpans,
        (Resource, 1) => KeyValue,
        (ScopeSpans, 1) => Scope,
        (ScopeSpans, 2) => Span,
        (Scope, 3) => KeyValue,
        (Span, 9) => KeyValue,
        (Span, 11) => Event,
        (Span, 13) => Link,
        (Event, 3) => KeyValue,
        (Link, 5) => KeyValue,
        (KeyValue, 2) => AnyValue,
        (AnyValue, 5) => ArrayValue,
        (AnyValue, 6) => KvList,
        (ArrayValue, 1) => AnyValue,
        (KvList, 1) => KeyValue,
        _ => return None,
    })
}

struct Scanner<'a> {
    bytes: &'a [u8],
    limits: Limits,
    shape: Shape,
    /// Attributes of the resource being scanned.
    resource_attributes: usize,
}

fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl Scanner<'_> {
    fn malformed(&self, at: usize, why: &str) -> Refusal {
        Refusal::Malformed(format!(
            "not an OTLP protobuf export request: {why} at byte {at}"
        ))
    }

    fn over(&self, limit: &'static str, detail: String) -> Refusal {
        Refusal::Limit { limit, detail }
    }

    /// Scans the message of `kind` in `bytes[start..end]`.
    fn message(
        &mut self,
        kind: Kind,
        start: usize,
        end: usize,
        depth: usize,
    ) -> Result<(), Refusal> {
        if depth > MAX_DEPTH {
            return Err(self.malformed(start, "values nested too deep"));
        }
        let mut pos = start;
        while pos < end {
            let at = pos;
            let key = varint(&self.bytes[..end], &mut pos)
                .ok_or_else(|| self.malformed(at, "a truncated field key"))?;
            let (field, wire) = (key >> 3, key & 7);
            if field == 0 {
                return Err(self.malformed(at, "field number 0"));
            }
            match wire {
                0 => {
                    varint(&self.bytes[..end], &mut pos)
                        .ok_or_else(|| self.malformed(at, "a truncated varint"))?;
                }
                1 => pos += 8,
                5 => pos += 4,
                2 => {
                    let len = varint(&self.bytes[..end], &mut pos)
                        .ok_or_else(|| self.malformed(at, "a truncated length"))?;
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|l| *l <= end.saturating_sub(pos))
                        .ok_or_else(|| self.malformed(at, "a length past the end"))?;
                    if let Some(inner) = child(kind, field) {
                        self.enter(kind, inner, pos, pos + len, depth)?;
                    }
                    pos += len;
                }
                _ => return Err(self.malformed(at, "a group or unknown wire type")),
            }
            if pos > end {
                return Err(self.malformed(at, "a fixed-width value past the end"));
            }
        }
        Ok(())
    }

    /// Counts one message of `inner` inside one of `outer`, checks the
    /// limits, and scans it.
    fn enter(
        &mut self,
        outer: Kind,
        inner: Kind,
        start: usize,
        end: usize,
        depth: usize,
    ) -> Result<(), Refusal> {
        self.shape.elements += 1;
        match (outer, inner) {
            (_, Kind::ResourceSpans) => {
                self.shape.resources += 1;
                self.resource_attributes = 0;
            }
            (Kind::Resource, Kind::KeyValue) => {
                self.resource_attributes += 1;
                self.shape.max_resource_attributes = self
                    .shape
                    .max_resource_attributes
                    .max(self.resource_attributes);
                if self.resource_attributes > self.limits.max_resource_attributes {
                    return Err(self.over(
                        "max_resource_attributes",
                        format!(
                            "a resource with more than {} attributes",
                            self.limits.max_resource_attributes
                        ),
                    ));
                }
            }
            (_, Kind::Span) => {
                self.shape.spans += 1;
                if self.shape.spans > self.limits.max_spans {
                    return Err(self.over(
                        "max_spans_per_message",
                        format!("more than {} spans in one message", self.limits.max_spans),
                    ));
                }
            }
            (Kind::Span | Kind::Event | Kind::Link | Kind::Scope, Kind::KeyValue) => {
                self.shape.attributes += 1;
            }
            _ => {}
        }
        self.shape.decoded_estimate =
            estimate(self.bytes.len(), self.shape.elements, self.shape.spans);
        if self.shape.decoded_estimate > self.limits.max_decoded_bytes {
            return Err(self.over(
                "max_decoded_bytes",
                format!(
                    "decoding would hold more than {} bytes ({} values in {} bytes so far)",
                    self.limits.max_decoded_bytes, self.shape.elements, end
                ),
            ));
        }
        self.message(inner, start, end, depth + 1)
    }
}

/// Scans an `otlp_proto` message against `limits`.
pub fn protobuf(bytes: &[u8], limits: Limits) -> Result<Shape, Refusal> {
    let mut s = Scanner {
        bytes,
        limits,
        shape: Shape::default(),
        resource_attributes: 0,
    };
    s.message(Kind::Request, 0, bytes.len(), 0)?;
    s.shape.decoded_estimate = estimate(bytes.len(), s.shape.elements, s.shape.spans);
    Ok(s.shape)
}

/// Bounds an `otlp_json` message: every decoded message is a JSON object,
/// so the count of `{` (strings holding braces only raise it) bounds the
/// elements, and with them the memory decoding holds.
pub fn json(bytes: &[u8], limits: Limits) -> Result<Shape, Refusal> {
    let objects = memchr::memchr_iter(b'{', bytes).count();
    let estimate = estimate(bytes.len(), objects, 0);
    if estimate > limits.max_decoded_bytes {
        return Err(Refusal::Limit {
            limit: "max_decoded_bytes",
            detail: format!(
                "decoding would hold more than {} bytes ({objects} objects in {} bytes)",
                limits.max_decoded_bytes,
                bytes.len()
            ),
        });
    }
    Ok(Shape {
        elements: objects,
        decoded_estimate: estimate,
        ..Shape::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    const WIDE: Limits = Limits {
        max_spans: 1_000_000,
        max_resource_attributes: 1_000_000,
        max_decoded_bytes: usize::MAX,
    };

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }

    fn request(
        resource_attrs: usize,
        spans: usize,
        span_attrs: usize,
    ) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: (0..resource_attrs)
                        .map(|i| kv(&format!("r{i}"), "v"))
                        .collect(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (0..spans)
                        .map(|_| Span {
                            attributes: (0..span_attrs)
                                .map(|i| kv(&format!("a{i}"), "v"))
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn counts_what_prost_would_decode() {
        let bytes = request(3, 5, 2).encode_to_vec();
        let shape = protobuf(&bytes, WIDE).unwrap();
        assert_eq!(shape.resources, 1);
        assert_eq!(shape.spans, 5);
        assert_eq!(shape.attributes, 10);
        assert_eq!(shape.max_resource_attributes, 3);
        // And the same request's JSON is bounded by its objects.
        let text = serde_json::to_vec(&request(3, 5, 2)).unwrap();
        assert!(json(&text, WIDE).unwrap().elements >= 1 + 3 + 10 + 5);
    }

    #[test]
    fn each_limit_stops_the_scan_and_names_itself() {
        let limits = Limits {
            max_spans: 4,
            max_resource_attributes: 2,
            max_decoded_bytes: 1 << 20,
        };
        let limit = |r: Result<Shape, Refusal>| match r {
            Err(Refusal::Limit { limit, .. }) => limit,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            limit(protobuf(&request(0, 5, 0).encode_to_vec(), limits)),
            "max_spans_per_message"
        );
        assert_eq!(
            limit(protobuf(&request(3, 1, 0).encode_to_vec(), limits)),
            "max_resource_attributes"
        );
        // 20 000 empty attributes: 2 bytes each on the wire, ~100 decoded.
        let empty = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        attributes: vec![KeyValue::default(); 20_000],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(
            limit(protobuf(&empty.encode_to_vec(), limits)),
            "max_decoded_bytes"
        );
    }

    #[test]
    fn malformed_bytes_are_named_with_their_offset() {
        for bad in [
            &[0x0a, 0x05, 0x01][..],
            &[0x0b][..],
            &[0x00][..],
            &[0xff; 11][..],
        ] {
            match protobuf(bad, WIDE) {
                Err(Refusal::Malformed(why)) => assert!(why.contains("at byte"), "{why}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // Values nested past the depth limit.
        let mut v = AnyValue {
            value: Some(any_value::Value::StringValue("x".into())),
        };
        for _ in 0..MAX_DEPTH {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(
                    opentelemetry_proto::tonic::common::v1::ArrayValue { values: vec![v] },
                )),
            };
        }
        let mut r = request(0, 1, 0);
        r.resource_spans[0].scope_spans[0].spans[0].attributes = vec![KeyValue {
            key: "deep".into(),
            value: Some(v),
        }];
        assert!(matches!(
            protobuf(&r.encode_to_vec(), WIDE),
            Err(Refusal::Malformed(_))
        ));
    }
}
