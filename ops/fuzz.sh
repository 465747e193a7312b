#!/usr/bin/env bash
# A long fuzzing campaign on stable Rust: the property tests of tests/fuzz.rs
# (decoders, Link parser, config loaders, SQL guard) with many more cases
# than ./ops/test.sh runs. Usage: ops/fuzz.sh [CASES_PER_PROPERTY]
# The default, 2,000,000 cases per property, takes about an hour on 2 cores
# (release build). A failure prints the minimal failing input and saves it
# under tests/fuzz.proptest-regressions, so the next ordinary test run repeats it.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${1:-2000000}"
started=$(date +%s)
PROPTEST_CASES="$CASES" PROPTEST_MAX_SHRINK_ITERS=100000 \
    cargo test --release --test fuzz -- --test-threads 2 --nocapture
echo "fuzz: $CASES cases per property, $(( $(date +%s) - started )) s, no failure"
