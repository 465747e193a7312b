#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs
# formatting, lints and every test. Debug builds only (a clean build of the
# dependencies takes about 4-7 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

# Python interop readers (DuckDB, pyarrow) and PostgreSQL clients (psycopg,
# SQLAlchemy, pandas) in a venv, when the tests use them.
if [[ -f ops/requirements-test.txt ]]; then
    VENV="${IRONLAKE_TEST_VENV:-$PWD/target/test-venv}"
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV" || {
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$VENV"
        }
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r ops/requirements-test.txt
    export IRONLAKE_TEST_PYTHON="$VENV/bin/python"
fi

# The dashboard's browser tests: Debian's chromium (with a CJK font, so the
# screenshots show the Chinese labels) driven by playwright-core from npm,
# pinned by tests/browser/package-lock.json.
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk" || missing+=(fonts-wqy-microhei)
command -v npm >/dev/null || missing+=(nodejs npm)
# psql, for the PostgreSQL protocol tests.
command -v psql >/dev/null || missing+=(postgresql-client)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.installed-lock; then
    npm ci --prefix tests/browser --no-audit --no-fund --silent
    cp tests/browser/package-lock.json tests/browser/node_modules/.installed-lock
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The debug build and the test data take about 6 GB under target/ and the
# temp dir; a full disk shows up later as a linker crash, so say it first.
free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
if ((free_gb < 8)); then
    echo "warning: only ${free_gb} GB free on $(df -P . | awk 'NR==2 {print $6}'); the build and tests need about 6 GB" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets
