-- When to use: the first question of an incident — "what did this tenant's agents
-- do between T1 and T2?". Every call in time order, with what was redacted.
-- Params: tenant, since, until (RFC 3339, e.g. 2026-11-28T09:00:00Z).
SELECT ts, agent_id, environment, tool, status, latency_ms, workflow_id, step,
       credential_id, approval_decision, redactions, error_type, event_id
FROM invocations
WHERE tenant = $tenant
  AND dt BETWEEN substr($since, 1, 10) AND substr($until, 1, 10)
  AND ts >= to_timestamp($since) AND ts < to_timestamp($until)
ORDER BY ts, event_id
