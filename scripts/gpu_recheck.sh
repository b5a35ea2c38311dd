#!/usr/bin/env bash
# A shorter second call on the GPU machine, after scripts/gpu_bench.sh: the tests that
# failed or are new there (f16 rounding, long layers, members sharing a device in a
# Pipeline), the GPU's clocks logged while everything runs (whether a bench's first
# runs are slower than a sweep's), cooperative-matrix shapes beyond the candidates at
# 4096³, the target workloads again, and PyTorch on the same GPU for the same shapes.
#
# Prepare on the build machine: bash scripts/gpu_prepare.sh. Run there, carrying .gl
# and .devbin:   OUT=$OUT bash scripts/gpu_recheck.sh
# Writes everything into one archive, $OUT/recheck.tar.gz (the device call brings
# back few files): wgpu.jsonl, torch.jsonl, tests.txt, clocks.csv, errors.txt,
# tiles.toml and report.md (scripts/gpu_report.py).
set -u
OUT=${OUT:-/tmp/wgpu-ensemble-recheck}
W=$(mktemp -d)
# shellcheck source=scripts/gpu_env.sh
. scripts/gpu_env.sh "$W"
RUNS=${RUNS:-20}
log_clocks 200
for t in "precision f16_inputs_round_to_nearest_even_in_every_kernel f16_rounds_every_layer_input long_layers_are_right_or_refused f16_overflow stacked_members" \
  "pipeline members_sharing_a_device_stream_many_inputs same_answers_as_the_session"; do
  set -- $t
  bin=$1; shift
  if [ -x ".devbin/$bin" ]; then
    stamp "$bin $*"
    WGPU_ENSEMBLE_REQUIRE_GPU=1 WGPU_ENSEMBLE_REQUIRE_COOP=1 timeout 120 ".devbin/$bin" \
      --test-threads 1 "$@" >> "$W/tests.txt" 2>&1
    echo "$bin: exit $?" | tee -a "$W/tests.txt"
  fi
done
run() {
  stamp "bench $*"
  timeout 120 "$B" bench --device "$DEVICE" --json --trusted-kernels "$@" >> "$W/wgpu.jsonl" 2>> "$W/errors.txt" ||
    echo "failed ($?): $*" >> "$W/errors.txt"
}
# Warm-up: the autotune's f32 tile at 4096³ after 3 warm-up runs, then after 60.
for w in 3 60 3; do
  run --workload gemm --batch 4096 --precision f32 --tile 16,16,4,8,16,vec4 --runs "$RUNS" --warmup "$w" --device-timing
done
# Cooperative-matrix shapes at 4096³: the best candidate, then shapes beyond them.
for s in ${COOP_SHAPES:-4,4,2,2,2,prefetch 4,4,2,2,1,prefetch 4,4,2,2,4,prefetch 4,4,2,4,2,prefetch 4,4,4,2,2,prefetch 4,4,2,4,1,prefetch 4,4,4,4,1,prefetch 4,4,4,4,2,prefetch 2,4,4,4,1,prefetch 4,2,4,4,1,prefetch 4,4,2,2,2,prefetch}; do
  run --workload gemm --batch 4096 --precision f16-coop --coop-shape "$s" --runs "$RUNS" --warmup 10 --device-timing
done
# f16 with x rounded by round_f16 in every kernel (the tiled kernels' staging, the
# small kernel's loop).
run --workload gemm --batch 4096 --precision f16 --runs "$RUNS" --warmup 10 --device-timing --autotune --autotune-cache "$W/tiles.toml"
for p in f32 f16 f16-coop; do
  run --workload E2 --batch 1024 --precision "$p" --runs "$RUNS" --warmup 10 --device-timing --autotune --autotune-cache "$W/tiles.toml"
  run --workload E2 --batch 1 --precision "$p" --runs "$RUNS" --warmup 10 --device-timing --autotune --autotune-cache "$W/tiles.toml"
done
run --workload E1 --batch 1 --precision f32 --runs 100 --warmup 10 --spin-us 2000
run --workload E1 --batch 1 --precision f16 --runs 100 --warmup 10 --spin-us 2000
run --workload E1 --batch 64 --mode pipeline --runs 100
run --workload E1 --batch 1 --mode pipeline --runs 100
run --workload E1 --batch 64 --mode late-member --late-timeout-ms 20 --runs "$RUNS"
if [ -z "${SKIP_TORCH:-}" ] && [ -f .devbin/torch_baseline.py ]; then
  stamp torch
  # shellcheck disable=SC2086 # TORCH_ARGS is a list of arguments
  timeout 150 python3 .devbin/torch_baseline.py ${TORCH_ARGS:---gemm 4096 --batches 1,64,1024} > "$W/torch.jsonl" 2>> "$W/errors.txt"
fi
finish recheck
