#!/usr/bin/env bash
# Runs every fuzz target for N seconds each (default 30) and fails if any target crashes.
# Usage: firmware/fuzz/run-all.sh [SECONDS]
# New inputs go to a temporary working corpus; the committed seeds in corpus/<target>/ are only
# read. A crash input is left in artifacts/<target>/: copy it to corpus/<target>/regression-*
# once fixed, so that `cargo test -p pop-wire --test fuzz_corpus` replays it on stable.
set -euo pipefail

seconds="${1:-30}"
case "$seconds" in
    ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: run 'cargo install cargo-fuzz'" >&2
    exit 2
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "a nightly toolchain is required: run 'rustup toolchain install nightly'" >&2
    exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

failed=()
for target in $(cargo +nightly fuzz list --fuzz-dir "$here"); do
    mkdir -p "$work/$target"
    echo "=== $target: ${seconds}s"
    if ! cargo +nightly fuzz run --fuzz-dir "$here" "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        2>"$work/$target.log"; then
        failed+=("$target")
        tail -n 40 "$work/$target.log" >&2
    fi
    grep -E '^stat::number_of_executed_units' "$work/$target.log" | sed "s/^/$target /" || true
done

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (inputs in $here/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${seconds}s without a crash"
