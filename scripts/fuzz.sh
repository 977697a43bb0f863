#!/usr/bin/env bash
# The one command for the cargo-fuzz targets in fuzz/ (see docs/fuzzing.md).
#
#   scripts/fuzz.sh smoke                      each target 30 s from the committed seeds (CI)
#   scripts/fuzz.sh long [SECONDS_PER_TARGET]  each target longer (default 3600 s) on the corpus
#                                              kept in fuzz/corpus/<target>, and records the
#                                              executions in fuzz/ledger.tsv
#
# Environment: FUZZ_TARGETS (space-separated) runs a subset; CARGO_TARGET_DIR_FUZZ (default
# /var/tmp/rooms-sync-fuzz-target) holds the build, outside the clone so a fresh CI clone builds
# warm. A crash, a timeout (one input over 10 s) or running out of memory fails the script and
# prints the reproducer's path under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

usage() {
    echo "usage: scripts/fuzz.sh smoke | long [SECONDS_PER_TARGET]" >&2
    exit 2
}

mode=${1:-}
case $mode in
smoke) seconds=30 ;;
long) seconds=${2:-3600} ;;
*) usage ;;
esac
[[ $seconds =~ ^[1-9][0-9]*$ ]] || usage

read -r -a targets <<<"${FUZZ_TARGETS:-ews_notification graph_notification appsettings source_address}"

# libFuzzer needs nightly's sanitizer-coverage flags; machines without nightly skip rather than fail.
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "nightly toolchain absent: skipping fuzz smoke"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz missing: installing it"
    cargo install cargo-fuzz --locked
fi

target_dir=${CARGO_TARGET_DIR_FUZZ:-/var/tmp/rooms-sync-fuzz-target}
# No sanitizer: the crate forbids unsafe code, and AddressSanitizer would halve the executions.
# Debug assertions and overflow checks stay on, so arithmetic overflow is a crash too.
flags=(--sanitizer none --debug-assertions --target-dir "$target_dir")

started=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz: build took $(($(date +%s) - started)) s"

logs=$root/fuzz/logs
mkdir -p "$logs"
ledger=$root/fuzz/ledger.tsv
if [[ $mode == long && ! -f $ledger ]]; then
    printf 'utc\ttarget\tseconds\texecutions\texec_per_s\tcorpus_files\ttotal_executions\n' >"$ledger"
fi

# The value of libFuzzer's final `stat::NAME: VALUE` line in a log, 0 when absent.
stat() {
    local value
    value=$(sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "$2" | tail -n 1)
    echo "${value:-0}"
}

failed=()
for target in "${targets[@]}"; do
    seeds=$root/fuzz/seeds/$target
    [[ -d $seeds ]] || {
        echo "fuzz: unknown target $target (no $seeds)" >&2
        exit 2
    }
    if [[ $mode == smoke ]]; then
        # A throwaway corpus: CI runs are reproducible from the committed seeds alone.
        corpus=$(mktemp -d)
    else
        corpus=$root/fuzz/corpus/$target
        mkdir -p "$corpus"
    fi
    dict=()
    [[ -f $root/fuzz/dict/$target.dict ]] && dict=("-dict=$root/fuzz/dict/$target.dict")
    log=$logs/$target.$mode.log
    echo "fuzz: $target for $seconds s (log $log)"
    status=0
    # The first directory receives new inputs; the seeds are only read.
    cargo +nightly fuzz run "${flags[@]}" "$target" "$corpus" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1 || status=$?
    executions=$(stat number_of_executed_units "$log")
    per_second=$(stat average_exec_per_sec "$log")
    files=$(find "$corpus" -type f | wc -l)
    [[ $mode == smoke ]] && rm -rf "$corpus"
    line="fuzz: $target: $executions executions, $per_second exec/s, corpus $files files"
    if [[ $mode == long ]]; then
        # A run that found a crash still counts the executions it did.
        previous=$(awk -F'\t' -v t="$target" 'NR > 1 && $2 == t { s += $4 } END { print s + 0 }' "$ledger")
        total=$((previous + executions))
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$target" \
            "$seconds" "$executions" "$per_second" "$files" "$total" >>"$ledger"
        line="$line; $total executions in all runs (fuzz/ledger.tsv)"
    fi
    if ((status != 0)); then
        echo "fuzz: $target FAILED (exit $status); last lines of $log:"
        tail -n 40 "$log"
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        echo "fuzz: $target reproducer: ${artifact:-none written, see $log}"
        failed+=("$target")
    fi
    echo "$line"
done

echo "fuzz: $mode done in $(($(date +%s) - started)) s"
if ((${#failed[@]})); then
    echo "fuzz: failing targets: ${failed[*]}" >&2
    exit 1
fi
