#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit, property,
# scenario, CLI and doc tests, the no-I/O check of the core, and a short
# smoke run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

# Property tests: at least 5 000 cases per property (override with PROPTEST_CASES).
export PROPTEST_CASES="${PROPTEST_CASES:-5000}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

if [ -f tests/interop/package-lock.json ]; then
    echo "== npm ci (oidc-provider interop fixture)"
    (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
    # The interop test must run, not skip, wherever this script runs.
    export TOKEN_KEEPER_INTEROP=required
fi
# The shared-store tests (adapters/redis) run against a real redis-server.
if ! command -v redis-server >/dev/null 2>&1; then
    echo "== apt-get install redis-server (for the Redis store tests)"
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq redis-server
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq && sudo apt-get install -y -qq redis-server
    else
        echo "error: redis-server is not installed and neither root nor sudo is available" >&2
        exit 1
    fi
fi
# The Redis tests must run, not skip, wherever this script runs.
export TOKEN_KEEPER_REDIS=required
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "== cargo test (workspace, PROPTEST_CASES=$PROPTEST_CASES)"
cargo test --workspace --locked 2>&1 | tee "$log"
echo "== the core depends on no I/O crate"
if cargo tree -p token-keeper -e normal --prefix none | grep -E '^(ureq|surf|async-std|async-io|tokio|mio|hyper|socket2|smol) '; then
    echo "error: the sans-IO core must not depend on I/O crates" >&2
    exit 1
fi
echo "== fuzz smoke (FUZZ_SECONDS=${FUZZ_SECONDS:-15} per target)"
bash scripts/fuzz-smoke.sh
# One closing line with the totals of every cargo test run above.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
