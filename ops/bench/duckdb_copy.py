"""DuckDB's side of the ingest benchmark: a local CSV or NDJSON file of
bank_loans to quarter-partitioned Parquet (LZ4, as ironlake writes), with the table's types.

Usage: duckdb_copy.py FILE OUT_DIR [csv|ndjson]
       duckdb_copy.py CSV_FILE NDJSON_FILE to-ndjson   (the same rows as NDJSON, not timed)
"""
import sys
import time

import duckdb

src, out = sys.argv[1], sys.argv[2]
fmt = sys.argv[3] if len(sys.argv) > 3 else "csv"
columns = """{
    'bank_code': 'VARCHAR', 'loan_id': 'VARCHAR', 'period_end': 'DATE', 'uscc': 'VARCHAR',
    'balance': 'DECIMAL(18,2)', 'disbursed': 'DECIMAL(18,2)', 'rate_pct': 'DECIMAL(9,4)',
    'term': 'VARCHAR', 'guarantee': 'VARCHAR', 'product': 'VARCHAR', 'guarantee_fee_pct': 'DECIMAL(9,4)'}"""
reader = {
    "csv": f"read_csv('{src}', header = true, columns = {columns})",
    "ndjson": f"read_json('{src}', format = 'newline_delimited', columns = {columns})",
}
con = duckdb.connect()
if fmt == "to-ndjson":
    con.sql(f"COPY (SELECT * FROM {reader['csv']}) TO '{out}' (FORMAT json)")
    sys.exit(0)
reader = reader[fmt]
t = time.time()
con.sql(
    f"""
    COPY (
      SELECT *, strftime(period_end, '%Y') || 'Q' || quarter(period_end) AS quarter
      FROM {reader}
    ) TO '{out}' (FORMAT parquet, PARTITION_BY (quarter), COMPRESSION lz4_raw, OVERWRITE_OR_IGNORE)
    """
)
print(f"duckdb copy ({fmt}): {time.time() - t:.1f}s", file=sys.stderr)
