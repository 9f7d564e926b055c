//! Redact owns removing secrets and personal data from events and dead
//! letters before anything is written, logged or turned into a metric label.
//!
//! It is fail-closed: a value under a secret-looking key is replaced whatever
//! it looks like, every string is scanned by every detector in one pass of a
//! [`RegexSet`], and a tool's output is never kept (decode reduced it to a
//! digest; only an optional preview reaches this room, and it is scanned).

pub mod detectors;
mod encodings;

use hmac::{Hmac, Mac};
use std::sync::LazyLock;

use regex::{Regex, RegexSet};
use serde_json::Value;
use sha2::Sha256;

use crate::config::{FieldAction, RedactConfig};
use crate::error::ConfigError;
use crate::event::{DeadLetter, DecodeFailure, Event, KafkaCoords, Record};
use detectors::{BUILT_INS, SECRET_KEY_FRAGMENTS, SECRET_KEY_SUFFIXES};

/// Name recorded when a value was replaced because of its key name.
pub const SECRET_KEY_RULE: &str = "secret_key_name";
/// Marker stored in place of a masked field.
pub const MASK: &str = "[MASKED]";
const MAX_DETECTORS: usize = 63;

struct Detector {
    name: String,
    marker: String,
    regex: Regex,
    secret_group: Option<usize>,
    validate: Option<fn(&str) -> bool>,
}

/// Which detectors fired, as a bit per detector (bit 63: the key-name rule).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hits(u64);

impl Hits {
    const KEY_RULE: u32 = 63;
    pub fn any(self) -> bool {
        self.0 != 0
    }
    fn set(&mut self, bit: usize) {
        self.0 |= 1u64 << bit;
    }
}

/// A dotted path from the event root (`input.customer.email`, `actor`,
/// `attributes.user`) and what to do with the value found there.
struct FieldRule {
    path: String,
    action: FieldAction,
}

/// The compiled redaction policy. Cheap to share: build once, use from any
/// thread.
pub struct Redactor {
    set: RegexSet,
    detectors: Vec<Detector>,
    secret_fragments: Vec<String>,
    secret_suffixes: Vec<String>,
    rules: Vec<FieldRule>,
    hash_key: Option<Vec<u8>>,
    dead_letter_raw_chars: usize,
}

impl Redactor {
    pub fn new(cfg: &RedactConfig) -> Result<Redactor, ConfigError> {
        let mut detectors = Vec::new();
        let mut hints = Vec::new();
        for b in BUILT_INS {
            detectors.push(compile(b.name, b.pattern, b.validate)?);
            hints.push(b.hint);
        }
        for p in &cfg.patterns {
            detectors.push(compile(&p.name, &p.regex, None)?);
            hints.push(p.regex.as_str());
        }
        if detectors.len() > MAX_DETECTORS {
            return Err(ConfigError::invalid(
                "redact.patterns",
                format!(
                    "at most {} custom patterns",
                    MAX_DETECTORS - BUILT_INS.len()
                ),
            ));
        }
        let set = RegexSet::new(hints)
            .map_err(|e| ConfigError::invalid("redact.patterns", e.to_string()))?;
        let normalise_all = |xs: &mut dyn Iterator<Item = &str>| xs.map(normalise_key).collect();
        let mut secret_fragments: Vec<String> =
            normalise_all(&mut SECRET_KEY_FRAGMENTS.iter().copied());
        secret_fragments.extend(cfg.secret_key_names.iter().map(|k| normalise_key(k)));
        let secret_suffixes = normalise_all(&mut SECRET_KEY_SUFFIXES.iter().copied());
        let rules = cfg
            .fields
            .iter()
            .map(|r| FieldRule {
                path: r.path.clone(),
                action: r.action,
            })
            .collect::<Vec<_>>();
        let hash_key = cfg.hash_key.as_ref().map(|k| k.as_bytes().to_vec());
        if rules.iter().any(|r| r.action == FieldAction::Hash) && hash_key.is_none() {
            return Err(ConfigError::invalid(
                "redact.hash_key",
                "a field rule uses `hash` but no hash_key is configured",
            ));
        }
        Ok(Redactor {
            set,
            detectors,
            secret_fragments,
            secret_suffixes,
            rules,
            hash_key,
            dead_letter_raw_chars: cfg.dead_letter_raw_chars,
        })
    }

    pub fn hit_names(&self, hits: Hits) -> Vec<String> {
        let mut names: Vec<String> = (0..64)
            .filter(|b| hits.0 & (1u64 << b) != 0)
            .map(|b| {
                if b == Hits::KEY_RULE as usize {
                    SECRET_KEY_RULE.to_owned()
                } else {
                    self.detectors[b].name.clone()
                }
            })
            .collect();
        names.sort();
        names
    }

    /// Scans one string; returns the redacted text when anything was found.
    /// A secret found only once the text's percent or JSON escapes are
    /// decoded (`encodings`) redacts the whole value: its place in the
    /// encoded text is not worth mapping back, and when in doubt, redact.
    pub fn scan(&self, text: &str, hits: &mut Hits) -> Option<String> {
        let direct = self.scan_plain(text, hits);
        let rest = direct.as_deref().unwrap_or(text);
        if let Some(decoded) = encodings::decoded(rest) {
            let mut found = Hits::default();
            if self.scan_plain(&decoded, &mut found).is_some() {
                hits.0 |= found.0;
                let first = found.0.trailing_zeros() as usize;
                return Some(self.detectors[first].marker.clone());
            }
        }
        direct
    }

    fn scan_plain(&self, text: &str, hits: &mut Hits) -> Option<String> {
        let matched = self.set.matches(text);
        if !matched.matched_any() {
            return None;
        }
        let mut spans: Vec<(usize, usize, usize)> = Vec::new();
        for idx in matched.iter() {
            let d = &self.detectors[idx];
            for caps in d.regex.captures_iter(text) {
                let Some(m) = d
                    .secret_group
                    .and_then(|g| caps.get(g))
                    .or_else(|| caps.get(0))
                else {
                    continue;
                };
                if m.is_empty() || d.validate.is_some_and(|v| !v(m.as_str())) {
                    continue;
                }
                spans.push((m.start(), m.end(), idx));
            }
        }
        if spans.is_empty() {
            return None;
        }
        // Earliest first, longest first among equals; a span overlapping one
        // already replaced is folded into it, so no fragment survives between.
        spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut out = String::with_capacity(text.len());
        let mut cursor = 0;
        for (start, end, idx) in spans {
            hits.set(idx);
            if end <= cursor {
                continue;
            }
            if start >= cursor {
                out.push_str(&text[cursor..start]);
                out.push_str(&self.detectors[idx].marker);
            }
            cursor = end;
        }
        out.push_str(&text[cursor..]);
        Some(out)
    }

    fn scan_in_place(&self, text: &mut String, hits: &mut Hits) {
        if let Some(r) = self.scan(text, hits) {
            *text = r;
        }
    }

    /// Scans many short fields in one pass over their concatenation, and
    /// each field only when that pass matched: a match inside a field is a
    /// match inside the whole, so nothing is missed, and the common event
    /// whose identifiers hold nothing costs one pass.
    fn scan_fields(&self, fields: &mut [&mut String], hits: &mut Hits) {
        let total: usize = fields.iter().map(|f| f.len() + 1).sum();
        let mut joined = String::with_capacity(total);
        for f in fields.iter() {
            joined.push_str(f);
            joined.push('\n');
        }
        if !self.set.is_match(&joined) && encodings::decoded(&joined).is_none() {
            return;
        }
        for f in fields.iter_mut() {
            self.scan_in_place(f, hits);
        }
    }

    /// Replaces the value of every `"key": "value"` pair (the value possibly
    /// cut off) whose key says secret, in text that is not valid JSON.
    fn redact_secret_pairs(&self, text: &str, hits: &mut Hits) -> String {
        static PAIR: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r#""([^"\\]{1,64})"\s*:\s*"((?:[^"\\]|\\.)*)"?"#)
                .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
        });
        let mut out = String::with_capacity(text.len());
        let mut cursor = 0;
        for caps in PAIR.captures_iter(text) {
            let (Some(key), Some(value)) = (caps.get(1), caps.get(2)) else {
                continue;
            };
            if value.is_empty() || !self.is_secret_key(key.as_str()) {
                continue;
            }
            out.push_str(&text[cursor..value.start()]);
            out.push_str(&format!("[REDACTED:{SECRET_KEY_RULE}]"));
            cursor = value.end();
            hits.set(Hits::KEY_RULE as usize);
        }
        out.push_str(&text[cursor..]);
        out
    }

    fn is_secret_key(&self, key: &str) -> bool {
        // Every object key of every input is checked, so the common short
        // ASCII key is normalised on the stack rather than into a new String.
        let mut buf = [0u8; 64];
        let k: &[u8] = if key.len() <= buf.len() && key.is_ascii() {
            let mut n = 0;
            for b in key
                .bytes()
                .filter(|b| !matches!(b, b'_' | b'-' | b'.' | b' '))
            {
                buf[n] = b.to_ascii_lowercase();
                n += 1;
            }
            &buf[..n]
        } else {
            return self.is_secret_normalised(normalise_key(key).as_bytes());
        };
        self.is_secret_normalised(k)
    }

    fn is_secret_normalised(&self, k: &[u8]) -> bool {
        self.secret_fragments
            .iter()
            .any(|f| f.is_empty() || k.windows(f.len()).any(|w| w == f.as_bytes()))
            || self
                .secret_suffixes
                .iter()
                .any(|s| k.ends_with(s.as_bytes()))
    }

    fn rule_for(&self, path: &str) -> Option<FieldAction> {
        self.rules.iter().find(|r| r.path == path).map(|r| r.action)
    }

    fn keyed_hash(&self, bytes: &[u8]) -> String {
        // Validated at construction: a Hash rule implies a key.
        let key = self.hash_key.as_deref().unwrap_or_default();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(bytes);
        format!("hmac:{}", hex::encode(&mac.finalize().into_bytes()[..16]))
    }

    /// Applies a configured rule to a string field; `None` drops it.
    fn apply_to_string(&self, path: &str, mut s: String, hits: &mut Hits) -> Option<String> {
        match self.rule_for(path) {
            Some(FieldAction::Keep) => Some(s),
            Some(FieldAction::Drop) => None,
            Some(FieldAction::Mask) => Some(MASK.to_owned()),
            Some(FieldAction::Hash) => Some(self.keyed_hash(s.as_bytes())),
            None => {
                self.scan_in_place(&mut s, hits);
                Some(s)
            }
        }
    }

    /// Walks a JSON value, redacting in place. `path` is the dotted path of
    /// `v` from the event root, kept only when field rules exist. Returns false
    /// when a rule says the value is to be dropped from its parent.
    fn redact_value(&self, v: &mut Value, path: &mut String, hits: &mut Hits) -> bool {
        if !self.rules.is_empty() {
            match self.rule_for(path) {
                Some(FieldAction::Keep) => return true,
                Some(FieldAction::Drop) => return false,
                Some(FieldAction::Mask) => {
                    *v = Value::String(MASK.to_owned());
                    return true;
                }
                Some(FieldAction::Hash) => {
                    let hashed = match &*v {
                        Value::String(s) => self.keyed_hash(s.as_bytes()),
                        other => self.keyed_hash(other.to_string().as_bytes()),
                    };
                    *v = Value::String(hashed);
                    return true;
                }
                None => {}
            }
        }
        match v {
            Value::String(s) => self.scan_in_place(s, hits),
            Value::Number(n) => {
                // Card numbers arrive as JSON numbers too.
                let text = n.to_string();
                if text.len() >= 13
                    && let Some(r) = self.scan(&text, hits)
                {
                    *v = Value::String(r);
                }
            }
            Value::Array(items) => {
                for item in items.iter_mut() {
                    self.redact_value(item, path, hits);
                }
            }
            Value::Object(map) => {
                // Keys are producer-chosen text too: a token sent as a key
                // is renamed to its redaction.
                let renamed: Vec<(String, String)> = map
                    .keys()
                    .filter_map(|k| self.scan(k, hits).map(|r| (k.clone(), r)))
                    .collect();
                for (old, new) in renamed {
                    if let Some(v) = map.remove(&old) {
                        let mut key = new;
                        while map.contains_key(&key) {
                            key.push('_');
                        }
                        map.insert(key, v);
                    }
                }
                // A name/value pair — OTLP attributes (`{"key": "api_key",
                // "value": {"stringValue": …}}`), header lists (`{"name":
                // "Authorization", "value": …}`) — says by its name that its
                // value is secret, as a key would.
                let secret_pair = ["key", "name"].iter().any(|k| {
                    map.get(*k)
                        .and_then(Value::as_str)
                        .is_some_and(|n| self.is_secret_key(n))
                });
                if secret_pair
                    && let Some(slot) = map.get_mut("value")
                    && !slot.is_null()
                {
                    *slot = Value::String(format!("[REDACTED:{SECRET_KEY_RULE}]"));
                    hits.set(Hits::KEY_RULE as usize);
                }
                let mut dropped = Vec::new();
                for (key, slot) in map.iter_mut() {
                    if self.is_secret_key(key) {
                        if !slot.is_null() {
                            *slot = Value::String(format!("[REDACTED:{SECRET_KEY_RULE}]"));
                            hits.set(Hits::KEY_RULE as usize);
                        }
                        continue;
                    }
                    let parent_len = path.len();
                    if !self.rules.is_empty() {
                        // A dead letter's JSON starts at the event root.
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(key);
                    }
                    if !self.redact_value(slot, path, hits) {
                        dropped.push(key.clone());
                    }
                    path.truncate(parent_len);
                }
                for key in dropped {
                    map.remove(&key);
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
        true
    }

    /// Redacts a decoded event into the record the sink stores.
    pub fn redact_event(
        &self,
        mut event: Event,
        coords: KafkaCoords,
        ingested_at_ms: i64,
    ) -> Record {
        let mut hits = Hits::default();
        // Identifiers are producer-chosen text like any other: a token sent
        // as `tool` or an address as `approval.approver` is redacted too.
        {
            let e = &mut event;
            let mut ids: Vec<&mut String> = vec![
                &mut e.event_id,
                &mut e.tenant,
                &mut e.agent_id,
                &mut e.environment,
                &mut e.tool,
            ];
            ids.extend(
                [
                    &mut e.workflow_id,
                    &mut e.tool_call_id,
                    &mut e.tool_type,
                    &mut e.agent_version,
                    &mut e.mcp_server,
                    &mut e.mcp_server_version,
                    &mut e.credential_id,
                ]
                .into_iter()
                .flatten(),
            );
            if let Some(a) = e.approval.as_mut() {
                ids.extend([&mut a.id, &mut a.approver].into_iter().flatten());
            }
            self.scan_fields(&mut ids, &mut hits);
        }
        event.actor = event
            .actor
            .take()
            .and_then(|a| self.apply_to_string("actor", a, &mut hits));
        event.error_type = event
            .error_type
            .take()
            .and_then(|a| self.apply_to_string("error_type", a, &mut hits));
        if let Some(out) = event.output.as_mut() {
            out.preview = out
                .preview
                .take()
                .and_then(|p| self.apply_to_string("output_preview", p, &mut hits));
        }
        let mut input_hits = Hits::default();
        let input_json = event.input.as_mut().and_then(|input| {
            let mut path = String::from("input");
            self.redact_value(input, &mut path, &mut input_hits)
                .then(|| input.to_string())
        });
        hits.0 |= input_hits.0;
        let attributes = std::mem::take(&mut event.attributes);
        for (k, v) in attributes {
            let value = if self.is_secret_key(&k) {
                hits.set(Hits::KEY_RULE as usize);
                Some(format!("[REDACTED:{SECRET_KEY_RULE}]"))
            } else {
                // Field rules are rare; do not format a path per attribute without them.
                let path = if self.rules.is_empty() {
                    String::new()
                } else {
                    format!("attributes.{k}")
                };
                self.apply_to_string(&path, v, &mut hits)
            };
            if let Some(v) = value {
                // Attribute keys are caller-chosen text too.
                let mut key = k;
                self.scan_in_place(&mut key, &mut hits);
                event.attributes.push((key, v));
            }
        }
        let attributes_json = (!event.attributes.is_empty()).then(|| {
            let map: serde_json::Map<String, Value> = event
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            Value::Object(map).to_string()
        });
        // The input now lives only in its redacted JSON form.
        event.input = None;
        Record {
            redactions: self.hit_names(hits),
            secret_in_input: input_hits.any(),
            event,
            input_json,
            attributes_json,
            coords,
            ingested_at_ms,
        }
    }

    /// Free text (a command's output, say) with every secret the detectors
    /// or the key-name rule recognise replaced, as a dead letter's raw text
    /// that is not JSON is.
    pub fn redact_text(&self, text: &str) -> String {
        let mut hits = Hits::default();
        let paired = self.redact_secret_pairs(text, &mut hits);
        self.scan(&paired, &mut hits).unwrap_or(paired)
    }

    /// Builds a dead letter whose raw value is redacted first and truncated
    /// after, so truncation can never cut a secret in half and keep its head.
    pub fn redact_dead_letter(
        &self,
        payload: Option<&[u8]>,
        failure: DecodeFailure,
        coords: KafkaCoords,
        ingested_at_ms: i64,
    ) -> DeadLetter {
        let bytes = payload.unwrap_or_default();
        // Scan a generous prefix: longer than any plausible secret past the
        // kept length, short enough that a huge message costs little.
        let scan_limit = (self.dead_letter_raw_chars * 4 + 64 * 1024).min(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..scan_limit]);
        let mut hits = Hits::default();
        let redacted = match serde_json::from_str::<Value>(&text) {
            // Structurally valid JSON: key-name rules apply too.
            Ok(mut v) if scan_limit == bytes.len() => {
                let mut path = String::new();
                self.redact_value(&mut v, &mut path, &mut hits);
                v.to_string()
            }
            // Not JSON (often JSON cut short): the detectors, and the
            // key-name rule over every `"key": "value"` pair it still holds.
            // Pairs first: a detector stops at an escaped quote inside a
            // value, which would leave the value's tail behind.
            _ => {
                let paired = self.redact_secret_pairs(&text, &mut hits);
                self.scan(&paired, &mut hits).unwrap_or(paired)
            }
        };
        let raw: String = redacted.chars().take(self.dead_letter_raw_chars).collect();
        DeadLetter {
            reason: failure.reason,
            detail: failure.detail,
            raw,
            raw_bytes: bytes.len() as i64,
            redactions: self.hit_names(hits),
            coords,
            ingested_at_ms,
        }
    }
}

fn compile(
    name: &str,
    pattern: &str,
    validate: Option<fn(&str) -> bool>,
) -> Result<Detector, ConfigError> {
    let regex = Regex::new(pattern)
        .map_err(|e| ConfigError::invalid(format!("redact pattern `{name}`"), e.to_string()))?;
    let secret_group = regex.capture_names().position(|n| n == Some("s"));
    Ok(Detector {
        marker: format!("[REDACTED:{name}]"),
        name: name.to_owned(),
        regex,
        secret_group,
        validate,
    })
}

fn normalise_key(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, '_' | '-' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests;
