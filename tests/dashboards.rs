//! The Grafana dashboards: every query parses as PromQL (Prometheus's own
//! `promtool`, from the rules it is handed), and names only metrics the
//! binary registers, so a renamed metric cannot leave a panel silently
//! empty.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Every PromQL expression of a dashboard: panel targets, and the metric
/// selectors inside its `label_values(…)` variables.
fn expressions(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(expr.to_owned());
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = var["query"]["query"].as_str().or(var["query"].as_str());
        if let Some(inner) = query
            .and_then(|q| q.strip_prefix("label_values("))
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _)| selector.to_owned())
        {
            out.push(inner);
        }
    }
    out
}

/// Grafana's variables as a query would run: all tenants, agents, and a
/// rate window.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$tenant", ".*")
        .replace("$agent", ".*")
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir)
        .expect("dashboards/grafana")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            let json =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_dashboard_query_parses_as_promql_and_names_real_metrics() {
    let boards = dashboards();
    let names: Vec<&str> = boards.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["agentaudit-detection.json", "agentaudit-pipeline.json"]
    );
    let metrics = agentaudit::metrics::Metrics::new();
    let registered: BTreeSet<&str> = metrics.family_names.iter().map(String::as_str).collect();
    let metric_name = regex::Regex::new(r"agentaudit_[a-z_]+").unwrap();
    let mut rules = Vec::new();
    for (board, json) in &boards {
        let exprs = expressions(json);
        assert!(exprs.len() >= 5, "{board}: {} queries", exprs.len());
        for (i, expr) in exprs.iter().enumerate() {
            rules.push(serde_json::json!({
                "record": format!("dashboard:{}:{i}", board.trim_end_matches(".json").replace('-', "_")),
                "expr": as_promql(expr),
            }));
            for m in metric_name.find_iter(expr) {
                let name = m.as_str();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| registered.contains(f)))
                    .unwrap_or(name);
                assert!(
                    registered.contains(family),
                    "{board}: `{name}` is not a metric agentaudit registers ({expr})"
                );
            }
        }
    }
    // promtool parses every expression as a recording rule's.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboards.rules.json");
    let doc = serde_json::json!({"groups": [{"name": "dashboards", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).expect("write rules");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "promtool refused a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_detection_dashboard_covers_what_a_responder_looks_for() {
    let boards = dashboards();
    let (_, detection) = boards
        .iter()
        .find(|(n, _)| n == "agentaudit-detection.json")
        .expect("the detection dashboard");
    let variables: Vec<&str> = detection["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"tenant") && variables.contains(&"agent"));
    let all = expressions(detection).join("\n");
    for needed in [
        "agentaudit_alerts_total",
        "agentaudit_alert_active",
        "agentaudit_baseline_observed_calls",
        "agentaudit_baseline_expected_calls",
        "agentaudit_baseline_keys",
        "agentaudit_baseline_evictions_total",
        "agentaudit_policy_reloads_total",
        "agentaudit_inventory_review_overdue",
    ] {
        assert!(all.contains(needed), "no panel shows {needed}");
    }
    assert!(all.contains("$tenant") && all.contains("$agent"));
}
