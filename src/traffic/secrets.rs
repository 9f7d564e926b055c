//! The secrets traffic plants in tool inputs: one of fourteen shapes (cloud
//! and API keys, tokens, a DSN password, an e-mail address, a Luhn-valid
//! card, a private key, a bare password), each with the text to embed and
//! the part that must never be stored.

use rand::Rng;
use rand::rngs::SmallRng;

fn alnum(rng: &mut SmallRng, n: usize, alphabet: &[u8]) -> String {
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A card number with a valid Luhn digit, starting with 4 (Visa-like): the
/// one check digit the redactor's own Luhn test accepts.
fn luhn_card(rng: &mut SmallRng) -> String {
    let body: String = std::iter::once('4')
        .chain((0..14).map(|_| char::from_digit(rng.random_range(0..10u32), 10).unwrap_or('0')))
        .collect();
    ('0'..='9')
        .map(|check| format!("{body}{check}"))
        .find(|card| crate::redact::detectors::luhn_card(card))
        .unwrap_or(body)
}

/// A planted secret: the text to embed and the part that must never be stored.
pub(super) fn secret(rng: &mut SmallRng) -> (String, String) {
    match rng.random_range(0..14) {
        0 => {
            let s = format!("AKIA{}", alnum(rng, 16, UPPER_DIGITS));
            (format!("use key {s} for s3"), s)
        }
        1 => {
            let s = format!("ghp_{}", alnum(rng, 36, ALNUM));
            (format!("token={s}"), s)
        }
        2 => {
            let s = format!("sk_live_{}", alnum(rng, 24, ALNUM));
            (format!("stripe {s}"), s)
        }
        3 => {
            let s = format!(
                "xoxb-{}-{}",
                alnum(rng, 12, b"0123456789"),
                alnum(rng, 24, ALNUM)
            );
            (format!("post with {s}"), s)
        }
        4 => {
            let s = format!("AIza{}", alnum(rng, 35, ALNUM));
            (format!("maps key {s}"), s)
        }
        5 => {
            let s = format!("sk-proj-{}", alnum(rng, 40, ALNUM));
            (format!("OPENAI_API_KEY {s}"), s)
        }
        6 => {
            let s = format!("sk-ant-api03-{}", alnum(rng, 40, ALNUM));
            (format!("anthropic {s}"), s)
        }
        7 => {
            let s = format!(
                "eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}",
                alnum(rng, 24, ALNUM),
                alnum(rng, 32, ALNUM)
            );
            (format!("jwt {s}"), s)
        }
        8 => {
            let s = alnum(rng, 40, ALNUM);
            (format!("Authorization: Bearer {s}"), s)
        }
        9 => {
            let s = format!("Pw{}", alnum(rng, 12, ALNUM));
            (format!("postgres://app:{s}@db.internal:5432/orders"), s)
        }
        10 => {
            let s = format!(
                "{}@example.com",
                alnum(rng, 8, b"abcdefghijklmnop").to_lowercase()
            );
            (format!("reply to {s}"), s)
        }
        11 => {
            let s = luhn_card(rng);
            (format!("card {s} exp 12/29"), s)
        }
        12 => {
            let body = alnum(rng, 64, ALNUM);
            let s =
                format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----");
            (s.clone(), body)
        }
        _ => {
            let s = alnum(rng, 8, ALNUM);
            (format!("password={s}"), s)
        }
    }
}
