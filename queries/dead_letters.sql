-- When to use: a producer is misbehaving or events are missing from the timeline:
-- what was dead-lettered, why, and from which partition, in a window of arrival time.
-- Params: since (RFC 3339).
SELECT reason, count(*) AS messages, min(ingested_at) AS first_seen,
       max(ingested_at) AS last_seen, min(src_partition) AS min_partition,
       max(src_partition) AS max_partition, first_value(detail ORDER BY ingested_at) AS example_detail
FROM dead_letter
WHERE dt >= substr($since, 1, 10) AND ingested_at >= to_timestamp($since)
GROUP BY reason
ORDER BY messages DESC
