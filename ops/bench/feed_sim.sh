#!/usr/bin/env bash
# Serving rate of `ironlake feed-sim`: rows/s of bank_loans CSV pages over
# loopback HTTP, fetched by curl with two clients in parallel.
# Usage: ops/bench/feed_sim.sh [ENTERPRISES]   (default 100000)
source "$(dirname "$0")/common.sh"
N=${1:-100000}
start_sim sim --seed 3 --enterprises "$N"
ROWS=$(curl -s "$URL/truth" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["tables"]["bank_loans"]["rows"])')
crawl() {
    for q in "$@"; do
        local url="$URL/v1/bank_loans?quarter=$q&per_page=10000"
        while [[ -n "$url" ]]; do
            url=$(curl -s -o /dev/null -D - -H "Authorization: Bearer $TOKEN" "$url" | sed -n 's/^[Ll]ink: <\([^>]*\)>; rel="next".*/\1/p' | tr -d '\r')
        done
    done
}
start=$(date +%s.%N)
crawl 2017Q1 2017Q2 2017Q3 2017Q4 2018Q1 2018Q2 & A=$!
crawl 2018Q3 2018Q4 2019Q1 2019Q2 2019Q3 2019Q4 & B=$!
wait "$A" "$B"
end=$(date +%s.%N)
"$PY" -c "print(f'feed-sim served {$ROWS:,} bank_loans rows in {$end-$start:.1f}s: {$ROWS/($end-$start):,.0f} rows/s')"
