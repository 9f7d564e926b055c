//! Scenario owns the attacks and misconfigurations `gen` can mix into benign
//! traffic, the ground truth it writes for each (which keys, when), and the
//! inventory/policy file under which the benign traffic is fully compliant,
//! so that every alert on it is either a planted scenario or a false alarm.

use std::fmt::Write as _;

use serde::Serialize;

use super::{AGENT_KINDS, TENANTS, TOOLS};

/// A planted scenario and the rules that may rightly fire on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    InjectionSpike,
    Exfiltration,
    RunawayLoop,
    UnapprovedTierA,
    UnregisteredAgent,
    ShellInProduction,
    SecretInInput,
    CredentialReuse,
    UnpinnedMcp,
    // Timed scenarios: they play out over event time on top of the hard
    // cases (`GenOptions::hard_cases`), from `GenOptions::scenario_at`.
    SustainedShift,
    InjectionSequence,
    LowVolumeFailures,
    SlowClimb,
    TenantSilence,
}

impl Scenario {
    /// Scenarios that bend a share of the traffic between `scenario_start`
    /// and `scenario_start + scenario_events`: visible within minutes, so
    /// a short run shows them.
    pub const MIXED: [Scenario; 9] = [
        Scenario::InjectionSpike,
        Scenario::Exfiltration,
        Scenario::RunawayLoop,
        Scenario::UnapprovedTierA,
        Scenario::UnregisteredAgent,
        Scenario::ShellInProduction,
        Scenario::SecretInInput,
        Scenario::CredentialReuse,
        Scenario::UnpinnedMcp,
    ];

    /// Scenarios that play out over event time on top of the hard cases.
    pub const TIMED: [Scenario; 5] = [
        Scenario::SustainedShift,
        Scenario::InjectionSequence,
        Scenario::LowVolumeFailures,
        Scenario::SlowClimb,
        Scenario::TenantSilence,
    ];

    /// Every scenario: the mixed ones, then the timed ones.
    pub const ALL: [Scenario; 14] = {
        let mut all = [Scenario::InjectionSpike; 14];
        let mut i = 0;
        while i < all.len() {
            all[i] = if i < Self::MIXED.len() {
                Self::MIXED[i]
            } else {
                Self::TIMED[i - Self::MIXED.len()]
            };
            i += 1;
        }
        all
    };

    pub fn name(self) -> &'static str {
        match self {
            Scenario::InjectionSpike => "injection_spike",
            Scenario::Exfiltration => "exfiltration",
            Scenario::RunawayLoop => "runaway_loop",
            Scenario::UnapprovedTierA => "unapproved_tier_a",
            Scenario::UnregisteredAgent => "unregistered_agent",
            Scenario::ShellInProduction => "shell_in_production",
            Scenario::SecretInInput => "secret_in_input",
            Scenario::CredentialReuse => "credential_reuse",
            Scenario::UnpinnedMcp => "unpinned_mcp",
            Scenario::SustainedShift => "sustained_shift",
            Scenario::InjectionSequence => "injection_sequence",
            Scenario::LowVolumeFailures => "low_volume_failures",
            Scenario::SlowClimb => "slow_climb",
            Scenario::TenantSilence => "tenant_silence",
        }
    }

    /// Whether the scenario plays out over event time (see `hard_cases`)
    /// rather than as a share of the traffic.
    pub fn is_timed(self) -> bool {
        Scenario::TIMED.contains(&self)
    }

    pub fn parse(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|x| x.name()).collect();
                format!("unknown scenario `{s}`; one of {}", names.join(", "))
            })
    }

    /// Share of the traffic the scenario takes inside its window: a spike is
    /// loud by nature, a loop needs enough steps to pass its budget, the
    /// rest are a few calls, as real violations are.
    pub fn share(self) -> f64 {
        match self {
            Scenario::InjectionSpike => 0.05,
            Scenario::RunawayLoop => 0.01,
            s if s.is_timed() => 0.0,
            _ => 0.002,
        }
    }

    /// The rule that must fire, then others that may rightly fire too.
    pub fn rules(self) -> &'static [&'static str] {
        match self {
            Scenario::InjectionSpike => &["tool_frequency_spike", "tool_frequency_shift"],
            Scenario::Exfiltration => &["exfiltration_sequence", "new_tool_for_tenant"],
            // A loop is extra calls of one tool: a rise its baselines see.
            Scenario::RunawayLoop => &[
                "workflow_step_budget_exceeded",
                "workflow_token_budget_exceeded",
                "tool_frequency_shift",
                "tool_frequency_spike",
            ],
            // The rest plant their calls on top of the agent's own: a rise
            // of that tool its baselines may rightly see.
            Scenario::UnapprovedTierA => &["tier_a_without_approval", SHIFT, SPIKE],
            Scenario::UnregisteredAgent => &["unregistered_agent", SHIFT, SPIKE],
            Scenario::ShellInProduction => &["dangerous_tool_in_production", SHIFT, SPIKE],
            Scenario::SecretInInput => &["secret_in_tool_input", SHIFT, SPIKE],
            Scenario::CredentialReuse => &["credential_misuse", SHIFT, SPIKE],
            Scenario::UnpinnedMcp => &["mcp_server_unpinned", SHIFT, SPIKE],
            // The tool's calls, and so its tenant's and agents', rise.
            Scenario::SustainedShift | Scenario::SlowClimb => {
                &["tool_frequency_shift", "tool_frequency_spike"]
            }
            // The egress tool is new for the agent, and for the tenant.
            Scenario::InjectionSequence => &["injection_then_unusual_call", "new_tool_for_tenant"],
            Scenario::LowVolumeFailures => &["error_rate_spike"],
            Scenario::TenantSilence => &["traffic_drop"],
        }
    }

    /// The (tenant, agent kind, tool) the scenario plays on; each scenario
    /// has its own tenant so their alerts cannot be confused.
    pub fn actors(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Scenario::InjectionSpike => ("acme", "support-bot", "export_csv"),
            Scenario::Exfiltration => ("initech", "research-agent", "upload_external"),
            Scenario::RunawayLoop => ("globex", "ops-agent", "search_docs"),
            Scenario::UnapprovedTierA => ("umbrella", "billing-agent", "create_refund"),
            Scenario::UnregisteredAgent => ("hooli", "shadow-agent", "search_docs"),
            Scenario::ShellInProduction => ("stark", "support-bot", "run_shell"),
            Scenario::SecretInInput => ("wayne", "support-bot", "http_get"),
            Scenario::CredentialReuse => ("wonka", "support-bot", "lookup_invoice"),
            Scenario::UnpinnedMcp => ("tyrell", "research-agent", "search_docs"),
            Scenario::SustainedShift => ("massive", "support-bot", "lookup_invoice"),
            Scenario::InjectionSequence => ("prestige", "research-agent", EGRESS),
            Scenario::LowVolumeFailures => ("oscorp", "reporting-agent", "search_docs"),
            Scenario::SlowClimb => ("nakatomi", "ops-agent", "query_db"),
            Scenario::TenantSilence => ("vandelay", "support-bot", ""),
        }
    }
}

const SHIFT: &str = "tool_frequency_shift";
const SPIKE: &str = "tool_frequency_spike";

/// One line of the ground-truth file.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroundTruth {
    pub scenario: &'static str,
    pub rules: Vec<&'static str>,
    pub tenant: String,
    pub agent_id: String,
    pub tool: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub events: u64,
}

/// Tools only scenarios call: a sensitive read and an egress.
pub const SENSITIVE_READ: &str = "get_payment_details";
pub const EGRESS: &str = "upload_external";
pub const MCP_SERVER: &str = "github";
pub const MCP_PIN: &str = "1.4.2";
pub const STEP_BUDGET: u32 = 200;

fn class_of(tool: &str) -> &'static str {
    match tool {
        "update_ticket" | "send_email" | "create_refund" | "grant_role" | "delete_record"
        | "deploy_service" | "rotate_credentials" | "restore_backup" | EGRESS => "write",
        _ => "read",
    }
}

fn tier_a_of(tool: &str) -> Option<&'static str> {
    match tool {
        "create_refund" => Some("money"),
        "export_csv" => Some("bulk_export"),
        "grant_role" => Some("permissions"),
        "delete_record" => Some("deletion"),
        "deploy_service" => Some("infrastructure"),
        _ => None,
    }
}

/// The inventory under which the benign traffic of `Generator` complies:
/// every agent registered with its own credential, every tool allowlisted
/// and classified, Tier A calls approved, shell only for ops agents.
pub fn benign_policy_toml() -> String {
    let mut tools: Vec<&str> = TOOLS.iter().map(|t| t.0).collect();
    tools.extend([SENSITIVE_READ, EGRESS]);
    tools.extend(super::hard_cases::extra_tools());
    let list = |class: &str| {
        tools
            .iter()
            .filter(|t| class_of(t) == class)
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (reads, writes) = (list("read"), list("write"));
    let mut out = String::from(
        "# Generated by `agentaudit gen --policy-out`: the inventory under which the\n\
         # generator's benign traffic is compliant.\n\n[defaults]\ntenant_rate_limit_per_minute = 100000\n",
    );
    let mut agents: Vec<(String, String)> = Vec::new();
    for tenant in TENANTS
        .iter()
        .chain(std::iter::once(&super::hard_cases::ONBOARDING_TENANT))
    {
        for kind in AGENT_KINDS {
            agents.push((tenant.to_string(), format!("{tenant}-{kind}")));
        }
    }
    for id in super::hard_cases::extra_agents() {
        let tenant = id.split('-').next().unwrap_or_default().to_owned();
        if !agents.iter().any(|a| a.1 == id) {
            agents.push((tenant, id));
        }
    }
    for (tenant, id) in &agents {
        let dangerous = if id.ends_with("-ops-agent") {
            "[\"run_shell\"]"
        } else {
            "[]"
        };
        let _ = write!(
            out,
            "\n[[agents]]\nid = \"{id}\"\nbusiness_owner = \"{tenant} operations\"\n\
                 technical_owner = \"platform@{tenant}.example\"\n\
                 environments = [\"production\", \"staging\", \"development\"]\n\
                 review_by = \"2099-12-31\"\ncredentials = [\"cred-{id}\"]\n\
                 max_steps_per_workflow = {STEP_BUDGET}\nmax_tokens_per_workflow = 5000000\n\
                 production_dangerous_tools = {dangerous}\n"
        );
        for env in ["production", "staging", "development"] {
            let _ = write!(
                out,
                "[agents.tools.{env}]\nread = [{reads}]\nwrite = [{writes}]\n"
            );
        }
    }
    for t in &tools {
        let _ = write!(
            out,
            "\n[[tools]]\nname = \"{t}\"\nclass = \"{}\"\n",
            class_of(t)
        );
        if let Some(cat) = tier_a_of(t) {
            let _ = writeln!(out, "tier_a = \"{cat}\"");
        }
        match *t {
            "run_shell" => out.push_str("shell = true\n"),
            "read_file" => out.push_str("filesystem = false\n"),
            SENSITIVE_READ => out.push_str("returns = [\"financial\"]\n"),
            EGRESS => out.push_str("egress = true\n"),
            _ => {}
        }
    }
    let _ = write!(
        out,
        "\n[[mcp_servers]]\nname = \"{MCP_SERVER}\"\nversion = \"{MCP_PIN}\"\n"
    );
    out
}
