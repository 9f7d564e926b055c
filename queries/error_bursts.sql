-- When to use: an agent starts failing or being refused in bursts — a broken
-- upstream, a revoked credential, or an injected agent probing tools it may not
-- use. Minutes in which a tenant/agent had at least min_count errors+denials.
-- Params: since (RFC 3339), min_count (integer).
SELECT date_trunc('minute', ts) AS minute, tenant, agent_id,
       count(*) FILTER (WHERE status = 'error') AS errors,
       count(*) FILTER (WHERE status = 'denied') AS denials,
       count(*) FILTER (WHERE status = 'timeout') AS timeouts,
       count(DISTINCT tool) AS tools
FROM invocations
WHERE dt >= substr($since, 1, 10) AND ts >= to_timestamp($since)
  AND status IN ('error', 'denied', 'timeout')
GROUP BY 1, 2, 3
HAVING count(*) FILTER (WHERE status IN ('error', 'denied')) >= CAST($min_count AS BIGINT)
ORDER BY minute, tenant, agent_id
