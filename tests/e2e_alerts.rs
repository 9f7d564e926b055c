//! End to end with real Prometheus and Alertmanager (Debian's packages,
//! started here on loopback): generated traffic with all nine scenarios goes
//! through `serve` on the embedded broker; every scenario's alert must be in
//! the `alerts` table, the spike and the unapproved Tier A call in /metrics
//! and in Alertmanager both through Prometheus's rules and through the
//! direct push, and the benign traffic around them must raise nothing.

mod common;

use std::time::Duration;

use agentaudit::source::embedded::EmbeddedBroker;
use agentaudit::traffic::scenario::{Scenario, benign_policy_toml};
use agentaudit::traffic::{GenOptions, Generator};
use common::daemons::{am_alerts, free_port, spawn, start_alertmanager, wait_for};
use common::{Serve, http_get, produce_keyed, query};

fn has_alert(alerts: &[serde_json::Value], name: &str, tenant: &str) -> bool {
    alerts
        .iter()
        .any(|a| a["labels"]["alertname"] == name && a["labels"]["tenant"] == tenant)
}

#[test]
fn injected_scenarios_reach_metrics_the_alerts_table_and_alertmanager() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();

    // Alertmanager, with a receiver that drops notifications: the test
    // reads its API.
    let (_am, am_addr) = start_alertmanager(
        root,
        "route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n",
    );

    // The embedded broker, the benign inventory, and serve with small
    // buckets so the test's traffic spans enough of them.
    let topic = "alerts-e2e";
    // Keyed by tenant over 64 partitions: the embedded broker keeps only 5 MiB
    // of each, so no partition may hold more than ~8 000 of these events.
    let broker = EmbeddedBroker::start(topic, 64).expect("broker");
    let brokers = broker.bootstrap_servers();
    let policy = root.join("policy.toml");
    std::fs::write(&policy, benign_policy_toml()).expect("policy");
    let config = root.join("agentaudit.toml");
    std::fs::write(
        &config,
        format!(
            "[detect]\nbucket_secs = 5\nwarmup_buckets = 10\nallowed_lateness_secs = 0\nhold_buckets = 1000\n\
             policy_file = \"{}\"\nalertmanager_url = \"http://{am_addr}\"\n",
            policy.display()
        ),
    )
    .expect("config");
    let data = root.join("data");
    let serve = Serve::start(&[
        "--config",
        config.to_str().unwrap(),
        "--brokers",
        &brokers,
        "--topic",
        topic,
        "--group",
        "alerts-e2e",
        "--data-dir",
        data.to_str().unwrap(),
    ]);

    // Prometheus scraping serve and evaluating the shipped rules.
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dashboards/prometheus/agentaudit.rules.yml");
    let prom_addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        root.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am_addr}']\n\
             scrape_configs:\n  - job_name: agentaudit\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            serve.metrics_addr
        ),
    )
    .expect("prometheus config");
    let _prom = spawn(
        "prometheus",
        &[
            format!("--config.file={}", root.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", root.join("prom-data").display()),
            format!("--web.listen-address={prom_addr}"),
        ],
    );
    wait_for("Prometheus", Duration::from_secs(60), || {
        http_get(&prom_addr, "/-/ready").is_some_and(|(c, _)| c == 200)
    });

    // 40 000 events 10 ms apart over 5-s buckets; every scenario in events
    // 9 000–37 000, after the baselines' 10-bucket warm-up.
    let total = 40_000u32;
    let mut generator = Generator::new(GenOptions {
        seed: 11,
        secret_ratio: 0.0,
        start_ms: chrono::Utc::now().timestamp_millis() - 3_600_000,
        scenarios: Scenario::MIXED.to_vec(),
        scenario_start: 9_000,
        scenario_events: 28_000,
        ..GenOptions::default()
    });
    let messages: Vec<_> = (0..total).map(|_| generator.next_message()).collect();
    let truth = generator.ground_truth();
    assert_eq!(truth.len(), Scenario::MIXED.len(), "every scenario planted");
    produce_keyed(&messages, &brokers, topic);
    serve.wait_until("all events consumed", Duration::from_secs(180), |s| {
        s.metric("agentaudit_events_consumed_total") >= f64::from(total)
    });

    // /metrics: the two scenarios' alerts are active, and nothing else.
    let (_, metrics) = serve.get("/metrics").expect("metrics");
    let active: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("agentaudit_alert_active{"))
        .collect();
    assert!(
        active
            .iter()
            .any(|l| l.contains("rule=\"tool_frequency_spike\"")
                && l.contains("tool=\"export_csv\"")),
        "spike not active in /metrics: {active:#?}"
    );
    assert!(
        active
            .iter()
            .any(|l| l.contains("rule=\"tier_a_without_approval\"")
                && l.contains("tenant=\"umbrella\"")),
        "unapproved Tier A not active: {active:#?}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("agentaudit_baseline_observed_calls{"))
            && metrics
                .lines()
                .any(|l| l.starts_with("agentaudit_baseline_expected_calls{")),
        "observed vs expected of the busiest keys are exported"
    );
    assert!(
        metrics.contains("agentaudit_baseline_late_calls_total 0"),
        "keyed by tenant, every key's calls arrive in order: none is late"
    );
    let scenario_tenants: Vec<&str> = truth.iter().map(|t| t.tenant.as_str()).collect();
    for line in &active {
        assert!(
            scenario_tenants.iter().any(|t| line.contains(t)),
            "benign traffic raised an alert: {line}"
        );
    }

    // Alertmanager: through Prometheus's rules and through the direct push.
    wait_for(
        "the alerts in Alertmanager",
        Duration::from_secs(120),
        || {
            let alerts = am_alerts(&am_addr);
            has_alert(&alerts, "AgentauditToolFrequencySpike", "acme")
                && has_alert(&alerts, "tool_frequency_spike", "acme")
                && has_alert(&alerts, "AgentauditPolicyViolation", "umbrella")
                && has_alert(&alerts, "tier_a_without_approval", "umbrella")
        },
    );
    let pushed = am_alerts(&am_addr);
    let spike = pushed
        .iter()
        .find(|a| a["labels"]["alertname"] == "tool_frequency_spike")
        .expect("pushed spike");
    assert!(
        spike["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|u| u.contains("#tool_frequency_spike"))
    );

    // A clean stop flushes the alerts table with the rest.
    let mut serve = serve;
    assert!(serve.terminate().success());
    let rows = query(
        &data,
        "SELECT rule, tenant, agent_id, tool FROM alerts",
        &[],
    );
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_owned();
    let names = |r: &serde_json::Value, t: &agentaudit::traffic::scenario::GroundTruth| {
        text(r, "tenant") == t.tenant || text(r, "agent_id") == t.agent_id
    };
    for t in &truth {
        assert!(
            rows.iter()
                .any(|r| text(r, "rule") == t.rules[0] && names(r, t)),
            "{} did not raise {} in the alerts table: {rows:#?}",
            t.scenario,
            t.rules[0]
        );
    }
    for r in &rows {
        let planted = truth
            .iter()
            .any(|t| t.rules.contains(&text(r, "rule").as_str()) && names(r, t));
        assert!(planted, "an alert matches no planted scenario: {r}");
    }
}
