"""Reads a warehouse directory the way an outside analyst would (DuckDB over
the Hive-partitioned Parquet files) and prints a JSON summary: per table the
rows, per-quarter rows and exact sums, duplicate keys, a content digest, and
the quarantine's (field, reason) pairs. Used by the Rust integration tests."""
import hashlib
import json
import os
import sys

import duckdb

TABLES = {
    "enterprises": (["uscc", "as_of"], None),
    "operations": (["uscc", "period_end"], "revenue"),
    "bank_loans": (["bank_code", "loan_id", "period_end"], "balance"),
    "financing_demands": (["demand_id"], "amount"),
    "direct_financing": (["record_id"], "amount"),
}


def main(root):
    con = duckdb.connect()
    out = {"tables": {}, "quarantine": {}}
    for table, (key, amount) in TABLES.items():
        qpath = os.path.join(root, "quarantine", table)
        if os.path.exists(qpath):
            rows = con.sql(
                f"select field, reason, quarter, raw, run_id from read_parquet('{qpath}/*/*.parquet', hive_partitioning=true)"
            ).fetchall()
            out["quarantine"][table] = [
                {"field": f, "reason": r, "quarter": q, "raw": raw, "run_id": run} for f, r, q, raw, run in rows
            ]
        path = os.path.join(root, "tables", table)
        if not os.path.exists(path):
            continue
        src = f"read_parquet('{path}/*/*.parquet', hive_partitioning=true)"
        sum_expr = f"sum({amount})::VARCHAR" if amount else "NULL"
        quarters = {
            q: {"rows": n, "sum": s}
            for q, n, s in con.sql(f"select quarter, count(*), {sum_expr} from {src} group by 1 order by 1").fetchall()
        }
        total, distinct = con.sql(
            f"select count(*), count(distinct ({', '.join(key)})) from {src}"
        ).fetchone()
        digest = hashlib.sha256()
        for row in con.sql(f"select * exclude (quarter) from {src} order by {', '.join(key)}").fetchall():
            digest.update(repr(row).encode())
        types = {n: t for n, t, *_ in con.sql(f"describe select * from {src}").fetchall()}
        out["tables"][table] = {
            "rows": total,
            "distinct_keys": distinct,
            "quarters": quarters,
            "digest": digest.hexdigest(),
            "types": types,
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
