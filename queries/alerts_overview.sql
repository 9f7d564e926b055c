-- When to use: the morning after, or at the start of a review: which rules
-- fired for which tenants and agents since a time, how often, and the worst
-- score, so you pick the incidents worth opening.
-- Params: since (RFC 3339).
SELECT rule, severity, tenant, agent_id, tool, count(*) AS alerts,
       min(window_start) AS first_window, max(window_start) AS last_window,
       max(score) AS max_score
FROM alerts
WHERE dt >= substr($since, 1, 10) AND window_start >= to_timestamp($since)
GROUP BY rule, severity, tenant, agent_id, tool
ORDER BY severity DESC, alerts DESC, rule, tenant, agent_id, tool
