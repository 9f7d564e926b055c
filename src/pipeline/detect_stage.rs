//! The detect stage owns detection as the writer thread runs it: the
//! detector, the policy it reads (installed whole, reloaded on SIGHUP or a
//! changed file), and where alert changes go — the alerts table, the
//! `agentaudit_alert_active` gauges with capped labels, and Alertmanager.

use std::collections::HashMap;
use std::sync::Arc;

use super::PipelineError;
use crate::config::Config;
use crate::detect::labels::LabelCap;
use crate::detect::policy::Policy;
use crate::detect::{AlertChange, Detector, SharedPolicy};
use crate::event::Record;
use crate::metrics::Metrics;
use crate::redact::Redactor;
use crate::sink::PendingRows;
use crate::sink::alertmanager::AlertmanagerPush;

/// Detection as the writer runs it: the detector, the policy it reads, and
/// where alert changes go (the alerts table, metrics, Alertmanager).
pub(super) struct DetectStage {
    detector: Detector,
    policy: SharedPolicy,
    labels: LabelCap,
    redactor: Arc<Redactor>,
    pub(super) alertmanager: Option<AlertmanagerPush>,
    changes: Vec<AlertChange>,
    /// The gauge labels each active alert was exported with.
    exported: HashMap<String, [String; 5]>,
    reported_evictions: (u64, u64),
    busiest_exported: u32,
    /// On a shared lake, the baselines are warmed per partition as each is
    /// first assigned: the tenants a partition carries are this instance's
    /// to watch only while it owns the partition.
    warm_on_assign: Option<WarmOnAssign>,
    /// The topic a shared lake is written from, whose partitions are warmed.
    topic: String,
    /// Alert log lines left this minute (an alert flood must not flood the
    /// log), the minute, and how many were held back.
    alert_log: AlertLog,
    /// Open incidents and how many of their alerts are active: each is
    /// logged when it opens and when its last alert resolves (bounded by
    /// the detector's `max_active_alerts`).
    incidents: std::collections::HashMap<String, usize>,
}

/// At most `ALERT_LOG_PER_MINUTE` lines a minute about each rule's alerts
/// (so a rule that fires on every call cannot crowd out a rarer one); the
/// rest are counted and the count said with that rule's next line.
#[derive(Default)]
struct AlertLog {
    minute: i64,
    written: [u32; crate::detect::RULES.len()],
    held_back: [u64; crate::detect::RULES.len()],
}

const ALERT_LOG_PER_MINUTE: u32 = 5;

impl AlertLog {
    /// Whether a line about `rule` may be written now; its lines held back
    /// before it.
    fn admit(&mut self, rule: crate::detect::RuleId) -> Option<u64> {
        let minute = chrono::Utc::now().timestamp() / 60;
        if minute != self.minute {
            self.minute = minute;
            self.written = Default::default();
        }
        let i = rule as usize;
        if self.written[i] >= ALERT_LOG_PER_MINUTE {
            self.held_back[i] += 1;
            return None;
        }
        self.written[i] += 1;
        Some(std::mem::take(&mut self.held_back[i]))
    }
}

struct WarmOnAssign {
    lake: crate::lake::Lake,
    bucket_ms: i64,
    hours: u32,
    warmed: std::collections::BTreeSet<i32>,
}

impl DetectStage {
    /// A new assignment: the alerts of tenants on partitions no longer ours
    /// go to their new owner (their gauges go, unresolved), and on a shared
    /// lake the baselines of partitions new to us are warmed from it.
    pub(super) fn on_assigned(&mut self, assigned: &[(String, i32)], metrics: &Metrics) {
        for a in self.detector.release_partitions(assigned) {
            self.close_incident_alert(&a);
            self.drop_gauge(&a, metrics);
        }
        let Some(w) = self.warm_on_assign.as_mut() else {
            return;
        };
        // A shared lake is written from one topic (config refuses more).
        let new: Vec<i32> = assigned
            .iter()
            .filter(|(t, p)| *t == self.topic && !w.warmed.contains(p))
            .map(|(_, p)| *p)
            .collect();
        if new.is_empty() {
            return;
        }
        let now = chrono::Utc::now().timestamp_millis();
        match crate::detect::warm::from_history(
            &w.lake,
            &mut self.detector,
            w.bucket_ms,
            w.hours,
            now,
            Some(&new),
        ) {
            Ok(n) => {
                w.warmed.extend(&new);
                tracing::info!(partitions = ?new, aggregates = n, "baselines warmed from the shared lake for newly assigned partitions");
            }
            Err(e) => {
                tracing::warn!(partitions = ?new, error = %e, "could not warm baselines for newly assigned partitions; they start cold")
            }
        }
    }

    /// Counts one of an incident's alerts gone; true when it was the last.
    fn close_incident_alert(&mut self, a: &crate::detect::Alert) -> bool {
        match self.incidents.get_mut(&a.incident_id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.incidents.remove(&a.incident_id);
                true
            }
            None => false,
        }
    }

    /// Takes an alert that no longer holds here off `agentaudit_alert_active`.
    fn drop_gauge(&mut self, a: &crate::detect::Alert, metrics: &Metrics) {
        if let Some(labels) = self.exported.remove(&a.id_without_window()) {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            if let Ok(g) = metrics.alert_active.get_metric_with_label_values(&refs) {
                g.dec();
                if g.get() <= 0 {
                    let _ = metrics.alert_active.remove_label_values(&refs);
                }
            }
        }
    }

    pub(super) fn current_policy(&self) -> Option<Arc<Policy>> {
        self.policy.read().ok().and_then(|p| p.clone())
    }

    pub(super) fn observe(&mut self, record: &Record, policy: Option<&Policy>) {
        self.detector.observe(record, policy, &mut self.changes);
    }

    /// Applies what the batch changed: alert rows, metrics, Alertmanager.
    pub(super) fn end_batch(&mut self, rows: &mut PendingRows, metrics: &Metrics) {
        self.detector.advance(&mut self.changes);
        let policy = self.current_policy();
        let policy = policy.as_deref();
        for change in std::mem::take(&mut self.changes) {
            match &change {
                AlertChange::Fired(a) => {
                    let rule = a.rule.name();
                    let severity = a.severity.as_str();
                    metrics.alerts.with_label_values(&[rule, severity]).inc();
                    let [tenant, agent, tool] =
                        self.labels
                            .key((&a.tenant, &a.agent_id, &a.tool), &self.redactor, policy);
                    let labels = [rule.to_owned(), severity.to_owned(), tenant, agent, tool];
                    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                    metrics.alert_active.with_label_values(&refs).inc();
                    // Said once when its incident opens: what fired, on
                    // which keys (the capped, sanitised labels), and what to
                    // run next. Alerts joining an open incident say nothing.
                    let open = self.incidents.entry(a.incident_id.clone()).or_insert(0);
                    *open += 1;
                    if *open == 1
                        && let Some(held_back) = self.alert_log.admit(a.rule)
                    {
                        tracing::warn!(
                            incident_id = %a.incident_id,
                            rule,
                            severity,
                            tenant = %labels[2],
                            agent = %labels[3],
                            tool = %labels[4],
                            observed = a.observed,
                            expected = format!("{:.2}", a.expected),
                            next = %format!("agentaudit incident {}", a.incident_id),
                            alert_lines_held_back = held_back,
                            "incident opened"
                        );
                    }
                    self.exported.insert(a.id_without_window(), labels);
                    rows.push_alert(a.clone());
                }
                AlertChange::Resolved(a) => {
                    if self.close_incident_alert(a)
                        && let Some(labels) = self.exported.get(&a.id_without_window())
                        && let Some(held_back) = self.alert_log.admit(a.rule)
                    {
                        tracing::info!(
                            incident_id = %a.incident_id,
                            rule = a.rule.name(),
                            tenant = %labels[2],
                            agent = %labels[3],
                            tool = %labels[4],
                            alert_lines_held_back = held_back,
                            "incident resolved"
                        );
                    }
                    self.drop_gauge(a, metrics)
                }
            }
            if let Some(am) = &self.alertmanager {
                am.notify(&change);
            }
        }
        let (busiest, bucket) = self.detector.busiest();
        if bucket != self.busiest_exported {
            // A new bucket closed: the series are the new top keys only.
            self.busiest_exported = bucket;
            metrics.baseline_observed.reset();
            metrics.baseline_expected.reset();
            for k in busiest {
                let [tenant, agent, tool] =
                    self.labels
                        .key((&k.tenant, &k.agent_id, &k.tool), &self.redactor, policy);
                let labels = [k.kind.to_owned(), tenant, agent, tool];
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                metrics
                    .baseline_observed
                    .with_label_values(&refs)
                    .set(i64::from(k.observed));
                metrics
                    .baseline_expected
                    .with_label_values(&refs)
                    .set(k.expected);
            }
        }
        metrics
            .active_alerts
            .set(self.detector.active_alerts() as i64);
        metrics
            .baseline_keys
            .set(self.detector.baseline_keys() as i64);
        metrics
            .baseline_profiles
            .set(self.detector.baseline_profiles() as i64);
        let (b, d) = (
            self.detector.baseline_evictions(),
            self.detector.state_evictions(),
        );
        metrics
            .baseline_evictions
            .inc_by(b - self.reported_evictions.0);
        metrics
            .detector_evictions
            .inc_by(d - self.reported_evictions.1);
        self.reported_evictions = (b, d);
        let overflow = self.labels.overflowed;
        metrics
            .label_overflow
            .inc_by(overflow.saturating_sub(metrics.label_overflow.get()));
        let (tables, refused) = self.detector.baseline_burst_tables();
        metrics.burst_tables.set(tables as i64);
        metrics
            .burst_tables_refused
            .inc_by(refused.saturating_sub(metrics.burst_tables_refused.get()));
        metrics
            .silence_watched
            .set(self.detector.silence_watched() as i64);
        let refused = self.detector.silence_watch_refused;
        metrics
            .silence_watch_refused
            .inc_by(refused.saturating_sub(metrics.silence_watch_refused.get()));
        let late = self.detector.baseline_late();
        metrics
            .baseline_late
            .inc_by(late.saturating_sub(metrics.baseline_late.get()));
    }
}

/// Loads the policy (refusing to start on a bad file), warms the baselines
/// from stored history and starts the Alertmanager push when configured.
pub(super) fn detect_stage(
    cfg: &Config,
    redactor: Arc<Redactor>,
    metrics: Arc<Metrics>,
) -> Result<(DetectStage, SharedPolicy), PipelineError> {
    let d = &cfg.detect;
    let policy: SharedPolicy = Arc::new(std::sync::RwLock::new(None));
    if let Some(path) = &d.policy_file {
        let p = Policy::load(path)?;
        install_policy(&policy, p, &metrics);
    }
    let mut detector = Detector::new(d, false);
    detector.bound_by_arrival();
    let bucket_ms = i64::try_from(d.bucket_secs * 1000).unwrap_or(60_000);
    let lake = crate::lake::Lake::open(&cfg.sink.data_dir, &cfg.sink.object_store)
        .map_err(|e| PipelineError::Runtime(e.to_string()))?;
    let warm_on_assign = if lake.local_dir().is_none() {
        Some(WarmOnAssign {
            lake,
            bucket_ms,
            hours: d.warm_hours,
            warmed: Default::default(),
        })
    } else {
        let now = chrono::Utc::now().timestamp_millis();
        match crate::detect::warm::from_history(
            &lake,
            &mut detector,
            bucket_ms,
            d.warm_hours,
            now,
            None,
        ) {
            Ok(n) if n > 0 => tracing::info!(
                aggregates = n,
                hours = d.warm_hours,
                "baselines warmed from stored history"
            ),
            Ok(_) => {}
            // Detection still works cold; say so rather than refuse to start.
            Err(e) => {
                tracing::warn!(error = %e, "could not warm baselines from history; starting cold")
            }
        }
        None
    };
    metrics.baseline_max_keys.set(d.max_keys as i64);
    metrics.baseline_max_profiles.set(d.max_profiles as i64);
    let alertmanager = d.alertmanager_url.as_deref().map(|url| {
        AlertmanagerPush::start(
            url,
            d.alertmanager_queue,
            &d.runbook_base_url,
            metrics.clone(),
        )
    });
    let stage = DetectStage {
        detector,
        policy: policy.clone(),
        labels: LabelCap::new(d.max_label_values),
        redactor,
        alertmanager,
        changes: Vec::new(),
        exported: HashMap::new(),
        reported_evictions: (0, 0),
        busiest_exported: 0,
        warm_on_assign,
        topic: cfg.kafka.topic.clone(),
        alert_log: AlertLog::default(),
        incidents: std::collections::HashMap::new(),
    };
    Ok((stage, policy))
}

/// Puts a checked policy in force and updates what depends on it.
pub fn install_policy(shared: &SharedPolicy, policy: Policy, metrics: &Metrics) {
    for (agent, env) in policy.write_heavy_agents() {
        tracing::warn!(
            agent,
            environment = env,
            "allowlist has as many write tools as read tools or more"
        );
    }
    metrics.inventory_review_overdue.reset();
    let today = chrono::Utc::now().date_naive();
    for agent in crate::detect::overdue_agents(&policy, today) {
        metrics
            .inventory_review_overdue
            .with_label_values(&[&crate::detect::labels::sanitise(&agent)])
            .set(1);
    }
    if let Ok(mut p) = shared.write() {
        *p = Some(Arc::new(policy));
    }
    metrics.policy_loaded.set(1);
}

/// Re-reads the policy file; a bad file keeps the old policy in force.
pub fn reload_policy(path: &std::path::Path, shared: &SharedPolicy, metrics: &Metrics) {
    match Policy::load(path) {
        Ok(p) => {
            install_policy(shared, p, metrics);
            metrics.policy_reloads.inc();
            tracing::info!(file = %path.display(), "policy reloaded");
        }
        Err(e) => {
            metrics.policy_reload_failures.inc();
            tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
        }
    }
}
