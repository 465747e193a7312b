"""Fetches the same 1M rows four ways and prints one JSON line per way:
psycopg 3 over a server-side cursor (text and binary), psycopg 3 as one
plain query, the HTTP SQL API as an Arrow stream, and DuckDB's Python
fetch over the same Parquet files. Best of three runs each.

Usage: pg_fetch.py WAREHOUSE PG_HOST PG_PORT API_URL ANALYST_TOKEN ROWS
"""

import decimal
import json
import sys
import time
import urllib.request

import duckdb
import psycopg
import pyarrow.ipc

WH, HOST, PORT, API, TOKEN, ROWS = sys.argv[1:7]
ROWS = int(ROWS)
COLS = "loan_id, bank_code, uscc, period_end, balance, rate_pct, quarter"
SQL = f"SELECT {COLS} FROM bank_loans LIMIT {ROWS}"


def best(name, fetch):
    times, rows = [], 0
    for _ in range(3):
        t = time.perf_counter()
        rows = fetch()
        times.append(time.perf_counter() - t)
    assert rows == ROWS, (name, rows)
    s = min(times)
    print(json.dumps({"way": name, "rows": rows, "secs": round(s, 3), "rows_per_sec": round(rows / s)}), flush=True)


def connect():
    return psycopg.connect(host=HOST, port=int(PORT), user="analyst", password=TOKEN, dbname="ironlake")


def server_cursor(binary):
    def fetch():
        n = 0
        with connect() as conn, conn.cursor(name="bench", binary=binary) as cur:
            cur.itersize = 10_000
            cur.execute(SQL)
            for row in cur:
                n += 1
            assert isinstance(row[4], decimal.Decimal)
        return n
    return fetch


def plain_query():
    with connect() as conn:
        rows = conn.execute(SQL).fetchall()
    return len(rows)


def http_arrow():
    req = urllib.request.Request(
        f"{API}/api/v1/sql",
        data=SQL.encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/vnd.apache.arrow.stream"},
    )
    with urllib.request.urlopen(req) as resp:
        table = pyarrow.ipc.open_stream(resp).read_all()
    return table.num_rows


def duck(kind):
    con = duckdb.connect()
    con.sql(
        f"create view bank_loans as select * from read_parquet('{WH}/tables/bank_loans/*/*.parquet', hive_partitioning=true)"
    )

    def fetch():
        rel = con.sql(SQL)
        return len(rel.fetchall()) if kind == "rows" else rel.fetch_arrow_table().num_rows
    return fetch


best("psycopg server-side cursor, text (FETCH 10000)", server_cursor(False))
best("psycopg server-side cursor, binary (FETCH 10000)", server_cursor(True))
best("psycopg plain query, fetchall", plain_query)
best("HTTP API, Arrow stream (pyarrow)", http_arrow)
best("DuckDB Python fetchall (rows)", duck("rows"))
best("DuckDB Python fetch_arrow_table", duck("arrow"))


def latency(name, run, n=300):
    run()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    times.sort()
    print(json.dumps({"way": name, "queries": n, "p50_ms": round(times[n // 2] * 1000, 2), "p99_ms": round(times[int(n * 0.99)] * 1000, 2)}), flush=True)


SMALL = "SELECT quarter, industry_balance FROM published.loan_growth WHERE quarter >= '2019Q1'"
with connect() as conn:
    conn.autocommit = True
    latency("psycopg small query (published.loan_growth, 4 rows)", lambda: conn.execute(SMALL).fetchall())
    latency("psycopg small query, prepared", lambda: conn.execute(SMALL, prepare=True).fetchall())


def http_small():
    req = urllib.request.Request(
        f"{API}/api/v1/sql", data=SMALL.encode(), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(req) as resp:
        resp.read()


latency("HTTP API small query (same SQL, JSON)", http_small)
duck_con = duckdb.connect()
duck_con.sql(
    f"create view loan_growth as select * from read_parquet('{WH}/published/loan_growth/*/*.parquet', hive_partitioning=true)"
)
latency("DuckDB Python small query (same Parquet)", lambda: duck_con.sql(SMALL.replace("published.", "")).fetchall())
