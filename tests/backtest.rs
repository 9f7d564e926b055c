//! `gen` with every scenario → `backtest` through the real command line:
//! every planted scenario is detected, nothing else alerts, a spike is caught
//! within 2 buckets of its start, and two replays of the same JSONL write
//! byte-identical scores and alerts.

use std::path::Path;
use std::process::Command;

use agentaudit::detect::backtest::{evaluate, read_truth};
use agentaudit::traffic::scenario::Scenario;

fn agentaudit(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agentaudit"))
        .args(args)
        .env("AGENTAUDIT_LOG", "warn")
        .output()
        .expect("run agentaudit");
    assert!(
        out.status.success(),
        "agentaudit {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn backtest_finds_every_scenario_and_replays_identically() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    // 60 000 events 10 ms apart over 5-s buckets: 120 buckets, scenarios in
    // events 30 000–55 000 after a 30-bucket warm-up.
    std::fs::write(
        p("detect.toml"),
        "[detect]\nbucket_secs = 5\nwarmup_buckets = 30\nnew_tool_warmup_buckets = 30\n",
    )
    .unwrap();
    let events = p("events.jsonl");
    let mut args = vec![
        "gen",
        "--jsonl",
        &events,
        "--events",
        "60000",
        "--secret-ratio",
        "0",
        // Mid-day: the daily rhythm is near its peak, and the run repeats.
        "--start",
        "2026-11-20T13:50:00Z",
        "--scenario-start",
        "30000",
        "--scenario-events",
        "25000",
    ];
    for s in Scenario::MIXED {
        args.extend(["--scenario", s.name()]);
    }
    let truth = p("truth.jsonl");
    let policy = p("policy.toml");
    args.extend(["--truth-out", &truth, "--policy-out", &policy]);
    agentaudit(&args);

    let run = |out: &str| {
        agentaudit(&[
            "backtest",
            "--jsonl",
            &p("events.jsonl"),
            "--config",
            &p("detect.toml"),
            "--policy",
            &policy,
            "--out",
            out,
        ])
    };
    let first = p("bt1");
    let second = p("bt2");
    run(&first);
    run(&second);
    for file in [
        "scores.csv",
        "alerts.csv",
        "scores.parquet",
        "alerts.parquet",
    ] {
        let (a, b) = (Path::new(&first).join(file), Path::new(&second).join(file));
        assert!(read(&a) == read(&b), "{file} differs between two replays");
    }

    // Evaluate the alerts against the ground truth.
    let csv = String::from_utf8(read(&Path::new(&first).join("alerts.csv"))).unwrap();
    let truth = read_truth(Path::new(&truth)).expect("truth");
    assert_eq!(
        truth.len(),
        Scenario::MIXED.len(),
        "every scenario was planted"
    );
    let alerts = agentaudit::detect::backtest::run(
        &{
            let mut cfg = agentaudit::config::Config::from_toml(
                &std::fs::read_to_string(p("detect.toml")).unwrap(),
            )
            .unwrap();
            cfg.detect.policy_file = Some(policy.clone().into());
            cfg
        },
        &agentaudit::detect::backtest::Input::Jsonl(p("events.jsonl").into()),
        Path::new(&p("lib-out")),
    )
    .expect("backtest")
    .alerts;
    assert_eq!(
        alerts.len() + 1,
        csv.lines().count(),
        "the library and the CLI agree"
    );
    let (results, false_alerts) = evaluate(&alerts, &truth);
    for r in &results {
        assert!(r.detected, "{} was not detected: {results:?}", r.scenario);
    }
    assert_eq!(
        false_alerts, 0,
        "alerts that match no scenario: {alerts:#?}"
    );
    let spike = results
        .iter()
        .find(|r| r.scenario == "injection_spike")
        .unwrap();
    assert!(
        spike.time_to_detect_ms.is_some_and(|ms| ms <= 2 * 5_000),
        "spike detected within 2 buckets: {spike:?}"
    );
}
