//! Overrides own the sources above the file: `AGENTAUDIT_*` variables and
//! command-line flags, applied over the parsed file in that order.

use super::*;

/// Settings that flags and `AGENTAUDIT_*` variables may override; `None`
/// leaves the file's (or the default) value in force.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub brokers: Option<String>,
    pub topic: Option<String>,
    pub input_format: Option<InputFormat>,
    /// Replace `kafka.extra_topics` when not empty.
    pub extra_topics: Vec<TopicInput>,
    pub group: Option<String>,
    pub kafka_options: Vec<(String, String)>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub hash_key: Option<String>,
    pub policy_file: Option<PathBuf>,
    pub alertmanager_url: Option<String>,
}

impl Config {
    /// Loads the file (when given), applies overrides and validates.
    pub fn load(file: Option<&Path>, o: Overrides) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if o.brokers.is_some() {
            cfg.kafka.brokers = o.brokers;
        }
        if let Some(t) = o.topic {
            cfg.kafka.topic = t;
        }
        if let Some(f) = o.input_format {
            cfg.kafka.input_format = f;
        }
        if !o.extra_topics.is_empty() {
            cfg.kafka.extra_topics = o.extra_topics;
        }
        if let Some(g) = o.group {
            cfg.kafka.group = g;
        }
        cfg.kafka.options.extend(o.kafka_options);
        if let Some(d) = o.data_dir {
            cfg.sink.data_dir = d;
        }
        if let Some(l) = o.listen {
            cfg.serve.listen = l;
        }
        if o.hash_key.is_some() {
            cfg.redact.hash_key = o.hash_key;
        }
        if o.policy_file.is_some() {
            cfg.detect.policy_file = o.policy_file;
        }
        if o.alertmanager_url.is_some() {
            cfg.detect.alertmanager_url = o.alertmanager_url;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Parses a `-X key=value` librdkafka property.
pub fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// Parses a `--extra-topic NAME=FORMAT` (FORMAT: v1, otlp_proto, otlp_json).
pub fn parse_topic_input(s: &str) -> Result<TopicInput, String> {
    let (topic, format) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not TOPIC=FORMAT"))?;
    if topic.trim().is_empty() {
        return Err(format!("`{s}` names no topic"));
    }
    Ok(TopicInput {
        topic: topic.trim().to_owned(),
        input_format: format.trim().parse()?,
    })
}
