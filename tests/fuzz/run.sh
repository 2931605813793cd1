#!/usr/bin/env bash
# A bounded libFuzzer pass over every fuzz target: `bash tests/fuzz/run.sh [SECONDS]` (default
# 15 per target). Builds the targets with cargo-fuzz on a nightly toolchain (installing both
# when missing; cargo-fuzz is cached under ~/.cache/silt/tools), fuzzes each from the committed
# corpus in a scratch copy, and fails on the first crash, printing the input that caused it.
# Inputs that find new coverage stay in the scratch copy; to keep one, add it to
# tests/fuzz/corpus/<target>/ (the test suite replays that corpus on every run).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-15}
tools="$HOME/.cache/silt/tools"
export PATH="$tools/bin:$PATH"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    if ! rustup toolchain install nightly --profile minimal; then
        echo "SKIPPED: the libFuzzer pass needs a nightly toolchain, which could not be installed;"
        echo "SKIPPED: the committed corpus is still replayed by the test suite (fuzz_corpus)."
        exit 0
    fi
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    CARGO_TARGET_DIR="$HOME/.cache/silt/cargo-fuzz-build" cargo install cargo-fuzz --locked --root "$tools"
    rm -rf "$HOME/.cache/silt/cargo-fuzz-build"
fi
export CARGO_TARGET_DIR="${SILT_FUZZ_TARGET_DIR:-$HOME/.cache/silt/fuzz-target}"
flags=(--fuzz-dir tests/fuzz -O -a -s none)
cargo +nightly fuzz build "${flags[@]}"

work=$(mktemp -d "${TMPDIR:-/tmp}/silt-fuzz.XXXX")
trap 'rm -rf "$work"' EXIT
for corpus in tests/fuzz/corpus/*/; do
    target=$(basename "$corpus")
    mkdir -p "$work/$target" "$work/artifacts/$target"
    cp "$corpus"* "$work/$target/"
    echo "==> fuzz $target for ${seconds}s"
    if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$work/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$work/artifacts/$target/" -print_final_stats=1 2>"$work/$target.log"; then
        tail -n 40 "$work/$target.log"
        for input in "$work/artifacts/$target"/*; do
            echo "crashing input ($input), base64:"
            base64 -w0 "$input"; echo
        done
        echo "fuzz target $target crashed"
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|^Done" "$work/$target.log" || true
done
echo "==> fuzzing found nothing in ${seconds}s per target"
