#!/usr/bin/env bash
# Every GPU measurement of the speed issue in one call, for a machine with a GPU and
# PyTorch (the project's lent H100 machine: see shared/gpu/README.md).
#
# Prepare on the build machine (same x86-64 processor):
#   cargo build --release
#   mkdir -p .devbin && cp target/release/wgpu-ensemble benches/torch_baseline.py .devbin/
#   (and, where the GPU machine lacks a Vulkan loader, Debian's loader packages in .gl/)
# Run there, from the repository root, carrying .devbin (and .gl):
#   OUT=/some/folder bash scripts/gpu_bench.sh
# Writes $OUT/devices.txt, $OUT/wgpu.jsonl (one JSON object per line, from
# `wgpu-ensemble bench --json`) and $OUT/torch.jsonl (benches/torch_baseline.py).
set -u
OUT=${OUT:-/tmp/wgpu-ensemble-bench}
mkdir -p "$OUT"
if compgen -G ".gl/*.deb" >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
B=${WGPU_ENSEMBLE_BIN:-.devbin/wgpu-ensemble}
DEVICE=${DEVICE:-auto}

"$B" devices > "$OUT/devices.txt" 2>&1
run() { timeout 120 "$B" bench --device "$DEVICE" --json "$@" >> "$OUT/wgpu.jsonl" 2>> "$OUT/errors.txt"; }
for n in 256 1024 4096; do
  for p in f32 f16 f16-coop; do
    run --workload gemm --batch "$n" --precision "$p" --runs 10
    run --workload gemm --batch "$n" --precision "$p" --runs 10 --autotune --trusted-kernels
  done
done
for w in E1 E2; do
  for b in 1 64 1024; do
    for p in f32 f16 f16-coop; do
      run --workload "$w" --batch "$b" --precision "$p" --runs 30 --trusted-kernels --autotune
    done
  done
done
run --workload E1 --batch 64 --mode pipeline --runs 100 --trusted-kernels
run --workload E1 --batch 64 --mode late-member --late-timeout-ms 5 --runs 30 --trusted-kernels
if [ -f .devbin/torch_baseline.py ]; then
  timeout 300 python3 .devbin/torch_baseline.py > "$OUT/torch.jsonl" 2>> "$OUT/errors.txt"
fi
cat "$OUT/wgpu.jsonl" "$OUT/torch.jsonl" 2>/dev/null
