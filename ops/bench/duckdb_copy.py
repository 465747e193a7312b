"""DuckDB's side of the ingest benchmark: a local CSV to quarter-partitioned Parquet."""
import sys
import time

import duckdb

src, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
t = time.time()
con.sql(
    f"""
    COPY (
      SELECT *, strftime(period_end, '%Y') || 'Q' || quarter(period_end) AS quarter
      FROM read_csv('{src}', header = true, columns = {{
        'bank_code': 'VARCHAR', 'loan_id': 'VARCHAR', 'period_end': 'DATE', 'uscc': 'VARCHAR',
        'balance': 'DECIMAL(18,2)', 'disbursed': 'DECIMAL(18,2)', 'rate_pct': 'DECIMAL(9,4)',
        'term': 'VARCHAR', 'guarantee': 'VARCHAR', 'product': 'VARCHAR', 'guarantee_fee_pct': 'DECIMAL(9,4)'}})
    ) TO '{out}' (FORMAT parquet, PARTITION_BY (quarter), COMPRESSION zstd, OVERWRITE_OR_IGNORE)
    """
)
print(f"duckdb copy: {time.time() - t:.1f}s", file=sys.stderr)
