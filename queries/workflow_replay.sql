-- When to use: reconstructing what one conversation/run did, step by step — e.g.
-- to see which tool result preceded an unexpected write (the injection point).
-- Params: workflow (the workflow_id / gen_ai.conversation.id).
SELECT step, ts, tenant, agent_id, tool, status, latency_ms, tokens_in, tokens_out,
       input, output_sha256, output_bytes, approval_decision, redactions, event_id
FROM invocations
WHERE workflow_id = $workflow
ORDER BY step NULLS LAST, ts, event_id
