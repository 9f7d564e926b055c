//! Alertmanager owns pushing alerts to Alertmanager's `/api/v2/alerts`: a
//! bounded queue the writer never waits on, a thread that posts batches with
//! retries and backoff, re-sends of active alerts (Alertmanager forgets an
//! alert not re-sent within its resolve_timeout) and the resolve (`endsAt`)
//! when a condition clears.

use std::collections::BTreeMap;
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
    metrics: Arc<Metrics>,
}

impl Worker {
    fn run(mut self, rx: Receiver<AlertChange>) {
        let mut pending: Vec<Value> = Vec::new();
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
                pending.extend(self.active.values().cloned());
                last_resend = Instant::now();
            }
            if !pending.is_empty() && (closing || Instant::now() >= next_attempt) {
                match self.post(&pending) {
                    Ok(()) => {
                        self.metrics.alertmanager_sent.inc_by(pending.len() as u64);
                        pending.clear();
                        backoff = Duration::from_millis(250);
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

    fn take(&mut self, change: AlertChange, pending: &mut Vec<Value>) {
        self.metrics.alertmanager_queue_depth.dec();
        let (alert, ends) = match change {
            AlertChange::Fired(a) => (a, None),
            AlertChange::Resolved(a) => (a, Some(Utc::now())),
        };
        let body = self.body(&alert, ends);
        let identity = alert.id_without_window();
        match ends {
            None => {
                self.active.insert(identity, body.clone());
            }
            Some(_) => {
                self.active.remove(&identity);
            }
        }
        pending.push(body);
    }

    fn body(&self, a: &Alert, ends: Option<DateTime<Utc>>) -> Value {
        let rule = a.rule.rule();
        let starts = DateTime::<Utc>::from_timestamp_millis(a.detected_at_ms).unwrap_or_default();
        let mut labels = json!({
            "alertname": rule.name,
            "severity": a.severity.as_str(),
            "source": "agentaudit",
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
                "description": a.detail,
                "runbook_url": format!("{}#{}", self.runbook_base_url, rule.name),
                "observed": format!("{}", a.observed),
                "expected": format!("{:.2}", a.expected),
                "sample_event_ids": a.sample_event_ids.join(","),
            },
            "startsAt": starts.to_rfc3339_opts(SecondsFormat::Millis, true),
        });
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
