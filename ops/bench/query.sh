#!/usr/bin/env bash
# Query benchmark (issue 5): a warehouse of >= 10 million bank_loans rows over
# 16 quarters (2016Q1-2019Q4), ingested from the simulator; then
#   - a full refresh of the published indicators,
#   - an incremental refresh after one quarter of bank_loans changed,
#   - ten analyst queries (ops/bench/queries.sql), best of three each,
# each side by side with DuckDB over the same Parquet files in the same run,
# and an exact cross-check of every published indicator against DuckDB.
#
# Usage: ops/bench/query.sh [ENTERPRISES]    (default 310000: about 10M loan rows)
source "$(dirname "$0")/common.sh"
N=${1:-310000}
start_sim city --seed 11 --enterprises "$N" --from 2016Q1 --to 2019Q4
CITY=$URL
start_sim restated --seed 12 --enterprises "$N" --from 2016Q1 --to 2019Q4
OTHER=$URL
WH="$WORK/wh"
il() { IRONLAKE_LOG=warn "$BIN" --config "$ROOT/ironlake.toml" --warehouse "$WH" "$@"; }
echo "ingesting the city ($N enterprises, 2016Q1-2019Q4) ..."
for p in enterprises operations bank_loans financing_demands direct_financing; do
    IRONLAKE_FEED_URL=$CITY IRONLAKE_FEED_TOKEN=$TOKEN timed "$WORK/t-ingest-$p" \
        "$BIN" --config "$ROOT/ironlake.toml" --warehouse "$WH" backfill "$p" --from 2016Q1 --to 2019Q4 | sed 's/^/  /'
done
LOANS=$(il sql "SELECT count(*) FROM bank_loans" --format csv | tail -1)
QUARTERS=$(il sql "SELECT count(DISTINCT quarter) FROM bank_loans" --format csv | tail -1)
echo "bank_loans: $LOANS rows over $QUARTERS quarters"

timed "$WORK/t-full" "$BIN" --config "$ROOT/ironlake.toml" --warehouse "$WH" refresh --full >/dev/null
# One quarter changes: another partner delivery for 2018Q2 (new and restated loans).
IRONLAKE_FEED_URL=$OTHER IRONLAKE_FEED_TOKEN=$TOKEN IRONLAKE_LOG=warn "$BIN" --config "$ROOT/ironlake.toml" --warehouse "$WH" \
    backfill bank_loans --from 2018Q2 --to 2018Q2 | sed 's/^/  /'
timed "$WORK/t-inc" "$BIN" --config "$ROOT/ironlake.toml" --warehouse "$WH" refresh > "$WORK/inc.out"
cat "$WORK/inc.out" | sed 's/^/  /'

# Analyst queries through `ironlake sql`, best of three (engine time: planning and execution).
: > "$WORK/il-times"
"$PY" -c "
import sys
qs = [' '.join(l for l in q.splitlines() if not l.strip().startswith('--')).strip() for q in open('$ROOT/ops/bench/queries.sql').read().split(';')]
open('$WORK/queries.txt', 'w').write(''.join(q + '\n' for q in qs if q))
"
while IFS= read -r q; do
    best=""
    for _ in 1 2 3; do
        t=$(il sql "$q" --format csv --output /dev/null --timing 2>&1 | sed -n 's/^Time: \([0-9.]*\) s$/\1/p')
        if [[ -z "$best" ]] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
    done
    echo "$best" >> "$WORK/il-times"
done < "$WORK/queries.txt"

# The [policy] values as the SQL literals ironlake fills in (see Policy::placeholders).
POLICY_JSON=$("$PY" -c "
import json, tomllib
p = tomllib.load(open('$ROOT/ironlake.toml', 'rb'))['policy']
p['strategic_divisions'] = ', '.join(\"'%s'\" % d for d in p['strategic_divisions'])
print(json.dumps({k: str(v) for k, v in p.items()}))")
"$PY" "$ROOT/ops/bench/duckdb_queries.py" "$WH" "$ROOT/ops/bench/queries.sql" "$ROOT/tests/py" "$POLICY_JSON" > "$WORK/duck.json"
"$PY" "$ROOT/tests/py/crosscheck.py" "$WH" "$POLICY_JSON" > "$WORK/cross.json"

"$PY" - "$WORK" "$LOANS" <<'PY'
import json, math, sys
work, loans = sys.argv[1], int(sys.argv[2])
t = lambda n: float(open(f"{work}/{n}").read().split()[0])
duck = json.load(open(f"{work}/duck.json"))
il = [float(x) for x in open(f"{work}/il-times").read().split()]
rss = lambda n: int(open(f"{work}/{n}").read().split()[1]) / 1e6  # GB
full, inc = t("t-full"), t("t-inc")
print()
print(f"full refresh (all aggregates): ironlake {full:.2f}s, peak RSS {rss('t-full'):.2f} GB; DuckDB computing the {duck['indicators']} cross-checked indicators: {duck['indicators_full']:.2f}s; ratio (DuckDB time / ironlake time) {duck['indicators_full']/full:.2f}x")
print(f"incremental refresh after one quarter changed:   ironlake {inc:.2f}s = {100*inc/full:.1f}% of the full refresh, peak RSS {rss('t-inc'):.2f} GB")
print()
print(f"{'query':6} {'ironlake s':>10} {'DuckDB s':>9} {'ratio':>6}")
ratios = []
for i, (a, b) in enumerate(zip(il, duck["queries"]), 1):
    ratios.append(a / b)
    print(f"Q{i:<5} {a:>10.3f} {b:>9.3f} {a/b:>6.2f}")
print(f"geometric mean ironlake/DuckDB: {math.exp(sum(map(math.log, ratios))/len(ratios)):.2f}")
cross = json.load(open(f"{work}/cross.json"))
bad = {k: len(v['mismatches']) for k, v in cross.items() if v['mismatches']}
print(f"cross-check of published indicators against DuckDB: {'all exact' if not bad else bad} ({sum(v['rows'] for v in cross.values())} rows)")
PY
