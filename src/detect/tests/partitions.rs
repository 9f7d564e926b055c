//! What a partition's clock and its ownership decide: a tenant gone quiet
//! or silent is a drop by its own partition's clock, and a partition moved
//! to another instance takes its tenants' alerts along.

use super::*;

#[test]
fn a_tenant_going_quiet_is_a_traffic_drop_unless_switched_off() {
    let run = |disabled: Vec<String>| {
        let cfg = DetectConfig {
            warmup_buckets: 10,
            disabled_rules: disabled,
            ..DetectConfig::default()
        };
        let mut d = Detector::new(&cfg, false);
        let mut out = Vec::new();
        // Eight days, so that the hour's own shape is known.
        for minute in 0..8 * 1440 {
            for i in 0..10 {
                let r = call(&format!(
                    r#""event_id":"q{minute}-{i}","ts":{}"#,
                    T0 - 9 * 86_400_000 + minute * 60_000 + i * 5000
                ));
                d.observe(&r, None, &mut out);
            }
        }
        assert!(out.is_empty(), "{out:?}");
        // Silent for 20 minutes, then one call.
        let r = call(&format!(
            r#""event_id":"back","ts":{}"#,
            T0 - 9 * 86_400_000 + (8 * 1440 + 20) * 60_000
        ));
        d.observe(&r, None, &mut out);
        out.iter()
            .filter(|c| matches!(c, AlertChange::Fired(a) if a.rule == RuleId::TrafficDrop))
            .count()
    };
    assert!(run(Vec::new()) > 0);
    assert_eq!(run(vec!["traffic_drop".into()]), 0);
}

#[test]
fn a_tenant_silent_for_good_is_a_traffic_drop_while_others_call() {
    let cfg = DetectConfig {
        warmup_buckets: 10,
        ..DetectConfig::default()
    };
    let mut d = Detector::new(&cfg, false);
    let mut out = Vec::new();
    let start = T0 - 9 * 86_400_000;
    let mut fired_at = None;
    // Eight days of two steady tenants; then globex stops for good while
    // initech goes on calling, which is all that moves event time.
    for minute in 0..8 * 1440 + 60 {
        for i in 0..10 {
            let ts = start + minute * 60_000 + i * 6000;
            let mut tenants = vec!["initech"];
            if minute < 8 * 1440 {
                tenants.push("globex");
            }
            for tenant in tenants {
                let r = call(&format!(
                    r#""event_id":"{tenant}{minute}-{i}","ts":{ts},"tenant":"{tenant}""#
                ));
                d.observe(&r, None, &mut out);
            }
        }
        for c in out.drain(..) {
            if let AlertChange::Fired(a) = c {
                assert_eq!(a.tenant, "globex", "{a:?}");
                assert_eq!(a.rule, RuleId::TrafficDrop, "{a:?}");
                assert!(a.sample_event_ids.is_empty(), "silence has no sample");
                fired_at.get_or_insert(minute - 8 * 1440);
            }
        }
    }
    assert_eq!(d.silence_watched(), 2);
    let at = fired_at.expect("globex never called again, yet must alert");
    assert!(at <= 10, "after {at} minutes");
}

/// Tests of what a hostile producer sends: overflows, floods, forged time.

#[test]
fn a_partition_moved_away_takes_its_tenants_alerts_along_unresolved() {
    let p = Policy::parse(POLICY).expect("policy");
    let mut d = detector();
    // acme calls on partition 1 and trips its rate limit; globex, on
    // partition 0, breaks a rule of its own.
    let mut acme = call(r#""tenant":"acme""#);
    acme.coords.partition = 1;
    for _ in 0..6 {
        fired(&mut d, &p, &acme);
    }
    let globex = call(r#""tool":"drop_database""#);
    assert!(!fired(&mut d, &p, &globex).is_empty());
    let before = d.active_alerts();
    assert!(before >= 2);
    // The next assignment keeps partition 0 only.
    let released = d.release_partitions(&[("t".into(), 0)]);
    assert_eq!(
        released
            .iter()
            .map(|a| a.tenant.as_str())
            .collect::<Vec<_>>(),
        vec!["acme"]
    );
    assert_eq!(d.active_alerts(), before - 1);
    // Keeping every partition releases nothing.
    assert!(
        d.release_partitions(&[("t".into(), 0), ("t".into(), 1)])
            .is_empty()
    );
    // Nor does anything resolve them here later: they are the new owner's.
    let mut out = Vec::new();
    d.advance(&mut out);
    assert!(out.iter().all(|c| match c {
        AlertChange::Resolved(a) | AlertChange::Fired(a) => a.tenant != "acme",
    }));
}
