#!/usr/bin/env bash
# A third, short GPU call: every precision test on the hardware (the new cooperative
# shapes among the candidates), then the autotune's choices at the target shapes, a
# pipeline with spinning waits, and PyTorch on the same GPU. Clocks logged as in
# scripts/gpu_recheck.sh; everything in one archive, $OUT/confirm.tar.gz.
#   OUT=$OUT bash scripts/gpu_confirm.sh      (carry .gl and .devbin)
set -u
OUT=${OUT:-/tmp/wgpu-ensemble-confirm}
W=$(mktemp -d)
# shellcheck source=scripts/gpu_env.sh
. scripts/gpu_env.sh "$W"
log_clocks 100
if [ -x .devbin/precision ]; then
  stamp precision
  WGPU_ENSEMBLE_REQUIRE_GPU=1 WGPU_ENSEMBLE_REQUIRE_COOP=1 timeout 200 .devbin/precision \
    --test-threads 1 >> "$W/tests.txt" 2>&1
  echo "precision: exit $?" | tee -a "$W/tests.txt"
fi
run() {
  stamp "bench $*"
  timeout 100 "$B" bench --device "$DEVICE" --json --trusted-kernels "$@" >> "$W/wgpu.jsonl" 2>> "$W/errors.txt" ||
    echo "failed ($?): $*" >> "$W/errors.txt"
}
for i in 1 2; do
  for p in f16-coop f32; do
    run --workload gemm --batch 4096 --precision "$p" --runs 30 --warmup 10 --device-timing --autotune --autotune-cache "$W/tiles.toml"
  done
  run --workload E2 --batch 1024 --precision f16-coop --runs 20 --warmup 10 --device-timing --autotune --autotune-cache "$W/tiles.toml"
  run --workload E2 --batch 1024 --precision f32 --runs 20 --warmup 10 --device-timing --autotune --autotune-cache "$W/tiles.toml"
  run --workload E1 --batch 1 --precision f32 --runs 100 --warmup 10 --spin-us 2000
done
run --workload E1 --batch 1 --mode pipeline --runs 100 --spin-us 2000
run --workload E1 --batch 64 --mode pipeline --runs 100 --spin-us 2000
if [ -z "${SKIP_TORCH:-}" ] && [ -f .devbin/torch_baseline.py ]; then
  stamp torch
  timeout 120 python3 .devbin/torch_baseline.py --gemm 4096 --batches 1,1024 > "$W/torch.jsonl" 2>> "$W/errors.txt"
fi
finish confirm
