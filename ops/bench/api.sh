#!/usr/bin/env bash
# Published reads (issue 11): requests per second and latency of dashboard
# reads of published aggregates against `ironlake run`, with wrk (16
# connections, 2 threads, 10 s each) on loopback:
#   - /healthz (what axum itself costs, for reference),
#   - GET loan_growth as JSON, and as CSV,
#   - GET financing_cost filtered by quarter range and district,
#   - the same loan_growth read with a matching If-None-Match (304s),
# plus the daemon's peak memory. Published versions never change, so reads
# are answered from a bounded cache of encoded responses without SQL.
#
# Usage: ops/bench/api.sh [ENTERPRISES]    (default 20000)
source "$(dirname "$0")/common.sh"
N=${1:-20000}
if ! command -v wrk >/dev/null; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
start_sim city --seed 11 --enterprises "$N" --from 2016Q1 --to 2019Q4
WH="$WORK/wh"
echo "ingesting the city ($N enterprises, 2016Q1-2019Q4) and publishing ..."
backfill_city "$WH"

VIEWER=bench-viewer-token
start_daemon "$WH" IRONLAKE_TOKEN_VIEWER="$VIEWER"
AUTH="Authorization: Bearer $VIEWER"
LG="$API/api/v1/aggregates/loan_growth"
FC="$API/api/v1/aggregates/financing_cost?from=2019Q1&to=2019Q4&district_code=ALL,500101,500103"
ETAG=$(curl -s -D - -o /dev/null -H "$AUTH" "$LG" | sed -n 's/^[Ee][Tt][Aa][Gg]: //p' | tr -d '\r')
for u in "$LG" "$LG?format=csv" "$FC"; do curl -s -o /dev/null -H "$AUTH" "$u"; done   # first reads fill the cache

bench() { # NAME URL [HEADER]
    local name=$1 url=$2 extra=${3:-}
    local args=(-t2 -c16 -d10s --latency -H "$AUTH")
    [[ -n "$extra" ]] && args+=(-H "$extra")
    wrk "${args[@]}" "$url" > "$WORK/wrk-$name.txt"
    local rps p50 p99
    rps=$(sed -n 's/^Requests\/sec: *//p' "$WORK/wrk-$name.txt")
    p50=$(awk '$1=="50%"{print $2}' "$WORK/wrk-$name.txt")
    p99=$(awk '$1=="99%"{print $2}' "$WORK/wrk-$name.txt")
    printf "  %-36s %10s req/s   p50 %-9s p99 %s\n" "$name" "$rps" "$p50" "$p99"
    echo "$name $rps $p99" >> "$WORK/results.txt"
}
: > "$WORK/results.txt"
echo "published reads, wrk -t2 -c16 -d10s on loopback (goal: >= 20000 req/s with p99 <= 5 ms; 304s >= 40000 req/s):"
bench healthz "$API/healthz"
bench "loan_growth json" "$LG"
bench "loan_growth csv" "$LG?format=csv"
bench "financing_cost filtered json" "$FC"
bench "loan_growth 304 (If-None-Match)" "$LG" "If-None-Match: $ETAG"
PEAK=$(awk '/VmHWM/{print $2}' /proc/$RUN_PID/status)
echo "  daemon peak RSS: $((PEAK / 1024)) MB (response cache budget: response_cache_mb in ironlake.toml)"
