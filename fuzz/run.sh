#!/usr/bin/env bash
# Runs the fuzz targets, seeded from the test fixtures and the examples' data.
#
#   fuzz/run.sh [TARGET...] [-- LIBFUZZER ARGS]
#
# TARGET is npy, safetensors or manifest (default: all three). Without LIBFUZZER ARGS
# each target runs 1 000 000 executions (-runs=1000000); a minute each, say, is
# `fuzz/run.sh -- -max_total_time=60`. Needs cargo-fuzz (`cargo install cargo-fuzz`);
# the stable toolchain builds the targets, with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes
# nightly flags: the sanitizer, the coverage passes). Crashes land in
# fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/ (not committed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
targets=()
while [[ $# -gt 0 && "$1" != "--" ]]; do targets+=("$1"); shift; done
[[ $# -gt 0 ]] && shift
args=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(npy safetensors manifest)
[[ ${#args[@]} -eq 0 ]] && args=(-runs=1000000)
# An input that takes over 10 s is reported as a hang, as a crash is.
args=(-timeout=10 "${args[@]}")

seeds() { # the seed folder of a target, made fresh from the fixtures
    local target="$1" dir="$here/target/seeds/$1"
    rm -rf "$dir" && mkdir -p "$dir"
    local fixtures=("$root"/tests/fixtures/golden "$root"/examples/data)
    case "$target" in
        npy) find "${fixtures[@]}" -name '*.npy' -exec cp {} "$dir" \; ;;
        manifest) find "${fixtures[@]}" -name '*.toml' -exec cp {} "$dir" \; ;;
        safetensors) # the target's first byte picks the load options; 0 = from the file
            find "${fixtures[@]}" -name '*.safetensors' -print0 |
                while IFS= read -r -d '' f; do
                    { printf '\0'; cat "$f"; } > "$dir/$(basename "$f")"
                done ;;
        *) echo "unknown fuzz target '$target' (npy, safetensors, manifest)" >&2; exit 2 ;;
    esac
    echo "$dir"
}

cd "$here"
for target in "${targets[@]}"; do
    dir="$(seeds "$target")"
    mkdir -p "corpus/$target"
    echo "== fuzz $target: seeds $(ls "$dir" | wc -l), args ${args[*]}" >&2
    RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "corpus/$target" "$dir" -- "${args[@]}"
done
