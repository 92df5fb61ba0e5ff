#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit, property,
# integration and doc tests, and a short smoke run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

# Property tests: at least 5 000 cases per property (override with PROPTEST_CASES).
export PROPTEST_CASES="${PROPTEST_CASES:-5000}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (workspace, PROPTEST_CASES=$PROPTEST_CASES)"
cargo test --workspace --locked
echo "== the core depends on no I/O crate"
if cargo tree -p token-keeper -e normal --prefix none | grep -E '^(ureq|surf|async-std|tokio|mio|hyper|socket2) '; then
    echo "error: the sans-IO core must not depend on I/O crates" >&2
    exit 1
fi
if [ -x scripts/fuzz-smoke.sh ]; then
    echo "== fuzz smoke"
    scripts/fuzz-smoke.sh
fi
echo "== all checks passed"
