//! Sections owns the SQL of the incident report: each question a responder
//! asks first, as a statement over the dataset with `$parameters`, which the
//! report prints beside its answer so it can be run again with
//! `agentaudit query --param …`. Every statement prunes by `dt`, but the
//! one for calls dated outside the span, which cannot: their `dt` is the
//! time they claim.

/// A question of the report.
pub struct Query {
    pub title: &'static str,
    pub about: &'static str,
    /// The statement, whole: every row it answers.
    pub sql: &'static str,
    /// Rows shown at most; the report says how many more there are, and
    /// the statement that shows them all.
    pub limit: Option<u32>,
    /// The order the shown rows are read in, when the limit picks them in
    /// another (the timeline keeps the alert's own calls, whatever their
    /// time, and shows them in time order).
    pub shown_in: Option<&'static str>,
}

impl Query {
    /// The statement the report runs: `sql` cut to `limit` rows, in
    /// `shown_in` order.
    pub fn shown(&self) -> String {
        match (self.limit, self.shown_in) {
            (None, _) => self.sql.to_owned(),
            (Some(n), None) => format!("{}\nLIMIT {n}", self.sql),
            (Some(n), Some(order)) => {
                format!(
                    "SELECT * FROM (\n{}\nLIMIT {n})\nORDER BY {order}",
                    self.sql
                )
            }
        }
    }

    /// How many rows `sql` answers in all.
    pub fn count(&self) -> String {
        format!("SELECT count(*) AS n FROM (\n{}\n)", self.sql)
    }
}

pub const ALERT: &str = "\
SELECT alert_id, rule, severity, tenant, agent_id, tool, window_start, window_end,
       observed, round(expected, 2) AS expected, round(score, 2) AS score, detail,
       sample_event_ids, incident_id
FROM alerts
WHERE alert_id = $alert_id";

pub const SECTIONS: [Query; 7] = [
    Query {
        title: "Alerts on the tenant around it",
        about: "Every alert of the tenant whose window starts in the report's span: what else fired, and in which order.",
        sql: "\
SELECT window_start, incident_id, rule, severity, agent_id, tool, observed, expected, score, detail
FROM alerts
WHERE tenant = $tenant
  AND dt BETWEEN substr($from, 1, 10) AND substr($to, 1, 10)
  AND window_start >= to_timestamp($from) AND window_start < to_timestamp($to)
ORDER BY window_start, rule",
        limit: Some(100),
        shown_in: None,
    },
    Query {
        title: "What changed",
        about: "Each tool's calls and failures in the report's span against the same span's share of the {history} before: tools never called before, and tools called far more or less than usual.",
        sql: "\
WITH recent AS (
  SELECT tool, count(*) AS n, sum(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END) AS errs
  FROM invocations
  WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent)
    AND dt BETWEEN substr($from, 1, 10) AND substr($to, 1, 10)
    AND ts >= to_timestamp($from) AND ts < to_timestamp($to)
  GROUP BY tool),
usual AS (
  SELECT tool, count(*) AS n, sum(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END) AS errs
  FROM invocations
  WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent)
    AND dt BETWEEN substr($history_from, 1, 10) AND substr($from, 1, 10)
    AND ts >= to_timestamp($history_from) AND ts < to_timestamp($from)
  GROUP BY tool)
SELECT coalesce(r.tool, u.tool) AS tool,
       coalesce(r.n, 0) AS calls,
       round(coalesce(u.n, 0) * CAST($scale AS DOUBLE), 1) AS usual_calls,
       coalesce(r.errs, 0) AS failures,
       round(coalesce(u.errs, 0) * CAST($scale AS DOUBLE), 1) AS usual_failures,
       CASE WHEN u.tool IS NULL THEN 'new: not called in the history'
            WHEN r.tool IS NULL THEN 'stopped'
            WHEN r.n > 3 * u.n * CAST($scale AS DOUBLE) + 3 THEN 'more than usual'
            WHEN 3 * r.n + 3 < u.n * CAST($scale AS DOUBLE) THEN 'less than usual'
            ELSE '' END AS change
FROM recent r FULL OUTER JOIN usual u ON r.tool = u.tool
ORDER BY abs(coalesce(r.n, 0) - coalesce(u.n, 0) * CAST($scale AS DOUBLE)) DESC, tool",
        limit: Some(50),
        shown_in: None,
    },
    Query {
        title: "Timeline",
        about: "Every call of the implicated agent (of the tenant, when the alert names no agent) in the report's span, in time order, with what redaction found. When there are more than it shows, the alert's own sample calls and the implicated workflows' calls are kept first, whatever time their events claim.",
        sql: "\
WITH implicated AS (
  SELECT DISTINCT workflow_id FROM invocations
  WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent)
    AND ($tool = '' OR tool = $tool) AND workflow_id IS NOT NULL
    AND dt BETWEEN substr($window_start, 1, 10) AND substr($window_end, 1, 10)
    AND ts >= to_timestamp($window_start) AND ts < to_timestamp($window_end))
SELECT i.ts, i.ingested_at, i.agent_id, i.tool, i.status, i.workflow_id, i.step,
       i.credential_id, i.approval_decision, i.error_type, i.redactions, i.event_id,
       coalesce(array_has(string_to_array($samples, ','), i.event_id), false) AS alert_sample,
       m.workflow_id IS NOT NULL AS implicated
FROM invocations i LEFT JOIN implicated m ON i.workflow_id = m.workflow_id
WHERE i.tenant = $tenant AND ($agent = '' OR i.agent_id = $agent)
  AND i.dt BETWEEN substr($from, 1, 10) AND substr($to, 1, 10)
  AND i.ts >= to_timestamp($from) AND i.ts < to_timestamp($to)
ORDER BY alert_sample DESC, implicated DESC, ts, event_id",
        limit: Some(300),
        shown_in: Some("ts, event_id"),
    },
    Query {
        title: "Arrived with the alert, dated elsewhere",
        about: "Calls of the same keys that reached agentaudit while the alert's calls did (ingested_at within the report's margin of theirs) but whose events claim a time outside the report's span: back-dated or future-dated calls, which a timeline by event time would not show.",
        sql: "\
WITH arrival AS (
  SELECT min(ingested_at) AS first_in, max(ingested_at) AS last_in FROM invocations
  WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent)
    AND dt BETWEEN substr($window_start, 1, 10) AND substr($window_end, 1, 10)
    AND ts >= to_timestamp($window_start) AND ts < to_timestamp($window_end))
SELECT i.ingested_at, i.ts, i.agent_id, i.tool, i.status, i.workflow_id, i.credential_id,
       i.event_id
FROM invocations i CROSS JOIN arrival a
WHERE i.tenant = $tenant AND ($agent = '' OR i.agent_id = $agent)
  AND to_unixtime(i.ingested_at) >= to_unixtime(a.first_in) - CAST($margin_secs AS DOUBLE)
  AND to_unixtime(i.ingested_at) <= to_unixtime(a.last_in) + CAST($margin_secs AS DOUBLE)
  AND (i.ts < to_timestamp($from) OR i.ts >= to_timestamp($to))
ORDER BY i.ingested_at, i.event_id",
        limit: Some(100),
        shown_in: None,
    },
    Query {
        title: "Implicated workflows",
        about: "The workflows (conversations, runs) with a call of the alert's keys inside its window, replayed whole over the report's span.",
        sql: "\
SELECT workflow_id, ts, agent_id, tool, status, step, credential_id,
       approval_decision, redactions, event_id
FROM invocations
WHERE tenant = $tenant
  AND dt BETWEEN substr($from, 1, 10) AND substr($to, 1, 10)
  AND ts >= to_timestamp($from) AND ts < to_timestamp($to)
  AND workflow_id IN (
    SELECT workflow_id FROM invocations
    WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent)
      AND ($tool = '' OR tool = $tool) AND workflow_id IS NOT NULL
      AND dt BETWEEN substr($window_start, 1, 10) AND substr($window_end, 1, 10)
      AND ts >= to_timestamp($window_start) AND ts < to_timestamp($window_end))
ORDER BY workflow_id, ts, event_id",
        limit: Some(300),
        shown_in: None,
    },
    Query {
        title: "Credentials and approvals",
        about: "Which credentials the calls used, by which agents, and the approvals recorded with them.",
        sql: "\
SELECT credential_id, agent_id, approval_decision, approval_approver,
       count(*) AS calls, min(ts) AS first_call, max(ts) AS last_call
FROM invocations
WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent)
  AND dt BETWEEN substr($from, 1, 10) AND substr($to, 1, 10)
  AND ts >= to_timestamp($from) AND ts < to_timestamp($to)
GROUP BY credential_id, agent_id, approval_decision, approval_approver
ORDER BY calls DESC, credential_id",
        limit: Some(50),
        shown_in: None,
    },
    Query {
        title: "What was redacted",
        about: "The detectors and rules that redacted something in these calls, by name only: the values were never stored.",
        sql: "\
SELECT detector, count(*) AS calls, count(DISTINCT tool) AS tools
FROM (
  SELECT unnest(redactions) AS detector, tool
  FROM invocations
  WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent)
    AND dt BETWEEN substr($from, 1, 10) AND substr($to, 1, 10)
    AND ts >= to_timestamp($from) AND ts < to_timestamp($to))
GROUP BY detector
ORDER BY calls DESC, detector",
        limit: None,
        shown_in: None,
    },
];

/// Calls of the alert's keys per bucket over the report's span.
pub const CHART_CALLS: &str = "\
SELECT CAST(floor(to_unixtime(ts) / CAST($bucket_secs AS DOUBLE)) AS BIGINT) AS bucket,
       count(*) AS calls
FROM invocations
WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent) AND ($tool = '' OR tool = $tool)
  AND dt BETWEEN substr($from, 1, 10) AND substr($to, 1, 10)
  AND ts >= to_timestamp($from) AND ts < to_timestamp($to)
GROUP BY 1
ORDER BY 1";

/// The same keys' calls in the history, and since when there is any.
pub const CHART_USUAL: &str = "\
SELECT count(*) AS calls, min(ts) AS first_call
FROM invocations
WHERE tenant = $tenant AND ($agent = '' OR agent_id = $agent) AND ($tool = '' OR tool = $tool)
  AND dt BETWEEN substr($history_from, 1, 10) AND substr($from, 1, 10)
  AND ts >= to_timestamp($history_from) AND ts < to_timestamp($from)";
