//! The kill switch end to end: Alertmanager (Debian's package, on loopback)
//! routes agentaudit's alerts to `agentaudit revoke-hook` with a shared
//! secret; the hook runs the configured command once per firing alert with
//! the agent and the credential its calls used, never for a resolved one
//! nor again when Alertmanager repeats it, and every action is a row of
//! the `actions` table.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemons::{free_port, start_alertmanager, wait_for};
use common::{Serve, http_get, metric_sum, query};

const SECRET: &str = "kill-switch-shared-secret-0123456789";
/// What the revoking command prints: the key it revoked, which must never
/// reach the audit row.
const PRINTED_KEY: &str = "sk_live_51HxQyZ2eZvKYlo2C0FFEE0123456789";

fn post(addr: &str, path: &str, auth: Option<&str>, body: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    let auth = auth.map_or(String::new(), |a| format!("Authorization: Bearer {a}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn am_alert(agent: Option<&str>, tenant: &str, ids: &str, ends: Option<&str>) -> serde_json::Value {
    let mut labels = serde_json::json!({
        "alertname": "tool_frequency_spike",
        "severity": "critical",
        "source": "agentaudit",
        "tenant": tenant,
    });
    if let Some(a) = agent {
        labels["agent"] = a.into();
    }
    let mut alert = serde_json::json!({
        "labels": labels,
        "annotations": {"alert_id": format!("alert-{}", agent.unwrap_or("tenant")), "sample_event_ids": ids},
        "startsAt": "2026-11-30T00:00:00Z",
    });
    if let Some(e) = ends {
        alert["endsAt"] = e.into();
    }
    alert
}

#[test]
fn alertmanager_drives_the_kill_switch_once_per_firing_alert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("data");
    let data_s = data.to_str().unwrap();

    // A dataset with agents, their credentials and calls: demo traffic.
    let mut serve = Serve::start(&["--demo", "--demo-rate", "2000", "--data-dir", data_s]);
    serve.wait_until("demo traffic", Duration::from_secs(60), |s| {
        s.metric("agentaudit_events_consumed_total") >= 2000.0
    });
    assert!(serve.terminate().success());
    // Two agents of one tenant, each with a call and its credential.
    let calls = query(
        &data,
        "SELECT tenant, agent_id, credential_id, event_id FROM invocations \
         WHERE credential_id IS NOT NULL AND tenant = 'acme' ORDER BY ts DESC LIMIT 200",
        &[],
    );
    let mut picked: Vec<&serde_json::Value> = Vec::new();
    for c in &calls {
        if picked.iter().all(|p| p["agent_id"] != c["agent_id"]) {
            picked.push(c);
        }
    }
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_owned();
    let tenant = text(picked[0], "tenant");
    let (agent, credential, ids) = (
        text(picked[0], "agent_id"),
        text(picked[0], "credential_id"),
        text(picked[0], "event_id"),
    );
    // The second agent's revocation fails once (the identity provider is
    // down): Alertmanager's repeat tries it again.
    let (flaky, flaky_credential, flaky_ids) = (
        text(picked[1], "agent_id"),
        text(picked[1], "credential_id"),
        text(picked[1], "event_id"),
    );

    // The revoking command: records its arguments, prints a key.
    let log = root.join("revocations.log");
    let failed_once = root.join("failed-once");
    let script = root.join("revoke.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 $2 $AGENTAUDIT_TENANT $AGENTAUDIT_RULE\" >> {log}\n\
             if [ \"$1\" = \"{flaky}\" ] && [ ! -e {mark} ]; then touch {mark}; echo 'identity provider unavailable' >&2; exit 3; fi\n\
             echo \"revoked {PRINTED_KEY} for $1\"\n",
            log = log.display(),
            mark = failed_once.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let start_hook = || {
        let addr = format!("127.0.0.1:{}", free_port());
        let hook = Command::new(env!("CARGO_BIN_EXE_agentaudit"))
            .args(["revoke-hook", "--listen", &addr, "--data-dir", data_s])
            .arg("--command")
            .arg(&script)
            .env("AGENTAUDIT_HOOK_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("revoke-hook");
        wait_for("the hook", Duration::from_secs(30), || {
            http_get(&addr, "/healthz").is_some_and(|(c, _)| c == 200)
        });
        (hook, addr)
    };
    let (mut hook, hook_addr) = start_hook();
    let hook_guard = scopeguard(&mut hook);
    // Without the secret, or with another, nothing runs.
    assert_eq!(post(&hook_addr, "/hook", None, "{\"alerts\":[]}"), 401);
    assert_eq!(
        post(
            &hook_addr,
            "/hook",
            Some("wrong-secret-wrong-secret-00"),
            "{\"alerts\":[]}"
        ),
        401
    );

    // Alertmanager with the shipped route and receiver (to the hook, with
    // the secret), repeating fast.
    let secret_file = root.join("hook-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/alertmanager/kill-switch.yml"
    ))
    .unwrap();
    let config = shipped
        .replace(
            "http://127.0.0.1:9466/hook",
            &format!("http://{hook_addr}/hook"),
        )
        .replace("/etc/agentaudit/hook-secret", secret_file.to_str().unwrap())
        .replace("group_wait: 10s", "group_wait: 1s")
        .replace("group_interval: 1m", "group_interval: 1s")
        .replace("repeat_interval: 4h", "repeat_interval: 2s");
    assert_ne!(config, shipped);
    let (_am, am_addr) = start_alertmanager(root, &config);
    let firing = serde_json::json!([
        am_alert(Some(&agent), &tenant, &ids, None),
        am_alert(Some(&flaky), &tenant, &flaky_ids, None),
        am_alert(None, &tenant, "", None),
    ]);
    assert_eq!(
        post(&am_addr, "/api/v2/alerts", None, &firing.to_string()),
        200
    );

    let metric_of = |addr: &str, outcome: &str| {
        http_get(addr, "/metrics")
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
    };
    let hook_metric = |outcome: &str| metric_of(&hook_addr, outcome);
    // Alertmanager repeats each firing alert every 2 s: the hook runs the
    // failed revocation again, and skips the one that succeeded.
    wait_for("both revocations done", Duration::from_secs(60), || {
        hook_metric("ran") >= 2.0
    });
    wait_for("a repeat", Duration::from_secs(60), || {
        hook_metric("repeat_skipped") >= 2.0
    });
    // Resolved: Alertmanager says so, and nothing runs.
    let resolved = serde_json::json!([
        am_alert(Some(&agent), &tenant, &ids, Some("2026-11-30T00:00:01Z")),
        am_alert(
            Some(&flaky),
            &tenant,
            &flaky_ids,
            Some("2026-11-30T00:00:01Z")
        ),
    ]);
    assert_eq!(
        post(&am_addr, "/api/v2/alerts", None, &resolved.to_string()),
        200
    );
    wait_for("the resolved notification", Duration::from_secs(60), || {
        hook_metric("resolved_ignored") >= 1.0
    });

    let lines = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = lines.lines().collect();
    lines.sort();
    let mut want = vec![
        format!("{agent} {credential} {tenant} tool_frequency_spike"),
        format!("{flaky} {flaky_credential} {tenant} tool_frequency_spike"),
        format!("{flaky} {flaky_credential} {tenant} tool_frequency_spike"),
    ];
    want.sort();
    assert_eq!(
        lines, want,
        "once per alert, with the agent and its credential; twice for the one that failed first"
    );
    assert_eq!(hook_metric("ran"), 2.0);
    assert_eq!(hook_metric("failed"), 1.0);
    assert_eq!(
        hook_metric("skipped"),
        0.0,
        "the route keeps tenant-wide alerts, which name no agent, from the hook"
    );

    // Each action is queryable, its output redacted.
    let actions = query(
        &data,
        "SELECT alert_id, rule, tenant, agent_id, credential_id, exit_code, outcome, output \
         FROM actions ORDER BY agent_id, at",
        &[],
    );
    assert_eq!(actions.len(), 3, "{actions:?}");
    let tries: Vec<(&str, &str)> = actions
        .iter()
        .filter(|a| a["agent_id"] == flaky.as_str())
        .map(|a| {
            (
                a["outcome"].as_str().unwrap(),
                a["output"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(tries.len(), 2, "{actions:?}");
    assert_eq!(tries[0].0, "failed: exit 3");
    assert!(tries[0].1.contains("identity provider unavailable"));
    assert_eq!(tries[1].0, "ran");
    let ran = actions
        .iter()
        .find(|a| a["agent_id"] == agent.as_str())
        .expect("the revocation's row");
    assert_eq!(ran["credential_id"], credential.as_str());
    assert_eq!(ran["outcome"], "ran");
    assert_eq!(ran["exit_code"], 0);
    assert_eq!(ran["alert_id"], format!("alert-{agent}"));
    let output = ran["output"].as_str().unwrap();
    assert!(output.contains("revoked"), "{output}");
    assert!(
        !output.contains(PRINTED_KEY),
        "the printed key is stored: {output}"
    );

    // A restarted hook remembers, from `actions`, the episodes it settled:
    // a repeat of the alert it revoked for runs nothing; the same rule and
    // agent alerting in a later window (another alert id) runs again.
    drop(hook_guard);
    let (mut hook, hook_addr) = start_hook();
    let _hook_guard = scopeguard(&mut hook);
    let repeat = |alert_id: &str| {
        let mut alert = am_alert(Some(&agent), &tenant, &ids, None);
        alert["status"] = "firing".into();
        alert["fingerprint"] = "0123456789abcdef".into();
        alert["annotations"]["alert_id"] = alert_id.into();
        serde_json::json!({ "alerts": [alert] }).to_string()
    };
    let first = format!("alert-{agent}");
    assert_eq!(
        post(&hook_addr, "/hook", Some(SECRET), &repeat(&first)),
        200
    );
    assert_eq!(metric_of(&hook_addr, "repeat_skipped"), 1.0);
    assert_eq!(metric_of(&hook_addr, "ran"), 0.0);
    let next = format!("alert-{agent}-next-window");
    assert_eq!(post(&hook_addr, "/hook", Some(SECRET), &repeat(&next)), 200);
    assert_eq!(metric_of(&hook_addr, "ran"), 1.0);
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        runs.lines()
            .filter(|l| l.starts_with(&format!("{agent} ")))
            .count(),
        2,
        "once for the first episode, once for the next: {runs}"
    );
}

/// Kills the hook when the test ends, passing or not.
fn scopeguard(child: &mut std::process::Child) -> impl Drop + '_ {
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Kill(child)
}
