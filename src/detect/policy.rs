//! Policy owns the inventory and policy file: which agents exist and who owns
//! them, what each may call in each environment, which tools are Tier A,
//! dangerous or egress, pinned MCP server versions, shared/admin credentials
//! and tenant rate limits. Parsed and checked as a whole; a file with any
//! error is refused with its line, so a running policy is never half-applied.

use std::collections::BTreeMap;
use std::path::Path;

use foldhash::{HashMap, HashSet};

use chrono::NaiveDate;
use serde::Deserialize;
use toml::Spanned;

use crate::config::line_of;

/// Why a policy file was refused: the file, the line and the reason.
#[derive(Debug, thiserror::Error)]
#[error("policy file {path}: {message}")]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolClass {
    Read,
    Write,
}

impl ToolClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolClass::Read => "read",
            ToolClass::Write => "write",
        }
    }
}

/// The Tier A categories: actions a human must approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierA {
    Money,
    Identity,
    Permissions,
    BulkExport,
    Deletion,
    Infrastructure,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    agents: Vec<RawAgent>,
    #[serde(default)]
    tools: Vec<RawTool>,
    #[serde(default)]
    mcp_servers: Vec<RawMcp>,
    #[serde(default)]
    credentials: RawCredentials,
    #[serde(default)]
    tenants: Vec<RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDefaults {
    tenant_rate_limit_per_minute: u32,
    /// Environments events may name; empty means the four standard ones.
    environments: Vec<String>,
}

impl Default for RawDefaults {
    fn default() -> Self {
        RawDefaults {
            tenant_rate_limit_per_minute: 6000,
            environments: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: Spanned<String>,
    business_owner: String,
    technical_owner: String,
    environments: Vec<Spanned<String>>,
    #[serde(default)]
    data_classes: Vec<String>,
    review_by: Spanned<String>,
    #[serde(default)]
    credentials: Vec<String>,
    max_steps_per_workflow: Option<u32>,
    max_tokens_per_workflow: Option<u64>,
    /// Per environment: `{ read = [...], write = [...] }`.
    #[serde(default)]
    tools: BTreeMap<String, Spanned<RawAllowlist>>,
    /// Shell or filesystem tools this agent may use in production.
    #[serde(default)]
    production_dangerous_tools: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowlist {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: Spanned<String>,
    class: ToolClass,
    tier_a: Option<TierA>,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    filesystem: bool,
    #[serde(default)]
    egress: bool,
    /// Data classes the tool returns (`pii`, `secrets`, `financial`, …).
    #[serde(default)]
    returns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcp {
    name: Spanned<String>,
    version: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    #[serde(default)]
    shared: Vec<String>,
    #[serde(default)]
    admin: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Spanned<String>,
    rate_limit_per_minute: u32,
}

/// One registered agent.
#[derive(Debug)]
pub struct Agent {
    pub id: String,
    pub business_owner: String,
    pub technical_owner: String,
    pub environments: HashSet<String>,
    pub data_classes: Vec<String>,
    pub review_by: NaiveDate,
    pub credentials: HashSet<String>,
    pub max_steps_per_workflow: Option<u32>,
    pub max_tokens_per_workflow: Option<u64>,
    /// environment → tool → class as allowlisted.
    pub allowlist: HashMap<String, HashMap<String, ToolClass>>,
    pub production_dangerous_tools: HashSet<String>,
}

/// One tool's classification.
#[derive(Debug)]
pub struct Tool {
    pub class: ToolClass,
    pub tier_a: Option<TierA>,
    pub dangerous: bool,
    pub egress: bool,
    pub returns_sensitive: bool,
}

/// The checked policy the detectors read.
#[derive(Debug, Default)]
pub struct Policy {
    pub agents: HashMap<String, Agent>,
    pub tools: HashMap<String, Tool>,
    pub mcp_pins: HashMap<String, String>,
    pub shared_credentials: HashSet<String>,
    pub admin_credentials: HashSet<String>,
    /// credential → the agents the file dedicates it to.
    pub credential_agents: HashMap<String, Vec<String>>,
    pub tenant_limits: HashMap<String, u32>,
    pub default_tenant_limit: u32,
    pub environments: HashSet<String>,
    /// TS #39 skeleton → the inventory's agent id with it.
    agent_skeletons: HashMap<String, String>,
    /// TS #39 skeleton → the policy's tool name with it.
    tool_skeletons: HashMap<String, String>,
}

/// The Unicode TS #39 skeleton of `id`: equal for names that look alike.
pub fn skeleton(id: &str) -> String {
    unicode_security::confusable_detection::skeleton(id).collect()
}

const STANDARD_ENVIRONMENTS: [&str; 4] = ["production", "staging", "preview", "development"];

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Policy::parse(&text).map_err(|message| PolicyError {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and checks a whole file; the error names the line.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| match e.span() {
            Some(s) => format!("line {}: {}", line_of(text, s.start), e.message()),
            None => e.message().to_owned(),
        })?;
        let at = |start: usize, why: String| format!("line {}: {why}", line_of(text, start));
        let mut policy = Policy {
            default_tenant_limit: raw.defaults.tenant_rate_limit_per_minute,
            ..Policy::default()
        };
        if policy.default_tenant_limit == 0 {
            return Err("defaults.tenant_rate_limit_per_minute must be at least 1".into());
        }
        policy.environments = if raw.defaults.environments.is_empty() {
            STANDARD_ENVIRONMENTS
                .iter()
                .map(|e| (*e).to_owned())
                .collect()
        } else {
            raw.defaults
                .environments
                .iter()
                .map(|e| e.to_lowercase())
                .collect()
        };
        for t in raw.tools {
            let name = t.name.get_ref().clone();
            if name.is_empty() {
                return Err(at(t.name.span().start, "a tool needs a name".into()));
            }
            let tool = Tool {
                class: t.class,
                tier_a: t.tier_a,
                dangerous: t.shell || t.filesystem,
                egress: t.egress,
                returns_sensitive: !t.returns.is_empty(),
            };
            if policy.tools.insert(name.clone(), tool).is_some() {
                return Err(at(
                    t.name.span().start,
                    format!("tool `{name}` is listed twice"),
                ));
            }
        }
        for a in raw.agents {
            let id = a.id.get_ref().clone();
            if id.is_empty() {
                return Err(at(a.id.span().start, "an agent needs an id".into()));
            }
            let review_by =
                NaiveDate::parse_from_str(a.review_by.get_ref(), "%Y-%m-%d").map_err(|e| {
                    at(
                        a.review_by.span().start,
                        format!("review_by must be YYYY-MM-DD: {e}"),
                    )
                })?;
            let mut environments = HashSet::default();
            for env in &a.environments {
                let e = env.get_ref().to_lowercase();
                if !policy.environments.contains(&e) {
                    return Err(at(
                        env.span().start,
                        format!("agent `{id}`: environment `{e}` is not a known environment"),
                    ));
                }
                environments.insert(e);
            }
            if environments.is_empty() {
                return Err(at(
                    a.id.span().start,
                    format!("agent `{id}` must name the environments it runs in"),
                ));
            }
            if a.max_steps_per_workflow == Some(0) || a.max_tokens_per_workflow == Some(0) {
                return Err(at(
                    a.id.span().start,
                    format!("agent `{id}`: a workflow budget of 0 would flag every call"),
                ));
            }
            let mut allowlist = HashMap::default();
            for (env, list) in &a.tools {
                let e = env.to_lowercase();
                if !environments.contains(&e) {
                    return Err(at(
                        list.span().start,
                        format!(
                            "agent `{id}` lists tools for `{e}`, which is not one of its environments"
                        ),
                    ));
                }
                let mut tools = HashMap::default();
                let lists = [
                    (ToolClass::Read, &list.get_ref().read),
                    (ToolClass::Write, &list.get_ref().write),
                ];
                for (class, names) in lists {
                    for name in names {
                        if let Some(t) = policy.tools.get(name)
                            && t.class != class
                        {
                            return Err(at(
                                list.span().start,
                                format!(
                                    "agent `{id}`, {e}: `{name}` is a {} tool but is listed under {}",
                                    t.class.as_str(),
                                    class.as_str()
                                ),
                            ));
                        }
                        tools.insert(name.clone(), class);
                    }
                }
                allowlist.insert(e, tools);
            }
            for c in &a.credentials {
                policy
                    .credential_agents
                    .entry(c.clone())
                    .or_default()
                    .push(id.clone());
            }
            let agent = Agent {
                id: id.clone(),
                business_owner: a.business_owner,
                technical_owner: a.technical_owner,
                environments,
                data_classes: a.data_classes,
                review_by,
                credentials: a.credentials.into_iter().collect(),
                max_steps_per_workflow: a.max_steps_per_workflow,
                max_tokens_per_workflow: a.max_tokens_per_workflow,
                allowlist,
                production_dangerous_tools: a.production_dangerous_tools.into_iter().collect(),
            };
            if policy.agents.insert(id.clone(), agent).is_some() {
                return Err(at(
                    a.id.span().start,
                    format!("agent `{id}` is listed twice"),
                ));
            }
        }
        for m in raw.mcp_servers {
            let name = m.name.get_ref().clone();
            if policy.mcp_pins.insert(name.clone(), m.version).is_some() {
                return Err(at(
                    m.name.span().start,
                    format!("MCP server `{name}` is listed twice"),
                ));
            }
        }
        policy.shared_credentials = raw.credentials.shared.into_iter().collect();
        policy.admin_credentials = raw.credentials.admin.into_iter().collect();
        for t in raw.tenants {
            let id = t.id.get_ref().clone();
            if t.rate_limit_per_minute == 0 {
                return Err(at(
                    t.id.span().start,
                    format!("tenant `{id}`: rate limit must be at least 1"),
                ));
            }
            if policy
                .tenant_limits
                .insert(id.clone(), t.rate_limit_per_minute)
                .is_some()
            {
                return Err(at(
                    t.id.span().start,
                    format!("tenant `{id}` is listed twice"),
                ));
            }
        }
        policy.agent_skeletons = policy
            .agents
            .keys()
            .map(|id| (skeleton(id), id.clone()))
            .collect();
        policy.tool_skeletons = policy
            .tools
            .keys()
            .map(|t| (skeleton(t), t.clone()))
            .collect();
        Ok(policy)
    }

    /// The inventory agent `id` passes for, when `id` is not one itself but
    /// looks like one.
    pub fn lookalike_agent(&self, id: &str) -> Option<&str> {
        if self.agents.contains_key(id) {
            return None;
        }
        self.agent_skeletons.get(&skeleton(id)).map(String::as_str)
    }

    /// The policy's tool `name` passes for, as `lookalike_agent`.
    pub fn lookalike_tool(&self, name: &str) -> Option<&str> {
        if self.tools.contains_key(name) {
            return None;
        }
        self.tool_skeletons.get(&skeleton(name)).map(String::as_str)
    }

    pub fn tenant_limit(&self, tenant: &str) -> u32 {
        self.tenant_limits
            .get(tenant)
            .copied()
            .unwrap_or(self.default_tenant_limit)
    }

    /// Agents whose tool allowlist has as many write tools as read tools or
    /// more in some environment: the checklist wants writes the exception.
    pub fn write_heavy_agents(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        for a in self.agents.values() {
            for (env, tools) in &a.allowlist {
                let writes = tools.values().filter(|c| **c == ToolClass::Write).count();
                if writes > 0 && writes >= tools.len() - writes {
                    out.push((a.id.as_str(), env.as_str()));
                }
            }
        }
        out.sort_unstable();
        out
    }
}
