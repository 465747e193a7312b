"""Prints, per submission quarter, how many demands are in each status."""
import json
import sys

import duckdb

rows = duckdb.sql(
    f"select quarter, status, count(*) from read_parquet('{sys.argv[1]}/tables/financing_demands/*/*.parquet', hive_partitioning=true) group by 1, 2"
).fetchall()
out = {}
for q, s, n in rows:
    out.setdefault(q, {})[s] = n
json.dump(out, sys.stdout)
