#!/usr/bin/env bash
# Fuzz smoke run, on stable Rust, without cargo-fuzz.
#
# Builds the fuzz targets in fuzz/ with SanitizerCoverage instrumentation
# (the flags cargo-fuzz uses with `-s none`), replays the inputs saved in
# fuzz/regressions/<target>/, then fuzzes each target for FUZZ_SECONDS
# (default 15) on a copy of its seed corpus, so the committed corpus is never
# changed. Fails if any target crashes, panics, hangs or runs out of memory;
# crashing inputs are kept in fuzz/artifacts/<target>/ (git-ignored) and
# printed in hex.
#
# Environment:
#   FUZZ_SEED      libFuzzer's seed (default 1: a smoke run follows the same
#                  mutations every time, so CI does not depend on luck; long
#                  runs to explore use another seed or none)
#   FUZZ_SECONDS   seconds of fuzzing per target (default 15: with nine
#                  targets, 9 x 15 s plus the build keeps the run under about
#                  3.5 minutes on the 2-core CI machine; it was 20 s for four)
#   FUZZ_TARGETS   space-separated targets to run (default: all nine)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-15}"
read -r -a targets <<<"${FUZZ_TARGETS:-token_response www_authenticate retry_after manager_sequence dpop_nonce discovery_document jwk_input http1_response store_entry}"
start=$(date +%s)

host="$(rustc -vV | sed -n 's/^host: //p')"
# A target dir of its own: these flags would otherwise invalidate the workspace build.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
unset CARGO_ENCODED_RUSTFLAGS
# SanitizerCoverage as cargo-fuzz 0.13 sets it up for `-s none` (all stable
# codegen options), `--cfg fuzzing`, and the checks of a debug build.
# `--target` keeps the flags off build scripts and proc macros, which would
# otherwise fail to link (they have no libFuzzer to provide the hooks).
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"

echo "fuzz smoke: building ${targets[*]} ($host, stable, sancov)"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" --bins
bindir="$CARGO_TARGET_DIR/$host/release"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()

# The panic message (without the backtrace) and libFuzzer's own verdict.
show_failure() {
    sed -n '/panicked at/,/^\(stack backtrace:\|note: \)/p' "$1" | grep -v '^stack backtrace:' | head -n 20
    grep -E '^(==[0-9]+== ERROR|SUMMARY|MS: )' "$1" | head -n 5
}

# Shows a crashing input in the log (CI keeps no files) and keeps it.
report_crash() {
    local target="$1" log="$2" dir="$3"
    echo "---- $target: the failure, as libFuzzer logged it"
    show_failure "$log"
    mkdir -p "fuzz/artifacts/$target"
    local f
    for f in "$dir"/*; do
        [ -e "$f" ] || continue
        cp "$f" "fuzz/artifacts/$target/"
        echo "---- crashing input fuzz/artifacts/$target/$(basename "$f") ($(wc -c <"$f") bytes):"
        od -A d -t x1 -v "$f" | head -n 64
    done
}

for target in "${targets[@]}"; do
    bin="$bindir/$target"
    if [ ! -x "$bin" ]; then
        echo "error: no fuzz target named $target" >&2
        exit 2
    fi

    # 1. Replay saved crash inputs: each must run cleanly (once the bug is fixed).
    if [ -d "fuzz/regressions/$target" ]; then
        for input in "fuzz/regressions/$target"/*; do
            [ -f "$input" ] || continue
            if ! "$bin" -timeout=10 "$input" >"$work/replay.log" 2>&1; then
                echo "$target: FAILED on saved input $input"
                show_failure "$work/replay.log"
                failed+=("$target (regression $(basename "$input"))")
            fi
        done
    fi

    # 2. Fuzz a copy of the seed corpus.
    corpus="$work/corpus/$target"
    artifacts="$work/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -R "fuzz/corpus/$target/." "$corpus/"
    fi
    dict=()
    if [ -f "fuzz/dict/$target.dict" ]; then
        dict=("-dict=fuzz/dict/$target.dict")
    fi
    log="$work/$target.log"
    status=0
    "$bin" "$corpus" "${dict[@]}" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -seed="${FUZZ_SEED:-1}" \
        -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    cov="$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1 || true)"
    corp="$(grep -o 'corp: [0-9]*' "$log" | tail -n 1 || true)"
    if [ "$status" -eq 0 ]; then
        printf '%-18s ok       %10s execs in %ss  %s  %s\n' \
            "$target" "${execs:-?}" "$seconds" "${cov:-cov: ?}" "${corp:-}"
    else
        printf '%-18s CRASHED  %10s execs (exit %s)  %s\n' \
            "$target" "${execs:-?}" "$status" "${cov:-cov: ?}"
        report_crash "$target" "$log" "$artifacts"
        failed+=("$target")
    fi
done

elapsed=$(($(date +%s) - start))
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz smoke: FAILED: ${failed[*]} (${elapsed}s)" >&2
    exit 1
fi
echo "fuzz smoke: ${#targets[@]} targets passed, ${seconds}s each (${elapsed}s with the build)"
