//! Detect owns turning redacted records into alerts: rolling baselines of
//! call frequency (statistical rules) and the written policy (policy rules),
//! both in event time so that a backtest over history fires what live
//! traffic fired. It sits between redact and sink and sees only redacted
//! records; it never writes or sends anything itself.

mod active;
mod aged;
pub mod backtest;
pub mod baseline;
pub mod errors;
pub mod labels;
mod silence;
pub use silence::MAX_SILENCE_WATCH;
use silence::SilenceWatch;
pub mod policy;
mod policy_rules;
mod rules;
pub use rules::{Alert, AlertChange, RULES, Rule, RuleId, Severity};
pub mod warm;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use active::{ActiveAlert, Incident};
use aged::AgedMap;
use baseline::{Baselines, ClosedBucket, Shape, Signal, SignalKind};
use errors::{ErrorRateConfig, ErrorRates};
use policy::Policy;

use crate::config::DetectConfig;
use crate::event::{Record, Status};

/// A closed baseline bucket with the names of its key, for backtests.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketScore {
    pub kind: &'static str,
    pub tenant: String,
    pub agent_id: String,
    pub tool: String,
    pub bucket_start_ms: i64,
    pub observed: u32,
    pub expected: f64,
    pub score: f64,
    pub warm: bool,
}

/// Maps keyed by our own 64-bit hashes: hashing them again would only cost.
type HashedKeys<V> = HashMap<u64, V, std::hash::BuildHasherDefault<baseline::IdentityHasher>>;

/// One of the busiest keys of the newest closed bucket, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct BusyKey {
    pub kind: &'static str,
    pub tenant: String,
    pub agent_id: String,
    pub tool: String,
    pub observed: u32,
    pub expected: f64,
}

/// How many busiest keys are exported.
pub const BUSIEST: usize = 10;

/// Baseline key kinds: which names a key is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyKind {
    TenantTool,
    AgentTool,
    Tenant,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            KeyKind::TenantTool => "tenant_tool",
            KeyKind::AgentTool => "agent_tool",
            KeyKind::Tenant => "tenant",
        }
    }
}

/// Tenants whose partition is remembered for resolving their alerts; past
/// it the map starts over and their alerts resolve by the consumer's clock.
const MAX_TENANT_SOURCES: usize = 100_000;

/// The detectors' state. One per pipeline, fed in event order per partition.
pub struct Detector {
    cfg: DetectConfig,
    bucket_ms: i64,
    lateness_ms: i64,
    // Keys come from event fields an attacker may choose: a randomly seeded
    // hash, but a fast one (SipHash was a tenth of the writer thread).
    hasher: foldhash::fast::RandomState,
    baselines: Baselines,
    errors: ErrorRates,
    signals: Vec<Signal>,
    /// Names of baseline keys, kept only when bucket scores are recorded.
    key_names: Option<foldhash::HashMap<u64, (KeyKind, String, String, String)>>,
    pub scores: Vec<BucketScore>,
    closed: Vec<ClosedBucket>,
    /// The busiest keys of the newest bucket closed so far.
    busiest: Vec<BusyKey>,
    busiest_bucket: u32,
    enabled: [bool; RULES.len()],
    workflows: HashedKeys<policy_rules::WorkflowState>,
    /// (tenant) → (minute, calls in it).
    tenant_minutes: AgedMap<(i64, u32)>,
    tenant_tools_seen: AgedMap<()>,
    /// (tenant, agent, tool) pairs seen, and when each (tenant, agent) was
    /// first seen: what counts as a call new for an agent.
    agent_tools_seen: AgedMap<()>,
    /// When each tenant and each (tenant, agent) was first seen.
    first_seen: AgedMap<i64>,
    credential_agent: AgedMap<u64>,
    active: foldhash::HashMap<(RuleId, u64), ActiveAlert>,
    /// Each tenant's newest incident (bounded like `tenant_sources`).
    incidents: HashedKeys<Incident>,
    /// Buckets after an incident's last alert within which a new alert of
    /// its tenant joins it.
    incident_gap_buckets: i64,
    first_event_ms: Option<i64>,
    max_event_ms: i64,
    /// The watermark bucket `advance` last resolved up to.
    advanced_to: i64,
    /// Tenants busy enough for a drop to be tested (tenant key → name, last
    /// bucket with a call). A tenant that falls silent sends nothing that
    /// would fold its empty buckets, so `advance` folds them.
    silence_watch: HashedKeys<SilenceWatch>,
    /// Newest event time per source (topic, partition). A tenant's silence
    /// is judged by the clock of the partition its calls arrive on: the
    /// partitions of one consumer drift apart by minutes of event time in a
    /// catch-up, and a global clock would fold a merely lagging tenant's
    /// buckets before its calls arrive (and then count them late).
    source_clocks: HashedKeys<i64>,
    /// The source each tenant's calls last arrived on: its alerts resolve by
    /// that partition's clock, so neither a lagging partition in a catch-up
    /// nor another tenant's clock resolves them early.
    tenant_sources: HashedKeys<u64>,
    /// Live, event time counts no further than arrival time: `ts` is the
    /// producer's to choose, and one stamped ahead would otherwise drag the
    /// clocks that fold buckets and resolve alerts. A backtest replays
    /// history by its own clock and leaves this off.
    bounded_by_arrival: bool,
    /// Tenants left unwatched because `silence_watch` was full.
    pub silence_watch_refused: u64,
    /// Bounded-map evictions, for the metric.
    pub evictions: u64,
}

impl Detector {
    pub fn new(cfg: &DetectConfig, record_scores: bool) -> Detector {
        let mut enabled = [true; RULES.len()];
        for (i, r) in RULES.iter().enumerate() {
            enabled[i] = !cfg.disabled_rules.iter().any(|d| d == r.name);
        }
        let bucket_ms = i64::try_from(cfg.bucket_secs.saturating_mul(1000)).unwrap_or(60_000);
        Detector {
            bucket_ms,
            lateness_ms: i64::try_from(cfg.allowed_lateness_secs.saturating_mul(1000)).unwrap_or(0),
            hasher: foldhash::fast::RandomState::default(),
            baselines: Baselines::new(cfg.baseline_config(record_scores)),
            errors: ErrorRates::new(ErrorRateConfig {
                min_calls: cfg.error_min_calls,
                threshold: cfg.cusum_threshold,
                max_keys: cfg.max_keys,
                ..ErrorRateConfig::default()
            }),
            signals: Vec::new(),
            key_names: record_scores.then(foldhash::HashMap::default),
            scores: Vec::new(),
            closed: Vec::new(),
            busiest: Vec::new(),
            busiest_bucket: 0,
            enabled,
            workflows: HashedKeys::default(),
            tenant_minutes: AgedMap::new(cfg.max_keys),
            tenant_tools_seen: AgedMap::new(cfg.max_keys),
            agent_tools_seen: AgedMap::new(cfg.max_keys),
            first_seen: AgedMap::new(cfg.max_keys),
            credential_agent: AgedMap::new(cfg.max_keys),
            active: foldhash::HashMap::default(),
            incidents: HashedKeys::default(),
            incident_gap_buckets: i64::try_from(cfg.incident_gap_secs / cfg.bucket_secs.max(1))
                .unwrap_or(i64::MAX / 2),
            first_event_ms: None,
            max_event_ms: i64::MIN,
            advanced_to: i64::MIN,
            silence_watch: HashedKeys::default(),
            source_clocks: HashedKeys::default(),
            tenant_sources: HashedKeys::default(),
            bounded_by_arrival: false,
            silence_watch_refused: 0,
            evictions: 0,
            cfg: cfg.clone(),
        }
    }

    /// Counts a live event's time no further than its arrival (see
    /// `bounded_by_arrival`).
    pub fn bound_by_arrival(&mut self) {
        self.bounded_by_arrival = true;
    }

    /// The time a record counts at: its `ts`, live no later than arrival.
    fn clock_of(&self, r: &Record) -> i64 {
        if self.bounded_by_arrival {
            r.event.ts_ms.min(r.ingested_at_ms)
        } else {
            r.event.ts_ms
        }
    }

    fn tenant_key(&self, tenant: &str) -> u64 {
        self.hasher.hash_one((23u8, tenant))
    }

    pub fn baseline_keys(&self) -> usize {
        self.baselines.len()
    }

    /// Weekly shapes in use.
    pub fn baseline_profiles(&self) -> usize {
        self.baselines.profiles()
    }

    /// Bounded-state evictions outside the baselines (workflows, rates,
    /// credentials, failure shares, alerts).
    pub fn state_evictions(&self) -> u64 {
        self.evictions
            + self.errors.evictions
            + self.tenant_minutes.evictions
            + self.tenant_tools_seen.evictions
            + self.agent_tools_seen.evictions
            + self.first_seen.evictions
            + self.credential_agent.evictions
    }

    pub fn baseline_evictions(&self) -> u64 {
        self.baselines.evictions()
    }

    /// Calls that came too late for their bucket and were left out of the
    /// baselines (they are still stored).
    pub fn baseline_late(&self) -> u64 {
        self.baselines.late()
    }

    pub fn active_alerts(&self) -> usize {
        self.active.len()
    }

    /// Shapes with a table of recurring within-hour bursts, and tables
    /// refused because the limit was reached.
    pub fn baseline_burst_tables(&self) -> (usize, u64) {
        self.baselines.burst_tables()
    }

    /// Tenants whose silence is watched.
    pub fn silence_watched(&self) -> usize {
        self.silence_watch.len()
    }

    fn hash(&self, parts: &[&str], salt: u8) -> u64 {
        let mut h = self.hasher.build_hasher();
        salt.hash(&mut h);
        for p in parts {
            p.hash(&mut h);
        }
        h.finish()
    }

    fn bucket_of(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.bucket_ms)
    }

    /// Counts a past bucket of calls into the baselines without alerting:
    /// warming from stored history at start-up.
    pub fn warm(
        &mut self,
        tenant: &str,
        agent: &str,
        tool: &str,
        bucket_start_ms: i64,
        calls: u32,
        errors: u32,
    ) {
        let bucket = self.bucket_of(bucket_start_ms);
        let b = u32::try_from(bucket.max(0)).unwrap_or(0);
        let keys = self.keys(tenant, agent, tool);
        // The agent's key borrows the shape its tenant's key of the tool
        // teaches (none yet on the tool's first call).
        let mut shared = self.baselines.profile_of(keys[1].1);
        for (kind, key) in keys {
            let shape = self.shape_for(kind, shared);
            self.baselines.warm(key, b, calls, shape);
            if kind == KeyKind::TenantTool {
                shared = self.baselines.profile_of(key);
            }
        }
        for key in self.failure_keys(tenant, agent, tool) {
            self.errors.warm(key, calls, errors);
        }
        let seen = self.hash(&[tenant, tool], 9);
        self.tenant_tools_seen
            .entry(seen, self.bucket_of(bucket_start_ms), || ());
        self.note_agent_tool(tenant, agent, tool, bucket_start_ms);
        self.first_event_ms = Some(
            self.first_event_ms
                .map_or(bucket_start_ms, |f| f.min(bucket_start_ms)),
        );
    }

    /// Baseline keys of a call: the agent's first, so that a rise one agent
    /// makes opens the alert that names it (the tenant's keys then join
    /// it rather than page again). An agent's key is scoped to its tenant:
    /// `agent_id` means nothing across tenants.
    fn keys(&self, tenant: &str, agent: &str, tool: &str) -> [(KeyKind, u64); 3] {
        [
            (KeyKind::AgentTool, self.hash(&[tenant, agent, tool], 2)),
            (KeyKind::TenantTool, self.hash(&[tenant, tool], 1)),
            (KeyKind::Tenant, self.hash(&[tenant], 3)),
        ]
    }

    /// Failure-rate keys: (tenant, agent) and (tenant, tool).
    fn failure_keys(&self, tenant: &str, agent: &str, tool: &str) -> [u64; 2] {
        [
            self.hash(&[tenant, agent], 4),
            self.hash(&[tenant, tool], 5),
        ]
    }

    fn shape_for(&self, kind: KeyKind, shared: Option<u32>) -> Shape {
        match (kind, shared) {
            (KeyKind::TenantTool | KeyKind::Tenant, _) => Shape::Own,
            (KeyKind::AgentTool, Some(_)) if self.baselines.ablation().borrowed_shapes => {
                Shape::Flat
            }
            (KeyKind::AgentTool, Some(p)) => Shape::Borrow(p),
            (KeyKind::AgentTool, None) => Shape::Flat,
        }
    }

    /// Runs every enabled rule over one record; changes go to `out`.
    pub fn observe(&mut self, r: &Record, policy: Option<&Policy>, out: &mut Vec<AlertChange>) {
        let e = &r.event;
        let now_ms = self.clock_of(r);
        self.first_event_ms.get_or_insert(now_ms);
        self.max_event_ms = self.max_event_ms.max(now_ms);
        let bucket = self.bucket_of(now_ms);
        let b32 = u32::try_from(bucket.max(0)).unwrap_or(u32::MAX);
        let source = self
            .hasher
            .hash_one((17u8, &*r.coords.topic, r.coords.partition));
        self.evictions += make_room(&mut self.source_clocks, source, MAX_SILENCE_WATCH);
        let clock = self.source_clocks.entry(source).or_insert(now_ms);
        *clock = (*clock).max(now_ms);
        let tenant_key = self.tenant_key(&e.tenant);
        self.evictions += make_room(&mut self.tenant_sources, tenant_key, MAX_TENANT_SOURCES);
        self.tenant_sources.insert(tenant_key, source);
        // Statistical rules.
        let keys = self.keys(&e.tenant, &e.agent_id, &e.tool);
        // The agent's key borrows the shape its tenant's key of the tool
        // teaches (none yet on the tool's first call).
        let mut shared = self.baselines.profile_of(keys[1].1);
        for (kind, key) in keys {
            if let Some(names) = self.key_names.as_mut() {
                names
                    .entry(key)
                    .or_insert_with(|| names_for(kind, &e.tenant, &e.agent_id, &e.tool));
            }
            let before = self.closed.len();
            let shape = self.shape_for(kind, shared);
            self.baselines
                .observe(key, b32, 1, shape, &mut self.closed, &mut self.signals);
            match kind {
                KeyKind::TenantTool => shared = self.baselines.profile_of(key),
                KeyKind::Tenant if !self.baselines.ablation().silence_watch => {
                    self.watch_silence(key, &e.tenant, bucket, source)
                }
                KeyKind::Tenant => {}
                KeyKind::AgentTool => {}
            }
            self.note_busy(before, kind, &e.tenant, &e.agent_id, &e.tool);
            let (t, a, x) = match kind {
                KeyKind::TenantTool => (e.tenant.as_str(), "", e.tool.as_str()),
                KeyKind::AgentTool => (e.tenant.as_str(), e.agent_id.as_str(), e.tool.as_str()),
                KeyKind::Tenant => (e.tenant.as_str(), "", ""),
            };
            let signals = std::mem::take(&mut self.signals);
            let evidence = evidence(r);
            for s in &signals {
                self.fire_signal(kind, s, evidence, (t, a, x), out);
            }
            self.signals = signals;
            self.signals.clear();
        }
        let failed = matches!(e.status, Status::Error | Status::Denied | Status::Timeout);
        let [agent_key, tool_key] = self.failure_keys(&e.tenant, &e.agent_id, &e.tool);
        for (key, names) in [
            (agent_key, (e.tenant.as_str(), e.agent_id.as_str(), "")),
            (tool_key, (e.tenant.as_str(), "", e.tool.as_str())),
        ] {
            if let Some(shift) = self.errors.observe(key, failed)
                && failed
            {
                let detail = format!(
                    "failures far above their usual share of {:.1} % of calls (CUSUM {:.1} nats)",
                    shift.baseline_rate * 100.0,
                    shift.score
                );
                self.fire(
                    RuleId::ErrorRateSpike,
                    evidence(r),
                    names,
                    bucket,
                    1.0,
                    shift.baseline_rate,
                    shift.score,
                    detail,
                    out,
                );
            }
        }
        self.record_closed();
        self.policy_rules(r, policy, bucket, out);
        self.advance(out);
    }

    /// Keeps the top `BUSIEST` keys of the newest closed bucket; the buckets
    /// closed since `from` belong to the key of `kind` with these names.
    fn note_busy(&mut self, from: usize, kind: KeyKind, tenant: &str, agent: &str, tool: &str) {
        for i in from..self.closed.len() {
            let c = self.closed[i];
            if c.bucket < self.busiest_bucket || c.observed == 0 {
                continue;
            }
            if c.bucket > self.busiest_bucket {
                self.busiest.clear();
                self.busiest_bucket = c.bucket;
            }
            let weakest = self.busiest.iter().map(|b| b.observed).min().unwrap_or(0);
            if self.busiest.len() >= BUSIEST && c.observed <= weakest {
                continue;
            }
            let (_, t, a, x) = names_for(kind, tenant, agent, tool);
            self.busiest.retain(|b| {
                !(b.kind == kind.as_str() && b.tenant == t && b.agent_id == a && b.tool == x)
            });
            self.busiest.push(BusyKey {
                kind: kind.as_str(),
                tenant: t,
                agent_id: a,
                tool: x,
                observed: c.observed,
                expected: c.expected,
            });
            self.busiest.sort_by_key(|b| std::cmp::Reverse(b.observed));
            self.busiest.truncate(BUSIEST);
        }
    }

    /// Turns a baseline signal into its rule's alert.
    fn fire_signal(
        &mut self,
        kind: KeyKind,
        s: &Signal,
        evidence: (Option<&str>, i64),
        names: (&str, &str, &str),
        out: &mut Vec<AlertChange>,
    ) {
        let (rule, detail) = match s.kind {
            SignalKind::Spike => (
                RuleId::ToolFrequencySpike,
                format!(
                    "{} calls in the bucket against {:.1} expected ({} baseline, -log10 p = {:.1})",
                    s.observed,
                    s.expected,
                    kind.as_str(),
                    s.score
                ),
            ),
            SignalKind::Surge => (
                RuleId::ToolFrequencyShift,
                format!(
                    "{} calls in the newest buckets against {:.1} expected, a sustained rise \
                     ({} baseline, CUSUM {:.1} nats)",
                    s.observed,
                    s.expected,
                    kind.as_str(),
                    s.score
                ),
            ),
            SignalKind::Drop => (
                RuleId::TrafficDrop,
                format!(
                    "{} calls in a closed bucket against {:.1} expected ({} baseline, score {:.1})",
                    s.observed,
                    s.expected,
                    kind.as_str(),
                    s.score
                ),
            ),
        };
        if !s.fresh {
            // Evidence this key ordinarily reaches: it keeps an alert of the
            // key open, and opens none.
            self.extend(rule, evidence.0, names, i64::from(s.bucket));
            return;
        }
        self.fire(
            rule,
            evidence,
            names,
            i64::from(s.bucket),
            s.observed.into(),
            s.expected,
            s.score,
            detail,
            out,
        );
    }

    /// The busiest keys of the newest closed bucket, and that bucket.
    pub fn busiest(&self) -> (&[BusyKey], u32) {
        (&self.busiest, self.busiest_bucket)
    }

    fn record_closed(&mut self) {
        let Some(names) = self.key_names.as_ref() else {
            self.closed.clear();
            return;
        };
        for c in self.closed.drain(..) {
            if let Some((kind, t, a, tool)) = names.get(&c.key) {
                self.scores.push(BucketScore {
                    kind: kind.as_str(),
                    tenant: t.clone(),
                    agent_id: a.clone(),
                    tool: tool.clone(),
                    bucket_start_ms: i64::from(c.bucket) * self.bucket_ms,
                    observed: c.observed,
                    expected: c.expected,
                    score: c.score,
                    warm: c.warm,
                });
            }
        }
    }

    /// Closes every open bucket: the end of a backtest.
    pub fn finish(&mut self, out: &mut Vec<AlertChange>) {
        self.baselines
            .close_all(&mut self.closed, &mut self.signals);
        self.signals.clear();
        self.record_closed();
        let rest = self.active.drain().map(|(_, a)| a.alert).collect();
        active::resolve_in_order(rest, out);
    }
}

/// A call as an alert's evidence: its event id and event time.
fn evidence(r: &Record) -> (Option<&str>, i64) {
    (Some(r.event.event_id.as_str()), r.event.ts_ms)
}

/// Bounds a per-key state map: when `key` is new and the map is full, the
/// map starts over (these maps only remember first sightings and the current
/// minute, so forgetting costs at most a repeated first-sighting alert).
/// Returns how many maps were cleared, for the evictions metric.
fn make_room<V>(map: &mut HashedKeys<V>, key: u64, max: usize) -> u64 {
    if map.len() >= max && !map.contains_key(&key) {
        map.clear();
        1
    } else {
        0
    }
}

fn names_of(e: &crate::event::Event) -> (&str, &str, &str) {
    (e.tenant.as_str(), e.agent_id.as_str(), e.tool.as_str())
}

fn names_for(
    kind: KeyKind,
    tenant: &str,
    agent: &str,
    tool: &str,
) -> (KeyKind, String, String, String) {
    let (t, a, x) = match kind {
        KeyKind::TenantTool => (tenant, "", tool),
        KeyKind::AgentTool => (tenant, agent, tool),
        KeyKind::Tenant => (tenant, "", ""),
    };
    (kind, t.to_owned(), a.to_owned(), x.to_owned())
}

/// Agents whose review date is before `today`, for the overdue gauge.
pub fn overdue_agents(policy: &Policy, today: chrono::NaiveDate) -> Vec<String> {
    let mut out: Vec<String> = policy
        .agents
        .values()
        .filter(|a| a.review_by < today)
        .map(|a| a.id.clone())
        .collect();
    out.sort();
    out
}

/// The policy the detectors read, swapped whole on reload.
pub type SharedPolicy = Arc<std::sync::RwLock<Option<Arc<Policy>>>>;

#[cfg(test)]
mod tests;
