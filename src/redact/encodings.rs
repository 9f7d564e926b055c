//! Encodings owns reading a value the way a consumer of it might: with its
//! percent-escapes (`AKIA%49…`, as in a URL) and its JSON escapes (`\u0041`,
//! `\"`, as in JSON escaped a second time) decoded, up to two layers, so a
//! secret written through one of them is still seen by the detectors. Only
//! text that holds such an escape pays for the second look.

use std::borrow::Cow;

/// Layers of encoding peeled at most: `%2541` is `%41` is `A`.
const MAX_LAYERS: usize = 2;

/// `text` with up to two layers of percent and JSON escapes decoded, or
/// `None` when it holds no escape (the common case, and then free).
pub fn decoded(text: &str) -> Option<String> {
    let mut current: Cow<str> = Cow::Borrowed(text);
    let mut changed = false;
    for _ in 0..MAX_LAYERS {
        if !has_escape(&current) {
            break;
        }
        let next = decode_once(&current);
        if next == *current {
            break;
        }
        current = Cow::Owned(next);
        changed = true;
    }
    changed.then(|| current.into_owned())
}

fn has_escape(text: &str) -> bool {
    memchr::memchr2(b'%', b'\\', text.as_bytes()).is_some()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One layer: `%XX` → byte, `\uXXXX` → character, `\"` `\\` `\/` → the
/// character; anything else as it was. Invalid UTF-8 from `%XX` becomes
/// U+FFFD, which no detector needs.
fn decode_once(text: &str) -> String {
    let b = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'\\' if i + 1 < b.len() => match b[i + 1] {
                b'u' if i + 5 < b.len() => {
                    let code = (2..6).try_fold(0u32, |acc, k| {
                        hex(b[i + k]).map(|d| acc << 4 | u32::from(d))
                    });
                    match code.and_then(char::from_u32) {
                        Some(c) => {
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            i += 6;
                        }
                        None => {
                            out.push(b'\\');
                            i += 1;
                        }
                    }
                }
                c @ (b'"' | b'\\' | b'/') => {
                    out.push(c);
                    i += 2;
                }
                _ => {
                    out.push(b'\\');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_json_escapes_are_peeled_two_layers_deep() {
        assert_eq!(decoded("plain text"), None);
        assert_eq!(decoded("AKIA%49OSF").as_deref(), Some("AKIAIOSF"));
        assert_eq!(decoded("%2541").as_deref(), Some("A"));
        assert_eq!(decoded(r"\u0041KIA").as_deref(), Some("AKIA"));
        assert_eq!(decoded(r#"{\"k\":\"v\"}"#).as_deref(), Some(r#"{"k":"v"}"#));
        // Stray escapes stay as they were and never panic.
        assert_eq!(decoded("100%").as_deref(), None);
        assert_eq!(decoded("%zz%4"), None);
        assert_eq!(decoded(r"\u12"), None);
        assert_eq!(decoded(r"\ud800x"), None);
        assert_eq!(decoded("%ff").as_deref(), Some("\u{fffd}"));
    }
}
