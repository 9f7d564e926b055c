//! Escape owns making stored, producer-chosen text inert where a person
//! reads it as Markdown: the incident report's `.md` file and the
//! Alertmanager `description` that chat receivers (Slack, Teams,
//! Mattermost, Discord) render. A name like `![x](https://…)` must show as
//! those characters, never as an image, a link or the end of a code span,
//! and the text should still read as itself in the raw file.

/// Characters that are Markdown-active wherever they stand (CommonMark and
/// GitHub's extensions): code spans, emphasis, links and images, tables,
/// strikethrough, escapes and e-mail autolinks. `_` is only active at the
/// edge of a word, and is handled apart.
const ACTIVE: &[char] = &['\\', '`', '*', '[', ']', '|', '~', '!', '@'];

/// `text` with every Markdown-active character made literal:
/// - the characters of `ACTIVE` backslash-escaped, and `_` too unless it
///   sits between two letters or digits (where it cannot open or close
///   emphasis, so `tool_frequency_spike` stays readable);
/// - `<`, `>` and `&` as entities (no HTML, no entity of the producer's own);
/// - the `:` of `://` and the `.` of `www.` escaped (no bare-URL autolink);
/// - a leading `#`, `-`, `+`, `=` or `N.`/`N)` escaped (no heading, list or
///   rule), and line breaks as spaces (no new block).
pub fn markdown(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let word = |i: Option<usize>| {
        i.and_then(|i| chars.get(i))
            .is_some_and(|c| c.is_alphanumeric())
    };
    let leading_digits = chars.iter().take_while(|c| c.is_ascii_digit()).count();
    for (i, &c) in chars.iter().enumerate() {
        let next_is = |s: &str| chars[i + 1..].iter().take(s.len()).copied().eq(s.chars());
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            ':' if next_is("//") => out.push_str("&#58;"),
            '.' if i >= 3
                && chars[i - 3..i]
                    .iter()
                    .collect::<String>()
                    .eq_ignore_ascii_case("www") =>
            {
                out.push_str("\\.")
            }
            '_' if word(i.checked_sub(1)) && word(Some(i + 1)) => out.push('_'),
            c if c == '_' || ACTIVE.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            '#' | '-' | '+' | '=' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            '.' | ')' if i > 0 && i == leading_digits => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The byte offset of `ch` where it is not backslash-escaped: where it
/// would still act as Markdown.
pub fn unescaped(text: &str, ch: u8) -> Option<usize> {
    let b = text.as_bytes();
    let mut escaped = false;
    for (i, &x) in b.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        if x == b'\\' {
            escaped = true;
        } else if x == ch {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{markdown, unescaped};

    #[test]
    fn links_images_code_spans_and_html_stay_text() {
        let evil = "![x](https://evil.example/p.png) [t](www.e.example) `x` <b>|*_~#\nnew a@b.io";
        let safe = markdown(evil);
        for ch in [b'`', b'[', b']', b'!', b'|', b'*', b'~', b'@', b'<', b'\n'] {
            assert_eq!(
                unescaped(&safe, ch),
                None,
                "{:?} live in {safe}",
                ch as char
            );
        }
        assert!(
            !safe.contains("https://") && !safe.contains("www."),
            "{safe}"
        );
        assert_eq!(
            safe,
            r"\!\[x\](https&#58;//evil.example/p.png) \[t\](www\.e.example) \`x\` &lt;b&gt;\|\*\_\~# new a\@b.io"
        );
        // Our own words stay readable.
        assert_eq!(markdown("tool_frequency_spike"), "tool_frequency_spike");
        assert_eq!(markdown("support-bot"), "support-bot");
        assert_eq!(markdown("_x_ and x_"), r"\_x\_ and x\_");
        assert_eq!(markdown("# h"), r"\# h");
        assert_eq!(markdown("12. item"), r"12\. item");
    }
}
