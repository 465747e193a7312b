# Shared set-up of the benchmark scripts: a release build, a Python venv with
# DuckDB and pyarrow, GNU time, and a feed simulator on 127.0.0.1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$ROOT/target/release/ironlake"
if [[ ! -x "$BIN" || "${IRONLAKE_BENCH_REBUILD:-0}" == 1 ]]; then
    (cd "$ROOT" && cargo build --release)
fi
VENV="$ROOT/target/bench-venv"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/ops/requirements-test.txt"
PY="$VENV/bin/python"
if [[ ! -x /usr/bin/time ]]; then
    apt-get update -qq && apt-get install -y -qq time >/dev/null
fi
WORK="${IRONLAKE_BENCH_DIR:-$(mktemp -d /tmp/ironlake-bench.XXXXXX)}"
mkdir -p "$WORK"
TOKEN=bench-token
SIM_PIDS=()
cleanup() { for p in "${SIM_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start_sim NAME ARGS… : starts feed-sim, sets $URL
start_sim() {
    local name=$1; shift
    "$BIN" feed-sim --listen 127.0.0.1:0 --token "$TOKEN" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    SIM_PIDS+=($!)
    for _ in $(seq 100); do
        if grep -q "listening on" "$WORK/$name.out" 2>/dev/null; then break; fi
        sleep 0.1
    done
    URL=$(sed -n 's/^listening on //p' "$WORK/$name.out")
}

# timed FILE CMD… : runs CMD, writes "seconds peak_kb" to FILE
timed() {
    local out=$1; shift
    /usr/bin/time -f "%e %M" -o "$out" "$@"
}

# The config the helpers below use: $CONFIG if a script set one.
config() { echo "${CONFIG:-$ROOT/ironlake.toml}"; }

# backfill_city WH : the five feeds for 2016Q1-2019Q4 from the simulator at
# $URL into warehouse WH, then a refresh that publishes the aggregates
backfill_city() {
    local wh=$1 p
    for p in enterprises operations bank_loans financing_demands direct_financing; do
        IRONLAKE_FEED_URL=$URL IRONLAKE_FEED_TOKEN=$TOKEN IRONLAKE_LOG=warn \
            "$BIN" --config "$(config)" --warehouse "$wh" backfill "$p" --from 2016Q1 --to 2019Q4 >/dev/null
    done
    IRONLAKE_LOG=warn "$BIN" --config "$(config)" --warehouse "$wh" refresh >/dev/null
}

# start_daemon WH [ENV=VALUE…] : starts `ironlake run` on warehouse WH with the
# given environment on free ports, sets $API, $PG (HOST:PORT) and $RUN_PID
start_daemon() {
    local wh=$1; shift
    env "$@" IRONLAKE_FEED_URL="$URL" IRONLAKE_FEED_TOKEN="$TOKEN" IRONLAKE_LOG=warn \
        "$BIN" --config "$(config)" --warehouse "$wh" run --listen 127.0.0.1:0 --pg-listen 127.0.0.1:0 >"$WORK/run.out" 2>"$WORK/run.err" &
    RUN_PID=$!
    SIM_PIDS+=("$RUN_PID")
    for _ in $(seq 300); do
        if grep -q "api listening" "$WORK/run.out" 2>/dev/null; then break; fi
        sleep 0.1
    done
    API=$(sed -n 's/^api listening on //p' "$WORK/run.out")
    PG=$(sed -n 's/^postgres listening on \([^ ]*\).*/\1/p' "$WORK/run.out")
}
