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
