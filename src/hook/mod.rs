//! Hook owns the kill switch's receiver (`agentaudit revoke-hook`): an HTTP
//! endpoint for Alertmanager's webhook that runs one configured command per
//! firing alert — revoke the agent's credential with your identity
//! provider's CLI, say — with the agent and credential as arguments, and
//! records every action it takes in the dataset's `actions` table.
//!
//! It trusts nothing it is sent: a request must carry the shared secret
//! (`Authorization: Bearer …`, compared in constant time), bodies and alert
//! counts are bounded, a resolved alert never runs the command, and an
//! alert Alertmanager repeats runs it once — again only if it failed.

mod actions;
mod command;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::lake::Lake;
use crate::metrics::Metrics;
use crate::redact::Redactor;
pub use actions::{ACTIONS, Action, schema as actions_schema};

/// Largest webhook body taken; Alertmanager's groups are far smaller.
const MAX_BODY: usize = 1 << 20;
/// Alerts acted on per request at most; the rest are refused, counted.
const MAX_ALERTS: usize = 1_000;
/// Characters of a command's output kept in its audit row, after redaction
/// (a cut first could leave half a secret no detector recognises).
const OUTPUT_CHARS: usize = 2_000;
/// Alerts remembered as settled, so a repeat does not run the command again.
const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug, Clone)]
pub struct HookConfig {
    pub listen: SocketAddr,
    /// The program run per firing alert, with `AGENT CREDENTIAL` appended.
    pub command: PathBuf,
    /// Arguments given before those two.
    pub command_args: Vec<String>,
    pub secret: String,
    pub timeout: Duration,
    /// Where `actions` is written and credentials are looked up.
    pub lake: Lake,
}

/// Alertmanager's webhook payload (version 4), the parts acted on.
#[derive(Debug, Deserialize)]
struct Webhook {
    #[serde(default)]
    alerts: Vec<WebhookAlert>,
}

#[derive(Debug, Deserialize)]
struct WebhookAlert {
    #[serde(default)]
    status: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default, rename = "startsAt")]
    starts_at: String,
    #[serde(default)]
    fingerprint: String,
}

struct HookState {
    cfg: HookConfig,
    metrics: Arc<Metrics>,
    redactor: Redactor,
    /// Episodes settled, those of agentaudit's alerts read back from the
    /// `actions` table at start so that a restart does not act twice.
    settled: Mutex<Settled>,
    /// One command at a time: a burst of alerts queues here, in order.
    running: tokio::sync::Mutex<()>,
}

/// Byte strings equal, in time that depends on their lengths only.
fn same_secret(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

fn authorised(headers: &HeaderMap, secret: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(given.as_bytes(), secret.as_bytes()))
}

/// The alerts settled (their command succeeded, or they were declined),
/// bounded: the least recently settled is forgotten first.
#[derive(Default)]
struct Settled {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

impl Settled {
    fn insert(&mut self, key: String) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// What names one episode of an alert: agentaudit's `alert_id` annotation
/// (rule, keys and window), which the `actions` table keeps, so a restarted
/// hook knows it; else Alertmanager's fingerprint and start, known only to
/// this process.
fn episode(alert: &WebhookAlert) -> String {
    match alert.annotations.get("alert_id") {
        Some(id) if !id.is_empty() => id.clone(),
        _ => format!("{}@{}", alert.fingerprint, alert.starts_at),
    }
}

pub fn router(cfg: HookConfig, metrics: Arc<Metrics>) -> Result<Router, crate::error::ConfigError> {
    let redactor = Redactor::new(&crate::config::RedactConfig::default())?;
    let mut settled = Settled::default();
    match actions::settled(&cfg.lake, MAX_REMEMBERED) {
        // Newest first: insert oldest first, so the bound keeps the newest.
        Ok(ids) => {
            for id in ids.into_iter().rev() {
                settled.insert(id);
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot read past actions; an alert acted on before this start may run its command again"
        ),
    }
    let state = Arc::new(HookState {
        cfg,
        metrics,
        redactor,
        settled: Mutex::new(settled),
        running: tokio::sync::Mutex::new(()),
    });
    Ok(Router::new()
        .route("/hook", post(hook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_page))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state))
}

async fn metrics_page(State(s): State<Arc<HookState>>) -> String {
    s.metrics.render()
}

async fn hook(
    State(s): State<Arc<HookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    if !authorised(&headers, &s.cfg.secret) {
        s.metrics
            .hook_refused
            .with_label_values(&["unauthorised"])
            .inc();
        return (
            StatusCode::UNAUTHORIZED,
            "a shared secret is required\n".into(),
        );
    }
    let webhook: Webhook = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => {
            s.metrics
                .hook_refused
                .with_label_values(&["malformed"])
                .inc();
            return (
                StatusCode::BAD_REQUEST,
                format!("not an Alertmanager webhook: {e}\n"),
            );
        }
    };
    if webhook.alerts.len() > MAX_ALERTS {
        s.metrics
            .hook_refused
            .with_label_values(&["too_many_alerts"])
            .inc();
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("more than {MAX_ALERTS} alerts in one request\n"),
        );
    }
    let mut ran = 0;
    for alert in webhook.alerts {
        if alert.status != "firing" {
            // Resolved: the condition ended; nothing to revoke.
            s.metrics
                .hook_actions
                .with_label_values(&["resolved_ignored"])
                .inc();
            continue;
        }
        let episode = episode(&alert);
        // One at a time, and the check after the wait: two deliveries of
        // one alert in flight at once must not both run the command.
        let _one_at_a_time = s.running.lock().await;
        if s.settled.lock().map_or(true, |d| d.contains(&episode)) {
            s.metrics
                .hook_actions
                .with_label_values(&["repeat_skipped"])
                .inc();
            continue;
        }
        let state = s.clone();
        let result = tokio::task::spawn_blocking(move || state.act(&alert)).await;
        match result {
            // A command that failed is tried again when Alertmanager
            // repeats the alert; each try is a row of its own.
            Ok(Ok(succeeded)) => {
                if succeeded && let Ok(mut settled) = s.settled.lock() {
                    settled.insert(episode);
                }
                ran += 1;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "recording an action");
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
            }
            Err(e) => {
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"));
            }
        }
    }
    (StatusCode::OK, format!("{ran} actions\n"))
}

impl HookState {
    /// Runs the command for one firing alert and records what happened;
    /// true when nothing is left to do for it (it ran, or was declined).
    fn act(&self, alert: &WebhookAlert) -> Result<bool, crate::error::QueryError> {
        let label = |k: &str| alert.labels.get(k).cloned().unwrap_or_default();
        let tenant = label("tenant");
        let agent = label("agent");
        let alert_id = alert
            .annotations
            .get("alert_id")
            .cloned()
            .unwrap_or_default();
        let credential = alert
            .annotations
            .get("credential_id")
            .cloned()
            .or_else(|| actions::credential_of(&self.cfg.lake, &tenant, &agent, alert))
            .unwrap_or_default();
        let now = chrono::Utc::now().timestamp_millis();
        let mut action = Action {
            at_ms: now,
            alert_id,
            rule: label("alertname"),
            severity: label("severity"),
            tenant,
            agent_id: agent.clone(),
            credential_id: credential.clone(),
            command: self.cfg.command.display().to_string(),
            exit_code: None,
            outcome: String::new(),
            output: String::new(),
            fingerprint: alert.fingerprint.clone(),
        };
        let mut settled = true;
        if agent.is_empty() {
            // A tenant-wide alert names no agent to cut off.
            action.outcome = "skipped: the alert names no agent".into();
            self.metrics
                .hook_actions
                .with_label_values(&["skipped"])
                .inc();
        } else {
            let run = command::run(
                &self.cfg.command,
                &self.cfg.command_args,
                &[&agent, &credential],
                &action,
                self.cfg.timeout,
            );
            // What the command printed may name the very key it revoked.
            action.output = self
                .redactor
                .redact_text(&run.output)
                .chars()
                .take(OUTPUT_CHARS)
                .collect();
            action.exit_code = run.exit_code;
            action.outcome = run.outcome.clone();
            settled = run.exit_code == Some(0);
            let label = if settled { "ran" } else { "failed" };
            self.metrics.hook_actions.with_label_values(&[label]).inc();
            tracing::info!(agent = %agent, outcome = %run.outcome, "revoke-hook ran its command");
        }
        actions::record(&self.cfg.lake, &action)?;
        Ok(settled)
    }
}

/// Serves the hook until the process is stopped.
pub async fn serve(
    cfg: HookConfig,
    metrics: Arc<Metrics>,
) -> Result<(), crate::error::ConfigError> {
    let listen = cfg.listen;
    let app = router(cfg, metrics.clone())?;
    let (listener, local) = crate::serve::bind(listen).await.map_err(|e| {
        crate::error::ConfigError::invalid("revoke-hook --listen", format!("{listen}: {e}"))
    })?;
    println!("agentaudit revoke-hook: listening on http://{local}/hook");
    crate::serve::run(listener, app, metrics).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Settled, WebhookAlert, episode};

    fn alert(alert_id: Option<&str>, starts_at: &str) -> WebhookAlert {
        WebhookAlert {
            status: "firing".into(),
            labels: Default::default(),
            annotations: alert_id
                .map(|id| [("alert_id".to_owned(), id.to_owned())].into())
                .unwrap_or_default(),
            starts_at: starts_at.into(),
            fingerprint: "fp".into(),
        }
    }

    #[test]
    fn an_episode_is_agentaudits_alert_id_else_the_fingerprint_and_start() {
        let mut settled = Settled::default();
        settled.insert(episode(&alert(Some("a1"), "2026-11-30T10:00:00Z")));
        // A repeat, whatever Alertmanager's start says.
        assert!(settled.contains(&episode(&alert(Some("a1"), "2026-11-30T11:00:00Z"))));
        // The next window's alert of the same rule and keys: a new episode.
        assert!(!settled.contains(&episode(&alert(Some("a2"), "2026-11-30T10:00:00Z"))));
        // Not agentaudit's: the fingerprint and its start.
        settled.insert(episode(&alert(None, "2026-11-30T10:00:00Z")));
        assert!(settled.contains(&episode(&alert(None, "2026-11-30T10:00:00Z"))));
        assert!(!settled.contains(&episode(&alert(None, "2026-11-30T12:00:00Z"))));
    }
}
