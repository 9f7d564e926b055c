//! The generator's hard cases and timed attacks, end to end through decode,
//! redaction and detection: ten days of traffic at a low rate (4 events/s
//! at the peak, so that a test build replays it in seconds), whose second
//! week must raise no alert but the planted ones.
//!
//! The figures at full rate (recall, false alerts per million benign events,
//! time to detect) are README's evaluation table; this test checks that the
//! world is what it claims to be, and that the hard negatives stay quiet.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentaudit::config::{DetectConfig, RedactConfig};
use agentaudit::decode::{DecodeLimits, decode};
use agentaudit::detect::backtest::evaluate;
use agentaudit::detect::policy::Policy;
use agentaudit::detect::{AlertChange, Detector};
use agentaudit::event::KafkaCoords;
use agentaudit::redact::Redactor;
use agentaudit::traffic::hard_cases::{self, ONBOARDING_TENANT};
use agentaudit::traffic::scenario::{Scenario, benign_policy_toml};
use agentaudit::traffic::{GenOptions, Generator};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// Monday 2026-11-02 00:00 UTC.
const START: i64 = 1_793_577_600_000;

#[test]
fn hard_cases_stay_quiet_and_timed_attacks_alert() {
    let timed: Vec<Scenario> = Scenario::ALL.into_iter().filter(|s| s.is_timed()).collect();
    let at = START + hard_cases::SCENARIOS_AFTER_MS;
    let mut g = Generator::new(GenOptions {
        seed: 7,
        secret_ratio: 0.0,
        start_ms: START,
        scenarios: timed.clone(),
        daily_rhythm: true,
        peak_rate: 4.0,
        hard_cases: true,
        scenario_at_ms: Some(at),
        ..GenOptions::default()
    });
    let end = at + 12 * HOUR;
    let policy = Policy::parse(&benign_policy_toml()).expect("the benign policy parses");
    let redactor = Redactor::new(&RedactConfig::default()).expect("redactor");
    let mut detector = Detector::new(&DetectConfig::default(), false);
    let coords = KafkaCoords {
        topic: Arc::from("t"),
        partition: 0,
        offset: 0,
        kafka_ts_ms: None,
    };
    let mut changes = Vec::new();
    let mut alerts = Vec::new();
    let mut per_day: BTreeMap<i64, u64> = BTreeMap::new();
    let (mut marked, mut marked_seen) = (0, 0);
    let (mut newco_first, mut silence_calls) = (i64::MAX, 0);
    let mut batch = 0u64;
    loop {
        let m = g.next_message();
        let e = decode(Some(&m.payload), i64::MAX / 2, &DecodeLimits::default())
            .expect("hard cases are valid v1");
        if e.ts_ms >= end {
            break;
        }
        *per_day.entry(e.ts_ms.div_euclid(DAY)).or_default() += 1;
        let wf = e.workflow_id.clone().unwrap_or_default();
        if wf.starts_with("wf-marked-") && e.step == Some(0) {
            marked += 1;
            marked_seen += usize::from(!e.output_markers.is_empty());
        }
        if e.tenant == ONBOARDING_TENANT {
            newco_first = newco_first.min(e.ts_ms);
        }
        let (silence_from, silence_len) = hard_cases::timing(Scenario::TenantSilence);
        let silent = at + silence_from..at + silence_from + silence_len;
        if e.tenant == "vandelay" && silent.contains(&e.ts_ms) {
            silence_calls += 1;
        }
        if e.agent_id == hard_cases::BATCH_AGENT {
            batch += 1;
            assert!(
                e.ts_ms.rem_euclid(HOUR) < 30_000,
                "batch calls run at minute 0"
            );
        }
        let r = redactor.redact_event(e, coords.clone(), 0);
        detector.observe(&r, Some(&policy), &mut changes);
        for c in changes.drain(..) {
            if let AlertChange::Fired(a) = c {
                alerts.push(a);
            }
        }
    }
    let truth = g.ground_truth();

    // The world is what it says.
    assert_eq!(truth.len(), timed.len(), "{truth:?}");
    assert_eq!(silence_calls, 0, "a silenced tenant sends nothing");
    assert!(
        newco_first >= at - DAY,
        "the new tenant onboards a day early"
    );
    assert!(batch >= 9 * 24 * 120, "{batch} batch calls");
    assert!(
        marked > 50 && marked_seen == marked,
        "{marked_seen} of {marked} marked"
    );
    let friday = per_day[&(START / DAY + 4)] as f64;
    let saturday = per_day[&(START / DAY + 5)] as f64;
    assert!(saturday < 0.6 * friday, "weekend {saturday} vs {friday}");

    // The second week: nothing but the planted attacks alerts.
    let second_week: Vec<_> = alerts
        .iter()
        .filter(|a| a.detected_at_ms >= START + 7 * DAY)
        .cloned()
        .collect();
    let (results, false_alerts) = evaluate(&second_week, &truth);
    let unmatched: Vec<_> = second_week
        .iter()
        .filter(|a| {
            !truth.iter().any(|t| {
                t.rules.contains(&a.rule.name())
                    && (a.tenant == t.tenant || a.agent_id == t.agent_id)
            })
        })
        .map(|a| (a.rule.name(), &a.tenant, &a.agent_id, &a.tool, &a.detail))
        .collect();
    assert_eq!(false_alerts, 0, "{unmatched:#?}");
    // The attacks whose evidence does not depend on volume are found at
    // this rate too; the frequency shifts need README's full rate.
    for s in [
        Scenario::InjectionSequence,
        Scenario::LowVolumeFailures,
        Scenario::TenantSilence,
    ] {
        let r = results
            .iter()
            .find(|r| r.scenario == s.name())
            .expect("planted");
        assert!(r.detected, "{} missed: {results:?}", s.name());
    }
    // Marked results followed by ordinary calls, and research quoting the
    // phrases, never fire the injection rule.
    assert!(
        alerts
            .iter()
            .filter(|a| a.rule.name() == "injection_then_unusual_call")
            .all(|a| a.tenant == Scenario::InjectionSequence.actors().0),
        "{alerts:?}"
    );
}
