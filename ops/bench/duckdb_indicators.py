"""DuckDB's side of the refresh benchmark: the cross-checked indicators
computed in full over the warehouse's Parquet files, timed.

Usage: duckdb_indicators.py WAREHOUSE TESTS_PY POLICY_JSON
(prints {"indicators_full": seconds, "indicators": count} as JSON)
"""
import json
import sys
import time

sys.path.insert(0, sys.argv[2])
import crosscheck  # noqa: E402  (tests/py/crosscheck.py: the indicators in DuckDB SQL)

root = sys.argv[1]
policy = json.loads(sys.argv[3])
con = crosscheck.connect(root)
t = time.time()
expected = crosscheck.expected_sql(policy)
for name, (_key, sql) in expected.items():
    con.sql(sql).fetchall()
indicators = time.time() - t
json.dump({"indicators_full": indicators, "indicators": len(expected)}, sys.stdout)
