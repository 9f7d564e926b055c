//! Hook owns the kill switch's receiver (`agentaudit revoke-hook`): an HTTP
//! endpoint for Alertmanager's webhook that runs one configured command per
//! firing alert — revoke the agent's credentials with your identity
//! provider's CLI, say — and records every action in the dataset's
//! `actions` table.
//!
//! The alerts it acts on come from events a compromised agent may have
//! forged, so what it revokes comes from the operator's inventory alone:
//! an agent the inventory lists, by the exact id the alert carries in its
//! `agent_id` annotation, with the credentials the inventory dedicates to
//! it (`decide.rs`); anything else is declined with the reason. It trusts
//! no request either: the shared secret is checked before the body is read,
//! the body must arrive within a deadline, and alert counts are bounded.
//! Each alert runs at most once, across retries, restarts and commands
//! slower than the connection: a `started` row is written before the run
//! (no row, no run) and settles the alert.

mod actions;
mod command;
mod decide;
mod queue;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::detect::policy::Policy;
use crate::lake::Lake;
use crate::metrics::Metrics;
use crate::redact::Redactor;
pub use actions::{ACTIONS, Action, schema as actions_schema};
pub use command::ENV_ALLOWLIST;
use decide::Decision;

/// Largest webhook body taken; Alertmanager's groups are far smaller.
const MAX_BODY: usize = 1 << 20;
/// The whole body must arrive within this time of the headers.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// The program run per revocation, with `-- AGENT CREDENTIAL…` appended.
    pub command: PathBuf,
    /// Arguments given before `--`.
    pub command_args: Vec<String>,
    /// Variables of the hook's environment passed to the command, beyond
    /// `ENV_ALLOWLIST`; every other one is cleared.
    pub pass_env: Vec<String>,
    pub secret: String,
    pub timeout: Duration,
    /// Where `actions` is written.
    pub lake: Lake,
    /// The inventory at start: the only source of what is revoked.
    pub policy: Arc<Policy>,
    /// Where it was read from: SIGHUP reads it again.
    pub policy_file: Option<PathBuf>,
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
    /// Episodes settled (started or declined), those of agentaudit's alerts
    /// read back from the `actions` table at start so that a restart does
    /// not act twice.
    settled: Mutex<Settled>,
    queues: queue::Queues,
    /// The inventory in force; SIGHUP replaces it whole, or not at all,
    /// as `serve` does its policy.
    policy: crate::detect::SharedPolicy,
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

/// The alerts settled, bounded: the least recently settled is forgotten
/// first.
#[derive(Default)]
struct Settled {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

impl Settled {
    /// True when `key` was not settled and now is.
    fn claim(&mut self, key: &str) -> bool {
        if !self.keys.insert(key.to_owned()) {
            return false;
        }
        self.order.push_back(key.to_owned());
        while self.order.len() > MAX_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }

    /// Gives a claim back: its row could not be written.
    fn release(&mut self, key: &str) {
        self.keys.remove(key);
        if let Some(i) = self.order.iter().rposition(|k| k == key) {
            self.order.remove(i);
        }
    }

    #[cfg(test)]
    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// What names one episode of an alert: agentaudit's `alert_id` annotation
/// (rule, keys and window), which the `actions` table keeps, so a restarted
/// hook knows it; else Alertmanager's fingerprint and start, known only to
/// this process (such an alert is declined anyway).
fn episode(alert: &WebhookAlert) -> String {
    match alert.annotations.get("alert_id") {
        Some(id) if !id.is_empty() => id.clone(),
        _ => format!("{}@{}", alert.fingerprint, alert.starts_at),
    }
}

pub fn router(cfg: HookConfig, metrics: Arc<Metrics>) -> Result<Router, crate::error::ConfigError> {
    let redactor = Redactor::new(&crate::config::RedactConfig::default())?;
    let mut settled = Settled::default();
    match actions::past(&cfg.lake, MAX_REMEMBERED) {
        // Newest first: insert oldest first, so the bound keeps the newest.
        Ok(past) => {
            for id in past.settled.iter().rev() {
                settled.claim(id);
            }
            if !past.unfinished.is_empty() {
                tracing::warn!(
                    alerts = ?past.unfinished,
                    "revocations started and never finished (the hook stopped mid-run); they are \
                     not run again: check them by hand"
                );
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot read past actions; an alert acted on before this start may run its command again"
        ),
    }
    metrics.hook_queue_limit.set(queue::PER_AGENT as i64);
    let policy = crate::detect::SharedPolicy::default();
    if let Ok(mut p) = policy.write() {
        *p = Some(cfg.policy.clone());
    }
    metrics.policy_loaded.set(1);
    let state = Arc::new(HookState {
        policy,
        cfg,
        metrics,
        redactor,
        settled: Mutex::new(settled),
        queues: queue::Queues::new(),
    });
    if let Some(path) = state.cfg.policy_file.clone() {
        let state = state.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        crate::pipeline::reload_policy(&path, &state.policy, &state.metrics);
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: the inventory is read at start only")
            }
        }
    }
    Ok(Router::new()
        .route("/hook", post(hook))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_page))
        .with_state(state))
}

async fn metrics_page(State(s): State<Arc<HookState>>) -> String {
    s.metrics.render()
}

fn refuse(s: &HookState, reason: &str, code: StatusCode, why: String) -> Response {
    s.metrics.hook_refused.with_label_values(&[reason]).inc();
    // Closed after the answer: an unread body keeps no connection slot.
    (code, [(header::CONNECTION, "close")], why).into_response()
}

async fn hook(State(s): State<Arc<HookState>>, request: Request) -> Response {
    // The secret first, from the headers alone: a sender without it gets
    // no time to hold a connection slot with a half-sent body.
    if !authorised(request.headers(), &s.cfg.secret) {
        return refuse(
            &s,
            "unauthorised",
            StatusCode::UNAUTHORIZED,
            "a shared secret is required\n".into(),
        );
    }
    let read = axum::body::to_bytes(request.into_body(), MAX_BODY);
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return refuse(
                &s,
                "malformed",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("unreadable body (at most {MAX_BODY} bytes): {e}\n"),
            );
        }
        Err(_) => {
            return refuse(
                &s,
                "body_timeout",
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s\n",
                    BODY_TIMEOUT.as_secs()
                ),
            );
        }
    };
    let webhook: Webhook = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => {
            return refuse(
                &s,
                "malformed",
                StatusCode::BAD_REQUEST,
                format!("not an Alertmanager webhook: {e}\n"),
            );
        }
    };
    if webhook.alerts.len() > MAX_ALERTS {
        return refuse(
            &s,
            "too_many_alerts",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("more than {MAX_ALERTS} alerts in one request\n"),
        );
    }
    // One inventory for the whole request, read once.
    let Some(policy) = s.policy.read().ok().and_then(|p| p.clone()) else {
        return refuse(
            &s,
            "no_inventory",
            StatusCode::SERVICE_UNAVAILABLE,
            "no inventory in force\n".into(),
        );
    };
    let (mut queued, mut declined, mut full) = (0, Vec::new(), 0);
    let count = |outcome: &str| s.metrics.hook_actions.with_label_values(&[outcome]).inc();
    for alert in webhook.alerts {
        if alert.status != "firing" {
            // Resolved: the condition ended; nothing to revoke.
            count("resolved_ignored");
            continue;
        }
        let episode = episode(&alert);
        if !s.settled.lock().is_ok_and(|mut d| d.claim(&episode)) {
            count("repeat_skipped");
            continue;
        }
        let mut action = s.action(&alert);
        match decide::decide(&alert, &policy) {
            Decision::Decline(why) => {
                count("declined");
                action.outcome = format!("declined: {why}");
                declined.push((episode, action));
            }
            Decision::Revoke { agent, credentials } => {
                let Ok(permit) = s.queues.reserve(&agent) else {
                    // Not settled: Alertmanager's retry may find room.
                    s.release([&episode]);
                    count("queue_full");
                    full += 1;
                    continue;
                };
                action.agent_id = agent.clone();
                action.credential_id = credentials.join(",");
                action.outcome = "started".into();
                // No row, no run: the row is what settles the alert across
                // restarts, and a run nobody can see must not happen.
                if let Err(e) = s.write(vec![action.clone()]).await {
                    // Nothing of this request is settled without its row:
                    // the declined ones before it are not written either.
                    s.release(declined.iter().map(|(e, _)| e).chain([&episode]));
                    tracing::error!(error = %e, "recording a started revocation; not running it");
                    return refuse(
                        &s,
                        "not_recorded",
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot record the action, so it was not run: {e}\n"),
                    );
                }
                let mut targets = vec![agent];
                targets.extend(credentials);
                let state = s.clone();
                s.metrics.hook_queued.inc();
                permit.send(Box::new(move || {
                    state.run(action, &targets);
                    state.metrics.hook_queued.dec();
                }));
                queued += 1;
            }
        }
    }
    if !declined.is_empty() {
        let rows: Vec<Action> = declined.iter().map(|(_, a)| a.clone()).collect();
        if let Err(e) = s.write(rows).await {
            s.release(declined.iter().map(|(e, _)| e));
            tracing::error!(error = %e, "recording declined alerts");
            return refuse(
                &s,
                "not_recorded",
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot record the declined alerts: {e}\n"),
            );
        }
    }
    let summary = format!(
        "{queued} queued, {} declined, {full} refused (queue full)\n",
        declined.len()
    );
    if full > 0 {
        // Alertmanager retries the notification; the queued ones are
        // settled and are not run twice.
        (StatusCode::SERVICE_UNAVAILABLE, summary).into_response()
    } else {
        (StatusCode::OK, summary).into_response()
    }
}

impl HookState {
    /// Writes `rows` as one file of the `actions` table, off the runtime.
    async fn write(&self, rows: Vec<Action>) -> Result<(), String> {
        let lake = self.cfg.lake.clone();
        tokio::task::spawn_blocking(move || actions::record_all(&lake, &rows))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Gives back claims whose rows were not written: a retry acts on them.
    fn release<'a>(&self, episodes: impl IntoIterator<Item = &'a String>) {
        if let Ok(mut d) = self.settled.lock() {
            for e in episodes {
                d.release(e);
            }
        }
    }

    /// The row of an action on `alert`, before anything is decided.
    fn action(&self, alert: &WebhookAlert) -> Action {
        let label = |k: &str| alert.labels.get(k).cloned().unwrap_or_default();
        Action {
            at_ms: chrono::Utc::now().timestamp_millis(),
            alert_id: alert
                .annotations
                .get("alert_id")
                .cloned()
                .unwrap_or_default(),
            rule: label("alertname"),
            severity: label("severity"),
            tenant: label("tenant"),
            // Until decided, what the alert said, for the declined row.
            agent_id: alert
                .annotations
                .get("agent_id")
                .cloned()
                .unwrap_or_else(|| label("agent")),
            credential_id: String::new(),
            command: self.cfg.command.display().to_string(),
            exit_code: None,
            outcome: String::new(),
            output: String::new(),
            fingerprint: alert.fingerprint.clone(),
        }
    }

    /// Runs the command for a started revocation and records its end.
    fn run(&self, mut action: Action, targets: &[String]) {
        let ran = command::run(
            &command::Invocation {
                program: &self.cfg.command,
                args: &self.cfg.command_args,
                targets,
                pass_env: &self.cfg.pass_env,
                timeout: self.cfg.timeout,
            },
            &action,
        );
        // What the command printed may name the very key it revoked.
        action.output = self
            .redactor
            .redact_text(&ran.output)
            .chars()
            .take(OUTPUT_CHARS)
            .collect();
        action.exit_code = ran.exit_code;
        action.outcome = ran.outcome.clone();
        action.at_ms = chrono::Utc::now().timestamp_millis();
        let label = if ran.exit_code == Some(0) {
            "ran"
        } else {
            "failed"
        };
        self.metrics.hook_actions.with_label_values(&[label]).inc();
        tracing::info!(agent = %action.agent_id, outcome = %ran.outcome, "revoke-hook ran its command");
        if let Err(e) = actions::record(&self.cfg.lake, &action) {
            // The started row stands: the alert stays settled, and the
            // missing end shows as unfinished at the next start.
            tracing::error!(error = %e, alert_id = %action.alert_id, "recording the end of a revocation");
        }
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
        assert!(settled.claim(&episode(&alert(Some("a1"), "2026-11-30T10:00:00Z"))));
        // A repeat, whatever Alertmanager's start says.
        assert!(settled.contains(&episode(&alert(Some("a1"), "2026-11-30T11:00:00Z"))));
        // The next window's alert of the same rule and keys: a new episode.
        assert!(!settled.contains(&episode(&alert(Some("a2"), "2026-11-30T10:00:00Z"))));
        // Not agentaudit's: the fingerprint and its start.
        assert!(settled.claim(&episode(&alert(None, "2026-11-30T10:00:00Z"))));
        assert!(settled.contains(&episode(&alert(None, "2026-11-30T10:00:00Z"))));
        assert!(!settled.contains(&episode(&alert(None, "2026-11-30T12:00:00Z"))));
    }
}
