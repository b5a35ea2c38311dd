#!/usr/bin/env bash
# Every GPU measurement of the speed work in one call, for a machine with a GPU and
# PyTorch (the project's lent H100 machine: see shared/gpu/README.md).
#
# Prepare on the build machine: bash scripts/gpu_prepare.sh (fills .gl/ and .devbin/).
# Run there, from the repository root, carrying .gl and .devbin:
#   OUT=/some/folder bash scripts/gpu_bench.sh
# Most important first, so that a cut-short run still has it: the cooperative-matrix
# tests on the hardware, gemm 4096³, PyTorch on the same GPU, E1 and E2 at batch 1
# with a spin-wait, then at batch 1, 1024 and 64, a sweep over every tile candidate
# and coop shape at 4096³, a few f32 tiles beyond the candidates, then the rest.
# Every bench line also has the kernels' time alone (--device-timing), but for one
# latency run per workload at batch 1.
# Writes under $OUT: devices.txt, precision.txt and timing.txt (the test runs),
# wgpu.jsonl (one JSON object per line, from `wgpu-ensemble bench --json`),
# torch.jsonl (benches/torch_baseline.py), torch_anchor.json, tiles.toml (the tiles
# and coop shapes the autotune chose, per shape class), errors.txt, and
# report.md (scripts/gpu_report.py: the targets next to PyTorch, then every line).
#
# Smaller runs (a smoke test on lavapipe): GEMM_SIZES="64" BATCHES="1" WORKLOADS="E1"
# RUNS=2 SWEEP_RUNS=2 DEVICE=adapter:0 SKIP_TORCH=1 (or, with PyTorch on the CPU,
# TORCH_ARGS="--gemm 64 --batches 1 --runs 3" instead of SKIP_TORCH).
set -u
OUT=${OUT:-/tmp/wgpu-ensemble-bench}
mkdir -p "$OUT"
# shellcheck source=scripts/gpu_env.sh
. scripts/gpu_env.sh "$OUT"
GEMM_SIZES=${GEMM_SIZES:-4096 1024 256}
BATCHES=${BATCHES:-1 1024 64}
WORKLOADS=${WORKLOADS:-E1 E2}
RUNS=${RUNS:-20}
cat "$OUT/devices.txt"
echo "device: $DEVICE"

if [ -x .devbin/precision ]; then
  WGPU_ENSEMBLE_REQUIRE_GPU=1 WGPU_ENSEMBLE_REQUIRE_COOP=1 timeout 180 .devbin/precision \
    --test-threads 1 > "$OUT/precision.txt" 2>&1
  echo "precision tests: exit $?"; tail -3 "$OUT/precision.txt"
fi
# The kernels-alone figures below rest on the device's timestamps: checked first.
if [ -x .devbin/timing ]; then
  WGPU_ENSEMBLE_REQUIRE_GPU=1 timeout 60 .devbin/timing --test-threads 1 > "$OUT/timing.txt" 2>&1
  echo "timing tests: exit $?"; tail -3 "$OUT/timing.txt"
fi

# Every run also times the kernels alone with timestamp queries (device_p50_ms,
# device_gflops: what PyTorch's GEMM on device-resident tensors is compared with),
# except with NO_TIMING=1 (the latency runs, measured both ways).
run() {
  local timing=--device-timing
  [ -n "${NO_TIMING:-}" ] && timing=
  timeout 120 "$B" bench --device "$DEVICE" --json $timing "$@" >> "$OUT/wgpu.jsonl" 2>> "$OUT/errors.txt" ||
    echo "failed ($?): $*" >> "$OUT/errors.txt"
}
torch() {
  if [ -z "${SKIP_TORCH:-}" ] && [ -f .devbin/torch_anchor.py ]; then
    timeout 240 python3 .devbin/torch_anchor.py "$OUT/torch_anchor.json" > /dev/null 2>> "$OUT/errors.txt"
  fi
  if [ -z "${SKIP_TORCH:-}" ] && [ -f .devbin/torch_baseline.py ]; then
    # shellcheck disable=SC2086 # TORCH_ARGS is a list of arguments
    timeout 240 python3 .devbin/torch_baseline.py ${TORCH_ARGS:-} > "$OUT/torch.jsonl" 2>> "$OUT/errors.txt"
  fi
}

first_gemm=${GEMM_SIZES%% *}
# The autotune runs keep their choices (the winning tile per shape class) in tiles.toml.
for p in f32 f16 f16-coop; do
  run --workload gemm --batch "$first_gemm" --precision "$p" --runs "$RUNS" --autotune \
    --autotune-cache "$OUT/tiles.toml" --trusted-kernels
done
torch
# Small runs again, busy-polling for the result instead of sleeping on the fence.
for w in $WORKLOADS; do
  NO_TIMING=1 run --workload "$w" --batch 1 --precision f32 --runs "$RUNS" --trusted-kernels --spin-us 2000
  run --workload "$w" --batch 1 --precision f32 --runs "$RUNS" --trusted-kernels --spin-us 2000
done
for w in $WORKLOADS; do
  for b in $BATCHES; do
    for p in f32 f16 f16-coop; do
      run --workload "$w" --batch "$b" --precision "$p" --runs "$RUNS" --trusted-kernels --autotune \
        --autotune-cache "$OUT/tiles.toml"
    done
  done
done
# Every tile candidate (coop shape with f16-coop) at the largest size, one line each.
for p in f32 f16 f16-coop; do
  run --workload gemm --batch "$first_gemm" --precision "$p" --runs "${SWEEP_RUNS:-5}" --trusted-kernels --sweep
done
# Tiles beyond the candidates (f32, largest size), for the next round of tuning:
# deeper slices, 64 threads, rectangular and larger workgroups.
EXTRA_TILES=${EXTRA_TILES:-16,16,8,8,32,vec4,prefetch 16,16,8,8,32,vec4 8,8,8,8,16,vec4 16,8,8,8,16,vec4 16,8,8,8,16,vec4,prefetch 8,16,8,8,16,vec4 32,16,8,8,16,vec4 32,32,4,4,16,vec4}
for t in $EXTRA_TILES; do
  run --workload gemm --batch "$first_gemm" --precision f32 --runs "${SWEEP_RUNS:-5}" --trusted-kernels --tile "$t"
done
for n in $GEMM_SIZES; do
  for p in f32 f16 f16-coop; do
    run --workload gemm --batch "$n" --precision "$p" --runs "$RUNS"
    if [ "$n" != "$first_gemm" ]; then
      run --workload gemm --batch "$n" --precision "$p" --runs "$RUNS" --autotune --autotune-cache "$OUT/tiles.toml" --trusted-kernels
    fi
  done
done
run --workload E1 --batch 64 --mode pipeline --runs 100 --trusted-kernels
run --workload E1 --batch 64 --mode late-member --late-timeout-ms 20 --runs "$RUNS" --trusted-kernels
python3 scripts/gpu_report.py "$OUT" > "$OUT/report.md" 2>> "$OUT/errors.txt"
cat "$OUT/report.md" 2>/dev/null || cat "$OUT/wgpu.jsonl" "$OUT/torch.jsonl" 2>/dev/null
