//! Metrics owns the Prometheus registry of `serve`. Every label here takes
//! values from a closed set (dead-letter reasons, detector names, table
//! names, rules), from the configured topic's partitions, or — for alert
//! labels — from event text passed through `detect::labels` (sanitised,
//! redacted, capped per label).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Every metric family this registry exports, with or without series.
    pub family_names: Vec<String>,
    pub consumed: IntCounter,
    pub decoded: IntCounter,
    pub skipped_durable: IntCounter,
    pub claims_lost: IntCounter,
    pub dead_letters: IntCounterVec,
    pub otlp_spans_skipped: IntCounterVec,
    pub hook_actions: IntCounterVec,
    pub hook_refused: IntCounterVec,
    pub hook_queued: IntGauge,
    pub hook_queue_limit: IntGauge,
    pub redactions: IntCounterVec,
    pub unknown_fields: IntCounter,
    pub rows_written: IntCounterVec,
    pub files_written: IntCounterVec,
    pub bytes_written: IntCounterVec,
    pub flush_seconds: Histogram,
    pub flush_failures: IntCounter,
    pub sink_stalled: IntGauge,
    pub partitions_assigned: IntGauge,
    pub sink_retries: IntCounter,
    pub staged_files_open: IntGauge,
    pub staged_files_limit: IntGauge,
    pub staged_files_closed_early: IntCounter,
    pub buffered_bytes: IntGauge,
    pub buffered_rows: IntGauge,
    pub memory_budget_bytes: IntGauge,
    pub queue_batches: IntGauge,
    pub queue_capacity: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub committed_offset: IntGaugeVec,
    pub commit_failures: IntCounter,
    pub http_connections: IntGauge,
    pub http_connections_limit: IntGauge,
    pub http_connections_refused: IntCounter,
    pub dropped_on_revoke: IntCounter,
    pub recovered_renames: IntCounter,
    pub discarded_staged_files: IntCounter,
    pub alerts: IntCounterVec,
    pub alert_active: IntGaugeVec,
    pub label_overflow: IntCounter,
    pub baseline_keys: IntGauge,
    pub baseline_max_keys: IntGauge,
    pub baseline_profiles: IntGauge,
    pub baseline_max_profiles: IntGauge,
    pub baseline_evictions: IntCounter,
    pub silence_watched: IntGauge,
    pub burst_tables: IntGauge,
    pub burst_tables_refused: IntCounter,
    pub silence_watch_refused: IntCounter,
    pub baseline_late: IntCounter,
    pub detector_evictions: IntCounter,
    pub active_alerts: IntGauge,
    pub policy_loaded: IntGauge,
    pub policy_reloads: IntCounter,
    pub policy_reload_failures: IntCounter,
    pub inventory_review_overdue: IntGaugeVec,
    pub alertmanager_queue_depth: IntGauge,
    pub alertmanager_queue_capacity: IntGauge,
    pub alertmanager_sent: IntCounter,
    pub alertmanager_failures: IntCounter,
    pub alertmanager_dropped: IntCounter,
    pub alertmanager_rejected: IntCounter,
    pub baseline_observed: IntGaugeVec,
    pub baseline_expected: GaugeVec,
}

/// Partitions numbered below this get their own lag/offset series; the rest
/// share the series `partition="other"`.
pub const MAX_PARTITION_SERIES: i64 = 1024;

/// The registry being built, and the name of every family registered in it:
/// `gather` leaves out a labelled family until it has a series, and the
/// dashboards' test checks their queries against all of them.
#[derive(Default)]
struct Registrar {
    registry: Registry,
    names: std::cell::RefCell<Vec<String>>,
}

impl Registrar {
    fn register(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        for d in c.desc() {
            self.names.borrow_mut().push(d.fq_name.clone());
        }
        self.registry.register(c)
    }
}

fn counter(r: &Registrar, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn counter_vec(r: &Registrar, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn gauge(r: &Registrar, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

fn gauge_vec(r: &Registrar, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

impl Metrics {
    /// Builds the registry. Metric definitions are constants, so a failure
    /// here is a programming error, not an input error.
    pub fn new() -> Metrics {
        let r = Registrar::default();
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "agentaudit_flush_seconds",
                "Time to close, fsync and commit the staged Parquet files of one roll",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .unwrap_or_else(|e| panic!("metric agentaudit_flush_seconds: {e}"));
        r.register(Box::new(flush_seconds.clone()))
            .unwrap_or_else(|e| panic!("metric agentaudit_flush_seconds: {e}"));
        Metrics {
            consumed: counter(
                &r,
                "agentaudit_events_consumed_total",
                "Kafka messages consumed",
            ),
            decoded: counter(
                &r,
                "agentaudit_events_decoded_total",
                "Messages decoded as valid v1 events",
            ),
            skipped_durable: counter(
                &r,
                "agentaudit_events_skipped_durable_total",
                "Messages re-delivered after a restart whose rows were already durable, skipped",
            ),
            claims_lost: counter(
                &r,
                "agentaudit_lake_claims_lost_total",
                "Commits to a shared lake whose start offset another writer had claimed first (a zombie or the partition's new owner): its claim was adopted",
            ),
            dead_letters: counter_vec(
                &r,
                "agentaudit_dead_letters_total",
                "Messages dead-lettered, by reason",
                &["reason"],
            ),
            otlp_spans_skipped: counter_vec(
                &r,
                "agentaudit_otlp_spans_skipped_total",
                "OpenTelemetry spans read and skipped as not tool calls, by GenAI operation (chat, invoke_agent, …; other and none for the rest)",
                &["operation"],
            ),
            hook_actions: counter_vec(
                &r,
                "agentaudit_hook_actions_total",
                "revoke-hook: alerts received, by outcome (ran, failed, declined, repeat_skipped, queue_full, resolved_ignored)",
                &["outcome"],
            ),
            hook_refused: counter_vec(
                &r,
                "agentaudit_hook_requests_refused_total",
                "revoke-hook: webhook requests refused, by reason (unauthorised, malformed, too_many_alerts, body_timeout, not_recorded, no_inventory)",
                &["reason"],
            ),
            hook_queued: gauge(
                &r,
                "agentaudit_hook_queued",
                "revoke-hook: revocations waiting or running, all agents together",
            ),
            hook_queue_limit: gauge(
                &r,
                "agentaudit_hook_queue_limit",
                "revoke-hook: revocations one agent may have waiting; more for that agent are refused (queue_full)",
            ),
            redactions: counter_vec(
                &r,
                "agentaudit_redactions_total",
                "Stored rows in which a detector or rule redacted something, by detector",
                &["detector"],
            ),
            unknown_fields: counter(
                &r,
                "agentaudit_unknown_fields_total",
                "Top-level event fields not in schema v1, ignored",
            ),
            rows_written: counter_vec(
                &r,
                "agentaudit_rows_written_total",
                "Rows made durable",
                &["table"],
            ),
            files_written: counter_vec(
                &r,
                "agentaudit_files_written_total",
                "Parquet files made durable",
                &["table"],
            ),
            bytes_written: counter_vec(
                &r,
                "agentaudit_bytes_written_total",
                "Parquet bytes made durable",
                &["table"],
            ),
            flush_seconds,
            flush_failures: counter(
                &r,
                "agentaudit_flush_failures_total",
                "Flushes that failed (the process stops)",
            ),
            partitions_assigned: gauge(
                &r,
                "agentaudit_partitions_assigned",
                "Partitions of the topic this instance owns in its consumer group now",
            ),
            sink_stalled: gauge(
                &r,
                "agentaudit_sink_stalled",
                "1 while the sink cannot make progress (retrying a step, or failed); /readyz answers 503",
            ),
            sink_retries: counter(
                &r,
                "agentaudit_sink_retries_total",
                "Sink steps retried after an I/O error",
            ),
            staged_files_open: gauge(
                &r,
                "agentaudit_staged_files_open",
                "Staged Parquet files open for appends",
            ),
            staged_files_limit: gauge(
                &r,
                "agentaudit_staged_files_limit",
                "Most staged files open at once (sink.max_open_files, at most a quarter of the descriptor limit)",
            ),
            staged_files_closed_early: counter(
                &r,
                "agentaudit_staged_files_closed_early_total",
                "Staged files closed before their commit to stay within the open-file limit",
            ),
            buffered_bytes: gauge(
                &r,
                "agentaudit_buffered_bytes",
                "Estimated bytes of rows waiting for the next flush",
            ),
            buffered_rows: gauge(
                &r,
                "agentaudit_buffered_rows",
                "Rows waiting for the next flush",
            ),
            memory_budget_bytes: gauge(
                &r,
                "agentaudit_memory_budget_bytes",
                "Configured memory budget for buffered data",
            ),
            queue_batches: gauge(
                &r,
                "agentaudit_queue_batches",
                "Message batches queued between consumer and writer",
            ),
            queue_capacity: gauge(
                &r,
                "agentaudit_queue_capacity_batches",
                "Capacity of the consumer-to-writer queue",
            ),
            consumer_lag: gauge_vec(
                &r,
                "agentaudit_consumer_lag",
                "Messages behind the partition high watermark, as librdkafka reports it",
                &["topic", "partition"],
            ),
            committed_offset: gauge_vec(
                &r,
                "agentaudit_committed_offset",
                "Last offset committed to Kafka after its rows were durable",
                &["topic", "partition"],
            ),
            commit_failures: counter(
                &r,
                "agentaudit_commit_failures_total",
                "Kafka offset commits that failed",
            ),
            http_connections: gauge(
                &r,
                "agentaudit_http_connections",
                "Open connections to the metrics and health server",
            ),
            http_connections_limit: gauge(
                &r,
                "agentaudit_http_connections_limit",
                "Most connections the metrics and health server holds at once",
            ),
            http_connections_refused: counter(
                &r,
                "agentaudit_http_connections_refused_total",
                "Connections closed on accept because every slot was taken",
            ),
            dropped_on_revoke: counter(
                &r,
                "agentaudit_messages_dropped_on_revoke_total",
                "Messages polled but not yet handed over when their partitions were revoked; consumed again from the committed offset",
            ),
            recovered_renames: counter(
                &r,
                "agentaudit_recovered_renames_total",
                "Files of a journaled flush renamed into place at start-up",
            ),
            discarded_staged_files: counter(
                &r,
                "agentaudit_discarded_staged_files_total",
                "Staged files of an unjournaled flush discarded at start-up (their messages are consumed again)",
            ),
            alerts: counter_vec(
                &r,
                "agentaudit_alerts_total",
                "Alerts fired, by rule and severity",
                &["rule", "severity"],
            ),
            alert_active: gauge_vec(
                &r,
                "agentaudit_alert_active",
                "1 while an alert's condition holds (labels capped; overflow is `other`)",
                &["rule", "severity", "tenant", "agent", "tool"],
            ),
            label_overflow: counter(
                &r,
                "agentaudit_alert_label_overflow_total",
                "Alert label values folded into `other` because a label reached its cap",
            ),
            baseline_keys: gauge(
                &r,
                "agentaudit_baseline_keys",
                "Keys with a frequency baseline",
            ),
            baseline_max_keys: gauge(
                &r,
                "agentaudit_baseline_max_keys",
                "Configured limit of baseline keys",
            ),
            baseline_profiles: gauge(
                &r,
                "agentaudit_baseline_profiles",
                "Weekly shapes in use (tenants and their tools; agents borrow them)",
            ),
            baseline_max_profiles: gauge(
                &r,
                "agentaudit_baseline_max_profiles",
                "Configured limit of weekly shapes",
            ),
            burst_tables: gauge(
                &r,
                "agentaudit_baseline_burst_tables",
                "Weekly shapes that also keep recurring within-hour bursts (limit 4096)",
            ),
            burst_tables_refused: counter(
                &r,
                "agentaudit_baseline_burst_tables_refused_total",
                "Burst tables not started because the limit was reached",
            ),
            silence_watched: gauge(
                &r,
                "agentaudit_silence_watched_tenants",
                "Tenants whose silence is watched (limit agentaudit::detect::MAX_SILENCE_WATCH, 10000)",
            ),
            silence_watch_refused: counter(
                &r,
                "agentaudit_silence_watch_refused_total",
                "Calls of busy tenants left unwatched for silence because the watch was full",
            ),
            baseline_evictions: counter(
                &r,
                "agentaudit_baseline_evictions_total",
                "Baseline keys evicted as least recently seen",
            ),
            baseline_late: counter(
                &r,
                "agentaudit_baseline_late_calls_total",
                "Calls more than 3 buckets late for their key, left out of the baselines (still stored)",
            ),
            detector_evictions: counter(
                &r,
                "agentaudit_detector_state_evictions_total",
                "Workflow, rate-limit, credential, failure-share and alert state dropped to stay bounded",
            ),
            active_alerts: gauge(&r, "agentaudit_active_alerts", "Alerts currently active"),
            policy_loaded: gauge(
                &r,
                "agentaudit_policy_loaded",
                "1 when a policy file is in force",
            ),
            policy_reloads: counter(
                &r,
                "agentaudit_policy_reloads_total",
                "Policy file reloads that took effect",
            ),
            policy_reload_failures: counter(
                &r,
                "agentaudit_policy_reload_failures_total",
                "Policy file reloads refused (the previous policy stays in force)",
            ),
            inventory_review_overdue: gauge_vec(
                &r,
                "agentaudit_inventory_review_overdue",
                "1 for each registered agent whose review date has passed",
                &["agent"],
            ),
            alertmanager_queue_depth: gauge(
                &r,
                "agentaudit_alertmanager_queue_depth",
                "Alert changes waiting to be pushed to Alertmanager",
            ),
            alertmanager_queue_capacity: gauge(
                &r,
                "agentaudit_alertmanager_queue_capacity",
                "Capacity of the Alertmanager push queue",
            ),
            alertmanager_sent: counter(
                &r,
                "agentaudit_alertmanager_sent_total",
                "Alerts accepted by Alertmanager (re-sends included)",
            ),
            alertmanager_failures: counter(
                &r,
                "agentaudit_alertmanager_failures_total",
                "Failed pushes to Alertmanager (retried with backoff)",
            ),
            alertmanager_dropped: counter(
                &r,
                "agentaudit_alertmanager_dropped_total",
                "Alert changes dropped because the push queue or the pending set was full (oldest first)",
            ),
            alertmanager_rejected: counter(
                &r,
                "agentaudit_alertmanager_rejected_total",
                "Alerts Alertmanager refused one by one (4xx), logged and not retried",
            ),
            baseline_observed: gauge_vec(
                &r,
                "agentaudit_baseline_observed_calls",
                "Calls in the newest closed bucket, for the busiest baseline keys",
                &["kind", "tenant", "agent", "tool"],
            ),
            baseline_expected: {
                let g = GaugeVec::new(
                    Opts::new(
                        "agentaudit_baseline_expected_calls",
                        "Calls the baseline expected in that bucket, for the same keys",
                    ),
                    &["kind", "tenant", "agent", "tool"],
                )
                .unwrap_or_else(|e| panic!("metric agentaudit_baseline_expected_calls: {e}"));
                r.register(Box::new(g.clone()))
                    .unwrap_or_else(|e| panic!("metric agentaudit_baseline_expected_calls: {e}"));
                g
            },
            family_names: r.names.take(),
            registry: r.registry,
        }
    }

    /// The `partition` label for a partition, capped so a topic with a huge
    /// partition count cannot blow up the series count.
    pub fn partition_label(&self, partition: i32) -> String {
        if i64::from(partition) < MAX_PARTITION_SERIES {
            partition.to_string()
        } else {
            "other".to_owned()
        }
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a bug.
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
