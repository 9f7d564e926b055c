-- When to use: auditing human approval of Tier A actions (money, identity,
-- permissions, bulk export, deletion, infrastructure), e.g. for a quarterly review
-- or after a suspicious refund. Calls whose tool name looks Tier A, with their
-- approval; `unapproved` marks successful calls with no approval or a rejected one.
-- Params: since (RFC 3339).
SELECT ts, tenant, agent_id, environment, tool, status,
       approval_id, approval_approver, approval_decision,
       status = 'ok' AND coalesce(approval_decision, 'none') <> 'approved' AS unapproved,
       workflow_id, event_id
FROM invocations
WHERE dt >= substr($since, 1, 10) AND ts >= to_timestamp($since)
  AND regexp_like(lower(tool),
      '(refund|payment|pay_|transfer|charge|payout|invoice_void|grant|revoke|role|permission|iam|password|mfa|user_(create|delete)|export|dump|bulk|delete|drop|purge|truncate|deploy|terraform|kubectl|scale|shutdown)')
ORDER BY unapproved DESC, ts
