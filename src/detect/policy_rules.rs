//! Policy rules own what the written policy and per-workflow state say of
//! one call: secrets in input, first sightings, rate limits, credentials,
//! budgets, exfiltration and injection sequences, Tier A approvals, the
//! inventory and allowlists. The statistical rules live beside them in
//! `mod.rs` and `baseline.rs`.

use super::policy::{self, Policy, TierA};
use super::{AlertChange, Detector, RuleId, names_of};
use crate::event::{ApprovalDecision, Record, Status};

#[derive(Debug, Clone, Default)]
pub(super) struct WorkflowState {
    calls: u32,
    max_step: i64,
    tokens: u64,
    last_sensitive_call: Option<u32>,
    /// The call whose result carried injection markers, and which.
    last_marked_call: Option<u32>,
    marked: crate::decode::markers::Markers,
    last_seen_ms: i64,
}

impl Detector {
    pub(super) fn policy_rules(
        &mut self,
        r: &Record,
        policy: Option<&Policy>,
        bucket: i64,
        out: &mut Vec<AlertChange>,
    ) {
        let e = &r.event;
        let names = (e.tenant.as_str(), e.agent_id.as_str(), e.tool.as_str());
        if r.secret_in_input {
            let detail = format!("detectors fired on the input: {}", r.redactions.join(", "));
            self.violation(RuleId::SecretInToolInput, r, names, bucket, detail, out);
        }
        // New (tenant, tool) pairs: remembered always, alerted after warm-up.
        let pair = self.hash(&[&e.tenant, &e.tool], 9);
        let (_, first_sighting) = self.tenant_tools_seen.entry(pair, bucket, || ());
        // Warm-up runs per tenant: every tool of a tenant that onboards
        // today is new, and none of them is news.
        let tenant_since = self.first_seen(self.hash(&[&e.tenant], 16), e.ts_ms);
        let warm_from = tenant_since + i64::from(self.cfg.new_tool_warmup_buckets) * self.bucket_ms;
        if first_sighting && e.ts_ms >= warm_from {
            let detail = format!("first call of `{}` by tenant `{}`", e.tool, e.tenant);
            self.violation(
                RuleId::NewToolForTenant,
                r,
                (&e.tenant, "", &e.tool),
                bucket,
                detail,
                out,
            );
        }
        // Tenant rate limit per minute of event time.
        let limit = policy.map_or(u32::MAX, |p| p.tenant_limit(&e.tenant));
        let tkey = self.hash(&[&e.tenant], 10);
        let minute = e.ts_ms.div_euclid(60_000);
        let (slot, _) = self.tenant_minutes.entry(tkey, bucket, || (minute, 0));
        if slot.0 != minute {
            *slot = (minute, 0);
        }
        slot.1 = slot.1.saturating_add(1);
        if slot.1 > limit {
            let calls = slot.1;
            let detail = format!("{calls} calls in minute {minute} against a limit of {limit}");
            self.fire(
                RuleId::TenantRateLimitExceeded,
                super::evidence(r),
                (&e.tenant, "", ""),
                bucket,
                calls.into(),
                limit.into(),
                0.0,
                detail,
                out,
            );
        }
        // Credentials: one agent per credential, as observed.
        if let Some(cred) = e.credential_id.as_deref() {
            let ckey = self.hash(&[cred], 11);
            let akey = self.hash(&[&e.agent_id], 12);
            let owner = *self.credential_agent.entry(ckey, bucket, || akey).0;
            let mut why = None;
            if owner != akey {
                why = Some(format!("credential `{cred}` is used by several agents"));
            }
            if let Some(p) = policy {
                if p.admin_credentials.contains(cred) {
                    why = Some(format!("credential `{cred}` is on the admin list"));
                } else if p.shared_credentials.contains(cred) {
                    why = Some(format!("credential `{cred}` is on the shared list"));
                } else if let Some(agents) = p.credential_agents.get(cred)
                    && !agents.iter().any(|a| a == &e.agent_id)
                {
                    why = Some(format!(
                        "credential `{cred}` is dedicated to {}",
                        agents.join(", ")
                    ));
                } else if let Some(agent) = p.agents.get(&e.agent_id)
                    && !agent.credentials.contains(cred)
                {
                    why = Some(format!(
                        "credential `{cred}` is not one of `{}`'s dedicated credentials",
                        e.agent_id
                    ));
                }
            }
            if let Some(detail) = why {
                self.violation(RuleId::CredentialMisuse, r, names, bucket, detail, out);
            }
        }
        let new_for_agent = self.note_agent_tool(&e.tenant, &e.agent_id, &e.tool, e.ts_ms);
        // Workflow state: budgets, exfiltration and injection sequences.
        let tool_meta = policy.and_then(|p| p.tools.get(&e.tool));
        if let Some(wf) = e.workflow_id.as_deref() {
            let wkey = self.hash(&[&e.tenant, &e.agent_id, wf], 13);
            if self.workflows.len() >= self.cfg.max_workflows && !self.workflows.contains_key(&wkey)
            {
                self.evict_workflows();
            }
            let w = self.workflows.entry(wkey).or_default();
            w.calls = w.calls.saturating_add(1);
            w.max_step = w.max_step.max(e.step.unwrap_or(0));
            w.tokens = w.tokens.saturating_add(
                e.tokens_in.unwrap_or(0).max(0) as u64 + e.tokens_out.unwrap_or(0).max(0) as u64,
            );
            w.last_seen_ms = w.last_seen_ms.max(e.ts_ms);
            let (calls, max_step, tokens) = (w.calls, w.max_step, w.tokens);
            let window = self.cfg.exfiltration_window_steps;
            let near_sensitive = w.last_sensitive_call.is_some_and(|s| calls - s <= window);
            if tool_meta.is_some_and(|t| t.returns_sensitive) {
                w.last_sensitive_call = Some(calls);
            }
            let egress = tool_meta.is_some_and(|t| t.egress || t.tier_a == Some(TierA::BulkExport));
            let marked = w
                .last_marked_call
                .filter(|m| calls - m <= self.cfg.injection_window_steps);
            let marks = w.marked;
            if !e.output_markers.is_empty() {
                w.last_marked_call = Some(calls);
                w.marked = e.output_markers;
            }
            let writes = tool_meta.is_some_and(|t| t.class == policy::ToolClass::Write);
            if let Some(m) = marked
                && (new_for_agent || egress || writes)
            {
                let why = if new_for_agent {
                    "a tool this agent has never called"
                } else if egress {
                    "an egress tool"
                } else {
                    "a write tool"
                };
                let names: Vec<&str> = marks.names().collect();
                let detail = format!(
                    "`{}` is {why}, called {} call(s) after a result marked {} in workflow `{wf}`",
                    e.tool,
                    calls - m,
                    names.join(", ")
                );
                self.violation(
                    RuleId::InjectionThenUnusualCall,
                    r,
                    names_of(e),
                    bucket,
                    detail,
                    out,
                );
            }
            if egress && near_sensitive {
                let detail = format!(
                    "`{}` sends data out within {window} calls of a sensitive read in workflow `{wf}`",
                    e.tool
                );
                self.violation(RuleId::ExfiltrationSequence, r, names, bucket, detail, out);
            }
            if let Some(agent) = policy.and_then(|p| p.agents.get(&e.agent_id)) {
                if let Some(max) = agent.max_steps_per_workflow {
                    let steps = i64::from(calls).max(max_step.saturating_add(1));
                    if steps > i64::from(max) {
                        let detail = format!(
                            "workflow `{wf}` reached {steps} steps against a budget of {max}"
                        );
                        self.fire(
                            RuleId::WorkflowStepBudgetExceeded,
                            super::evidence(r),
                            (&e.tenant, &e.agent_id, ""),
                            bucket,
                            steps as f64,
                            max.into(),
                            0.0,
                            detail,
                            out,
                        );
                    }
                }
                if let Some(max) = agent.max_tokens_per_workflow
                    && tokens > max
                {
                    let detail =
                        format!("workflow `{wf}` used {tokens} tokens against a budget of {max}");
                    self.fire(
                        RuleId::WorkflowTokenBudgetExceeded,
                        super::evidence(r),
                        (&e.tenant, &e.agent_id, ""),
                        bucket,
                        tokens as f64,
                        max as f64,
                        0.0,
                        detail,
                        out,
                    );
                }
            }
        }
        let Some(p) = policy else {
            return;
        };
        if let (Some(server), version) = (e.mcp_server.as_deref(), e.mcp_server_version.as_deref())
            && let Some(pin) = p.mcp_pins.get(server)
            && version != Some(pin.as_str())
        {
            let detail = format!(
                "MCP server `{server}` at {} but pinned to {pin}",
                version.unwrap_or("an unknown version")
            );
            self.violation(RuleId::McpServerUnpinned, r, names, bucket, detail, out);
        }
        if let Some(t) = tool_meta
            && let Some(category) = t.tier_a
            && e.status == Status::Ok
        {
            let approved = e
                .approval
                .as_ref()
                .is_some_and(|a| a.decision == ApprovalDecision::Approved);
            if !approved {
                let why = if e.approval.is_some() {
                    "a rejected approval"
                } else {
                    "no approval"
                };
                let detail = format!(
                    "Tier A ({category:?}) call `{}` succeeded with {why}",
                    e.tool
                );
                self.violation(RuleId::TierAWithoutApproval, r, names, bucket, detail, out);
            }
        }
        if tool_meta.is_none()
            && let Some(real) = p.lookalike_tool(&e.tool)
        {
            let detail = format!(
                "tool `{}` is not in the policy but looks like `{real}`",
                crate::query::escape_deceptive(&e.tool)
            );
            self.violation(RuleId::LookalikeIdentifier, r, names, bucket, detail, out);
        }
        let Some(agent) = p.agents.get(&e.agent_id) else {
            if let Some(real) = p.lookalike_agent(&e.agent_id) {
                let detail = format!(
                    "agent `{}` is not in the inventory but looks like `{real}`",
                    crate::query::escape_deceptive(&e.agent_id)
                );
                self.violation(
                    RuleId::LookalikeIdentifier,
                    r,
                    (&e.tenant, &e.agent_id, ""),
                    bucket,
                    detail,
                    out,
                );
            }
            let detail = format!("agent `{}` is not in the inventory", e.agent_id);
            self.violation(
                RuleId::UnregisteredAgent,
                r,
                (&e.tenant, &e.agent_id, ""),
                bucket,
                detail,
                out,
            );
            return;
        };
        let dangerous = tool_meta.is_some_and(|t| t.dangerous)
            || matches!(e.tool_type.as_deref(), Some("shell" | "filesystem"));
        if dangerous
            && e.environment == "production"
            && !agent.production_dangerous_tools.contains(&e.tool)
        {
            let detail = format!("shell/filesystem tool `{}` ran in production", e.tool);
            self.violation(
                RuleId::DangerousToolInProduction,
                r,
                names,
                bucket,
                detail,
                out,
            );
        }
        if !agent.environments.contains(&e.environment) {
            let detail = format!(
                "agent `{}` is not registered for `{}`",
                e.agent_id, e.environment
            );
            self.violation(
                RuleId::EnvironmentNotRegistered,
                r,
                (&e.tenant, &e.agent_id, ""),
                bucket,
                detail,
                out,
            );
            return;
        }
        let allowed = agent
            .allowlist
            .get(&e.environment)
            .and_then(|l| l.get(&e.tool));
        if allowed.is_none() {
            let class = tool_meta.map_or("unknown", |t| t.class.as_str());
            let detail = format!(
                "`{}` ({class}) is not on the {} allowlist of `{}`",
                e.tool, e.environment, e.agent_id
            );
            self.violation(RuleId::ToolNotAllowed, r, names, bucket, detail, out);
        }
    }

    /// Remembers that an agent called a tool; true when the agent is known
    /// (first seen at least `new_tool_warmup_buckets` ago) and the tool is
    /// new for it.
    pub(super) fn note_agent_tool(
        &mut self,
        tenant: &str,
        agent: &str,
        tool: &str,
        ts_ms: i64,
    ) -> bool {
        let pair = self.hash(&[tenant, agent, tool], 14);
        self.first_seen(self.hash(&[tenant], 16), ts_ms);
        let first = self.first_seen(self.hash(&[tenant, agent], 15), ts_ms);
        let known_since =
            ts_ms - first >= i64::from(self.cfg.new_tool_warmup_buckets) * self.bucket_ms;
        let bucket = self.bucket_of(ts_ms);
        let (_, new) = self.agent_tools_seen.entry(pair, bucket, || ());
        new && known_since
    }

    /// When an agent or a tenant (by key) was first seen, remembering `ts_ms`
    /// if it is earlier (warm-up reads history newest first).
    fn first_seen(&mut self, key: u64, ts_ms: i64) -> i64 {
        let bucket = self.bucket_of(ts_ms);
        let (first, _) = self.first_seen.entry(key, bucket, || ts_ms);
        *first = (*first).min(ts_ms);
        *first
    }

    fn evict_workflows(&mut self) {
        // Drop half: amortised O(1) per workflow, bounded always. Workflow
        // ids are the producer's to invent, so the half dropped is the one
        // with the fewest calls (capped, so a long finished workflow still
        // ages out), then the stalest: a flood of one-call workflows goes
        // before a real workflow's budget and sequence state.
        let rank = |w: &WorkflowState| (w.calls.min(8), w.last_seen_ms);
        let mut ranks: Vec<_> = self.workflows.values().map(rank).collect();
        let mid = ranks.len() / 2;
        let (_, cut, _) = ranks.select_nth_unstable(mid);
        let cut = *cut;
        let before = self.workflows.len();
        self.workflows.retain(|_, w| rank(w) > cut);
        self.evictions += (before - self.workflows.len()) as u64;
    }
}
