"""Read the dataset with DuckDB, Hive partitioning on, and report what it holds.

Usage: duckdb_check.py DATA_DIR SECRETS_FILE
Prints one JSON object: row counts, distinct ids, partition columns seen, and any
planted secret found in any stored value.
"""
import json
import sys

import duckdb

data, secrets_path = sys.argv[1:3]
secrets = [s for s in open(secrets_path).read().split("\n") if s]
con = duckdb.connect()
inv = f"read_parquet('{data}/invocations/**/*.parquet', hive_partitioning = true)"
dead = f"read_parquet('{data}/dead_letter/**/*.parquet', hive_partitioning = true)"
report = {
    "invocations": con.sql(f"SELECT count(*) FROM {inv}").fetchall()[0][0],
    "distinct_event_ids": con.sql(f"SELECT count(DISTINCT event_id) FROM {inv}").fetchall()[0][0],
    "dead_letters": con.sql(f"SELECT count(*) FROM {dead}").fetchall()[0][0],
    "partition_columns": sorted(
        c for c in con.sql(f"SELECT * FROM {inv} LIMIT 1").columns if c in ("dt", "hour")
    ),
    "ts_type": str(con.sql(f"SELECT typeof(ts) FROM {inv} LIMIT 1").fetchall()[0][0]),
}
stored = "\n".join(
    str(row) for table in (inv, dead) for row in con.sql(f"SELECT * FROM {table}").fetchall()
)
report["leaked"] = [s for s in secrets if s in stored]
print(json.dumps(report))
