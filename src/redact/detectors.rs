//! The built-in secret and personal-data detectors, and the checksums that
//! keep their near misses (a Luhn-invalid card number, a bad IBAN) unredacted.

/// A detector: a name that ends up in the `redactions` column and in the
/// marker `[REDACTED:name]`, a pattern, and an optional check on the match.
/// When the pattern has a group named `s`, only that group is replaced, so
/// `Bearer abc…` keeps the word `Bearer` for the analyst.
pub struct BuiltIn {
    pub name: &'static str,
    pub pattern: &'static str,
    /// A cheaper pattern found in every text that `pattern` matches: the
    /// one-pass set scans for hints, and only a text that holds a detector's
    /// hint is searched with its full pattern. Counted repeats such as
    /// `{20,250}` would otherwise multiply the lazy DFA's states until its
    /// cache thrashes.
    pub hint: &'static str,
    pub validate: Option<fn(&str) -> bool>,
}

/// `\b` is written as `(?-u:\b)`: an ASCII word boundary lets the lazy DFA run
/// over non-ASCII text instead of falling back to a slower engine.
pub const BUILT_INS: &[BuiltIn] = &[
    BuiltIn {
        name: "private_key",
        pattern: r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY( BLOCK)?-----(?s:.*?)(?:-----END[ A-Z0-9]{0,40}PRIVATE KEY( BLOCK)?-----|\z)",
        hint: r"-----BEGIN",
        validate: None,
    },
    BuiltIn {
        name: "aws_access_key",
        pattern: r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}(?-u:\b)",
        hint: r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|ROA|NPA|NVA|IPA)",
        validate: None,
    },
    BuiltIn {
        name: "aws_secret_key",
        pattern: r#"(?i)(?:aws_?secret_?(?:access_?)?key|secret_?access_?key)["'\s]{0,3}[:=]\s{0,3}["']?(?P<s>[A-Za-z0-9/+]{40})"#,
        hint: r"(?i)secret",
        validate: None,
    },
    BuiltIn {
        name: "github_token",
        pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)",
        hint: r"gh[pousr]_|github_pat_",
        validate: None,
    },
    BuiltIn {
        name: "gitlab_token",
        pattern: r"(?-u:\b)gl(?:pat|dt|rt|ptt|cbt|oas|soat|ffct)-[A-Za-z0-9_-]{20,255}",
        hint: r"gl(?:pat|dt|rt|ptt|cbt|oas|soat|ffct)-",
        validate: None,
    },
    BuiltIn {
        name: "slack_token",
        pattern: r"(?-u:\b)(?:xox[abposre]-[A-Za-z0-9-]{10,250}|hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,200})",
        hint: r"xox[abposre]-|hooks\.slack\.com/services/",
        validate: None,
    },
    BuiltIn {
        name: "stripe_key",
        pattern: r"(?-u:\b)(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,247}(?-u:\b)",
        hint: r"[srp]k_(?:live|test)_",
        validate: None,
    },
    BuiltIn {
        name: "google_api_key",
        pattern: r"(?-u:\b)AIza[0-9A-Za-z_\-]{35}",
        hint: r"AIza",
        validate: None,
    },
    BuiltIn {
        name: "anthropic_key",
        pattern: r"(?-u:\b)sk-ant-[A-Za-z0-9_\-]{20,250}",
        hint: r"sk-ant-",
        validate: None,
    },
    BuiltIn {
        name: "openai_key",
        pattern: r"(?-u:\b)sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,250}",
        hint: r"sk-",
        validate: Some(not_anthropic),
    },
    BuiltIn {
        name: "jwt",
        pattern: r"(?-u:\b)eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
        hint: r"eyJ",
        validate: None,
    },
    BuiltIn {
        name: "bearer_token",
        pattern: r"(?i)(?-u:\b)(?:bearer|basic)\s{1,4}(?P<s>[A-Za-z0-9\-._~+/]{8,}=*)",
        hint: r"(?i)bearer|basic",
        validate: None,
    },
    BuiltIn {
        name: "url_password",
        pattern: r"[A-Za-z][A-Za-z0-9+.-]{1,15}://[^\s:/@]{1,256}:(?P<s>[^\s@/]{1,256})@",
        hint: r"://[^\s/@]+@",
        validate: None,
    },
    BuiltIn {
        name: "secret_assignment",
        pattern: r#"(?i)(?:password|passwd|passphrase|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret|private[_-]?key)["']?\s{0,3}[:=]\s{0,3}["']?(?P<s>[^\s"',;}&]{1,256})"#,
        hint: r"(?i)pass(?:word|wd|phrase)|secret|api[_-]?key|access[_-]?token|auth[_-]?token|private[_-]?key",
        validate: Some(not_already_redacted),
    },
    BuiltIn {
        name: "email",
        pattern: r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?-u:\b)",
        hint: r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]",
        validate: None,
    },
    BuiltIn {
        name: "credit_card",
        pattern: r"(?-u:\b)[2-6](?:[ -]?[0-9]){12,18}(?-u:\b)",
        hint: r"[2-6](?:[ -]?[0-9]){12}",
        validate: Some(luhn_card),
    },
    BuiltIn {
        name: "iban",
        pattern: r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)",
        hint: r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11}",
        validate: Some(iban_checksum),
    },
    BuiltIn {
        name: "us_ssn",
        pattern: r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
        hint: r"[0-9]{3}-[0-9]{2}-[0-9]{4}",
        validate: Some(ssn_plausible),
    },
];

fn not_anthropic(s: &str) -> bool {
    !s.starts_with("sk-ant-")
}

fn not_already_redacted(s: &str) -> bool {
    !s.starts_with("[REDACTED")
}

/// Luhn checksum over the digits of a 13–19 digit card number.
pub fn luhn_card(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 mod-97 check.
pub fn iban_checksum(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// Area 000, 666 and 900–999, group 00 and serial 0000 are never issued.
pub fn ssn_plausible(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// Key names whose values are secrets whatever they look like, compared after
/// lower-casing and removing `_`, `-`, `.` and spaces.
pub const SECRET_KEY_FRAGMENTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "apikey",
    "authorization",
    "privatekey",
    "accesskey",
    "credential",
    "cookie",
];

/// Key names that are secrets when they end with one of these (so `token` and
/// `access_token` are, but `max_tokens` is not).
pub const SECRET_KEY_SUFFIXES: &[&str] = &["token", "pwd", "auth", "sessionid", "signature"];
