"""Read the shared lake from S3 with pyarrow's S3 filesystem, query it with
DuckDB, and report what it holds. No deduplication: each table is read as is.

Usage: lake_check.py ENDPOINT BUCKET/PREFIX SECRETS_FILE
(credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment)
Prints one JSON object: row counts, distinct ids, partition columns seen, and
any planted secret found in any stored value.
"""
import json
import os
import sys

import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs

endpoint, root, secrets_path = sys.argv[1:4]
secrets = [s for s in open(secrets_path).read().split("\n") if s]
scheme, _, host = endpoint.partition("://")
fs = pafs.S3FileSystem(
    endpoint_override=host,
    scheme=scheme,
    access_key=os.environ["AWS_ACCESS_KEY_ID"],
    secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    region="us-east-1",
)


def table(name):
    return ds.dataset(
        f"{root}/{name}", filesystem=fs, format="parquet", partitioning="hive"
    ).to_table()


inv = table("invocations")
dead = table("dead_letter")
con = duckdb.connect()
con.register("inv", inv)
con.register("dead", dead)
report = {
    "invocations": con.sql("SELECT count(*) FROM inv").fetchall()[0][0],
    "distinct_event_ids": con.sql("SELECT count(DISTINCT event_id) FROM inv").fetchall()[0][0],
    "dead_letters": con.sql("SELECT count(*) FROM dead").fetchall()[0][0],
    "distinct_dead_offsets": con.sql(
        "SELECT count(DISTINCT (src_partition, src_offset)) FROM dead"
    ).fetchall()[0][0],
    "partition_columns": sorted(c for c in inv.column_names if c in ("dt", "hour")),
}
stored = "\n".join(
    str(row) for t in ("inv", "dead") for row in con.sql(f"SELECT * FROM {t}").fetchall()
)
report["leaked"] = [s for s in secrets if s in stored]
print(json.dumps(report))
