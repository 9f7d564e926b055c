//! Redaction tests: every detector with a true positive and a near miss, key
//! rules, field rules, and dead letters.

use super::*;
use crate::config::{FieldRuleConfig, PatternConfig};
use crate::event::{DeadLetterReason, Status};
use std::sync::Arc;

fn redactor() -> Redactor {
    Redactor::new(&RedactConfig::default()).expect("default redactor")
}

fn scan(text: &str) -> (String, Vec<String>) {
    let r = redactor();
    let mut hits = Hits::default();
    let out = r.scan(text, &mut hits).unwrap_or_else(|| text.to_owned());
    (out, r.hit_names(hits))
}

/// (detector, text containing a secret, the secret, a near miss that stays)
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "aws_access_key",
        "key AKIAIOSFODNN7EXAMPLE here",
        "AKIAIOSFODNN7EXAMPLE",
        "AKIAIOSFODNN7EXAMPL",
    ),
    (
        "aws_secret_key",
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_region=eu-west-1 and forty chars wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        "github_token",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a ok",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "ghp_short123",
    ),
    (
        "gitlab_token",
        "token glpat-Az8_kq2Xv9LmNp3QrS7t ok",
        "glpat-Az8_kq2Xv9LmNp3QrS7t",
        "glpat-short",
    ),
    (
        "slack_token",
        "xoxb-263594206564-FGqddMF8t08v8N7Oq4i57vs1",
        "xoxb-263594206564-FGqddMF8t08v8N7Oq4i57vs1",
        "xoxz-263594206564",
    ),
    (
        "stripe_key",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "sk_demo_4eC39HqLyjWDarjtT1zdp7dc",
    ),
    (
        "google_api_key",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
        "AIzaShort",
    ),
    (
        "openai_key",
        "OPENAI sk-proj-abcdefghijklmnopqrstuvwx0123",
        "sk-proj-abcdefghijklmnopqrstuvwx0123",
        "sk-short",
    ),
    (
        "anthropic_key",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        "sk-ant-x",
    ),
    (
        "jwt",
        "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJhbGciOiJIUzI1NiJ9 alone",
    ),
    (
        "private_key",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----",
        "MIIEowIBAAKCAQEA7",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\n-----END PUBLIC KEY-----",
    ),
    (
        "bearer_token",
        "Authorization: Bearer abcDEF123456789xyz",
        "abcDEF123456789xyz",
        "the bearer of bad news",
    ),
    (
        "url_password",
        "postgres://app:hunter2secret@db:5432/x",
        "hunter2secret",
        "https://example.com:8443/path",
    ),
    (
        "secret_assignment",
        "login with password=Tr0ub4dor&3 now",
        "Tr0ub4dor",
        "the password field is empty",
    ),
    (
        "email",
        "write to jane.doe@example.co.uk today",
        "jane.doe@example.co.uk",
        "not an @ address",
    ),
    (
        "credit_card",
        "card 4111 1111 1111 1111 exp",
        "4111 1111 1111 1111",
        "card 4111 1111 1111 1112 exp",
    ),
    (
        "iban",
        "pay GB82WEST12345698765432 now",
        "GB82WEST12345698765432",
        "pay GB82WEST12345698765433 now",
    ),
    (
        "us_ssn",
        "ssn 123-45-6789",
        "123-45-6789",
        "ssn 666-45-6789",
    ),
];

#[test]
fn every_detector_finds_its_secret_and_keeps_its_near_miss() {
    for (name, text, secret, near_miss) in CASES {
        let (out, hits) = scan(text);
        assert!(!out.contains(secret), "{name}: secret survived in {out:?}");
        assert!(
            out.contains(&format!("[REDACTED:{name}]")),
            "{name}: no marker in {out:?}"
        );
        assert!(
            hits.contains(&(*name).to_owned()),
            "{name}: hits were {hits:?}"
        );
        let (kept, hits) = scan(near_miss);
        assert!(
            !hits.contains(&(*name).to_owned()),
            "{name}: near miss {near_miss:?} was redacted as {kept:?}"
        );
    }
}

#[test]
fn epoch_millis_are_not_card_numbers() {
    let (out, hits) = scan("at 1790000000000 and 1790000000001");
    assert!(hits.is_empty(), "{out}");
}

#[test]
fn overlapping_matches_leave_no_fragment() {
    // The JWT contains text the bearer detector also matches.
    let text =
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N";
    let (out, hits) = scan(text);
    assert!(!out.contains("eyJ"), "{out}");
    assert!(!out.contains("dozjg"), "{out}");
    assert!(!hits.is_empty());
}

fn event(input: serde_json::Value) -> Event {
    Event {
        event_id: "e".into(),
        ts_ms: 1_790_000_000_000,
        tenant: "acme".into(),
        agent_id: "a".into(),
        environment: "production".into(),
        tool: "t".into(),
        status: Status::Ok,
        actor: Some("jane@example.com".into()),
        workflow_id: None,
        step: None,
        tool_call_id: None,
        tool_type: None,
        agent_version: None,
        mcp_server: None,
        mcp_server_version: None,
        credential_id: None,
        latency_ms: None,
        error_type: Some("failed for sk_live_4eC39HqLyjWDarjtT1zdp7dc".into()),
        input: Some(input),
        output: None,
        tokens_in: None,
        tokens_out: None,
        approval: None,
        attributes: vec![
            ("api_token".into(), "plain-looking".into()),
            ("note".into(), "mail bob@example.com".into()),
        ],
        unknown_fields: 0,
        output_markers: Default::default(),
        input_markers: Default::default(),
    }
}

fn coords() -> KafkaCoords {
    KafkaCoords {
        topic: Arc::from("t"),
        partition: 0,
        offset: 7,
        kafka_ts_ms: None,
    }
}

#[test]
fn event_fields_are_redacted_and_detectors_recorded() {
    let input = serde_json::json!({
        "query": "find jane@example.com",
        "password": "hunter2",
        "nested": {"client_secret": 12345, "cards": [4111111111111111u64, 42]},
        "max_tokens": 100
    });
    let r = redactor().redact_event(event(input), coords(), 0);
    let stored = format!(
        "{} {} {:?} {:?}",
        r.input_json.as_deref().unwrap_or_default(),
        r.attributes_json.as_deref().unwrap_or_default(),
        r.event.actor,
        r.event.error_type
    );
    for secret in [
        "jane@example.com",
        "hunter2",
        "12345",
        "4111111111111111",
        "plain-looking",
        "bob@example.com",
        "sk_live_",
    ] {
        assert!(!stored.contains(secret), "{secret} survived: {stored}");
    }
    assert!(
        stored.contains("\"max_tokens\":100"),
        "non-secret key kept: {stored}"
    );
    assert!(r.event.input.is_none(), "raw input must not travel on");
    for name in ["credit_card", "email", "secret_key_name", "stripe_key"] {
        assert!(
            r.redactions.contains(&name.to_owned()),
            "{name} missing from {:?}",
            r.redactions
        );
    }
}

#[test]
fn field_rules_keep_drop_mask_and_hash() {
    let cfg = RedactConfig {
        fields: vec![
            FieldRuleConfig {
                path: "actor".into(),
                action: FieldAction::Hash,
            },
            FieldRuleConfig {
                path: "input.keep_me".into(),
                action: FieldAction::Keep,
            },
            FieldRuleConfig {
                path: "input.drop_me".into(),
                action: FieldAction::Drop,
            },
            FieldRuleConfig {
                path: "input.mask_me".into(),
                action: FieldAction::Mask,
            },
        ],
        hash_key: Some("k1".into()),
        ..RedactConfig::default()
    };
    let r = Redactor::new(&cfg).expect("valid");
    let input = serde_json::json!({
        "keep_me": "ops@example.com", "drop_me": "x", "mask_me": "y", "other": "z@example.com"
    });
    let rec = r.redact_event(event(input), coords(), 0);
    let v: serde_json::Value = serde_json::from_str(rec.input_json.as_deref().unwrap()).unwrap();
    assert_eq!(v["keep_me"], "ops@example.com");
    assert!(v.get("drop_me").is_none());
    assert_eq!(v["mask_me"], MASK);
    assert_eq!(v["other"], "[REDACTED:email]");
    let actor = rec.event.actor.clone().unwrap();
    assert!(
        actor.starts_with("hmac:") && !actor.contains("jane"),
        "{actor}"
    );
    // Same key, same value → same pseudonym; another key → another one.
    let again = r.redact_event(event(serde_json::json!({})), coords(), 0);
    assert_eq!(again.event.actor, rec.event.actor);
    let other = Redactor::new(&RedactConfig {
        hash_key: Some("k2".into()),
        ..cfg
    })
    .unwrap();
    let third = other.redact_event(event(serde_json::json!({})), coords(), 0);
    assert_ne!(third.event.actor, rec.event.actor);
}

#[test]
fn custom_patterns_and_secret_key_names_apply() {
    let cfg = RedactConfig {
        patterns: vec![PatternConfig {
            name: "ticket".into(),
            regex: r"TICKET-[0-9]{4}".into(),
        }],
        secret_key_names: vec!["customer_ref".into()],
        ..RedactConfig::default()
    };
    let r = Redactor::new(&cfg).unwrap();
    let rec = r.redact_event(
        event(serde_json::json!({"q": "see TICKET-1234", "customer_ref": "C-9"})),
        coords(),
        0,
    );
    let input = rec.input_json.unwrap();
    assert!(
        input.contains("[REDACTED:ticket]") && !input.contains("1234"),
        "{input}"
    );
    assert!(!input.contains("C-9"), "{input}");
}

#[test]
fn dead_letters_are_redacted_before_truncation() {
    let cfg = RedactConfig {
        dead_letter_raw_chars: 30,
        ..RedactConfig::default()
    };
    let r = Redactor::new(&cfg).unwrap();
    let failure = DecodeFailure {
        reason: DeadLetterReason::InvalidJson,
        detail: "x".into(),
    };
    // The key starts before the cut and ends after it.
    let raw = b"garbage garbage ga AKIAIOSFODNN7EXAMPLE tail";
    let dl = r.redact_dead_letter(Some(raw), failure.clone(), coords(), 0);
    assert!(!dl.raw.contains("AKIA"), "{}", dl.raw);
    assert_eq!(dl.raw.chars().count(), 30);
    assert_eq!(dl.raw_bytes, raw.len() as i64);
    assert_eq!(dl.redactions, vec!["aws_access_key".to_owned()]);

    // Valid JSON with a mistyped field still gets key-name rules.
    let json = br#"{"tenant": 5, "password": "opensesame"}"#;
    let dl = Redactor::new(&RedactConfig::default())
        .unwrap()
        .redact_dead_letter(Some(json), failure, coords(), 0);
    assert!(!dl.raw.contains("opensesame"), "{}", dl.raw);
}

/// An OTLP span names its attributes in name/value pairs, as header lists
/// do: a secret name redacts the pair's value, in dead letters (a refused
/// span is kept as OTLP JSON) and in `input` alike.
#[test]
fn name_value_pairs_with_a_secret_name_are_redacted() {
    let r = Redactor::new(&RedactConfig::default()).unwrap();
    let failure = DecodeFailure {
        reason: DeadLetterReason::TooLarge,
        detail: "span …: 300 attributes".into(),
    };
    let span = br#"{"spanId":"0102030405060708","attributes":[{"key":"gen_ai.tool.name","value":{"stringValue":"lookup"}},{"key":"api_key","value":{"stringValue":"hunter2-opaque"}}]}"#;
    let dl = r.redact_dead_letter(Some(span), failure, coords(), 0);
    assert!(!dl.raw.contains("hunter2"), "{}", dl.raw);
    assert!(dl.raw.contains("lookup"), "other values stay: {}", dl.raw);
    assert_eq!(dl.redactions, vec![SECRET_KEY_RULE.to_owned()]);

    let event = crate::decode::decode(
        Some(br#"{"event_id":"e1","ts":1795852800000,"tenant":"t","agent_id":"a","environment":"production","tool":"http_get","status":"ok","input":{"headers":[{"name":"Authorization","value":"opaque-session-42"},{"name":"Accept","value":"text/html"}]}}"#),
        1_795_852_800_000,
        &crate::decode::DecodeLimits::default(),
    )
    .expect("v1");
    let record = r.redact_event(event, coords(), 0);
    let input = record.input_json.unwrap_or_default();
    assert!(!input.contains("opaque-session-42"), "{input}");
    assert!(input.contains("text/html"), "{input}");
}

/// Dead letters get the same redaction as good events (issue 11): the
/// key-name rule on JSON cut short, and field rules at their event paths.
#[test]
fn dead_letters_get_key_rules_when_cut_short_and_field_rules_by_path() {
    let failure = DecodeFailure {
        reason: DeadLetterReason::InvalidJson,
        detail: "x".into(),
    };
    let r = redactor();
    let cut = br#"{"tenant":"acme","input":{"password":"hunter2-plain","api_key":"abc\"def","note":"ok"},"to"#;
    let dl = r.redact_dead_letter(Some(cut), failure.clone(), coords(), 0);
    for secret in ["hunter2-plain", "abc", "def"] {
        assert!(
            !dl.raw.contains(secret),
            "{secret} in {} {:?}",
            dl.raw,
            dl.redactions
        );
    }
    assert!(dl.raw.contains(r#""note":"ok""#), "{}", dl.raw);
    assert!(dl.redactions.iter().any(|d| d == SECRET_KEY_RULE));
    // Cut inside the secret's value.
    let cut = br#"{"input":{"password":"hunter2-pla"#;
    let dl = r.redact_dead_letter(Some(cut), failure.clone(), coords(), 0);
    assert!(!dl.raw.contains("hunter2"), "{}", dl.raw);

    let cfg = RedactConfig {
        fields: vec![FieldRuleConfig {
            path: "input.customer_name".into(),
            action: FieldAction::Drop,
        }],
        ..RedactConfig::default()
    };
    let r = Redactor::new(&cfg).unwrap();
    let mistyped = br#"{"tenant": 5, "input": {"customer_name": "Jane Roe"}}"#;
    let dl = r.redact_dead_letter(Some(mistyped), failure, coords(), 0);
    assert!(!dl.raw.contains("Jane Roe"), "{}", dl.raw);
}

/// The eight secrets a hostile producer stored in clear by putting them
/// where nothing was scanned (issue 11): identifiers and keys.
#[test]
fn secrets_in_identifiers_and_keys_are_redacted() {
    let github = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    let aws = "AKIAIOSFODNN7EXAMPLE";
    let openai = "sk-proj-abcdefghijklmnopqrstuvwx0123456789ABCD";
    let slack = "xoxb-263594206564-FGqddMF8t08v8N7Oq4i57vs1";
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let email = "approver.person@example.com";
    let gitlab = "glpat-xxxxxxxxxxxxxxxxxxxx";
    let google = "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe";
    let mut e = event(serde_json::json!({ gitlab: "value", "ok": 1 }));
    e.tool = github.into();
    e.credential_id = Some(aws.into());
    e.workflow_id = Some(openai.into());
    e.mcp_server = Some(slack.into());
    e.agent_version = Some(jwt.into());
    e.approval = Some(crate::event::Approval {
        id: Some("apr-1".into()),
        approver: Some(email.into()),
        decision: crate::event::ApprovalDecision::Approved,
    });
    e.attributes.push((google.into(), "x".into()));
    let rec = redactor().redact_event(e, coords(), 0);
    let stored = format!("{rec:?}");
    for secret in [github, aws, openai, slack, jwt, email, gitlab, google] {
        assert!(!stored.contains(secret), "{secret} stored in {stored}");
    }
    assert!(
        rec.event.tool.starts_with("[REDACTED:"),
        "{}",
        rec.event.tool
    );
    assert_eq!(rec.event.tenant, "acme", "clean identifiers are kept");
    for d in ["github_token", "aws_access_key", "slack_token", "email"] {
        assert!(
            rec.redactions.iter().any(|r| r == d),
            "{d}: {:?}",
            rec.redactions
        );
    }
}

/// A secret written URL-encoded, or JSON-escaped a second time, reads as
/// itself to whoever decodes it: the whole value is redacted.
#[test]
fn url_encoded_and_twice_escaped_secrets_are_redacted() {
    for text in [
        "https://x.example/cb?key=%41KIAIOSFODNN7EXAMPLE",
        "AKIA%2549OSFODNN7EXAMPLE",
        r"token \u0067hp_16C7e42F292c6912E7710c838347Ae178B4a",
        r#"{\"note\":\"jo%40example.org\"}"#,
    ] {
        let (out, names) = scan(text);
        assert!(out.starts_with("[REDACTED:"), "{text} → {out}");
        assert!(!names.is_empty());
    }
    // Escapes without a secret behind them stay as they were.
    let (out, names) = scan("https://x.example/search?q=a%20b&r=%2F");
    assert_eq!(out, "https://x.example/search?q=a%20b&r=%2F");
    assert!(names.is_empty());
}
