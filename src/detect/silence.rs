//! Silence owns the watch over busy tenants that fall silent: a tenant that
//! sends nothing sends nothing that would fold its empty buckets, so when
//! event time enters a new bucket the watched tenants' empty buckets are
//! folded up to their own partition's watermark, and a drop alerts without
//! waiting for the tenant's next call.

use super::baseline::SignalKind;
use super::{AlertChange, Detector, KeyKind};

/// How many tenants' silence is watched at most; tenants past it show a
/// drop only at their next call (`agentaudit_silence_watch_refused_total`).
pub const MAX_SILENCE_WATCH: usize = 10_000;

/// A tenant whose silence is watched: its name, the last bucket it called
/// in, and the source (topic, partition) its calls arrive on.
#[derive(Debug, Clone)]
pub(super) struct SilenceWatch {
    pub(super) tenant: String,
    pub(super) last_bucket: i64,
    pub(super) source: u64,
}

impl Detector {
    /// Starts or refreshes the silence watch of a tenant once it averages
    /// enough calls for a drop to be tested (`min_drop_expected`); names
    /// that never get that busy never take a place.
    pub(super) fn watch_silence(&mut self, key: u64, tenant: &str, bucket: i64, source: u64) {
        if let Some(w) = self.silence_watch.get_mut(&key) {
            w.last_bucket = w.last_bucket.max(bucket);
            w.source = source;
            return;
        }
        if self
            .baselines
            .flat_of(key)
            .is_none_or(|f| f < self.cfg.min_drop_expected)
        {
            return;
        }
        if self.silence_watch.len() >= MAX_SILENCE_WATCH {
            self.silence_watch_refused += 1;
            return;
        }
        self.silence_watch.insert(
            key,
            SilenceWatch {
                tenant: tenant.to_owned(),
                last_bucket: bucket,
                source,
            },
        );
    }

    /// Folds the empty buckets of every watched tenant that made no call
    /// in the bucket before its partition's watermark, so that a tenant gone
    /// silent shows as a `traffic_drop` without waiting for its next call.
    pub(super) fn sweep_silence(&mut self, out: &mut Vec<AlertChange>) {
        let silent: Vec<(u64, String, i64)> = self
            .silence_watch
            .iter()
            .filter_map(|(k, w)| {
                let clock = *self.source_clocks.get(&w.source)?;
                let watermark = self.bucket_of(clock - self.lateness_ms);
                (w.last_bucket + 1 < watermark).then(|| (*k, w.tenant.clone(), watermark))
            })
            .collect();
        for (key, tenant, watermark) in silent {
            let Ok(now) = u32::try_from(watermark) else {
                continue;
            };
            let at_ms = watermark.saturating_mul(self.bucket_ms);
            let mut signals = std::mem::take(&mut self.signals);
            if !self
                .baselines
                .roll_silent(key, now, &mut self.closed, &mut signals)
            {
                // Evicted from the baselines: nothing left to compare with.
                self.silence_watch.remove(&key);
            }
            for s in signals.iter().filter(|s| s.kind == SignalKind::Drop) {
                self.fire_signal(KeyKind::Tenant, s, (None, at_ms), (&tenant, "", ""), out);
            }
            signals.clear();
            self.signals = signals;
        }
        self.record_closed();
    }
}
