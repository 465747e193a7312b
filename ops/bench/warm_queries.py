"""The warm side of the query benchmark: one `ironlake sql` session and one
DuckDB connection over the same warehouse, taking turns query by query.

The machine's speed drifts by 20% and more within minutes. Timing all of one
engine's queries and then all of the other's lets a slow minute fall on one
side only; here each run of a query on one engine is followed at once by a
run of it on the other, so both sample the same minutes.

ironlake's time is the one its shell prints after each result, "(N.NNNs)":
planning and execution of the query. DuckDB's is the time to fetch all rows.

Usage: warm_queries.py QUERIES_FILE RUNS TESTS_PY WAREHOUSE IRONLAKE_ARGV...
(one query per line; prints {"ironlake": [best…], "duckdb": [best…],
"runs": RUNS} as JSON, best of RUNS for each query)
"""
import json
import re
import subprocess
import sys
import time

queries_file, runs, tests_py, warehouse = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
argv = sys.argv[5:]
sys.path.insert(0, tests_py)
import crosscheck  # noqa: E402  (tests/py/crosscheck.py: DuckDB views over the warehouse)

queries = [q.strip() for q in open(queries_file) if q.strip()]
con = crosscheck.connect(warehouse)
shell = subprocess.Popen(
    argv + ["sql"],
    stdin=subprocess.PIPE,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    bufsize=1,
)
TIMING = re.compile(r"^\((\d+\.\d+)s\)$")


def ironlake(sql):
    """Runs one statement in the shell; returns the time it printed."""
    shell.stdin.write(sql + ";\n")
    shell.stdin.flush()
    seen = []
    while True:
        line = shell.stderr.readline()
        if not line:
            sys.exit(f"`ironlake sql` ended before timing {sql!r}:\n{''.join(seen)}")
        seen.append(line)
        if line.startswith("error:"):
            sys.exit(f"`ironlake sql` failed on {sql!r}:\n{''.join(seen)}")
        m = TIMING.match(line.strip())
        if m:
            return float(m.group(1))


def duckdb(sql):
    t = time.perf_counter()
    con.sql(sql).fetchall()
    return time.perf_counter() - t


shell.stdin.write("\\format csv\n")  # a shell command: no result, no time
best = {"ironlake": [], "duckdb": []}
for q in queries:
    il, dk = [], []
    for _ in range(runs):
        il.append(ironlake(q))
        dk.append(duckdb(q))
    best["ironlake"].append(min(il))
    best["duckdb"].append(min(dk))
shell.stdin.close()
shell.wait()
best["runs"] = runs
json.dump(best, sys.stdout)
