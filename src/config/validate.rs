//! Validate owns checking a loaded config once, whole: each refusal names
//! the setting and the reason, so the pipeline can trust every value.

use super::*;

impl Config {
    /// Checks every setting once, so that the pipeline can trust them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.topic.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.topic", "must not be empty"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for input in self.inputs() {
            if input.topic.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "kafka.extra_topics",
                    "a topic name must not be empty",
                ));
            }
            if !seen.insert(input.topic.clone()) {
                return Err(ConfigError::invalid(
                    "kafka.extra_topics",
                    format!("`{}` is listed twice", input.topic),
                ));
            }
        }
        if k.extra_topics.len() > 15 {
            return Err(ConfigError::invalid(
                "kafka.extra_topics",
                "at most 15 topics besides kafka.topic",
            ));
        }
        if !k.extra_topics.is_empty()
            && matches!(
                crate::lake::Location::parse(&self.sink.data_dir),
                Ok(crate::lake::Location::S3 { .. })
            )
        {
            return Err(ConfigError::invalid(
                "kafka.extra_topics",
                "a shared lake takes one topic per group of instances: run another group (its own kafka.group) for the other topic, writing the same lake",
            ));
        }
        let o = &self.decode.otlp;
        if o.max_spans_per_message == 0
            || o.max_attributes_per_span == 0
            || o.max_resource_attributes == 0
            || o.max_message_bytes == 0
            || o.max_decoded_bytes < o.max_message_bytes
        {
            return Err(ConfigError::invalid(
                "decode.otlp",
                "max_message_bytes, max_spans_per_message, max_attributes_per_span and \
                 max_resource_attributes must be at least 1, and max_decoded_bytes at least \
                 max_message_bytes",
            ));
        }
        if o.tenant_attribute.trim().is_empty() {
            return Err(ConfigError::invalid(
                "decode.otlp.tenant_attribute",
                "must not be empty",
            ));
        }
        if k.group.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.group", "must not be empty"));
        }
        if let Some(b) = &k.brokers
            && b.trim().is_empty()
        {
            return Err(ConfigError::invalid("kafka.brokers", "must not be empty"));
        }
        if !(1..=256).contains(&k.embedded_partitions) {
            return Err(ConfigError::invalid(
                "kafka.embedded_partitions",
                "must be 1 to 256",
            ));
        }
        for reserved in ["enable.auto.commit", "enable.auto.offset.store", "group.id"] {
            if k.options.contains_key(reserved) {
                return Err(ConfigError::invalid(
                    format!("kafka.options.{reserved}"),
                    "is managed by agentaudit: offsets are committed only after data is durable",
                ));
            }
        }
        let d = &self.decode;
        if !(1024..=64 * 1024 * 1024).contains(&d.max_event_bytes) {
            return Err(ConfigError::invalid(
                "decode.max_event_bytes",
                "must be 1 KiB to 64 MiB",
            ));
        }
        if !(2..=128).contains(&d.max_depth) {
            return Err(ConfigError::invalid("decode.max_depth", "must be 2 to 128"));
        }
        if d.output_preview_chars > 4096 {
            return Err(ConfigError::invalid(
                "decode.output_preview_chars",
                "must be at most 4096",
            ));
        }
        if d.max_future_secs < 0 {
            return Err(ConfigError::invalid(
                "decode.max_future_secs",
                "must be ≥ 0",
            ));
        }
        let s = &self.sink;
        if s.max_file_bytes < 1024 * 1024 {
            return Err(ConfigError::invalid(
                "sink.max_file_bytes",
                "must be ≥ 1 MiB",
            ));
        }
        if s.memory_budget_bytes < 4 * 1024 * 1024 {
            return Err(ConfigError::invalid(
                "sink.memory_budget_bytes",
                "must be ≥ 4 MiB",
            ));
        }
        if s.max_file_age_secs == 0 {
            return Err(ConfigError::invalid(
                "sink.max_file_age_secs",
                "must be ≥ 1",
            ));
        }
        if !(1..=3600).contains(&self.serve.shutdown_timeout_secs) {
            return Err(ConfigError::invalid(
                "serve.shutdown_timeout_secs",
                "must be 1 to 3600",
            ));
        }
        if !(1..=65_536).contains(&s.max_open_files) {
            return Err(ConfigError::invalid(
                "sink.max_open_files",
                "must be 1 to 65536",
            ));
        }
        if !(1..=3600).contains(&s.stall_timeout_secs) {
            return Err(ConfigError::invalid(
                "sink.stall_timeout_secs",
                "must be 1 to 3600",
            ));
        }
        if !(1..=22).contains(&s.zstd_level) {
            return Err(ConfigError::invalid("sink.zstd_level", "must be 1 to 22"));
        }
        if s.row_group_rows < 1024 {
            return Err(ConfigError::invalid(
                "sink.row_group_rows",
                "must be ≥ 1024",
            ));
        }
        let r = &self.redact;
        for rule in &r.fields {
            let top = rule.path.split('.').next().unwrap_or_default();
            let nested_ok = matches!(top, "input" | "attributes");
            let leaf_ok = matches!(
                rule.path.as_str(),
                "actor" | "error_type" | "output_preview"
            );
            if !(leaf_ok || nested_ok && rule.path.contains('.'))
                || rule.path.split('.').any(str::is_empty)
            {
                return Err(ConfigError::invalid(
                    "redact.fields.path",
                    format!(
                        "`{}` must be actor, error_type, output_preview, input.<key>… or attributes.<key>",
                        rule.path
                    ),
                ));
            }
        }
        if r.dead_letter_raw_chars > 1024 * 1024 {
            return Err(ConfigError::invalid(
                "redact.dead_letter_raw_chars",
                "must be at most 1 MiB",
            ));
        }
        if let Some(key) = &r.hash_key {
            if key == "change-me" {
                return Err(ConfigError::invalid(
                    "redact.hash_key",
                    "is the example's placeholder; set a secret of your own, or remove it to have one generated into the data directory",
                ));
            }
            if key.len() < 16 {
                return Err(ConfigError::invalid(
                    "redact.hash_key",
                    "must be at least 16 characters: a short key is guessed, and with it every digest reversed",
                ));
            }
        }
        // Compiling the redactor checks every custom pattern; without a
        // configured key, `serve` uses the dataset's generated one.
        let mut r = r.clone();
        r.hash_key
            .get_or_insert_with(|| "generated-at-start".into());
        crate::redact::Redactor::new(&r)?;
        self.listen_addr()?;
        self.validate_detect()?;
        Ok(())
    }
}
