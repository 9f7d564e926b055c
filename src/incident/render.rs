//! Render owns writing a report as Markdown and as one self-contained HTML
//! page (inline style and SVG, no scripts, nothing fetched). Every value
//! came from the dataset, chosen by a producer that may be hostile: it is
//! escaped for the format, control and direction-changing characters shown
//! as `\u{…}`, and quoted for a shell in the command that re-runs a section.

use std::fmt::Write as _;

use super::{Report, Section};
use crate::query::escape_deceptive;

/// `value` as one shell word: single-quoted, with its own quotes closed
/// and escaped.
fn shell_word(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The command that runs a section's SQL again.
fn rerun(sql: &str, params: &std::collections::BTreeMap<String, String>) -> String {
    let mut cmd = String::from("agentaudit query --format csv");
    for (k, v) in params {
        let _ = write!(cmd, " --param {}", shell_word(&format!("{k}={v}")));
    }
    let _ = write!(cmd, " {}", shell_word(sql));
    escape_deceptive(&cmd)
}

/// A value as Markdown text: every Markdown-active character literal, so a
/// tool named `![x](https://…)` shows as those characters, not as an image.
fn md_cell(text: &str) -> String {
    crate::escape::markdown(&escape_deceptive(text))
}

fn html_text(text: &str) -> String {
    escape_deceptive(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn md_section(out: &mut String, s: &Section) {
    let _ = writeln!(out, "## {}\n\n{}\n", s.title, md_cell(&s.about));
    if s.rows.is_empty() {
        out.push_str("_Nothing in the dataset._\n\n");
    } else {
        let _ = writeln!(out, "| {} |", s.columns.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(s.columns.len()));
        for row in &s.rows {
            let cells: Vec<String> = row.iter().map(|c| md_cell(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    if let Some((total, all)) = &s.more {
        let cmd = rerun(all, &s.params);
        let _ = writeln!(
            out,
            "**{} more rows** ({} shown of {total}). To see them all:\n\n{fence}sh\n{cmd}\n{fence}\n",
            total - s.rows.len() as u64,
            s.rows.len(),
            fence = fence_for(&cmd)
        );
    }
    let cmd = rerun(&s.sql, &s.params);
    let _ = writeln!(
        out,
        "<details><summary>SQL</summary>\n\n```sql\n{}\n```\n\n{fence}sh\n{cmd}\n{fence}\n\n</details>\n",
        s.sql,
        fence = fence_for(&cmd)
    );
}

/// A code fence longer than any run of backticks in `text`, so a value
/// cannot close it and go on as Markdown (CommonMark's own rule).
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat((longest + 1).max(3))
}

/// The report as Markdown (GitHub flavour). The chart is left to the HTML
/// page; the Markdown names the file.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", md_cell(&r.title));
    let _ = writeln!(out, "{}\n", md_cell(&r.summary));
    let _ = writeln!(
        out,
        "Generated {} by `agentaudit incident` from the redacted dataset: secrets and personal data were removed before anything was stored, so none can appear here.\n",
        r.generated_at
    );
    if let Some(c) = &r.chart {
        let _ = writeln!(
            out,
            "## Calls per bucket against the usual rate\n\n{} buckets of {} s; usual {:.1} calls per bucket. The chart is in the HTML report.\n",
            c.calls.len(),
            c.bucket_ms / 1000,
            c.usual
        );
    }
    for s in &r.sections {
        md_section(&mut out, s);
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2430;padding:0 1rem}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}\
table{border-collapse:collapse;font-size:.82rem;width:100%;display:block;overflow-x:auto}th,td{border:1px solid #d0d7de;padding:.25rem .4rem;text-align:left;vertical-align:top;max-width:22rem;overflow-wrap:anywhere}\
th{background:#f3f5f8}tr:nth-child(even) td{background:#fafbfc}.summary{background:#fff4e5;border-left:4px solid #d9480f;padding:.6rem .9rem}\
pre{background:#f3f5f8;padding:.6rem;overflow-x:auto;font-size:.78rem}.note{color:#57606a;font-size:.85rem}details{margin:.5rem 0}";

fn html_section(out: &mut String, s: &Section) {
    let _ = write!(
        out,
        "<h2>{}</h2><p class=\"note\">{}</p>",
        html_text(s.title),
        html_text(&s.about)
    );
    if s.rows.is_empty() {
        out.push_str("<p><em>Nothing in the dataset.</em></p>");
    } else {
        out.push_str("<table><thead><tr>");
        for c in &s.columns {
            let _ = write!(out, "<th>{}</th>", html_text(c));
        }
        out.push_str("</tr></thead><tbody>");
        for row in &s.rows {
            out.push_str("<tr>");
            for c in row {
                let _ = write!(out, "<td>{}</td>", html_text(c));
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    if let Some((total, all)) = &s.more {
        let _ = write!(
            out,
            "<p class=\"more\"><strong>{} more rows</strong> ({} shown of {total}). To see them all:</p><pre>{}</pre>",
            total - s.rows.len() as u64,
            s.rows.len(),
            html_text(&rerun(all, &s.params))
        );
    }
    let _ = write!(
        out,
        "<details><summary>SQL</summary><pre>{}</pre><pre>{}</pre></details>",
        html_text(&s.sql),
        html_text(&rerun(&s.sql, &s.params))
    );
}

/// The report as one HTML page that needs nothing else: inline style, an
/// inline SVG chart, no script, no link to fetch.
pub fn html(r: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\"><title>{}</title><style>{STYLE}</style></head><body>",
        html_text(&r.title)
    );
    let _ = write!(
        out,
        "<h1>{}</h1><p class=\"summary\">{}</p><p class=\"note\">Generated {} by <code>agentaudit incident</code> from the redacted dataset: secrets and personal data were removed before anything was stored, so none can appear here.</p>",
        html_text(&r.title),
        html_text(&r.summary),
        html_text(&r.generated_at)
    );
    if let Some(c) = &r.chart {
        let _ = write!(
            out,
            "<h2>Calls per bucket against the usual rate</h2><p class=\"note\">Bars: calls of the alert's keys per {} s bucket. Dashed: the usual calls per bucket in the history. Shaded: the alert's window.</p>{}<details><summary>SQL</summary><pre>{}</pre><pre>{}</pre><pre>{}</pre></details>",
            c.bucket_ms / 1000,
            c.svg(),
            html_text(c.sql[0]),
            html_text(c.sql[1]),
            html_text(&rerun(c.sql[0], &c.params))
        );
    }
    for s in &r.sections {
        html_section(&mut out, s);
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_escaped_in_both_formats_and_quoted_for_the_shell() {
        let evil = "<script>alert(1)</script>|x\u{202e}'; rm -rf / #";
        let mut params = std::collections::BTreeMap::new();
        params.insert("tenant".to_owned(), evil.to_owned());
        let report = Report {
            title: format!("Incident: tenant {evil}"),
            summary: evil.into(),
            sections: vec![Section {
                title: "Timeline",
                about: "calls".into(),
                sql: "SELECT 1".into(),
                params,
                columns: vec!["tool".into()],
                rows: vec![vec![evil.into()]],
                more: None,
            }],
            chart: None,
            generated_at: "now".into(),
        };
        let page = html(&report);
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains('\u{202e}'), "{page}");
        let md = markdown(&report);
        assert!(
            md.contains(r"| &lt;script&gt;alert(1)&lt;/script&gt;\|x\\u{202e}'; rm -rf / # |"),
            "a cell is escaped and cannot open another: {md}"
        );
        assert!(
            md.contains(r"--param 'tenant=<script>alert(1)</script>|x\u{202e}'\''; rm -rf / #'"),
            "the value stays one shell word, inside a code fence: {md}"
        );
        assert!(!md.contains('\u{202e}'));
        // Names that are Markdown links or images show as text.
        let link = "![x](https://evil.example/p.png)";
        let mut r = report;
        r.sections[0].rows = vec![vec![link.into()]; 3];
        r.sections[0].more = Some((1003, "SELECT everything".into()));
        let md = markdown(&r);
        let table: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(table.len(), 4, "{md}");
        for line in &table[1..] {
            let cells = line.trim_start_matches("| ");
            assert_eq!(crate::escape::unescaped(cells, b'['), None, "{line}");
            assert_eq!(crate::escape::unescaped(cells, b'!'), None, "{line}");
            assert!(!line.contains("https://"), "{line}");
        }
        assert!(md.contains("**1000 more rows** (3 shown of 1003)"), "{md}");
        assert!(md.contains("'SELECT everything'"), "{md}");
        assert!(html(&r).contains("<strong>1000 more rows</strong>"));
        // A value with a fence of its own cannot close the block around it.
        assert_eq!(fence_for("a ``` b"), "````");
        assert_eq!(fence_for("plain"), "```");
    }
}
