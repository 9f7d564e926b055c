//! Active owns the set of alerts that hold now: firing or extending one,
//! making room when the set is full (least severe, then stalest, and never a
//! more severe one for a lesser), and resolving each by the clock of its own
//! tenant's partition once its condition has not been seen for the hold.

use std::hash::BuildHasher;

use super::{Alert, AlertChange, Detector, RuleId, evidence};
use crate::event::Record;

/// A tenant's newest incident: its id and the last bucket one of its
/// alerts fired or held in.
pub(super) struct Incident {
    pub(super) id: String,
    pub(super) last_bucket: i64,
}

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
        if self.extend(rule, sample, (tenant, agent, tool), bucket) {
            return;
        }
        let tenant_key = self.tenant_key(tenant);
        if let Some(cover) = self.covering(rule, tenant_key, (tenant, agent, tool)) {
            // The same rise (or drop) on a key an open alert already shows:
            // it keeps that alert open instead of paging again.
            if let Some(a) = self.active.get_mut(&cover) {
                a.last_bucket = a.last_bucket.max(bucket);
            }
            self.note_incident(rule, tenant_key, bucket, None);
            return;
        }
        let id = (rule, self.hash(&[tenant, agent, tool], 7));
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
        let mut alert = Alert {
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
            incident_id: String::new(),
        };
        alert.incident_id = self.note_incident(rule, tenant_key, bucket, Some(alert.id()));
        out.push(AlertChange::Fired(alert.clone()));
        self.active.insert(
            id,
            ActiveAlert {
                alert,
                last_bucket: bucket,
                tenant_key,
            },
        );
    }

    /// An open alert that already shows what a new alert of `rule` for
    /// these names would: the same direction of the same statistical family
    /// (a rise: spike or shift; a drop), on the same tool (the tenant's key
    /// after its agent's, or a shift after a spike), or any tool of the
    /// tenant for a tenant-wide key.
    fn covering(
        &self,
        rule: RuleId,
        tenant_key: u64,
        (tenant, agent, tool): (&str, &str, &str),
    ) -> Option<(RuleId, u64)> {
        let f = rule.direction()?;
        self.active
            .iter()
            .find(|(_, a)| {
                a.tenant_key == tenant_key
                    && a.alert.rule.direction() == Some(f)
                    && a.alert.tenant == tenant
                    && (tool.is_empty() || a.alert.tool == tool)
                    // An agent's row names who called (the kill switch acts
                    // on it): only that agent's own rows cover it.
                    && (agent.is_empty() || a.alert.agent_id == agent)
            })
            .map(|(k, _)| *k)
    }

    /// The incident an alert of `rule` for this tenant in `bucket` belongs
    /// to: the tenant's open one of the rule's kind, if its last alert was
    /// seen within the gap, or a new one named by `opening` (the alert's own
    /// id). Returns its id. The statistical rules (a rise, a drop, failures)
    /// share one kind: they are faces of one change in behaviour; each
    /// policy rule is its own, so a tenant's steady trickle of one
    /// violation never swallows a new rise.
    fn note_incident(
        &mut self,
        rule: RuleId,
        tenant_key: u64,
        bucket: i64,
        opening: Option<String>,
    ) -> String {
        let kind = match rule {
            r if r.direction().is_some() || r == RuleId::ErrorRateSpike => 0,
            other => other as u64 + 1,
        };
        let key = tenant_key ^ kind.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let gap = self.incident_gap_buckets;
        if let Some(i) = self.incidents.get_mut(&key)
            && bucket <= i.last_bucket + gap
        {
            i.last_bucket = i.last_bucket.max(bucket);
            return i.id.clone();
        }
        let Some(id) = opening else {
            return String::new();
        };
        self.evictions += super::make_room(&mut self.incidents, key, super::MAX_TENANT_SOURCES);
        self.incidents.insert(
            key,
            Incident {
                id: id.clone(),
                last_bucket: bucket,
            },
        );
        id
    }

    /// Keeps the alert of `rule` for these names open through `bucket`, if
    /// one is; returns whether one was.
    pub(super) fn extend(
        &mut self,
        rule: RuleId,
        sample: Option<&str>,
        (tenant, agent, tool): (&str, &str, &str),
        bucket: i64,
    ) -> bool {
        let id = (rule, self.hash(&[tenant, agent, tool], 7));
        let Some(a) = self.active.get_mut(&id) else {
            return false;
        };
        a.last_bucket = a.last_bucket.max(bucket);
        let tenant_key = a.tenant_key;
        let rule = a.alert.rule;
        if let Some(sample) = sample
            && a.alert.sample_event_ids.len() < 5
        {
            a.alert.sample_event_ids.push(sample.to_owned());
        }
        self.note_incident(rule, tenant_key, bucket, None);
        true
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
