//! Traffic owns synthetic agent traffic: realistic multi-tenant tool invocations
//! (some carrying planted secrets, some malformed on request) for the demo,
//! the benchmarks and the tests, and a producer that ships it to a topic.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

pub mod hard_cases;
pub mod otlp;
mod produce;
pub mod scenario;
mod secrets;
use hard_cases::{SideCall, World};
pub use produce::{Pace, SPANS_PER_MESSAGE, produce, producer, send, write_jsonl};
use scenario::{GroundTruth, Scenario};
use secrets::secret;

const TENANTS: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "cyberdyne",
    "soylent",
    "tyrell",
    "aperture",
    // The timed scenarios' tenants (see `hard_cases`).
    "massive",
    "oscorp",
    "nakatomi",
    "vandelay",
    "prestige",
];
const AGENT_KINDS: &[&str] = &[
    "support-bot",
    "ops-agent",
    "billing-agent",
    "research-agent",
];
/// (tool, weight, Tier A)
const TOOLS: &[(&str, u32, bool)] = &[
    ("search_orders", 30, false),
    ("get_customer", 25, false),
    ("search_docs", 25, false),
    ("list_tickets", 15, false),
    ("query_db", 12, false),
    ("http_get", 12, false),
    ("read_file", 8, false),
    ("lookup_invoice", 8, false),
    ("update_ticket", 8, false),
    ("send_email", 6, false),
    ("create_refund", 3, true),
    ("export_csv", 2, true),
    ("run_shell", 2, false),
    ("grant_role", 1, true),
    ("delete_record", 1, true),
    ("deploy_service", 1, true),
];

/// What kind of message a generated payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Valid,
    /// Deliberately not a valid v1 event; its name says how.
    Malformed(&'static str),
}

/// One generated message and the secrets planted in it (empty for most).
#[derive(Debug, Clone)]
pub struct Generated {
    pub key: String,
    pub payload: Vec<u8>,
    pub kind: Kind,
    pub event_id: Option<String>,
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub seed: u64,
    /// Share of messages carrying a planted secret, 0..=1.
    pub secret_ratio: f64,
    /// Share of messages that are malformed, 0..=1.
    pub malformed_ratio: f64,
    /// Event time of the first event, epoch ms; events advance 10 ms each, or
    /// with `daily_rhythm` 10 ms at the day's peak (14:00 UTC), 50 ms at night.
    pub start_ms: i64,
    /// Scenarios mixed in between event `scenario_start` and
    /// `scenario_start + scenario_events`, each at its own share of the traffic there (`Scenario::share`).
    pub scenarios: Vec<Scenario>,
    pub scenario_start: u64,
    pub scenario_events: u64,
    /// Follow a working day (`daily_rhythm`); off, events are 10 ms apart.
    pub daily_rhythm: bool,
    /// Main-stream events per second of event time at the day's peak.
    pub peak_rate: f64,
    /// Add the hard cases (`hard_cases`): weekends, an hourly batch job, an
    /// onboarding tenant, rare tools, low-volume agents, benign marked
    /// results; and play the timed scenarios from `scenario_at_ms`.
    pub hard_cases: bool,
    /// When the scenarios start, in event time; overrides `scenario_start`.
    /// With hard cases and no time given, the timed scenarios start
    /// `hard_cases::SCENARIOS_AFTER_MS` after `start_ms`.
    pub scenario_at_ms: Option<i64>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            seed: 42,
            secret_ratio: 0.02,
            malformed_ratio: 0.0,
            start_ms: chrono::Utc::now().timestamp_millis() - 3_600_000,
            scenarios: Vec::new(),
            scenario_start: u64::MAX,
            scenario_events: 0,
            daily_rhythm: false,
            peak_rate: 100.0,
            hard_cases: false,
            scenario_at_ms: None,
        }
    }
}

pub struct Generator {
    rng: SmallRng,
    opts: GenOptions,
    n: u64,
    workflows: Vec<(String, i64)>,
    truth: std::collections::BTreeMap<Scenario, GroundTruth>,
    exfil_workflow: Option<String>,
    loop_step: i64,
    /// Event time of the current message, epoch ms.
    clock_ms: f64,
    /// The hard cases and timed scenarios, when asked for.
    world: Option<World>,
    /// Timed scenarios already in the ground truth.
    truth_opened: usize,
}

/// Traffic follows a working day: calls arrive 5x faster at 14:00 UTC than
/// at 02:00, so baselines see a rhythm rather than a flat rate.
fn daily_rhythm(ts_ms: f64) -> f64 {
    let hour = (ts_ms / 3_600_000.0).rem_euclid(24.0);
    0.6 + 0.4 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos()
}

impl Generator {
    pub fn new(opts: GenOptions) -> Generator {
        let world = opts.hard_cases.then(|| {
            let at = opts
                .scenario_at_ms
                .unwrap_or(opts.start_ms + hard_cases::SCENARIOS_AFTER_MS);
            let timed = opts.scenarios.iter().copied().filter(|s| s.is_timed());
            World::new(opts.start_ms, at, timed.collect())
        });
        Generator {
            rng: SmallRng::seed_from_u64(opts.seed),
            clock_ms: opts.start_ms as f64,
            world,
            truth_opened: 0,
            opts,
            n: 0,
            workflows: Vec::new(),
            truth: std::collections::BTreeMap::new(),
            exfil_workflow: None,
            loop_step: 0,
        }
    }

    fn pick_tool(&mut self) -> (&'static str, bool) {
        let total: u32 = TOOLS.iter().map(|t| t.1).sum();
        let mut x = self.rng.random_range(0..total);
        for &(name, w, tier_a) in TOOLS {
            if x < w {
                return (name, tier_a);
            }
            x -= w;
        }
        (TOOLS[0].0, TOOLS[0].2)
    }

    fn input_for(&mut self, tool: &str) -> Value {
        let r = &mut self.rng;
        match tool {
            "search_orders" => {
                json!({"customer_ref": format!("C-{}", r.random_range(1000..99999)), "status": "open", "limit": 20})
            }
            "get_customer" => {
                json!({"customer_id": r.random_range(1..500_000), "fields": ["name", "plan", "region"]})
            }
            "search_docs" => json!({"query": "how do I rotate my api credentials", "top_k": 5}),
            "list_tickets" => json!({"queue": "billing", "since_days": 7}),
            "query_db" => {
                json!({"sql": "SELECT id, status FROM orders WHERE updated_at > now() - interval '1 day' LIMIT 100"})
            }
            "http_get" => {
                json!({"url": format!("https://api.partner.example/v2/items/{}", r.random_range(1..10000)), "timeout_s": 10})
            }
            "read_file" => json!({"path": "/srv/app/config/settings.yaml"}),
            "send_email" => json!({"template": "refund_issued", "locale": "en"}),
            "run_shell" => json!({"cmd": "df -h /var/lib/app"}),
            "create_refund" => {
                json!({"order_id": r.random_range(1..1_000_000), "amount_cents": r.random_range(100..50_000), "currency": "EUR"})
            }
            _ => json!({"id": r.random_range(1..1_000_000)}),
        }
    }

    /// What was planted so far, one entry per scenario.
    pub fn ground_truth(&self) -> Vec<GroundTruth> {
        self.truth.values().cloned().collect()
    }

    fn scenario_due(&mut self) -> Option<Scenario> {
        let o = &self.opts;
        let inside = self.n >= o.scenario_start && self.n - o.scenario_start < o.scenario_events;
        if o.scenarios.is_empty() || !inside {
            return None;
        }
        let scenarios = o.scenarios.clone();
        scenarios
            .into_iter()
            .find(|s| self.rng.random_bool(s.share()))
    }

    /// A benign-looking event bent into `s`, recorded in the ground truth.
    fn scenario_message(&mut self, s: Scenario) -> Generated {
        let (mut event, _) = self.valid_event();
        let (tenant, kind, mut tool) = s.actors();
        let agent = format!("{tenant}-{kind}");
        event["tenant"] = json!(tenant);
        event["agent_id"] = json!(agent);
        event["credential_id"] = json!(format!("cred-{agent}"));
        event["environment"] = json!("production");
        event["status"] = json!("ok");
        let mut secrets = Vec::new();
        match s {
            Scenario::Exfiltration => match self.exfil_workflow.take() {
                Some(wf) => {
                    event["workflow_id"] = json!(wf);
                    event["step"] = json!(1);
                }
                None => {
                    tool = scenario::SENSITIVE_READ;
                    let wf = format!("wf-exfil-{:012x}", self.rng.random::<u64>() >> 16);
                    event["workflow_id"] = json!(wf);
                    event["step"] = json!(0);
                    self.exfil_workflow = Some(wf);
                }
            },
            Scenario::RunawayLoop => {
                event["workflow_id"] = json!(format!("wf-runaway-{}", self.opts.seed));
                event["step"] = json!(self.loop_step);
                self.loop_step += 1;
            }
            Scenario::UnapprovedTierA => event["approval"] = Value::Null,
            Scenario::SecretInInput => {
                let (text, planted) = secret(&mut self.rng);
                event["input"] = json!({"note": text});
                secrets.push(planted);
            }
            Scenario::CredentialReuse => {
                event["credential_id"] = json!(format!("cred-{tenant}-billing-agent"));
            }
            Scenario::UnpinnedMcp => {
                event["mcp_server"] = json!(scenario::MCP_SERVER);
                event["mcp_server_version"] = json!("2.0.0-rc1");
            }
            _ => {}
        }
        event["tool"] = json!(tool);
        if s != Scenario::SecretInInput {
            event["input"] = self.input_for(tool);
        }
        if s != Scenario::UnapprovedTierA && TOOLS.iter().any(|t| t.0 == tool && t.2) {
            event["approval"] = json!({"id": format!("apr-{}", self.n), "approver": "oncall-lead", "decision": "approved"});
        }
        let ts = event["ts"].as_i64().unwrap_or_default();
        let truth_tool = s.actors().2;
        let entry = self.truth.entry(s).or_insert_with(|| GroundTruth {
            scenario: s.name(),
            rules: s.rules().to_vec(),
            tenant: tenant.to_owned(),
            agent_id: agent.clone(),
            tool: truth_tool.to_owned(),
            start_ms: ts,
            end_ms: ts,
            events: 0,
        });
        entry.end_ms = ts;
        entry.events += 1;
        let event_id = event["event_id"].as_str().map(str::to_owned);
        if let Some(obj) = event.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        Generated {
            key: tenant.to_owned(),
            payload: event.to_string().into_bytes(),
            kind: Kind::Valid,
            event_id,
            secrets,
        }
    }

    /// The next message.
    pub fn next_message(&mut self) -> Generated {
        self.n += 1;
        if let Some(call) = self
            .world
            .as_mut()
            .and_then(|w| w.due(self.clock_ms as i64))
        {
            return self.side_message(call);
        }
        // 1/peak_rate apart at the day's peak, 5× that at its trough.
        let mut rate = if self.opts.daily_rhythm {
            daily_rhythm(self.clock_ms).max(0.2)
        } else {
            1.0
        };
        if self.world.is_some() {
            rate *= hard_cases::weekly_factor(self.clock_ms);
        }
        let peak_dt = 1000.0 / self.opts.peak_rate.max(0.001);
        let dt = peak_dt / rate;
        self.clock_ms += dt;
        if let Some(at) = self.opts.scenario_at_ms
            && self.opts.scenario_start == u64::MAX
            && self.clock_ms >= at as f64
        {
            self.opts.scenario_start = self.n;
        }
        if let Some(w) = self.world.as_mut() {
            w.step(self.clock_ms as i64, dt, peak_dt, &mut self.rng);
            self.note_opened();
        }
        if let Some(s) = self.scenario_due() {
            return self.scenario_message(s);
        }
        if self.opts.malformed_ratio > 0.0
            && self.rng.random_bool(self.opts.malformed_ratio.min(1.0))
        {
            return self.malformed();
        }
        let (mut event, secrets) = self.valid_event();
        let event_id = event["event_id"].as_str().map(str::to_owned);
        let key = event["tenant"].as_str().unwrap_or_default().to_owned();
        if let Some(obj) = event.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        Generated {
            key,
            payload: event.to_string().into_bytes(),
            kind: Kind::Valid,
            event_id,
            secrets,
        }
    }

    /// Timed scenarios whose window opened enter the ground truth then,
    /// even those (a silence) that send nothing.
    fn note_opened(&mut self) {
        let Some(w) = self.world.as_ref() else { return };
        for &(s, start) in &w.opened[self.truth_opened..] {
            let (tenant, kind, tool) = s.actors();
            let (_, len) = hard_cases::timing(s);
            self.truth.entry(s).or_insert_with(|| GroundTruth {
                scenario: s.name(),
                rules: s.rules().to_vec(),
                tenant: tenant.to_owned(),
                agent_id: format!("{tenant}-{kind}"),
                tool: tool.to_owned(),
                start_ms: start,
                end_ms: start + len,
                events: 0,
            });
        }
        self.truth_opened = w.opened.len();
    }

    /// A side stream's call dressed as a full event.
    fn side_message(&mut self, c: SideCall) -> Generated {
        let (mut event, _) = self.valid_event();
        event["ts"] = json!(c.ts_ms);
        event["tenant"] = json!(c.tenant);
        event["agent_id"] = json!(c.agent);
        event["credential_id"] = json!(format!("cred-{}", c.agent));
        event["environment"] = json!("production");
        event["tool"] = json!(c.tool);
        event["input"] = self.input_for(c.tool);
        event["status"] = json!(if c.failed { "error" } else { "ok" });
        event["error_type"] = if c.failed {
            json!("UpstreamTimeout")
        } else {
            Value::Null
        };
        event["approval"] = Value::Null;
        match &c.workflow {
            Some((wf, step)) => {
                event["workflow_id"] = json!(wf);
                event["step"] = json!(step);
            }
            None => {
                event["workflow_id"] = Value::Null;
                event["step"] = Value::Null;
            }
        }
        if let Some(out) = &c.output {
            event["output"] = json!(out);
        }
        if let Some(s) = c.scenario
            && let Some(t) = self.truth.get_mut(&s)
        {
            t.events += 1;
            t.end_ms = t.end_ms.max(c.ts_ms);
        }
        let event_id = event["event_id"].as_str().map(str::to_owned);
        if let Some(obj) = event.as_object_mut() {
            obj.retain(|_, v| !v.is_null());
        }
        Generated {
            key: c.tenant,
            payload: event.to_string().into_bytes(),
            kind: Kind::Valid,
            event_id,
            secrets: Vec::new(),
        }
    }

    /// A tenant for the main stream: evenly, or with the hard cases by each
    /// tenant's weight now (an onboarding ramp, a silence).
    fn pick_tenant(&mut self) -> &'static str {
        let Some(w) = self.world.as_ref() else {
            return TENANTS[self.rng.random_range(0..TENANTS.len())];
        };
        let ts = self.clock_ms as i64;
        let newco = w.tenant_weight(hard_cases::ONBOARDING_TENANT, ts);
        loop {
            let x = self.rng.random::<f64>() * (TENANTS.len() as f64 + newco);
            let tenant = TENANTS
                .get(x as usize)
                .copied()
                .unwrap_or(hard_cases::ONBOARDING_TENANT);
            if tenant == hard_cases::ONBOARDING_TENANT || w.tenant_weight(tenant, ts) > 0.0 {
                return tenant;
            }
        }
    }

    fn valid_event(&mut self) -> (Value, Vec<String>) {
        let ts = self.clock_ms as i64;
        let tenant = self.pick_tenant();
        let (tool, tier_a) = self.pick_tool();
        // Only ops agents run shell commands: the benign inventory allows
        // that in production for them alone.
        let kind = if tool == "run_shell" {
            "ops-agent"
        } else {
            AGENT_KINDS[self.rng.random_range(0..AGENT_KINDS.len())]
        };
        let agent = format!("{tenant}-{kind}");
        let environment = match self.rng.random_range(0..10) {
            0 => "development",
            1 | 2 => "staging",
            _ => "production",
        };
        let status = match self.rng.random_range(0..100) {
            0..=92 => "ok",
            93..=96 => "error",
            97..=98 => "denied",
            _ => "timeout",
        };
        // Workflows run a handful of steps before a new one starts.
        if self.workflows.len() < 64 || self.rng.random_bool(0.1) {
            let id = format!("wf-{:016x}", self.rng.random::<u64>());
            if self.workflows.len() >= 256 {
                let i = self.rng.random_range(0..self.workflows.len());
                self.workflows.swap_remove(i);
            }
            self.workflows.push((id, 0));
        }
        let wi = self.rng.random_range(0..self.workflows.len());
        self.workflows[wi].1 += 1;
        let (workflow_id, step) = self.workflows[wi].clone();
        let mut input = self.input_for(tool);
        let mut secrets = Vec::new();
        if self.rng.random_bool(self.opts.secret_ratio.clamp(0.0, 1.0)) {
            let (text, s) = secret(&mut self.rng);
            input["note"] = Value::String(text);
            secrets.push(s);
        }
        let latency = (self.rng.random::<f64>() * 3.0).exp() * 20.0;
        let output = format!(
            "{} rows matched; first: id={} status=open updated=2026-11-27 region=eu-west-1 plan=business",
            self.rng.random_range(0..200),
            self.rng.random_range(1..1_000_000)
        );
        // Benign Tier A calls are always approved; unapproved ones are a scenario.
        let approval = tier_a.then(|| {
            json!({"id": format!("apr-{}", self.rng.random_range(1..1_000_000)),
                   "approver": "oncall-lead", "decision": "approved"})
        });
        let event = json!({
            "event_id": format!("evt-{:08x}-{:016x}", self.opts.seed as u32, self.n),
            "ts": ts,
            "tenant": tenant,
            "agent_id": agent,
            "environment": environment,
            "tool": tool,
            "status": status,
            "actor": format!("user-{}", self.rng.random_range(1..5000)),
            "workflow_id": workflow_id,
            "step": step,
            "tool_call_id": format!("call_{:012x}", self.rng.random::<u64>() >> 16),
            "tool_type": "function",
            "agent_version": "1.4.2",
            "credential_id": format!("cred-{agent}"),
            "latency_ms": (latency * 10.0).round() / 10.0,
            "error_type": (status == "error").then_some("UpstreamTimeout"),
            "input": input,
            "output": output,
            "tokens_in": self.rng.random_range(50..4000),
            "tokens_out": self.rng.random_range(10..800),
            "approval": approval,
        });
        (event, secrets)
    }

    fn malformed(&mut self) -> Generated {
        let (mut event, mut secrets) = self.valid_event();
        let key = event["tenant"].as_str().unwrap_or_default().to_owned();
        let (name, payload): (&'static str, Vec<u8>) = match self.rng.random_range(0..9) {
            0 => (
                "not_json",
                b"ERROR 2026-11-28 agent crashed: stack overflow".to_vec(),
            ),
            1 => {
                let text = event.to_string();
                ("truncated", text.as_bytes()[..text.len() / 2].to_vec())
            }
            2 => {
                if let Some(o) = event.as_object_mut() {
                    o.remove("tenant");
                }
                ("missing_field", event.to_string().into_bytes())
            }
            3 => {
                event["ts"] = json!("last tuesday");
                ("bad_timestamp", event.to_string().into_bytes())
            }
            4 => ("not_an_object", b"[1,2,3]".to_vec()),
            5 => ("empty", Vec::new()),
            6 => {
                let mut b = event.to_string().into_bytes();
                b.insert(10, 0xff);
                ("invalid_utf8", b)
            }
            7 => {
                let deep = format!("{{\"input\":{}1{}}}", "[".repeat(64), "]".repeat(64));
                ("too_deep", deep.into_bytes())
            }
            _ => {
                // A secret in a message that is not even JSON must still be
                // redacted from the dead-letter table.
                let (text, s) = secret(&mut self.rng);
                secrets.push(s);
                (
                    "secret_in_garbage",
                    format!("agent log line: {text} <<<").into_bytes(),
                )
            }
        };
        Generated {
            key,
            payload,
            kind: Kind::Malformed(name),
            event_id: None,
            secrets,
        }
    }
}
