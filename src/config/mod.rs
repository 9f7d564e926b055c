//! Config owns the one typed configuration: defaults, then a TOML file, then
//! `AGENTAUDIT_*` environment variables and command-line flags, validated
//! once at start-up so that nothing later has to second-guess a setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::decode::DecodeLimits;
pub use crate::decode::InputFormat;
use crate::error::ConfigError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub decode: DecodeConfig,
    pub redact: RedactConfig,
    pub sink: SinkConfig,
    pub serve: ServeConfig,
    pub detect: DetectConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers; absent means "start the embedded broker".
    pub brokers: Option<String>,
    pub topic: String,
    /// How the messages of `topic` are encoded: v1 JSON events, or the
    /// OpenTelemetry Collector's `otlp_proto` / `otlp_json` trace exports.
    pub input_format: InputFormat,
    /// More topics the same consumer reads, each with its own format: say
    /// a v1 topic and the Collector's `otlp_spans` at once.
    pub extra_topics: Vec<TopicInput>,
    pub group: String,
    /// Partitions of the topic the embedded broker creates.
    pub embedded_partitions: i32,
    /// librdkafka properties passed through as they are (`-X key=value`).
    pub options: BTreeMap<String, String>,
}

/// One consumed topic and how its messages are encoded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicInput {
    pub topic: String,
    #[serde(default)]
    pub input_format: InputFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    pub max_event_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
    pub output_preview_chars: usize,
    /// Clock skew allowed: `ts` further than this after arrival is
    /// dead-lettered, so a producer cannot drag event time ahead.
    pub max_future_secs: i64,
    /// How OpenTelemetry spans become events (`otlp_*` input formats).
    pub otlp: OtlpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Bytes of one Kafka message beyond which it is dead-lettered unread.
    pub max_message_bytes: usize,
    /// Spans in one Kafka message beyond which the message is dead-lettered.
    pub max_spans_per_message: usize,
    /// Attributes of one resource beyond which the message is dead-lettered.
    pub max_resource_attributes: usize,
    /// Memory decoding one message may hold (estimated before decoding,
    /// from its counted values); beyond it the message is dead-lettered.
    pub max_decoded_bytes: usize,
    /// Attributes on one span beyond which the span is dead-lettered.
    pub max_attributes_per_span: usize,
    /// The span or resource attribute that names the tenant.
    pub tenant_attribute: String,
    /// The tenant of spans that carry no `tenant_attribute`; without it
    /// such a span is dead-lettered (`missing_field: tenant`).
    pub tenant_fallback: Option<String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        let d = crate::decode::otlp::OtlpOptions::default();
        OtlpConfig {
            max_message_bytes: d.max_message_bytes,
            max_spans_per_message: d.max_spans,
            max_resource_attributes: d.max_resource_attributes,
            max_decoded_bytes: d.max_decoded_bytes,
            max_attributes_per_span: d.max_attributes,
            tenant_attribute: d.tenant_attribute,
            tenant_fallback: d.tenant_fallback,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldAction {
    /// Store as received, unscanned: only for fields known to be safe.
    Keep,
    Drop,
    Mask,
    /// Replace by an HMAC-SHA256 under `redact.hash_key`, so equal values
    /// still join without being readable.
    Hash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRuleConfig {
    pub path: String,
    pub action: FieldAction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    pub name: String,
    pub regex: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactConfig {
    /// Extra key-name fragments whose values are always secret.
    pub secret_key_names: Vec<String>,
    pub fields: Vec<FieldRuleConfig>,
    pub patterns: Vec<PatternConfig>,
    /// Key for `hash` field rules; prefer `AGENTAUDIT_REDACT_HASH_KEY`.
    pub hash_key: Option<String>,
    pub dead_letter_raw_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub data_dir: PathBuf,
    /// Roll (commit) the staged files when one reaches this many bytes on
    /// disk…
    pub max_file_bytes: usize,
    /// …or when the oldest row not yet committed is this old.
    pub max_file_age_secs: u64,
    /// Upper bound on memory held by buffered rows and in-flight messages.
    pub memory_budget_bytes: usize,
    pub zstd_level: i32,
    pub row_group_rows: usize,
    /// Most staged files open at once; the least recently written is closed
    /// early beyond it. Lowered to a quarter of `ulimit -n` when that is less.
    pub max_open_files: usize,
    /// How long a failing sink step (journal, rename, directory fsync) is
    /// retried, with `/readyz` at 503, before the process exits non-zero.
    pub stall_timeout_secs: u64,
    /// S3 settings over the `AWS_*` environment, for an `s3://` data_dir.
    pub object_store: crate::lake::ObjectStoreConfig,
    /// Local scratch space for staged files before they are uploaded to a
    /// shared lake; the system's temporary directory when unset.
    pub spool_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub listen: String,
    /// A stop (SIGTERM) that has not finished flushing, committing and
    /// leaving the group after this long exits non-zero anyway: with the
    /// group coordinator down, the final commit and leave could wait for
    /// ever. What was flushed is durable; the rest is consumed again.
    pub shutdown_timeout_secs: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            topic: "agent-events".into(),
            input_format: InputFormat::V1,
            extra_topics: Vec::new(),
            group: "agentaudit".into(),
            embedded_partitions: 4,
            options: BTreeMap::new(),
        }
    }
}

impl Default for DecodeConfig {
    fn default() -> Self {
        let d = DecodeLimits::default();
        DecodeConfig {
            max_event_bytes: d.max_bytes,
            max_depth: d.max_depth,
            max_attributes: d.max_attributes,
            output_preview_chars: d.output_preview_chars,
            max_future_secs: d.max_future_ms / 1000,
            otlp: OtlpConfig::default(),
        }
    }
}

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            secret_key_names: Vec::new(),
            fields: Vec::new(),
            patterns: Vec::new(),
            hash_key: None,
            dead_letter_raw_chars: 4096,
        }
    }
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            data_dir: PathBuf::from("./data"),
            max_file_bytes: 128 * 1024 * 1024,
            max_file_age_secs: 60,
            memory_budget_bytes: 512 * 1024 * 1024,
            zstd_level: 1,
            row_group_rows: 128 * 1024,
            max_open_files: 256,
            stall_timeout_secs: 60,
            object_store: Default::default(),
            spool_dir: None,
        }
    }
}

/// Detection: baselines, rules and where alerts go. Every rule is on unless
/// listed in `disabled_rules`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    pub enabled: bool,
    /// The inventory and policy file; without it only the rules that need
    /// no policy run (spikes, secrets in input, new tools, shared credentials).
    pub policy_file: Option<PathBuf>,
    /// Event-time bucket of the baselines and rate limits.
    pub bucket_secs: u64,
    /// How far behind the newest event time an event may arrive and still
    /// count in its own bucket.
    pub allowed_lateness_secs: u64,
    /// Half-life of a key's level and dispersion: how fast a new normal
    /// (an onboarding, a step change) is learned.
    pub level_halflife_secs: u64,
    /// Memory of the weekly shape, in weeks: each hour-of-week slot learns
    /// from about this many of its past visits.
    pub season_weeks: f64,
    /// Buckets a key must have seen before its statistical rules may alert.
    pub warmup_buckets: u32,
    /// Calls in one bucket below which no spike alerts.
    pub min_count: u32,
    /// Observed over expected below which no spike alerts (and expected over
    /// observed below which no single-bucket drop alerts).
    pub min_ratio: f64,
    /// -log10 of the tail probability at which a spike or drop alerts.
    pub min_score: f64,
    /// CUSUM threshold in nats: sustained rises, drops and failure shares.
    pub cusum_threshold: f64,
    /// Expected calls per bucket below which a single-bucket drop is not
    /// tested (the CUSUM still is).
    pub min_drop_expected: f64,
    /// Learning weight of a bucket that alerted, relative to a quiet one.
    pub alerting_weight: f64,
    /// Calibration per key: a statistical signal opens an alert only when
    /// its evidence is this many times the largest the key itself reached
    /// lately (in base thresholds: `min_score`, `cusum_threshold`), so a
    /// bursty key needs more than a steady one. 0 turns it off.
    pub calibration_margin: f64,
    /// Half-life of that largest recent evidence: how long a burst (or an
    /// alert) raises its key's bar.
    pub calibration_halflife_secs: u64,
    /// The most base thresholds a key's bar may rise to (1 to 16): however
    /// noisy a key, evidence this many times `min_score` (or
    /// `cusum_threshold`) alerts.
    pub calibration_max: f64,
    /// Calls a failure-rate key needs before `error_rate_spike` may fire.
    pub error_min_calls: u32,
    pub max_keys: usize,
    /// Weekly shapes kept (336 bytes each); keys beyond use a flat level.
    pub max_profiles: usize,
    /// An alert stays active this many buckets after its condition was last
    /// seen, then resolves.
    pub hold_buckets: u32,
    /// A tenant's alert within this long of its incident's last alert joins
    /// that incident (one `incident_id`, one page) instead of opening one.
    pub incident_gap_secs: u64,
    /// `new_tool_for_tenant` stays quiet for this many buckets after a
    /// tenant is first seen (a day: a new tenant's rarer tools show up over
    /// its first hours), and a tool counts as new for an agent only once
    /// the agent is this old.
    pub new_tool_warmup_buckets: u32,
    /// `exfiltration_sequence`: an egress within this many calls of a
    /// sensitive read in the same workflow.
    pub exfiltration_window_steps: u32,
    /// `injection_then_unusual_call`: an unusual call within this many calls
    /// of a tool result with injection markers in the same workflow.
    pub injection_window_steps: u32,
    pub max_workflows: usize,
    pub max_active_alerts: usize,
    pub disabled_rules: Vec<String>,
    /// Mechanisms of the frequency model switched off, for an ablation
    /// (`agentaudit eval --ablation` measures what each earns): any of
    /// `crate::detect::baseline::ABLATIONS`. Empty in production.
    pub ablate: Vec<String>,
    /// Alertmanager base URL (`http://host:9093`): alerts are pushed to its
    /// `/api/v2/alerts` as they fire and resolve.
    pub alertmanager_url: Option<String>,
    pub alertmanager_queue: usize,
    /// Hours of stored history that warm the baselines at start-up.
    pub warm_hours: u32,
    pub runbook_base_url: String,
    /// Distinct values per metric label before new ones become `other`.
    pub max_label_values: usize,
}

impl DetectConfig {
    /// The baseline model's tuning, in its own per-bucket terms.
    pub fn baseline_config(&self, score_closed: bool) -> crate::detect::baseline::BaselineConfig {
        let buckets_per_hour = (3600.0 / self.bucket_secs.max(1) as f64).max(1.0);
        crate::detect::baseline::BaselineConfig {
            bucket_secs: self.bucket_secs.max(1),
            level_alpha: crate::detect::baseline::alpha_for_halflife(
                self.bucket_secs,
                self.level_halflife_secs,
            ),
            season_weight: (1.0 / (self.season_weeks * buckets_per_hour)).min(1.0),
            warmup_buckets: self.warmup_buckets,
            min_count: self.min_count,
            min_ratio: self.min_ratio,
            min_score: self.min_score,
            cusum_threshold: self.cusum_threshold,
            min_drop_expected: self.min_drop_expected,
            alerting_weight: self.alerting_weight,
            calibration_margin: if self.ablate.iter().any(|m| m == "calibration") {
                0.0
            } else {
                self.calibration_margin
            },
            calibration_max: self.calibration_max,
            calibration_decay: 1.0
                - crate::detect::baseline::alpha_for_halflife(
                    self.bucket_secs,
                    self.calibration_halflife_secs,
                ),
            max_keys: self.max_keys,
            max_profiles: self.max_profiles,
            ablate: crate::detect::baseline::Ablation::from_names(&self.ablate),
            score_closed,
        }
    }
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            enabled: true,
            policy_file: None,
            bucket_secs: 60,
            allowed_lateness_secs: 120,
            level_halflife_secs: 3 * 3600,
            season_weeks: 3.0,
            warmup_buckets: 60,
            min_count: 5,
            min_ratio: 1.5,
            min_score: 8.0,
            cusum_threshold: 20.0,
            min_drop_expected: 5.0,
            alerting_weight: 0.25,
            calibration_margin: 1.5,
            calibration_halflife_secs: 86_400,
            calibration_max: 8.0,
            error_min_calls: 30,
            max_keys: 1_000_000,
            max_profiles: 65_536,
            hold_buckets: 5,
            incident_gap_secs: 3600,
            new_tool_warmup_buckets: 1440,
            exfiltration_window_steps: 5,
            injection_window_steps: 5,
            max_workflows: 100_000,
            max_active_alerts: 10_000,
            disabled_rules: Vec::new(),
            ablate: Vec::new(),
            alertmanager_url: None,
            alertmanager_queue: 10_000,
            warm_hours: 24,
            runbook_base_url: "https://github.com/agentaudit/agentaudit/blob/main/docs/runbooks.md"
                .into(),
            max_label_values: 200,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:9464".into(),
            shutdown_timeout_secs: 30,
        }
    }
}

/// toml reports a byte offset; this is the line an editor shows for it.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Reads a TOML file; unknown keys are refused so a typo cannot silently
    /// leave a default in force.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_owned(),
            }
        })
    }

    fn validate_detect(&self) -> Result<(), ConfigError> {
        let d = &self.detect;
        if !(1..=86_400).contains(&d.bucket_secs) {
            return Err(ConfigError::invalid(
                "detect.bucket_secs",
                "must be 1 to 86400",
            ));
        }
        if d.level_halflife_secs < d.bucket_secs || d.level_halflife_secs > 90 * 86_400 {
            return Err(ConfigError::invalid(
                "detect.level_halflife_secs",
                "must be at least one bucket and at most 90 days",
            ));
        }
        if !(d.season_weeks >= 0.5 && d.season_weeks <= 52.0) {
            return Err(ConfigError::invalid(
                "detect.season_weeks",
                "must be 0.5 to 52",
            ));
        }
        let tuned = d.cusum_threshold.is_finite()
            && d.cusum_threshold > 0.0
            && d.min_drop_expected.is_finite()
            && d.min_drop_expected >= 0.0
            && (0.0..=1.0).contains(&d.alerting_weight);
        if !tuned {
            return Err(ConfigError::invalid(
                "detect.cusum_threshold / min_drop_expected / alerting_weight",
                "cusum_threshold must be positive, min_drop_expected at least 0, alerting_weight 0 to 1",
            ));
        }
        if !(d.calibration_margin == 0.0 || (1.0..=10.0).contains(&d.calibration_margin))
            || d.calibration_halflife_secs < d.bucket_secs
            || d.calibration_halflife_secs > 90 * 86_400
            || !(1.0..=crate::detect::baseline::MAX_CALIBRATED).contains(&d.calibration_max)
        {
            return Err(ConfigError::invalid(
                "detect.calibration_margin / calibration_max / calibration_halflife_secs",
                "calibration_margin must be 0 (off) or 1 to 10, calibration_max 1 to 16, the half-life one bucket to 90 days",
            ));
        }
        if let Some(bad) = d
            .ablate
            .iter()
            .find(|m| !crate::detect::baseline::ABLATIONS.contains(&m.as_str()))
        {
            return Err(ConfigError::invalid(
                "detect.ablate",
                format!(
                    "`{bad}` is not a mechanism; known: {}",
                    crate::detect::baseline::ABLATIONS.join(", ")
                ),
            ));
        }
        if d.incident_gap_secs > 7 * 86_400 {
            return Err(ConfigError::invalid(
                "detect.incident_gap_secs",
                "must be at most 7 days",
            ));
        }
        if d.max_profiles > d.max_keys {
            return Err(ConfigError::invalid(
                "detect.max_profiles",
                "must not exceed detect.max_keys",
            ));
        }
        if d.min_ratio < 1.0 || !d.min_score.is_finite() || d.min_score <= 0.0 {
            return Err(ConfigError::invalid(
                "detect.min_ratio / detect.min_score",
                "min_ratio must be at least 1 and min_score positive",
            ));
        }
        if !(1..=100_000_000).contains(&d.max_keys) || d.max_workflows == 0 {
            return Err(ConfigError::invalid(
                "detect.max_keys / detect.max_workflows",
                "must be at least 1 (max_keys at most 100M)",
            ));
        }
        if d.max_active_alerts == 0 || d.alertmanager_queue == 0 || d.max_label_values == 0 {
            return Err(ConfigError::invalid(
                "detect",
                "max_active_alerts, alertmanager_queue and max_label_values must be at least 1",
            ));
        }
        for rule in &d.disabled_rules {
            if !crate::detect::RULES.iter().any(|r| r.name == rule) {
                return Err(ConfigError::invalid(
                    "detect.disabled_rules",
                    format!("no rule is named `{rule}`"),
                ));
            }
        }
        if let Some(url) = &d.alertmanager_url
            && !url.starts_with("http://")
        {
            return Err(ConfigError::invalid(
                "detect.alertmanager_url",
                "must be an http:// URL (put a TLS proxy in front for https)",
            ));
        }
        Ok(())
    }

    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_bytes: self.decode.max_event_bytes,
            max_depth: self.decode.max_depth,
            max_attributes: self.decode.max_attributes,
            output_preview_chars: self.decode.output_preview_chars,
            max_future_ms: self.decode.max_future_secs.saturating_mul(1000),
            ..DecodeLimits::default()
        }
    }

    pub fn otlp_options(&self) -> crate::decode::otlp::OtlpOptions {
        let o = &self.decode.otlp;
        crate::decode::otlp::OtlpOptions {
            max_message_bytes: o.max_message_bytes,
            max_spans: o.max_spans_per_message,
            max_resource_attributes: o.max_resource_attributes,
            max_decoded_bytes: o.max_decoded_bytes,
            max_attributes: o.max_attributes_per_span,
            tenant_attribute: o.tenant_attribute.clone(),
            tenant_fallback: o.tenant_fallback.clone(),
            stored_attributes: self.decode.max_attributes,
            attribute_value_chars: DecodeLimits::default().max_attribute_value_chars,
        }
    }

    /// Every consumed topic with its format, `kafka.topic` first.
    pub fn inputs(&self) -> Vec<TopicInput> {
        let first = TopicInput {
            topic: self.kafka.topic.clone(),
            input_format: self.kafka.input_format,
        };
        std::iter::once(first)
            .chain(self.kafka.extra_topics.iter().cloned())
            .collect()
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.serve
            .listen
            .parse()
            .map_err(|e| ConfigError::invalid("serve.listen", format!("{e}")))
    }
}

mod overrides;
#[cfg(test)]
mod tests;
mod validate;

pub use overrides::{Overrides, parse_kafka_option, parse_topic_input};
