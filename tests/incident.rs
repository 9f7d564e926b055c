//! The responder's report: demo traffic with a planted injection spike,
//! then `agentaudit incident` on the alert it raised. The report must name
//! the planted cause (the tool, more than usual or new), carry its chart
//! inline, fetch nothing, and hold only redacted data.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{demo_with_planted_spike, query};

fn incident(args: &[&str]) -> (String, String) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let run = Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .arg("incident")
        .args(args)
        .arg("--out-dir")
        // A directory that does not exist yet: incident makes it.
        .arg(out_dir.path().join("reports/new"))
        .output()
        .expect("agentaudit incident");
    assert!(
        run.status.success(),
        "incident: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written: Vec<String> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    let md = std::fs::read_to_string(&written[0]).expect("markdown");
    let html = std::fs::read_to_string(&written[1]).expect("html");
    (md, html)
}

/// Known secret shapes the demo traffic carries in its inputs.
const SECRET_PREFIXES: [&str; 6] = ["AKIA", "ghp_", "sk_live_", "xoxb-", "-----BEGIN", "eyJ"];

#[test]
fn the_report_of_a_planted_spike_names_its_cause() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().unwrap();
    let mut serve = demo_with_planted_spike(dir, &[]);
    // Let the spike's calls and a little after them be stored too.
    std::thread::sleep(Duration::from_secs(3));
    assert!(serve.terminate().success());
    let alerts = query(
        data.path(),
        "SELECT alert_id, tenant, window_start, incident_id FROM alerts WHERE rule = 'tool_frequency_spike' AND tool = 'export_csv' ORDER BY window_start LIMIT 1",
        &[],
    );
    let id = alerts[0]["alert_id"].as_str().expect("alert id").to_owned();
    let tenant = alerts[0]["tenant"].as_str().expect("tenant").to_owned();
    let incident_id = alerts[0]["incident_id"].as_str().expect("incident id");
    // serve said so when its incident opened, with the command to run next.
    let log = serve.log_lines();
    assert!(
        log.iter().any(|l| l.contains("incident opened")
            && l.contains(&format!("agentaudit incident {incident_id}"))),
        "no log line for the alert: {:?}",
        &log[log.len().saturating_sub(20)..]
    );

    let (md, html) = incident(&[&id, "--data-dir", dir]);
    // Why it fired, with the numbers.
    assert!(md.contains("tool_frequency_spike"), "{md}");
    assert!(md.contains("observed"), "{md}");
    assert!(md.contains("expected (score"), "{md}");
    // What changed names the planted tool as new or far above usual.
    let changed = md
        .split("## What changed")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a What changed section");
    let row = changed
        .lines()
        .find(|l| l.starts_with("| export_csv |"))
        .unwrap_or_else(|| panic!("export_csv is not in What changed:\n{changed}"));
    assert!(
        row.contains("more than usual") || row.contains("new:"),
        "{row}"
    );
    // Every section shows its SQL and how to run it again.
    for title in [
        "## The alert",
        "## Timeline",
        "## Implicated workflows",
        "## Credentials and approvals",
        "## What was redacted",
    ] {
        assert!(md.contains(title), "{title} missing");
    }
    assert!(md.contains("```sql"), "the SQL is shown");
    assert!(md.contains("agentaudit query --format csv --param"));
    // The HTML page is whole: the chart inline, nothing to fetch.
    assert!(html.contains("<svg"), "the chart is inline");
    assert!(html.contains("export_csv"));
    for fetch in ["src=", "href=", "<script", "@import", "url("] {
        assert!(!html.contains(fetch), "the page would fetch: {fetch}");
    }
    // Only redacted data: the demo's secrets appear as detector names.
    for prefix in SECRET_PREFIXES {
        assert!(!md.contains(prefix), "{prefix} in the Markdown report");
        assert!(!html.contains(prefix), "{prefix} in the HTML report");
    }
    assert!(md.contains("## What was redacted"));

    // The same tenant around the alert's time, without an alert id.
    let at = alerts[0]["window_start"].as_str().expect("window start");
    let at = if at.ends_with('Z') {
        at.to_owned()
    } else {
        format!("{at}Z")
    };
    let (md, _) = incident(&["--tenant", &tenant, "--around", &at, "--data-dir", dir]);
    assert!(md.contains(&format!("tenant {tenant}")), "{md}");
    assert!(md.contains("export_csv"), "{md}");

    // An unknown alert is refused by name.
    let run = Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args(["incident", "no-such-alert", "--data-dir", dir])
        .output()
        .expect("agentaudit incident");
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("no alert `no-such-alert`"));
}

/// 300 calls earlier in the span, and 40 back-dated by two days, used to
/// push the malicious call out of the timeline (it stopped at 300 rows,
/// by the producer's `ts`, with no notice); a tool name that is a Markdown
/// image rendered as one.
#[test]
fn back_dated_floods_cannot_hide_the_alerts_own_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let topic = "incident-flood";
    let broker = agentaudit::source::embedded::EmbeddedBroker::start(topic, 1).expect("broker");
    let brokers = broker.bootstrap_servers();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[agents]]\nid = \"support-bot\"\nbusiness_owner = \"x\"\ntechnical_owner = \"y\"\n\
         environments = [\"production\"]\nreview_by = \"2099-01-01\"\n\
         [agents.tools.production]\nread = [\"search_kb\"]\n",
    )
    .unwrap();
    let mut serve = common::Serve::start(&[
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--policy",
        policy.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let now = chrono::Utc::now().timestamp_millis();
    let call = |id: String, ts: i64, tool: &str| {
        serde_json::json!({
            "event_id": id, "ts": ts, "tenant": "acme", "agent_id": "support-bot",
            "environment": "production", "tool": tool, "status": "ok", "workflow_id": "w-1",
        })
    };
    let mut events: Vec<serde_json::Value> = (0..300)
        .map(|i| {
            call(
                format!("early-{i:03}"),
                now - 20 * 60_000 + i * 100,
                "search_kb",
            )
        })
        .collect();
    events.extend((0..40).map(|i| {
        call(
            format!("backdated-{i:02}"),
            now - 2 * 86_400_000 + i,
            "search_kb",
        )
    }));
    events.push(call(
        "the-malicious-call".into(),
        now,
        "![x](https://evil.example/p.png)",
    ));
    common::produce_json(&brokers, topic, "acme", &events);
    serve.wait_until("every call stored", Duration::from_secs(60), |s| {
        s.metric("agentaudit_events_consumed_total") >= events.len() as f64
    });
    assert!(serve.terminate().success());
    let alerts = query(
        &data,
        "SELECT alert_id FROM alerts WHERE rule = 'tool_not_allowed'",
        &[],
    );
    let id = alerts[0]["alert_id"].as_str().expect("alert id").to_owned();
    let (md, html) = incident(&[&id, "--data-dir", data.to_str().unwrap()]);
    let section = |title: &str| -> String {
        md.split(&format!("## {title}"))
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_else(|| panic!("no {title} section"))
            .to_owned()
    };
    let timeline = section("Timeline");
    assert!(timeline.contains("the-malicious-call"), "{timeline}");
    assert!(
        timeline.contains("more rows**"),
        "no notice of the rows cut"
    );
    assert!(
        timeline.contains("agentaudit query --format csv"),
        "no SQL to see them"
    );
    let arrived = section("Arrived with the alert, dated elsewhere");
    assert!(arrived.contains("backdated-00"), "{arrived}");
    // The tool's name is text in both files.
    assert!(md.contains(r"\!\[x\](https&#58;//evil"), "{timeline}");
    assert!(!html.contains("<img"));
    drop(broker);
}
