"""DuckDB's side of the query benchmark: the same ten queries over the same
Parquet files, best of N (the fifth argument, three by default), and the cross-checked indicators computed in full."""
import json
import sys
import time

import duckdb

sys.path.insert(0, sys.argv[3])
import crosscheck  # noqa: E402  (tests/py/crosscheck.py: the indicators in DuckDB SQL)

root, queries_file = sys.argv[1], sys.argv[2]
policy = json.loads(sys.argv[4])
runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
con = crosscheck.connect(root)
blocks = open(queries_file).read().split(";")
queries = [" ".join(l for l in b.splitlines() if not l.strip().startswith("--")).strip() for b in blocks]
queries = [q for q in queries if q]
times = []
for q in queries:
    best = None
    for _ in range(runs):
        t = time.time()
        con.sql(q).fetchall()
        el = time.time() - t
        best = el if best is None else min(best, el)
    times.append(best)
t = time.time()
expected = crosscheck.expected_sql(policy)
for name, (_key, sql) in expected.items():
    con.sql(sql).fetchall()
indicators = time.time() - t
json.dump({"queries": times, "indicators_full": indicators, "indicators": len(expected)}, sys.stdout)
