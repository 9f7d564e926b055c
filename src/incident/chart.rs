//! Chart owns the report's one picture: the alert key's calls per bucket
//! over the report's span as bars, its usual rate from the history as a
//! dashed line, and the alert's window shaded — an inline SVG written here,
//! so the report fetches nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use datafusion::prelude::SessionContext;

use super::sections::{CHART_CALLS, CHART_USUAL};
use crate::error::QueryError;

/// Buckets past this many are merged, so the picture stays legible.
const MAX_BARS: i64 = 120;

#[derive(Debug)]
pub struct Chart {
    pub bucket_ms: i64,
    pub from_ms: i64,
    /// Calls per bucket, by bucket start, every bucket of the span.
    pub calls: Vec<(i64, u64)>,
    /// Usual calls per bucket from the history (0 without history).
    pub usual: f64,
    pub window: (i64, i64),
    /// The SQL behind the bars and the line, with the parameters.
    pub sql: [&'static str; 2],
    pub params: BTreeMap<String, String>,
}

fn parse_ms(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Reads the bars and the usual rate for the keys in `params`.
pub async fn build(
    ctx: &SessionContext,
    params: &BTreeMap<String, String>,
    window_start_ms: i64,
    window_end_ms: i64,
) -> Result<Option<Chart>, QueryError> {
    let (Some(from), Some(to), Some(history_from)) = (
        params.get("from").and_then(|s| parse_ms(s)),
        params.get("to").and_then(|s| parse_ms(s)),
        params.get("history_from").and_then(|s| parse_ms(s)),
    ) else {
        return Ok(None);
    };
    // The alert's own bucket, or a minute; coarser when the span would
    // need too many bars.
    let mut bucket_ms = (window_end_ms - window_start_ms).max(60_000);
    while (to - from) / bucket_ms > MAX_BARS {
        bucket_ms *= 2;
    }
    let mut p = params.clone();
    p.insert("bucket_secs".into(), (bucket_ms / 1000).to_string());
    let wanted = |sql: &str| -> BTreeMap<String, String> {
        p.iter()
            .filter(|(k, _)| sql.contains(&format!("${k}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let counts_params = wanted(CHART_CALLS);
    let (_, rows) = super::run(ctx, CHART_CALLS, &counts_params).await?;
    let counted: BTreeMap<i64, u64> = rows
        .iter()
        .filter_map(|r| Some((r.first()?.parse().ok()?, r.get(1)?.parse().ok()?)))
        .collect();
    let first_bucket = from.div_euclid(bucket_ms);
    let last_bucket = (to - 1).div_euclid(bucket_ms);
    let calls = (first_bucket..=last_bucket)
        .map(|b| (b * bucket_ms, counted.get(&b).copied().unwrap_or(0)))
        .collect();
    let usual_params = wanted(CHART_USUAL);
    let (_, rows) = super::run(ctx, CHART_USUAL, &usual_params).await?;
    let usual = rows
        .first()
        .and_then(|r| {
            let n: f64 = r.first()?.parse().ok()?;
            let first = r.get(1)?.replace(' ', "T");
            let since = parse_ms(&first)
                .or_else(|| parse_ms(&format!("{first}Z")))
                .unwrap_or(history_from);
            let span = (from - since.max(history_from)).max(bucket_ms);
            Some(n * bucket_ms as f64 / span as f64)
        })
        .unwrap_or(0.0);
    let mut params = counts_params;
    params.extend(usual_params);
    Ok(Some(Chart {
        bucket_ms,
        from_ms: from,
        calls,
        usual,
        window: (window_start_ms, window_end_ms.max(window_start_ms + 1)),
        sql: [CHART_CALLS, CHART_USUAL],
        params,
    }))
}

impl Chart {
    /// The chart as an SVG element, sized for a report page.
    pub fn svg(&self) -> String {
        let (w, h, left, bottom, top) = (760.0, 240.0, 48.0, 28.0, 12.0);
        let plot_w = w - left - 8.0;
        let plot_h = h - bottom - top;
        let n = self.calls.len().max(1) as f64;
        let most = self
            .calls
            .iter()
            .map(|(_, c)| *c as f64)
            .fold(self.usual, f64::max)
            .max(1.0);
        let x = |i: f64| left + plot_w * i / n;
        let y = |v: f64| top + plot_h * (1.0 - v / most);
        let mut s = String::new();
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="calls per bucket against the usual rate"><rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>"##
        );
        // The alert's window, shaded.
        let start = self.from_ms;
        let at = |ms: i64| (ms - start) as f64 / self.bucket_ms as f64;
        let (ws, we) = (at(self.window.0).max(0.0), at(self.window.1).min(n));
        if we > ws {
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{top}" width="{:.1}" height="{plot_h}" fill="#fde2e1"/>"##,
                x(ws),
                (x(we) - x(ws)).max(2.0)
            );
        }
        for (i, (_, c)) in self.calls.iter().enumerate() {
            let bar_w = (plot_w / n - 1.0).max(1.0);
            let top_y = y(*c as f64);
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{top_y:.1}" width="{bar_w:.1}" height="{:.1}" fill="#3b6ea8"/>"##,
                x(i as f64),
                (top + plot_h - top_y).max(0.0)
            );
        }
        let uy = y(self.usual);
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{uy:.1}" x2="{:.1}" y2="{uy:.1}" stroke="#d9480f" stroke-width="2" stroke-dasharray="6 4"/>"##,
            left + plot_w
        );
        // Axes and labels.
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#555"/><line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#555"/>"##,
            top + plot_h,
            left + plot_w,
            top + plot_h,
            top + plot_h
        );
        let label = |ms: i64| {
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                .map(|t| t.format("%m-%d %H:%M").to_string())
                .unwrap_or_default()
        };
        let first = self.calls.first().map_or(start, |c| c.0);
        let last = self.calls.last().map_or(start, |c| c.0);
        let _ = write!(
            s,
            r##"<g font-family="sans-serif" font-size="11" fill="#333"><text x="{left}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{} UTC</text><text x="{:.1}" y="{:.1}" text-anchor="end">{most:.0}</text><text x="{:.1}" y="{:.1}" text-anchor="end">0</text><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d9480f">usual {:.1}/bucket</text></g>"##,
            h - 8.0,
            label(first),
            left + plot_w,
            h - 8.0,
            label(last),
            left - 4.0,
            top + 10.0,
            left - 4.0,
            top + plot_h,
            left + plot_w,
            (uy - 4.0).max(top + 10.0),
            self.usual
        );
        s.push_str("</svg>");
        s
    }
}
