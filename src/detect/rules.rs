//! Rules owns the catalogue of what detection can say — each rule's name,
//! severity and summary — and what an alert is and how it changes.

use sha2::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One entry of the rule catalogue.
pub struct Rule {
    pub name: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
}

macro_rules! rules {
    ($($id:ident = $name:literal, $sev:ident, $summary:literal;)*) => {
        /// Rule ids, in catalogue order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum RuleId { $($id),* }
        /// The rule catalogue; README's table lists the same rules (tested).
        pub const RULES: &[Rule] = &[$(Rule { name: $name, severity: Severity::$sev, summary: $summary }),*];
    };
}

rules! {
    ToolFrequencySpike = "tool_frequency_spike", Warning, "A tenant or agent calls a tool far more often in one bucket than its seasonal baseline";
    ToolFrequencyShift = "tool_frequency_shift", Warning, "A tenant or agent calls a tool at a sustained multiple of its seasonal baseline";
    TrafficDrop = "traffic_drop", Warning, "A tenant, an agent's tool or a tenant's tool falls far below its seasonal baseline or goes silent";
    ErrorRateSpike = "error_rate_spike", Warning, "The share of an agent's or a tool's calls that fail rises far above its own rate";
    UnregisteredAgent = "unregistered_agent", Critical, "An agent that is not in the inventory made a tool call";
    EnvironmentNotRegistered = "environment_not_registered", Warning, "An agent ran in an environment it is not registered for";
    ToolNotAllowed = "tool_not_allowed", Critical, "An agent called a tool outside its allowlist for the environment";
    TierAWithoutApproval = "tier_a_without_approval", Critical, "A Tier A action succeeded without a human approval";
    DangerousToolInProduction = "dangerous_tool_in_production", Critical, "A shell or filesystem tool ran in production";
    WorkflowStepBudgetExceeded = "workflow_step_budget_exceeded", Warning, "A workflow ran more steps than its agent's budget";
    WorkflowTokenBudgetExceeded = "workflow_token_budget_exceeded", Warning, "A workflow used more tokens than its agent's budget";
    TenantRateLimitExceeded = "tenant_rate_limit_exceeded", Warning, "A tenant made more tool calls in a minute than its limit";
    NewToolForTenant = "new_tool_for_tenant", Info, "A tenant called a tool for the first time";
    SecretInToolInput = "secret_in_tool_input", Warning, "A secret or personal datum was passed to a tool";
    CredentialMisuse = "credential_misuse", Critical, "A credential was used by an agent it is not dedicated to, or is shared/admin";
    McpServerUnpinned = "mcp_server_unpinned", Warning, "An MCP server's version differs from its pin";
    ExfiltrationSequence = "exfiltration_sequence", Critical, "A sensitive read followed shortly by an egress or bulk export in one workflow";
    InventoryReviewOverdue = "inventory_review_overdue", Info, "An agent's inventory review date has passed";
    InjectionThenUnusualCall = "injection_then_unusual_call", Critical, "In one workflow, a tool result with injection markers is followed within a few calls by a call new for the agent, or a write or egress";
    LookalikeIdentifier = "lookalike_identifier", Warning, "An agent or tool name that is not in the inventory looks like one that is (a Unicode TS #39 confusable)";
}

impl RuleId {
    pub fn rule(self) -> &'static Rule {
        &RULES[self as usize]
    }
    pub fn name(self) -> &'static str {
        self.rule().name
    }
    /// The direction of a baseline rule's change (0 a rise, 1 a drop), or
    /// `None` for the rules that are no frequency test.
    pub fn direction(self) -> Option<u8> {
        match self {
            RuleId::ToolFrequencySpike | RuleId::ToolFrequencyShift => Some(0),
            RuleId::TrafficDrop => Some(1),
            _ => None,
        }
    }
}

/// An alert as it fires: what the sink stores, the metrics show and
/// Alertmanager receives.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: RuleId,
    pub severity: Severity,
    pub tenant: String,
    pub agent_id: String,
    pub tool: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub observed: f64,
    pub expected: f64,
    pub score: f64,
    pub sample_event_ids: Vec<String>,
    pub detail: String,
    /// Event time of the call that fired it.
    pub detected_at_ms: i64,
    /// The incident it belongs to: the id of the first alert of its tenant
    /// that no earlier alert of the tenant was open (or recently resolved)
    /// beside, so the alerts of one incident page once.
    pub incident_id: String,
}

impl Alert {
    /// A stable id: the same rule, keys and window always give the same id,
    /// so a backtest and live traffic can be joined on it.
    pub fn id(&self) -> String {
        let mut h = sha2::Sha256::new();
        for part in [self.rule.name(), &self.tenant, &self.agent_id, &self.tool] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.update(self.window_start_ms.to_le_bytes());
        hex::encode(&h.finalize()[..12])
    }

    /// The identity of the condition, whatever window it fired in.
    pub fn id_without_window(&self) -> String {
        format!(
            "{}\u{1}{}\u{1}{}\u{1}{}",
            self.rule.name(),
            self.tenant,
            self.agent_id,
            self.tool
        )
    }
}

/// What happened to an alert's condition: it began, or it stopped holding.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    Fired(Alert),
    Resolved(Alert),
}
