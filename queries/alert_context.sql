-- When to use: an alert fired and you are opening the incident. Give the
-- alert_id (from the alerts table, or the sample event ids Alertmanager shows)
-- and get every call of the alert's tenant/agent/tool from ten minutes before
-- its window to ten minutes after, with what redaction found in each.
-- Params: alert_id.
SELECT a.rule, i.ts, i.tenant, i.agent_id, i.tool, i.status, i.workflow_id,
       i.step, i.redactions, i.event_id
FROM alerts a
JOIN invocations i
  ON (a.tenant = '' OR i.tenant = a.tenant)
 AND (a.agent_id = '' OR i.agent_id = a.agent_id)
 AND (a.tool = '' OR i.tool = a.tool)
WHERE a.alert_id = $alert_id
  AND i.ts >= a.window_start - INTERVAL '10 minutes'
  AND i.ts < a.window_end + INTERVAL '10 minutes'
ORDER BY i.ts, i.event_id
