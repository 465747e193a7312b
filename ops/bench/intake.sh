#!/usr/bin/env bash
# Online applications pushed by the enterprise portal (issue 14), against
# `ironlake run` on a published city, with `ironlake portal-sim` on the same
# 2 cores:
#   - single applications: 20,000 requests of one JSON object each from 32
#     concurrent clients (goal: >= 2,000 requests/s, p99 acknowledgement <= 500 ms),
#   - bulk uploads: 40 NDJSON requests of 25,000 applications from 4 clients
#     (goal: >= 200,000 rows/s),
# every acknowledgement after a durable commit; plus the daemon's peak memory
# and the commits the group commit made. There is no DuckDB counterpart: DuckDB
# has no HTTP intake.
#
# Usage: ops/bench/intake.sh [ENTERPRISES]    (default 7000)
source "$(dirname "$0")/common.sh"
N=${1:-7000}
start_sim city --seed 21 --enterprises "$N" --from 2017Q1 --to 2019Q4
WH="$WORK/wh"
echo "ingesting the city ($N enterprises, 2017Q1-2019Q4) and publishing ..."
IRONLAKE_FEED_URL=$URL IRONLAKE_FEED_TOKEN=$TOKEN IRONLAKE_LOG=warn \
    "$BIN" --config "$ROOT/ironlake.toml" --warehouse "$WH" ingest --all >/dev/null
IRONLAKE_LOG=warn "$BIN" --config "$ROOT/ironlake.toml" --warehouse "$WH" refresh >/dev/null

export IRONLAKE_TOKEN_PARTNER_PORTAL=bench-portal-token
start_daemon "$WH" IRONLAKE_TOKEN_VIEWER=bench-viewer
INTAKE="$API/api/v1/intake/financing_applications"

portal() { # NAME ARGS…
    local name=$1; shift
    IRONLAKE_LOG=warn "$BIN" portal-sim --url "$INTAKE" --seed 21 --enterprises "$N" "$@" > "$WORK/portal-$name.json"
    "$PY" - "$WORK/portal-$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  {sys.argv[2]:<34} {r['requests_per_sec']:>9.0f} req/s {r['rows_per_sec']:>10.0f} rows/s   "
      f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.1f} ms  "
      f"statuses {r['statuses']}  no answer {r['no_answer']}")
PY
}
echo "pushes to $INTAKE (each answered after its commit is durable):"
portal "single, 32 clients" --requests 20000 --concurrency 32 --prefix ONE
portal "single, 32 clients, 5% bad" --requests 20000 --concurrency 32 --bad-share 0.05 --prefix BAD
portal "bulk NDJSON 25k rows, 4 clients" --requests 40 --per-request 25000 --concurrency 4 --prefix BULK
sleep 3
COMMITS=$(curl -s -H "Authorization: Bearer bench-viewer" "$API/api/v1/runs?pipeline=financing_applications&limit=1000" \
    | "$PY" -c 'import json,sys; r=json.load(sys.stdin)["runs"]; print(len(r), sum(x["requests"] for x in r))')
echo "  commits (last 1000 kept): $COMMITS requests in them"
echo "  daemon peak RSS: $(awk '/VmHWM/{printf "%.0f MB", $2/1024}' /proc/$RUN_PID/status)"
