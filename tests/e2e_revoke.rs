//! The kill switch end to end: Alertmanager (Debian's package, on loopback)
//! routes agentaudit's alerts to `agentaudit revoke-hook` with a shared
//! secret. The hook runs the configured command once per firing alert, with
//! `-- AGENT CREDENTIAL…` taken from the operator's inventory, never from
//! what the events said; forged, look-alike and sanitised agents are
//! declined with the reason; every action is a row of the `actions` table;
//! and nobody without the secret, nor a flood of alerts, can keep a real
//! revocation from running.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentaudit::source::embedded::EmbeddedBroker;
use common::daemons::{am_alerts, free_port, start_alertmanager, wait_for};
use common::{Serve, http_get, metric_sum, query};

const SECRET: &str = "kill-switch-shared-secret-0123456789";
/// What the revoking command prints: the key it revoked, which must never
/// reach the audit row.
const PRINTED_KEY: &str = "sk_live_51HxQyZ2eZvKYlo2C0FFEE0123456789";

/// The operator's inventory: the only source of what may be revoked.
const INVENTORY: &str = "\
[[agents]]
id = \"support-bot\"
business_owner = \"Support\"
technical_owner = \"support@example.com\"
environments = [\"production\"]
review_by = \"2099-01-01\"
credentials = [\"cred-support-prod\"]
[agents.tools.production]
read = [\"search_kb\"]

[[agents]]
id = \"ops-bot\"
business_owner = \"SRE\"
technical_owner = \"sre@example.com\"
environments = [\"production\"]
review_by = \"2099-01-01\"
credentials = [\"cred-ops-prod\"]
[agents.tools.production]
read = [\"get_metrics\"]

[[agents]]
id = \"report_bot\"
business_owner = \"Finance\"
technical_owner = \"fin@example.com\"
environments = [\"production\"]
review_by = \"2099-01-01\"
credentials = [\"cred-report\"]
[agents.tools.production]
read = [\"search_kb\"]

[[tools]]
name = \"search_kb\"
class = \"read\"

[[tools]]
name = \"get_metrics\"
class = \"read\"
";

/// Sends one request; the status, or 0 when the connection ended first.
fn post(addr: &str, path: &str, auth: Option<&str>, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: Bearer {a}\r\n"));
    let _ = write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// An alert as agentaudit sends it: the display label, and the exact agent
/// id in its own annotation.
fn am_alert(exact: Option<&str>, alert_id: &str, ends: Option<&str>) -> serde_json::Value {
    let mut labels = serde_json::json!({
        "alertname": "tool_frequency_spike",
        "severity": "critical",
        "source": "agentaudit",
        "tenant": "acme",
    });
    let mut annotations = serde_json::json!({ "alert_id": alert_id });
    if let Some(a) = exact {
        labels["agent"] = agentaudit::detect::labels::sanitise(a).into();
        annotations["agent_id"] = a.into();
    }
    let mut alert = serde_json::json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": "2026-11-30T00:00:00Z",
    });
    if let Some(e) = ends {
        alert["endsAt"] = e.into();
    }
    alert
}

fn webhook(alerts: Vec<serde_json::Value>) -> String {
    let alerts: Vec<serde_json::Value> = alerts
        .into_iter()
        .map(|mut a| {
            a["status"] = "firing".into();
            a
        })
        .collect();
    serde_json::json!({ "alerts": alerts }).to_string()
}

/// A revoking command: logs its arguments (one line a run), sleeps for
/// agents listed in `slow`, fails for `ops-bot` the first time, prints a key.
fn script(root: &Path, slow_secs: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = root.join("revocations.log");
    let script = root.join("revoke.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$* | $AGENTAUDIT_TENANT $AGENTAUDIT_RULE | secret=$AGENTAUDIT_HOOK_SECRET\" >> {log}\n\
             if [ \"$2\" = slow-bot ]; then sleep {slow_secs}; fi\n\
             if [ \"$2\" = ops-bot ] && [ ! -e {mark} ]; then touch {mark}; echo 'identity provider unavailable' >&2; exit 3; fi\n\
             echo \"revoked {PRINTED_KEY} for $2\"\n",
            log = log.display(),
            mark = root.join("failed-once").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// `revoke-hook` on a free port, answering; killed on drop.
struct Hook {
    child: Child,
    addr: String,
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hook {
    fn start(root: &Path, data: &Path, inventory: &str, script: &Path) -> Hook {
        let addr = format!("127.0.0.1:{}", free_port());
        let policy = root.join("hook-inventory.toml");
        std::fs::write(&policy, inventory).unwrap();
        let secret_file = root.join("hook-secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_agentaudit"))
            .args(["revoke-hook", "--listen", &addr, "--timeout-secs", "20"])
            .arg("--data-dir")
            .arg(data)
            .arg("--policy")
            .arg(&policy)
            .arg("--secret-file")
            .arg(&secret_file)
            .arg("--command")
            .arg(script)
            // In the hook's environment, never in the command's.
            .env("AGENTAUDIT_HOOK_SECRET", "not-this-one-0123456789")
            .env("AGENTAUDIT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("revoke-hook");
        wait_for("the hook", Duration::from_secs(30), || {
            http_get(&addr, "/healthz").is_some_and(|(c, _)| c == 200)
        });
        Hook { child, addr }
    }

    fn metric(&self, outcome: &str) -> f64 {
        http_get(&self.addr, "/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| {
                        l.starts_with("agentaudit_hook_actions_total{")
                            && l.contains(&format!("outcome=\"{outcome}\""))
                    })
                    .map(|l| metric_sum(l, "agentaudit_hook_actions_total"))
                    .sum::<f64>()
            })
            .unwrap_or(0.0)
    }
}

fn runs(log: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn alertmanager_drives_the_kill_switch_once_per_firing_alert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("data");
    let (script, log) = script(root, 0);
    let hook = Hook::start(root, &data, INVENTORY, &script);
    // Without the secret, or with another, nothing runs.
    assert_eq!(post(&hook.addr, "/hook", None, "{\"alerts\":[]}"), 401);
    assert_eq!(
        post(
            &hook.addr,
            "/hook",
            Some("wrong-secret-wrong-secret-00"),
            "{}"
        ),
        401
    );

    // Alertmanager with the shipped route and receiver, repeating fast.
    let secret_file = root.join("hook-secret");
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/alertmanager/kill-switch.yml"
    ))
    .unwrap();
    let config = shipped
        .replace(
            "http://127.0.0.1:9466/hook",
            &format!("http://{}/hook", hook.addr),
        )
        .replace("/etc/agentaudit/hook-secret", secret_file.to_str().unwrap())
        .replace("group_wait: 10s", "group_wait: 1s")
        .replace("group_interval: 1m", "group_interval: 1s")
        .replace("repeat_interval: 4h", "repeat_interval: 2s");
    assert_ne!(config, shipped);
    let (_am, am_addr) = start_alertmanager(root, &config);
    let firing = serde_json::json!([
        am_alert(Some("support-bot"), "alert-support", None),
        am_alert(Some("ops-bot"), "alert-ops", None),
        am_alert(None, "alert-tenant", None),
    ]);
    assert_eq!(
        post(&am_addr, "/api/v2/alerts", None, &firing.to_string()),
        200
    );
    // Alertmanager repeats each firing alert every 2 s: each ran once, the
    // one that failed included (a revocation is never run twice: a `started`
    // row settles it, and a failure pages a human through the metric).
    wait_for("both revocations done", Duration::from_secs(60), || {
        hook.metric("ran") + hook.metric("failed") >= 2.0
    });
    wait_for("repeats", Duration::from_secs(60), || {
        hook.metric("repeat_skipped") >= 4.0
    });
    let resolved = serde_json::json!([
        am_alert(
            Some("support-bot"),
            "alert-support",
            Some("2026-11-30T00:00:01Z")
        ),
        am_alert(Some("ops-bot"), "alert-ops", Some("2026-11-30T00:00:01Z")),
    ]);
    assert_eq!(
        post(&am_addr, "/api/v2/alerts", None, &resolved.to_string()),
        200
    );
    wait_for("the resolved notification", Duration::from_secs(60), || {
        hook.metric("resolved_ignored") >= 1.0
    });
    assert_eq!(
        runs(&log),
        [
            "-- ops-bot cred-ops-prod | acme tool_frequency_spike | secret=",
            "-- support-bot cred-support-prod | acme tool_frequency_spike | secret=",
        ],
        "once per alert, the inventory's credential after `--`, no secret in the environment"
    );
    assert_eq!(hook.metric("ran"), 1.0);
    assert_eq!(hook.metric("failed"), 1.0);
    assert_eq!(
        hook.metric("declined"),
        0.0,
        "the route keeps tenant-wide alerts, which name no agent, from the hook"
    );

    // Each action is queryable: started, then its end; the output redacted.
    let actions = query(
        &data,
        "SELECT alert_id, agent_id, credential_id, exit_code, outcome, output \
         FROM actions ORDER BY agent_id, at, outcome DESC",
        &[],
    );
    let outcomes: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("ops-bot", "started"),
            ("ops-bot", "failed: exit 3"),
            ("support-bot", "started"),
            ("support-bot", "ran"),
        ],
        "{actions:?}"
    );
    let ran = &actions[3];
    assert_eq!(ran["credential_id"], "cred-support-prod");
    assert_eq!(ran["alert_id"], "alert-support");
    let output = ran["output"].as_str().unwrap();
    assert!(output.contains("revoked"), "{output}");
    assert!(
        !output.contains(PRINTED_KEY),
        "the printed key is stored: {output}"
    );

    // A restarted hook remembers, from `actions`, every alert it started: a
    // repeat runs nothing; the same agent alerting in a later window (another
    // alert id) runs again.
    drop(hook);
    let hook = Hook::start(root, &data, INVENTORY, &script);
    let repeat = webhook(vec![am_alert(Some("support-bot"), "alert-support", None)]);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &repeat), 200);
    assert_eq!(hook.metric("repeat_skipped"), 1.0);
    let next = webhook(vec![am_alert(
        Some("support-bot"),
        "alert-support-next",
        None,
    )]);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &next), 200);
    wait_for("the next episode's run", Duration::from_secs(30), || {
        hook.metric("ran") >= 1.0
    });
    let support = runs(&log)
        .iter()
        .filter(|l| l.starts_with("-- support-bot "))
        .count();
    assert_eq!(support, 2, "once for the first episode, once for the next");

    // An agent added to the inventory is revocable after SIGHUP, without a
    // restart; a broken file on SIGHUP leaves the inventory in force.
    let newcomer = webhook(vec![am_alert(Some("new-bot"), "alert-new-1", None)]);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &newcomer), 200);
    assert_eq!(hook.metric("declined"), 1.0, "not in the inventory yet");
    let inventory = root.join("hook-inventory.toml");
    let sighup = || {
        let sent = Command::new("kill")
            .args(["-HUP", &hook.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(sent.success());
    };
    std::fs::write(&inventory, "[[agents]]\nid = \"broken").unwrap();
    sighup();
    let metric = |name: &str| {
        http_get(&hook.addr, "/metrics").map_or(0.0, |(_, body)| metric_sum(&body, name))
    };
    wait_for("the refused reload", Duration::from_secs(30), || {
        metric("agentaudit_policy_reload_failures_total") >= 1.0
    });
    let again = webhook(vec![am_alert(
        Some("support-bot"),
        "alert-support-third",
        None,
    )]);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &again), 200);
    wait_for(
        "the old inventory still in force",
        Duration::from_secs(30),
        || hook.metric("ran") >= 2.0,
    );
    std::fs::write(
        &inventory,
        format!(
            "{INVENTORY}\n[[agents]]\nid = \"new-bot\"\nbusiness_owner = \"x\"\ntechnical_owner = \"y\"\n\
             environments = [\"production\"]\nreview_by = \"2099-01-01\"\ncredentials = [\"cred-new\"]\n"
        ),
    )
    .unwrap();
    sighup();
    wait_for("the reload", Duration::from_secs(30), || {
        metric("agentaudit_policy_reloads_total") >= 1.0
    });
    let newcomer = webhook(vec![am_alert(Some("new-bot"), "alert-new-2", None)]);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &newcomer), 200);
    wait_for("the newcomer's run", Duration::from_secs(30), || {
        runs(&log)
            .iter()
            .any(|l| l.starts_with("-- new-bot cred-new "))
    });
}

/// The review's forgeries, through the whole path: events on the topic,
/// `serve` with the inventory, Alertmanager, the hook.
#[test]
fn forged_events_cannot_aim_the_kill_switch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("data");
    let (script, log) = script(root, 0);
    let hook = Hook::start(root, &data, INVENTORY, &script);
    let route = format!(
        "route:\n  receiver: default\n  routes:\n    - receiver: kill\n      matchers: ['severity = \"critical\"', 'agent =~ \".+\"']\n      group_by: ['alertname', 'tenant', 'agent']\n      group_wait: 1s\n      group_interval: 1s\n      repeat_interval: 1h\n\
         receivers:\n  - name: default\n  - name: kill\n    webhook_configs:\n      - url: http://{}/hook\n        http_config:\n          authorization:\n            type: Bearer\n            credentials_file: {}\n",
        hook.addr,
        root.join("hook-secret").display()
    );
    let (_am, am_addr) = start_alertmanager(root, &route);

    let topic = "revoke-e2e";
    let broker = EmbeddedBroker::start(topic, 1).expect("broker");
    let brokers = broker.bootstrap_servers();
    let policy = root.join("policy.toml");
    std::fs::write(&policy, INVENTORY).unwrap();
    let config = root.join("agentaudit.toml");
    std::fs::write(
        &config,
        format!(
            "[detect]\npolicy_file = \"{}\"\nalertmanager_url = \"http://{am_addr}\"\n",
            policy.display()
        ),
    )
    .unwrap();
    let mut serve = Serve::start(&[
        "--config",
        config.to_str().unwrap(),
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let now = chrono::Utc::now().timestamp_millis();
    let event = |n: u32, agent: &str, tool: &str, credential: &str| {
        serde_json::json!({
            "event_id": format!("forged-{n}"), "ts": now - 1000 + i64::from(n),
            "tenant": "acme", "agent_id": agent, "environment": "production",
            "tool": tool, "status": "ok", "credential_id": credential,
        })
    };
    common::produce_json(
        &brokers,
        topic,
        "acme",
        &[
            // support-bot's name with ops-bot's credential and a tool
            // outside its allowlist: tool_not_allowed and credential_misuse.
            event(1, "support-bot", "delete_everything", "cred-ops-prod"),
            // Sanitised to the registered report_bot's label.
            event(2, "report bot", "search_kb", "cred-report"),
            // An option, and a look-alike (Cyrillic о).
            event(3, "--all", "search_kb", "cred-report"),
            event(4, "support-b\u{043e}t", "search_kb", "cred-support-prod"),
        ],
    );
    wait_for(
        "the hook to act on every alert",
        Duration::from_secs(90),
        || hook.metric("ran") >= 2.0 && hook.metric("declined") >= 3.0,
    );
    // Alertmanager holds the exact id beside the display label.
    let alerts = am_alerts(&am_addr);
    let report = alerts
        .iter()
        .find(|a| a["annotations"]["agent_id"] == "report bot")
        .unwrap_or_else(|| panic!("no alert with the exact id: {alerts:?}"));
    assert_eq!(report["labels"]["agent"], "report_bot");
    assert!(serve.terminate().success());

    let ran = runs(&log);
    assert!(
        ran.iter().any(|l| l.contains("| acme tool_not_allowed |"))
            && ran.iter().any(|l| l.contains("| acme credential_misuse |")),
        "{ran:?}"
    );
    for line in &ran {
        assert!(
            line.starts_with("-- support-bot cred-support-prod | "),
            "only support-bot, with its own credential: {ran:?}"
        );
    }
    let declined = query(
        &data,
        "SELECT agent_id, outcome FROM actions WHERE outcome LIKE 'declined%' ORDER BY agent_id",
        &[],
    );
    let mut who: Vec<&str> = declined
        .iter()
        .map(|d| d["agent_id"].as_str().unwrap())
        .collect();
    who.dedup();
    assert_eq!(
        who,
        ["--all", "report bot", "support-b\u{043e}t"],
        "{declined:?}"
    );
    for d in &declined {
        assert!(
            d["outcome"]
                .as_str()
                .unwrap()
                .contains("not in the inventory"),
            "{d}"
        );
    }
    let lookalike = query(
        &data,
        "SELECT agent_id FROM alerts WHERE rule = 'lookalike_identifier'",
        &[],
    );
    assert_eq!(lookalike.len(), 1, "{lookalike:?}");
    drop(broker);
}

/// What a hostile network and a flood of alerts used to do: hold every
/// connection slot without the secret, delay a real revocation behind
/// invented agents, run a slow command twice, run with no audit row.
#[test]
fn the_hook_holds_under_floods_slow_commands_and_a_failing_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("data");
    let (script, log) = script(root, 3);
    let inventory = format!(
        "{INVENTORY}\n[[agents]]\nid = \"slow-bot\"\nbusiness_owner = \"x\"\ntechnical_owner = \"y\"\n\
         environments = [\"production\"]\nreview_by = \"2099-01-01\"\ncredentials = [\"cred-slow\"]\n"
    );
    let mut hook = Hook::start(root, &data, &inventory, &script);

    // 64 connections that send headers without the secret and half a body:
    // each is answered at once and closed, and the real delivery goes in.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(&hook.addr).expect("connect");
        let _ = write!(
            s,
            "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{{\"alerts\":["
        );
        held.push(s);
    }
    let start = Instant::now();
    let real = webhook(vec![am_alert(Some("support-bot"), "alert-real", None)]);
    let mut code = post(&hook.addr, "/hook", Some(SECRET), &real);
    while code != 200 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        code = post(&hook.addr, "/hook", Some(SECRET), &real);
    }
    assert_eq!(code, 200, "the real delivery was locked out");
    drop(held);

    // With the secret, a body that stops half-way is cut off at the body
    // deadline (408), not held for the connection's lifetime.
    let mut slow = TcpStream::connect(&hook.addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = write!(
        slow,
        "POST /hook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nContent-Length: 100\r\n\r\n{{\"alerts\":["
    );
    let mut reply = String::new();
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");

    // 1,000 alerts for invented agents, then a registered one: declined in
    // one row set, and the registered one runs.
    let flood: Vec<serde_json::Value> = (0..1000)
        .map(|i| am_alert(Some(&format!("invented-{i}")), &format!("flood-{i}"), None))
        .collect();
    assert_eq!(
        post(&hook.addr, "/hook", Some(SECRET), &webhook(flood)),
        200
    );
    let ops = webhook(vec![am_alert(Some("report_bot"), "alert-report", None)]);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &ops), 200);
    wait_for(
        "the registered agent's run",
        Duration::from_secs(30),
        || runs(&log).iter().any(|l| l.starts_with("-- report_bot ")),
    );
    assert_eq!(hook.metric("declined"), 1000.0);

    // A command slower than the request: the delivery is answered, the
    // command runs once, whatever repeats or connections come and go — and
    // a restart in the middle does not run it again.
    let slow = webhook(vec![am_alert(Some("slow-bot"), "alert-slow", None)]);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &slow), 200);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &slow), 200);
    wait_for("the slow run to start", Duration::from_secs(30), || {
        runs(&log).iter().any(|l| l.starts_with("-- slow-bot "))
    });
    let _ = hook.child.kill();
    let _ = hook.child.wait();
    let hook = Hook::start(root, &data, &inventory, &script);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &slow), 200);
    assert_eq!(hook.metric("repeat_skipped"), 1.0);
    std::thread::sleep(Duration::from_secs(4));
    let slow_runs = runs(&log)
        .iter()
        .filter(|l| l.starts_with("-- slow-bot "))
        .count();
    assert_eq!(slow_runs, 1, "{:?}", runs(&log));

    // The table cannot be written: no row, so no run; the retry after the
    // table is back runs once.
    drop(hook);
    let broken = root.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("actions"), "not a directory").unwrap();
    let hook = Hook::start(root, &broken, &inventory, &script);
    let again = webhook(vec![am_alert(Some("ops-bot"), "alert-unrecorded", None)]);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &again), 500);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &again), 500);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !runs(&log).iter().any(|l| l.starts_with("-- ops-bot ")),
        "ran with no audit row: {:?}",
        runs(&log)
    );
    std::fs::remove_file(broken.join("actions")).unwrap();
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &again), 200);
    assert_eq!(post(&hook.addr, "/hook", Some(SECRET), &again), 200);
    wait_for("the recorded run", Duration::from_secs(30), || {
        hook.metric("failed") + hook.metric("ran") >= 1.0
    });
    let ops_runs = runs(&log)
        .iter()
        .filter(|l| l.starts_with("-- ops-bot "))
        .count();
    assert_eq!(ops_runs, 1);
}

/// The secret on the command line shows in `ps`: the flag still works, and
/// says it is deprecated; a missing secret is refused with what to give.
#[test]
fn the_secret_flag_is_deprecated_and_a_missing_secret_refused() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_agentaudit"))
            .args([
                "revoke-hook",
                "--policy",
                "/nonexistent",
                "--command",
                "/nonexistent",
            ])
            .args(args)
            .env_remove("AGENTAUDIT_HOOK_SECRET")
            .output()
            .expect("revoke-hook")
    };
    let flag = run(&["--secret", SECRET]);
    assert!(!flag.status.success());
    let stderr = String::from_utf8_lossy(&flag.stderr);
    assert!(stderr.contains("--secret is deprecated"), "{stderr}");
    let none = run(&[]);
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(stderr.contains("--secret-file"), "{stderr}");
}
