"""Prints a digest of every published aggregate (all rows, sorted), read by DuckDB."""
import hashlib
import json
import os
import sys

import duckdb

root = sys.argv[1]
out = {}
for name in sorted(os.listdir(os.path.join(root, "published"))):
    path = os.path.join(root, "published", name)
    rows = duckdb.sql(f"select * from read_parquet('{path}/*/*.parquet', hive_partitioning=true)").fetchall()
    rows = sorted(repr(r) for r in rows)
    out[name] = {"rows": len(rows), "digest": hashlib.sha256("\n".join(rows).encode()).hexdigest()}
json.dump(out, sys.stdout)
