-- When to use: one agent is suspected (a spike, a bad deploy, a stolen credential):
-- its calls across every tenant in a window, in time order.
-- Params: agent, since, until (RFC 3339).
SELECT ts, tenant, environment, tool, status, latency_ms, workflow_id, step,
       credential_id, mcp_server, mcp_server_version, redactions, event_id
FROM invocations
WHERE agent_id = $agent
  AND dt BETWEEN substr($since, 1, 10) AND substr($until, 1, 10)
  AND ts >= to_timestamp($since) AND ts < to_timestamp($until)
ORDER BY ts, event_id
