//! Labels owns turning attacker-chosen names (tenants, agents, tools) into
//! Prometheus label values: sanitised, redacted, and capped per label so a
//! flood of invented names folds into `other` instead of new series. Names
//! the policy's inventory lists (its tenants, agents and tools) always keep
//! their own value and take no place under the cap, so invented names can
//! never push a real, inventoried one into `other`.

use foldhash::HashSet;

use super::policy::Policy;
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
    pub fn value(
        &mut self,
        label: LabelName,
        raw: &str,
        redactor: &Redactor,
        policy: Option<&Policy>,
    ) -> String {
        if raw.is_empty() {
            return String::new();
        }
        let mut hits = Hits::default();
        if redactor.scan(raw, &mut hits).is_some() {
            return "redacted".to_owned();
        }
        let clean = sanitise(raw);
        if policy.is_some_and(|p| inventoried(p, label, raw)) {
            return clean;
        }
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

    /// The tenant, agent and tool label values of one key, in that order.
    pub fn key(
        &mut self,
        (tenant, agent, tool): (&str, &str, &str),
        redactor: &Redactor,
        policy: Option<&Policy>,
    ) -> [String; 3] {
        [
            self.value(LabelName::Tenant, tenant, redactor, policy),
            self.value(LabelName::Agent, agent, redactor, policy),
            self.value(LabelName::Tool, tool, redactor, policy),
        ]
    }
}

/// The inventory lists `raw` as a tenant, an agent or a tool.
fn inventoried(p: &Policy, label: LabelName, raw: &str) -> bool {
    match label {
        LabelName::Tenant => p.tenant_limits.contains_key(raw),
        LabelName::Agent => p.agents.contains_key(raw),
        LabelName::Tool => p.tools.contains_key(raw),
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
        assert_eq!(
            cap.value(LabelName::Tenant, "acme", &redactor, None),
            "acme"
        );
        assert_eq!(
            cap.value(LabelName::Tenant, "bad\"}\n", &redactor, None),
            "bad___"
        );
        assert_eq!(
            cap.value(LabelName::Tenant, "third", &redactor, None),
            OTHER
        );
        assert_eq!(
            cap.value(LabelName::Tenant, "acme", &redactor, None),
            "acme"
        );
        // Each label has its own cap.
        assert_eq!(
            cap.value(LabelName::Tool, "third", &redactor, None),
            "third"
        );
        assert_eq!(
            cap.value(LabelName::Agent, "AKIAIOSFODNN7EXAMPLE", &redactor, None),
            "redacted"
        );
        assert_eq!(cap.overflowed, 1);
        assert_eq!(sanitise(&"x".repeat(100)).len(), 64);
    }

    /// 200 invented agent names used to fill the agent label's cap, so the
    /// real agents' alerts showed as `other`. Inventoried names keep theirs.
    #[test]
    fn invented_names_never_push_an_inventoried_one_into_other() {
        let redactor = Redactor::new(&RedactConfig::default()).expect("redactor");
        let policy = Policy::parse(
            "[[agents]]\nid = \"billing-bot\"\nbusiness_owner = \"x\"\ntechnical_owner = \"y\"\nenvironments = [\"production\"]\nreview_by = \"2099-01-01\"\n\n[[tenants]]\nid = \"umbrella\"\nrate_limit_per_minute = 10\n",
        )
        .expect("policy");
        let mut cap = LabelCap::new(200);
        for i in 0..1000 {
            cap.value(
                LabelName::Agent,
                &format!("fake-{i}"),
                &redactor,
                Some(&policy),
            );
            cap.value(
                LabelName::Tenant,
                &format!("fake-{i}"),
                &redactor,
                Some(&policy),
            );
        }
        assert!(cap.overflowed >= 1600);
        let agent = cap.value(LabelName::Agent, "billing-bot", &redactor, Some(&policy));
        assert_eq!(agent, "billing-bot");
        let tenant = cap.value(LabelName::Tenant, "umbrella", &redactor, Some(&policy));
        assert_eq!(tenant, "umbrella");
        let unlisted = cap.value(LabelName::Tenant, "initech", &redactor, Some(&policy));
        assert_eq!(unlisted, OTHER, "the cap still holds for the rest");
    }
}
