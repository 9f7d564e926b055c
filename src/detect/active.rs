//! Active owns the set of alerts that hold now: firing or extending one,
//! making room when the set is full (least severe, then stalest, and never a
//! more severe one for a lesser), and resolving each by the clock of its own
//! tenant's partition once its condition has not been seen for the hold.

use std::hash::BuildHasher;

use super::{Alert, AlertChange, Detector, RuleId, evidence};
use crate::event::Record;

pub(super) struct ActiveAlert {
    pub(super) alert: Alert,
    pub(super) last_bucket: i64,
    /// Its tenant, whose partition's clock resolves it.
    pub(super) tenant_key: u64,
}

impl Detector {
    /// Fires (or extends) an alert. `evidence` is a sample event, if a call
    /// showed it (silence has none), and the event time it was seen at.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fire(
        &mut self,
        rule: RuleId,
        (sample, at_ms): (Option<&str>, i64),
        (tenant, agent, tool): (&str, &str, &str),
        bucket: i64,
        observed: f64,
        expected: f64,
        score: f64,
        detail: String,
        out: &mut Vec<AlertChange>,
    ) {
        if !self.enabled[rule as usize] {
            return;
        }
        let id = (rule, self.hash(&[tenant, agent, tool], 7));
        if let Some(a) = self.active.get_mut(&id) {
            a.last_bucket = a.last_bucket.max(bucket);
            if let Some(sample) = sample
                && a.alert.sample_event_ids.len() < 5
            {
                a.alert.sample_event_ids.push(sample.to_owned());
            }
            return;
        }
        if self.active.len() >= self.cfg.max_active_alerts {
            // Make room by resolving the least severe, then the stalest:
            // bounded, and said so. An alert never displaces a more severe
            // one: when every active alert outranks it, it is the one that
            // goes (counted too), so a flood of info never hides a critical.
            let severity = rule.rule().severity;
            let victim = self
                .active
                .iter()
                .min_by_key(|(_, a)| (a.alert.severity, a.last_bucket))
                .map(|(k, a)| (*k, a.alert.severity));
            self.evictions += 1;
            match victim {
                Some((k, s)) if s <= severity => {
                    if let Some(old) = self.active.remove(&k) {
                        out.push(AlertChange::Resolved(old.alert));
                    }
                }
                _ => return,
            }
        }
        let alert = Alert {
            rule,
            severity: rule.rule().severity,
            tenant: tenant.to_owned(),
            agent_id: agent.to_owned(),
            tool: tool.to_owned(),
            window_start_ms: bucket * self.bucket_ms,
            window_end_ms: (bucket + 1) * self.bucket_ms,
            observed,
            expected,
            score,
            sample_event_ids: sample.map(str::to_owned).into_iter().collect(),
            detail,
            detected_at_ms: at_ms,
        };
        out.push(AlertChange::Fired(alert.clone()));
        let tenant_key = self.tenant_key(tenant);
        self.active.insert(
            id,
            ActiveAlert {
                alert,
                last_bucket: bucket,
                tenant_key,
            },
        );
    }

    /// A policy rule's finding: one call, nothing expected.
    pub(super) fn violation(
        &mut self,
        rule: RuleId,
        r: &Record,
        keys: (&str, &str, &str),
        bucket: i64,
        detail: String,
        out: &mut Vec<AlertChange>,
    ) {
        self.fire(rule, evidence(r), keys, bucket, 1.0, 0.0, 0.0, detail, out);
    }

    /// Forgets the active alerts of tenants whose calls last came from a
    /// (topic, partition) not in `owned`, and returns them: after a
    /// rebalance that partition's new owner raises and resolves them, and
    /// here they would hang, since this instance no longer sees its clock.
    /// They are neither resolved (the condition may well hold) nor stored.
    pub fn release_partitions(&mut self, owned: &[(String, i32)]) -> Vec<Alert> {
        let kept: std::collections::HashSet<u64> = owned
            .iter()
            .map(|(topic, p)| self.hasher.hash_one((17u8, topic.as_str(), *p)))
            .collect();
        let released: std::collections::HashSet<u64> = self
            .source_clocks
            .keys()
            .filter(|s| !kept.contains(s))
            .copied()
            .collect();
        if released.is_empty() {
            return Vec::new();
        }
        let gone: Vec<_> = self
            .active
            .iter()
            .filter(|(_, a)| {
                self.tenant_sources
                    .get(&a.tenant_key)
                    .is_some_and(|s| released.contains(s))
            })
            .map(|(k, _)| *k)
            .collect();
        for s in &released {
            self.source_clocks.remove(s);
        }
        // Watched from scratch if the partition comes back: buckets folded
        // across the time it was owned elsewhere would read as silence.
        self.silence_watch
            .retain(|_, w| !released.contains(&w.source));
        gone.into_iter()
            .filter_map(|k| self.active.remove(&k))
            .map(|a| a.alert)
            .collect()
    }

    /// Resolves alerts whose condition has not been seen for `hold_buckets`
    /// buckets of event time behind the watermark of their tenant's
    /// partition (the consumer's, for a tenant no longer remembered). Runs
    /// when the consumer's watermark enters a new bucket, so an alert
    /// resolves at most a bucket after its own watermark allows.
    pub fn advance(&mut self, out: &mut Vec<AlertChange>) {
        if self.max_event_ms == i64::MIN {
            return;
        }
        let watermark = self.bucket_of(self.max_event_ms - self.lateness_ms);
        // Nothing can resolve until the watermark enters a new bucket, and
        // scanning every active alert per event made detection O(alerts).
        if watermark == self.advanced_to {
            return;
        }
        self.advanced_to = watermark;
        self.sweep_silence(out);
        let hold = i64::from(self.cfg.hold_buckets);
        let own_watermark = |a: &ActiveAlert| {
            self.tenant_sources
                .get(&a.tenant_key)
                .and_then(|s| self.source_clocks.get(s))
                .map_or(watermark, |clock| self.bucket_of(clock - self.lateness_ms))
        };
        let due: Vec<_> = self
            .active
            .iter()
            .filter(|(_, a)| a.last_bucket + hold < own_watermark(a))
            .map(|(k, _)| *k)
            .collect();
        let resolved = due
            .into_iter()
            .filter_map(|k| self.active.remove(&k))
            .map(|a| a.alert)
            .collect();
        resolve_in_order(resolved, out);
    }
}

/// Reports `alerts` resolved in a fixed order (detection time, then rule
/// and names), so that replays of the same events say the same thing.
pub(super) fn resolve_in_order(mut alerts: Vec<Alert>, out: &mut Vec<AlertChange>) {
    alerts.sort_by(|a, b| {
        (a.detected_at_ms, a.rule, &a.tenant, &a.agent_id, &a.tool).cmp(&(
            b.detected_at_ms,
            b.rule,
            &b.tenant,
            &b.agent_id,
            &b.tool,
        ))
    });
    out.extend(alerts.into_iter().map(AlertChange::Resolved));
}
