//! Tests of the typed config: the example file, refusals with their line
//! or setting, and the order of the sources.

use super::*;

#[test]
fn example_config_parses_and_validates() {
    let text = include_str!("../../agentaudit.example.toml");
    let cfg = Config::from_toml(text).expect("example parses");
    cfg.validate().expect("example validates");
}

#[test]
fn an_unknown_ablation_is_refused_naming_the_known_ones() {
    let cfg = Config::from_toml("[detect]\nablate = [\"burst_tables\", \"bursts\"]\n").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("`bursts`") && err.contains("surge_cusum"),
        "{err}"
    );
    let cfg = Config::from_toml("[detect]\nablate = [\"calibration\"]\n").unwrap();
    cfg.validate().expect("valid");
    assert_eq!(cfg.detect.baseline_config(false).calibration_margin, 0.0);
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let err = Config::from_toml("[sink]\ndata_dir = \"x\"\nmax_fil_bytes = 3\n").unwrap_err();
    assert!(err.starts_with("line 3:"), "{err}");
    assert!(err.contains("max_fil_bytes"), "{err}");
}

#[test]
fn managed_kafka_options_are_refused() {
    let cfg = Config::from_toml("[kafka.options]\n\"enable.auto.commit\" = \"true\"\n").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("enable.auto.commit"), "{err}");
}

#[test]
fn the_placeholder_and_short_hash_keys_are_refused() {
    for key in ["change-me", "short"] {
        let cfg = Config::from_toml(&format!("[redact]\nhash_key = \"{key}\"\n")).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("redact.hash_key"), "{err}");
    }
    // A hash rule without a key uses the dataset's generated one.
    let cfg =
        Config::from_toml("[[redact.fields]]\npath = \"actor\"\naction = \"hash\"\n").unwrap();
    cfg.validate().expect("valid");
}

#[test]
fn bad_custom_pattern_is_refused() {
    let cfg =
        Config::from_toml("[[redact.patterns]]\nname = \"x\"\nregex = \"(unclosed\"\n").unwrap();
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("pattern `x`")
    );
}

#[test]
fn topics_and_their_formats_come_from_the_file_and_the_flags() {
    let cfg = Config::from_toml(
        "[kafka]\ntopic = \"agent-events\"\n\n[[kafka.extra_topics]]\ntopic = \"otlp_spans\"\ninput_format = \"otlp_proto\"\n",
    )
    .unwrap();
    cfg.validate().expect("valid");
    let inputs = cfg.inputs();
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs[0].input_format, InputFormat::V1);
    assert_eq!(
        (inputs[1].topic.as_str(), inputs[1].input_format),
        ("otlp_spans", InputFormat::OtlpProto)
    );
    // An unknown format is refused with its line.
    let err = Config::from_toml("[kafka]\ninput_format = \"otlp_xml\"\n").unwrap_err();
    assert!(err.starts_with("line 2:"), "{err}");
    // A topic listed twice, and more topics on a shared lake, are refused.
    let twice = Config::from_toml(
        "[kafka]\ntopic = \"a\"\n[[kafka.extra_topics]]\ntopic = \"a\"\ninput_format = \"otlp_json\"\n",
    )
    .unwrap();
    assert!(twice.validate().unwrap_err().to_string().contains("twice"));
    let shared = Config::from_toml(
        "[kafka]\ntopic = \"a\"\n[[kafka.extra_topics]]\ntopic = \"b\"\n[sink]\ndata_dir = \"s3://bucket/lake\"\n",
    )
    .unwrap();
    assert!(
        shared
            .validate()
            .unwrap_err()
            .to_string()
            .contains("one topic per group")
    );
    // Flags: --input-format and --extra-topic NAME=FORMAT.
    let o = Overrides {
        input_format: Some(InputFormat::OtlpJson),
        extra_topics: vec![parse_topic_input("more=v1").unwrap()],
        ..Overrides::default()
    };
    let cfg = Config::load(None, o).unwrap();
    assert_eq!(cfg.kafka.input_format, InputFormat::OtlpJson);
    assert_eq!(cfg.kafka.extra_topics[0].topic, "more");
    assert!(parse_topic_input("more").is_err());
    assert!(parse_topic_input("more=avro").is_err());
}
