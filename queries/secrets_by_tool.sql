-- When to use: "which tools received secrets?" — after a leak report, or to find
-- tools whose inputs should never carry credentials. One row per tenant, tool and
-- detector that fired, with first and last sighting.
-- Params: since (RFC 3339).
SELECT tenant, tool, detector, count(*) AS calls,
       min(ts) AS first_seen, max(ts) AS last_seen
FROM (
    SELECT tenant, tool, ts, unnest(redactions) AS detector
    FROM invocations
    WHERE dt >= substr($since, 1, 10) AND ts >= to_timestamp($since)
)
GROUP BY tenant, tool, detector
ORDER BY calls DESC, tenant, tool, detector
