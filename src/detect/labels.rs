//! Labels owns turning attacker-chosen names (tenants, agents, tools) into
//! Prometheus label values: sanitised, redacted, and capped per label so a
//! flood of invented names folds into `other` instead of new series.

use foldhash::HashSet;

use crate::redact::{Hits, Redactor};

pub const OTHER: &str = "other";
const MAX_LEN: usize = 64;

pub struct LabelCap {
    max_values: usize,
    admitted: [HashSet<String>; 3],
    /// Values refused because a label was full, for the metric.
    pub overflowed: u64,
}

/// Which capped label a value is for.
#[derive(Debug, Clone, Copy)]
pub enum LabelName {
    Tenant = 0,
    Agent = 1,
    Tool = 2,
}

impl LabelCap {
    pub fn new(max_values: usize) -> LabelCap {
        LabelCap {
            max_values,
            admitted: Default::default(),
            overflowed: 0,
        }
    }

    /// The value to export for `raw`: `""` stays `""`, a value holding a
    /// secret becomes `redacted`, anything past the cap becomes `other`.
    pub fn value(&mut self, label: LabelName, raw: &str, redactor: &Redactor) -> String {
        if raw.is_empty() {
            return String::new();
        }
        let mut hits = Hits::default();
        if redactor.scan(raw, &mut hits).is_some() {
            return "redacted".to_owned();
        }
        let clean = sanitise(raw);
        let set = &mut self.admitted[label as usize];
        if set.contains(&clean) {
            return clean;
        }
        if set.len() >= self.max_values {
            self.overflowed += 1;
            return OTHER.to_owned();
        }
        set.insert(clean.clone());
        clean
    }
}

/// Printable ASCII letters, digits and `_-.:/@` survive; the rest become `_`;
/// at most 64 characters.
pub fn sanitise(raw: &str) -> String {
    raw.chars()
        .take(MAX_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:/@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedactConfig;

    #[test]
    fn labels_are_capped_sanitised_and_redacted() {
        let redactor = Redactor::new(&RedactConfig::default()).expect("redactor");
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.value(LabelName::Tenant, "acme", &redactor), "acme");
        assert_eq!(
            cap.value(LabelName::Tenant, "bad\"}\n", &redactor),
            "bad___"
        );
        assert_eq!(cap.value(LabelName::Tenant, "third", &redactor), OTHER);
        assert_eq!(cap.value(LabelName::Tenant, "acme", &redactor), "acme");
        // Each label has its own cap.
        assert_eq!(cap.value(LabelName::Tool, "third", &redactor), "third");
        assert_eq!(
            cap.value(LabelName::Agent, "AKIAIOSFODNN7EXAMPLE", &redactor),
            "redacted"
        );
        assert_eq!(cap.overflowed, 1);
        assert_eq!(sanitise(&"x".repeat(100)).len(), 64);
    }
}
