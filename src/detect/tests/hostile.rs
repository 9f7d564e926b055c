//! Detection against a hostile producer (issue 11): numbers that overflow,
//! floods of invented names and alerts, and timestamps chosen to move the
//! clocks.

use super::*;

#[test]
fn a_step_of_i64_max_is_a_budget_overrun_not_a_panic() {
    let p = Policy::parse(POLICY).expect("policy");
    let mut d = detector();
    let r = call(r#""workflow_id":"wf-huge","step":9223372036854775807"#);
    assert!(fired(&mut d, &p, &r).contains(&"workflow_step_budget_exceeded"));
}

/// A flood of lesser alerts never resolves a critical one to make room
/// (issue 11).
#[test]
fn a_full_active_set_never_drops_a_critical_alert_for_an_info_one() {
    let p = Policy::parse(POLICY).expect("policy");
    let cfg = DetectConfig {
        max_active_alerts: 2,
        new_tool_warmup_buckets: 2,
        // Nothing resolves by time here: only room can.
        hold_buckets: 1000,
        ..DetectConfig::default()
    };
    let mut d = Detector::new(&cfg, false);
    let mut out = Vec::new();
    d.observe(&call(r#""agent_id":"ghost-bot""#), Some(&p), &mut out);
    d.observe(&call(r#""agent_id":"shadow-bot""#), Some(&p), &mut out);
    assert_eq!(d.active_alerts(), 2, "{out:?}");
    // Later, the tenant calls 20 tools it never called: info alerts.
    for i in 0..20 {
        let r = call(&format!(r#""tool":"new_tool_{i}","ts":1795853400000"#));
        d.observe(&r, None, &mut out);
    }
    let resolved_critical = out
        .iter()
        .any(|c| matches!(c, AlertChange::Resolved(a) if a.severity == Severity::Critical));
    assert!(!resolved_critical, "{out:?}");
    assert_eq!(d.active_alerts(), 2);
    assert!(d.evictions >= 20, "the dropped alerts are counted");
}

/// `call` from `tenant` at event time `ts`, arriving at `arrived` on
/// partition `partition`.
fn arriving(tenant: &str, ts: i64, arrived: i64, partition: i32, id: &str) -> Record {
    let mut r = call(&format!(r#""event_id":"{id}","tenant":"{tenant}""#));
    r.event.ts_ms = ts;
    r.ingested_at_ms = arrived;
    r.coords.partition = partition;
    r
}

fn resolved_rules(out: &[AlertChange]) -> Vec<(&'static str, String)> {
    out.iter()
        .filter_map(|c| match c {
            AlertChange::Resolved(a) => Some((a.rule.name(), a.tenant.clone())),
            AlertChange::Fired(_) => None,
        })
        .collect()
}

/// One call stamped hours ahead moved the one event-time clock: every
/// tenant's active alerts resolved, and the caller's key rolled ahead so its
/// on-time calls counted as late. Live, time counts no further than arrival,
/// and alerts resolve by their own tenant's partition clock.
#[test]
fn a_call_stamped_ahead_neither_resolves_alerts_nor_makes_calls_late() {
    let p = Policy::parse(POLICY).expect("policy");
    let cfg = DetectConfig {
        hold_buckets: 2,
        allowed_lateness_secs: 0,
        ..DetectConfig::default()
    };
    let hours = 3 * 3_600_000;
    let run = |bounded: bool| {
        let mut d = Detector::new(&cfg, false);
        if bounded {
            d.bound_by_arrival();
        }
        let mut out = Vec::new();
        let mut ghost = arriving("globex", T0, T0, 0, "g1");
        ghost.event.agent_id = "ghost-bot".into();
        d.observe(&ghost, Some(&p), &mut out);
        assert_eq!(d.active_alerts(), 1, "{out:?}");
        // Another tenant, same partition, a minute later, stamped 3 h ahead.
        let forged = arriving("initech", T0 + hours, T0 + 60_000, 0, "f1");
        d.observe(&forged, Some(&p), &mut out);
        d.advance(&mut out);
        // Then the forger's own on-time calls.
        for i in 0..5 {
            let r = arriving(
                "initech",
                T0 + 61_000 + i,
                T0 + 61_000 + i,
                0,
                &format!("o{i}"),
            );
            d.observe(&r, Some(&p), &mut out);
        }
        d.advance(&mut out);
        (resolved_rules(&out), d.baseline_late())
    };
    let (resolved, late) = run(false);
    assert!(
        resolved.contains(&("unregistered_agent", "globex".into())),
        "unbounded, the forged clock resolves another tenant's alert: {resolved:?}"
    );
    assert!(late > 0, "unbounded, on-time calls count as late");
    let (resolved, late) = run(true);
    assert!(resolved.is_empty(), "{resolved:?}");
    assert_eq!(late, 0);
}

/// In a catch-up the partitions of one consumer drift apart: a tenant's
/// alert resolves by its own partition's clock, not by a partition an hour
/// ahead, and does resolve once its own partition moves past the hold.
#[test]
fn alerts_resolve_by_their_own_partitions_clock() {
    let p = Policy::parse(POLICY).expect("policy");
    let cfg = DetectConfig {
        hold_buckets: 2,
        allowed_lateness_secs: 0,
        ..DetectConfig::default()
    };
    let mut d = Detector::new(&cfg, false);
    d.bound_by_arrival();
    let now = T0 + 2 * 3_600_000;
    let mut out = Vec::new();
    let mut ghost = arriving("globex", T0, now, 0, "g1");
    ghost.event.agent_id = "ghost-bot".into();
    d.observe(&ghost, Some(&p), &mut out);
    // Partition 1 is an hour further on.
    for m in 0..10 {
        let r = arriving(
            "initech",
            T0 + 3_600_000 + m * 60_000,
            now,
            1,
            &format!("i{m}"),
        );
        d.observe(&r, Some(&p), &mut out);
        d.advance(&mut out);
    }
    assert!(resolved_rules(&out).is_empty(), "{out:?}");
    // Partition 0 catches up past the hold: the alert resolves.
    for m in 1..5 {
        let r = arriving("globex", T0 + m * 60_000, now, 0, &format!("c{m}"));
        d.observe(&r, Some(&p), &mut out);
        let r = arriving(
            "initech",
            T0 + 3_600_000 + (10 + m) * 60_000,
            now,
            1,
            &format!("j{m}"),
        );
        d.observe(&r, Some(&p), &mut out);
        d.advance(&mut out);
    }
    assert_eq!(
        resolved_rules(&out),
        vec![("unregistered_agent", "globex".to_owned())]
    );
}

/// One tenant inventing agents, tools, workflows and credentials used to
/// clear or age out what the other tenants' rules rely on: a workflow's
/// token count, a credential's owner, when the tenant was first seen.
#[test]
fn a_flood_of_invented_names_leaves_other_tenants_state_alone() {
    let p = Policy::parse(POLICY).expect("policy");
    let cfg = DetectConfig {
        max_keys: 400,
        max_workflows: 100,
        new_tool_warmup_buckets: 2,
        ..DetectConfig::default()
    };
    let mut d = Detector::new(&cfg, false);
    let mut out = Vec::new();
    let at = |minute: i64, extra: &str| {
        let mut r = call(extra);
        r.event.ts_ms = T0 + minute * 60_000;
        r
    };
    for minute in 0..3 {
        let wf = at(minute, r#""workflow_id":"w-real","tokens_in":300"#);
        d.observe(&wf, Some(&p), &mut out);
        d.observe(&at(minute, r#""credential_id":"cred-x""#), None, &mut out);
    }
    for i in 0..10_000 {
        let r = at(
            4,
            &format!(
                r#""tenant":"evil","agent_id":"a{i}","tool":"t{i}","workflow_id":"w{i}","credential_id":"c{i}""#
            ),
        );
        d.observe(&r, None, &mut out);
    }
    out.clear();
    // 900 tokens so far: 200 more break the 1000-token budget.
    let wf = at(5, r#""workflow_id":"w-real","tokens_in":200"#);
    let got = fired(&mut d, &p, &wf);
    assert!(got.contains(&"workflow_token_budget_exceeded"), "{got:?}");
    // The credential still has its first agent: another one is misuse.
    let other = at(5, r#""agent_id":"other-bot","credential_id":"cred-x""#);
    d.observe(&other, None, &mut out);
    assert!(
        out.iter()
            .any(|c| matches!(c, AlertChange::Fired(a) if a.rule == RuleId::CredentialMisuse)),
        "{out:?}"
    );
    // The tenant is still old: a tool it never called is news.
    let got = fired(&mut d, &p, &at(6, r#""tool":"get_customer""#));
    assert!(got.contains(&"new_tool_for_tenant"), "{got:?}");
}
