#!/usr/bin/env bash
# Ingest benchmark (issue 4): ironlake pulls >= 5 million bank_loans rows from
# `ironlake feed-sim` over loopback HTTP (CSV pages, Link pagination, bearer
# auth), validates every record and lands quarter-partitioned Parquet with an
# all-or-nothing commit. In the same run, DuckDB (Python package) reads the
# same rows from a local CSV file and writes
# COPY ... (FORMAT parquet, PARTITION_BY quarter).
# Peak RSS is measured at a quarter of the feed and at the full feed.
#
# Usage: ops/bench/ingest.sh [ENTERPRISES]    (default 250000: about 5.1M loan rows)
source "$(dirname "$0")/common.sh"
N=${1:-250000}
start_sim big --seed 7 --enterprises "$N"
BIG=$URL
start_sim small --seed 7 --enterprises $((N / 4))
SMALL=$URL
rows_of() { curl -s "$1/truth" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tables"]["bank_loans"]["rows"])'; }
ROWS=$(rows_of "$BIG"); ROWS_SMALL=$(rows_of "$SMALL")
echo "feed: $ROWS bank_loans rows (and $ROWS_SMALL at a quarter of the size), 12 quarters"

run_ironlake() { # URL WAREHOUSE TIMEFILE
    IRONLAKE_FEED_URL=$1 IRONLAKE_FEED_TOKEN=$TOKEN IRONLAKE_LOG=warn \
        timed "$3" "$BIN" --config "$ROOT/ironlake.toml" --warehouse "$2" backfill bank_loans --from 2017Q1 --to 2019Q4 >/dev/null
}
run_ironlake "$SMALL" "$WORK/wh-small" "$WORK/t-small"
run_ironlake "$BIG" "$WORK/wh-big" "$WORK/t-big"

# The same rows as one local CSV file for DuckDB (not timed).
"$PY" "$ROOT/ops/bench/dump_loans.py" "$BIG" "$TOKEN" "$WORK/loans.csv"
timed "$WORK/t-duckdb" "$PY" "$ROOT/ops/bench/duckdb_copy.py" "$WORK/loans.csv" "$WORK/duckdb-out"

"$PY" - "$WORK" "$ROWS" "$ROWS_SMALL" <<'PY'
import duckdb, sys
work, rows, rows_small = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def t(name):
    s, kb = open(f"{work}/{name}").read().split()
    return float(s), int(kb) / 1024
small, big, duck = t("t-small"), t("t-big"), t("t-duckdb")
check = duckdb.sql(f"select count(*) from read_parquet('{work}/wh-big/tables/bank_loans/*/*.parquet')").fetchone()[0]
assert check == rows, (check, rows)
print()
print(f"{'':34} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak RSS':>9}")
print(f"{'ironlake ingest (HTTP, validated)':34} {rows:>10} {big[0]:>8.1f} {rows/big[0]:>10,.0f} {big[1]:>6.0f} MB")
print(f"{'ironlake ingest, 1/4 of the feed':34} {rows_small:>10} {small[0]:>8.1f} {rows_small/small[0]:>10,.0f} {small[1]:>6.0f} MB")
print(f"{'DuckDB COPY from local CSV':34} {rows:>10} {duck[0]:>8.1f} {rows/duck[0]:>10,.0f} {duck[1]:>6.0f} MB")
print(f"\nironlake / DuckDB throughput: {(rows/big[0])/(rows/duck[0]):.2f}x; peak RSS grows {big[1]/small[1]:.2f}x for 4x the rows")
PY
