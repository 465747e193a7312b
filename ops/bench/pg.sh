#!/usr/bin/env bash
# PostgreSQL protocol (issue 12): a 1M-row result streamed from `ironlake run`
# to psycopg 3 (server-side cursor in text and binary, and one plain query),
# side by side with the HTTP SQL API's Arrow stream and DuckDB's Python fetch
# of the same rows from the same Parquet files, in the same run; plus the
# daemon's peak memory; then the latency of a small query on a published
# aggregate over psycopg, over HTTP and in DuckDB. The [api] row and byte limits are raised for the run
# (a copy of the config) so the plain query and the HTTP request may return
# a million rows.
#
# Usage: ops/bench/pg.sh [ENTERPRISES] [ROWS]    (default 40000, 1000000)
source "$(dirname "$0")/common.sh"
N=${1:-40000}
ROWS=${2:-1000000}
start_sim city --seed 11 --enterprises "$N" --from 2016Q1 --to 2019Q4
WH="$WORK/wh"
CONFIG="$WORK/ironlake.toml"
sed -e "s|^schemas_dir = .*|schemas_dir = \"$ROOT/schemas\"|" \
    -e "s|^pipelines_dir = .*|pipelines_dir = \"$ROOT/pipelines\"|" \
    -e "s|^sql_max_rows = .*|sql_max_rows = 5000000|" \
    -e "s|^sql_max_bytes = .*|sql_max_bytes = 4294967296|" \
    "$ROOT/ironlake.toml" > "$CONFIG"
echo "ingesting the city ($N enterprises, 2016Q1-2019Q4) and publishing ..."
backfill_city "$WH"
LOANS=$(IRONLAKE_LOG=warn "$BIN" --config "$CONFIG" --warehouse "$WH" sql "SELECT count(*) FROM bank_loans" --format csv | tail -1)
echo "bank_loans: $LOANS rows"

ANALYST=bench-analyst-token
start_daemon "$WH" IRONLAKE_TOKEN_ANALYST="$ANALYST"
"$PY" "$ROOT/ops/bench/pg_fetch.py" "$WH" "${PG%:*}" "${PG##*:}" "$API" "$ANALYST" "$ROWS" | tee "$WORK/pg.json"
PEAK=$(awk '/VmHWM/ {print $2}' "/proc/$RUN_PID/status")
echo "daemon peak RSS: $((PEAK / 1024)) MiB"
