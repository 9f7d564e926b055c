//! Alertmanager owns pushing alerts to Alertmanager's `/api/v2/alerts`: a
//! bounded queue the writer never waits on, a thread that posts batches with
//! retries and backoff, re-sends of active alerts (Alertmanager forgets an
//! alert not re-sent within its resolve_timeout) and the resolve (`endsAt`)
//! when a condition clears.
//!
//! What waits to be sent is bounded too: one entry per alert identity (a
//! re-send or a newer state replaces the older one), at most the queue's
//! size, the oldest dropped and counted. Every alert is made valid before it
//! is sent (its `startsAt` is never in the future, its `endsAt` never before
//! it), and a batch Alertmanager refuses is split, so one bad alert never
//! blocks the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::detect::{Alert, AlertChange};
use crate::metrics::Metrics;

const RESEND_EVERY: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The writer's handle: `notify` never blocks; a full queue drops and counts.
pub struct AlertmanagerPush {
    tx: Option<SyncSender<AlertChange>>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl AlertmanagerPush {
    pub fn start(
        base_url: &str,
        queue: usize,
        runbook_base_url: &str,
        metrics: Arc<Metrics>,
    ) -> AlertmanagerPush {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue);
        metrics.alertmanager_queue_capacity.set(queue as i64);
        let worker = Worker {
            url: format!("{}/api/v2/alerts", base_url.trim_end_matches('/')),
            runbook_base_url: runbook_base_url.to_owned(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .http_status_as_error(true)
                .build()
                .into(),
            active: BTreeMap::new(),
            max_pending: queue.max(1),
            metrics: metrics.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("agentaudit-alertmanager".into())
            .spawn(move || worker.run(rx))
            .ok();
        AlertmanagerPush {
            tx: Some(tx),
            thread,
            metrics,
        }
    }

    pub fn notify(&self, change: &AlertChange) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(change.clone()) {
            Ok(()) => self.metrics.alertmanager_queue_depth.inc(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.alertmanager_dropped.inc();
            }
        }
    }

    /// Sends what is queued (one attempt each) and stops the thread.
    pub fn stop(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    url: String,
    runbook_base_url: String,
    agent: ureq::Agent,
    /// Alerts currently firing, by identity, as last sent.
    active: BTreeMap<String, Value>,
    max_pending: usize,
    metrics: Arc<Metrics>,
}

/// Alerts waiting to be sent: the newest state per identity, oldest first.
#[derive(Default)]
struct Pending {
    by_identity: HashMap<String, (u64, Value)>,
    seq: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.by_identity.is_empty()
    }

    fn len(&self) -> usize {
        self.by_identity.len()
    }

    /// Queues `body` under `identity`, replacing an older state; past `max`
    /// the oldest entry is dropped. Returns how many were dropped.
    fn put(&mut self, identity: String, body: Value, max: usize) -> u64 {
        self.seq += 1;
        self.by_identity.insert(identity, (self.seq, body));
        let mut dropped = 0;
        while self.by_identity.len() > max {
            let Some(oldest) = self
                .by_identity
                .iter()
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.by_identity.remove(&oldest);
            dropped += 1;
        }
        dropped
    }

    /// The bodies, oldest first.
    fn bodies(&self) -> Vec<Value> {
        let mut v: Vec<&(u64, Value)> = self.by_identity.values().collect();
        v.sort_by_key(|(seq, _)| *seq);
        v.into_iter().map(|(_, b)| b.clone()).collect()
    }

    fn clear(&mut self) {
        self.by_identity.clear();
    }
}

impl Worker {
    fn run(mut self, rx: Receiver<AlertChange>) {
        let mut pending = Pending::default();
        let mut backoff = Duration::from_millis(250);
        let mut next_attempt = Instant::now();
        let mut last_resend = Instant::now();
        loop {
            let wait = if pending.is_empty() {
                Duration::from_secs(1)
            } else {
                next_attempt.saturating_duration_since(Instant::now())
            };
            let mut closing = false;
            match rx.recv_timeout(wait) {
                Ok(change) => {
                    self.take(change, &mut pending);
                    while let Ok(more) = rx.try_recv() {
                        self.take(more, &mut pending);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closing = true,
            }
            if last_resend.elapsed() >= RESEND_EVERY {
                let active: Vec<(String, Value)> = self
                    .active
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (identity, body) in active {
                    self.queue(&mut pending, identity, body);
                }
                last_resend = Instant::now();
            }
            if !pending.is_empty() && (closing || Instant::now() >= next_attempt) {
                let bodies: Vec<Value> = pending.bodies().into_iter().map(valid).collect();
                match self.post(&bodies) {
                    Ok(()) => {
                        self.metrics.alertmanager_sent.inc_by(pending.len() as u64);
                        pending.clear();
                        backoff = Duration::from_millis(250);
                    }
                    Err(ureq::Error::StatusCode(code)) if (400..500).contains(&code) => {
                        // Refused as a batch: send one by one, so that an
                        // alert Alertmanager will not take blocks no other.
                        self.one_by_one(&bodies);
                        pending.clear();
                    }
                    Err(e) => {
                        self.metrics.alertmanager_failures.inc();
                        tracing::warn!(error = %e, retry_in = ?backoff, "pushing alerts to Alertmanager failed");
                        next_attempt = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            if closing {
                return;
            }
        }
    }

    fn queue(&self, pending: &mut Pending, identity: String, body: Value) {
        let dropped = pending.put(identity, body, self.max_pending);
        self.metrics.alertmanager_dropped.inc_by(dropped);
    }

    /// Posts each alert alone; those refused are logged and counted.
    fn one_by_one(&self, bodies: &[Value]) {
        for body in bodies {
            match self.post(std::slice::from_ref(body)) {
                Ok(()) => self.metrics.alertmanager_sent.inc(),
                Err(e) => {
                    self.metrics.alertmanager_rejected.inc();
                    tracing::warn!(error = %e, labels = %body["labels"], "Alertmanager refused an alert");
                }
            }
        }
    }

    fn take(&mut self, change: AlertChange, pending: &mut Pending) {
        self.metrics.alertmanager_queue_depth.dec();
        let (alert, ends) = match change {
            AlertChange::Fired(a) => (a, None),
            AlertChange::Resolved(a) => (a, Some(Utc::now())),
        };
        let body = self.body(&alert, ends);
        let identity = alert.id_without_window();
        match ends {
            None => {
                self.active.insert(identity.clone(), body.clone());
            }
            Some(_) => {
                self.active.remove(&identity);
            }
        }
        self.queue(pending, identity, body);
    }

    fn body(&self, a: &Alert, ends: Option<DateTime<Utc>>) -> Value {
        let rule = a.rule.rule();
        let starts = DateTime::<Utc>::from_timestamp_millis(a.detected_at_ms).unwrap_or_default();
        let mut labels = json!({
            "alertname": rule.name,
            "severity": a.severity.as_str(),
            "source": "agentaudit",
            // One incident, one page: routes group by it.
            "incident_id": a.incident_id,
        });
        for (k, v) in [
            ("tenant", &a.tenant),
            ("agent", &a.agent_id),
            ("tool", &a.tool),
        ] {
            if !v.is_empty() {
                labels[k] = Value::String(crate::detect::labels::sanitise(v));
            }
        }
        let mut alert = json!({
            "labels": labels,
            "annotations": {
                "summary": rule.summary,
                // Chat receivers render it as Markdown: a backtick or a link
                // in a producer's name must stay text.
                "description": crate::escape::markdown(&crate::query::escape_deceptive(&a.detail)),
                "runbook_url": format!("{}#{}", self.runbook_base_url, rule.name),
                "observed": format!("{}", a.observed),
                "expected": format!("{:.2}", a.expected),
                "sample_event_ids": a.sample_event_ids.join(","),
                // What the responder runs first: the report of this alert.
                "alert_id": a.id(),
                // The report of the incident's first alert lists the rest.
                "incident": format!("agentaudit incident {}", a.incident_id),
                "incident_id": a.incident_id,
            },
            "startsAt": starts.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        // The exact ids (JSON-escaped, never sanitised): the labels above are
        // for display and may name another agent than the one that called
        // (`report bot` shows as `report_bot`); the kill switch acts on these.
        for (k, v) in [("tenant_id", &a.tenant), ("agent_id", &a.agent_id)] {
            if !v.is_empty() {
                alert["annotations"][k] = Value::String(v.clone());
            }
        }
        if let Some(end) = ends {
            alert["endsAt"] = Value::String(end.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        alert
    }

    fn post(&self, alerts: &[Value]) -> Result<(), ureq::Error> {
        let body = Value::Array(alerts.to_vec()).to_string();
        self.agent
            .post(&self.url)
            .header("content-type", "application/json")
            .send(body.as_str())
            .map(|_| ())
    }
}

/// The alert as Alertmanager accepts it, whatever time its event claimed: a
/// `startsAt` in the future (a producer's clock, or a forged timestamp) is
/// now, and an `endsAt` is never before the `startsAt`.
fn valid(mut alert: Value) -> Value {
    let now = Utc::now();
    let parse = |v: &Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc))
    };
    let starts = parse(&alert["startsAt"]).map_or(now, |s| s.min(now));
    alert["startsAt"] = Value::String(starts.to_rfc3339_opts(SecondsFormat::Millis, true));
    if let Some(ends) = parse(&alert["endsAt"]) {
        let ends = ends.max(starts);
        alert["endsAt"] = Value::String(ends.to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    alert
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keeps_the_newest_state_per_alert_and_drops_the_oldest() {
        let mut p = Pending::default();
        assert_eq!(p.put("a".into(), json!(1), 2), 0);
        assert_eq!(p.put("b".into(), json!(2), 2), 0);
        // A re-send of `a` replaces it, and makes it the newest.
        assert_eq!(p.put("a".into(), json!(3), 2), 0);
        assert_eq!(p.len(), 2);
        assert_eq!(p.put("c".into(), json!(4), 2), 1, "b, the oldest, goes");
        assert_eq!(p.bodies(), vec![json!(3), json!(4)]);
    }

    #[test]
    fn a_future_start_is_now_and_an_end_never_precedes_it() {
        let future =
            json!({"startsAt": "2999-01-01T00:00:00.000Z", "endsAt": "2000-01-01T00:00:00.000Z"});
        let v = valid(future);
        let starts = DateTime::parse_from_rfc3339(v["startsAt"].as_str().unwrap()).unwrap();
        let ends = DateTime::parse_from_rfc3339(v["endsAt"].as_str().unwrap()).unwrap();
        assert!(starts.with_timezone(&Utc) <= Utc::now());
        assert!(ends >= starts);
        let past = json!({"startsAt": "2020-01-01T00:00:00.000Z"});
        assert_eq!(valid(past.clone()), past, "a valid alert is left alone");
    }

    /// The label is sanitised for display; the exact agent id rides in its
    /// own annotation (the kill switch acts on it), and the description a
    /// chat receiver renders as Markdown carries no live link or code span.
    #[test]
    fn the_exact_agent_id_is_an_annotation_and_the_description_is_inert() {
        let worker = Worker {
            url: String::new(),
            runbook_base_url: "https://runbooks".into(),
            agent: ureq::Agent::new_with_defaults(),
            active: BTreeMap::new(),
            max_pending: 1,
            metrics: Arc::new(Metrics::new()),
        };
        let alert = Alert {
            rule: crate::detect::RuleId::UnregisteredAgent,
            severity: crate::detect::Severity::Critical,
            tenant: "acme corp".into(),
            agent_id: "report bot".into(),
            tool: "![x](https://evil.example/a.png)".into(),
            window_start_ms: 0,
            window_end_ms: 1,
            observed: 1.0,
            expected: 0.0,
            score: 1.0,
            sample_event_ids: vec![],
            detail: "first call of `a` by agent `x` ` [t](https://e.example)`".into(),
            detected_at_ms: 0,
            incident_id: "0123".into(),
        };
        let body = worker.body(&alert, None);
        assert_eq!(body["labels"]["agent"], "report_bot");
        assert_eq!(body["annotations"]["agent_id"], "report bot");
        assert_eq!(body["annotations"]["tenant_id"], "acme corp");
        let description = body["annotations"]["description"].as_str().unwrap();
        for ch in [b'`', b'[', b']'] {
            assert_eq!(
                crate::escape::unescaped(description, ch),
                None,
                "{:?} live in {description}",
                ch as char
            );
        }
        assert!(!description.contains("https://"), "{description}");
    }
}
