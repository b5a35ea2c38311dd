#!/usr/bin/env bash
# The GPU measurements and tests, for a machine with a GPU and PyTorch (the project's
# lent H100 machine: it has the NVIDIA driver but no Vulkan loader, and reaches no
# registry). Two steps:
#
# 1. On the build machine (same x86-64 processor), from the repository root:
#      bash benches/gpu/run.sh prepare
#    fills .gl/ (Debian's Vulkan and EGL loader packages) and .devbin/ (the release
#    binary, the release integration-test binary `it`, the release load generator
#    `loadtest` (examples/loadtest.rs), benches/torch_baseline.py and, when present,
#    ../shared/gpu/torch_anchor.py). Both folders are ignored by git.
# 2. On the GPU machine, from the repository root, carrying .gl and .devbin:
#      OUT=/some/folder bash benches/gpu/run.sh --suite SUITE[,SUITE...]
#
# Suites, each most important first so that a run cut short still has it:
#   tests    the integration tests that need the hardware, required to run there (not
#            skip): `precision::` (every tile candidate and cooperative-matrix shape
#            against the f64 reference, f16 rounding, long layers), `timing::` (the
#            device timestamps the kernels-alone figures rest on), `pipeline::` and
#            `pipeline_workers::` (members sharing a device and its worker) and
#            `device_tensor::` (tensors resident on the device). TEST_FILTERS
#            replaces the filters.
#   quick    the headline figures: gemm 4096³ in f32 and f16-coop and E2 at batch 1024
#            in f32 and f16-coop (autotuned, kernels alone and whole run), each twice;
#            E1 at batch 1 with a spin-wait; a Pipeline and a session at batch 1 and
#            64 with a spin-wait; gemm 4096³ and E2 at 1024 with input and output
#            resident on the device, when the binary's bench has `--resident`;
#            E1 at 1 and 1024 rows without and with the uncertainty outputs, twice;
#            the `split` suite; PyTorch on the same GPU for the same shapes in f32, f16 and bf16
#            (autocast, and weights cast once); then the server's load test (the
#            `serve` suite).
#   split    model parallelism: one E2 member at batch 1024, whole on one device
#            against split by layers (1, 2, 4 and 8 micro-batches) and by columns over
#            two queues of the GPU (two devices of $DEVICE: `bench --split all`),
#            interleaved in one run, twice (SPLIT_WORKLOAD, SPLIT_BATCH, SPLIT_RUNS
#            change it); the quick suite runs it too.
#   serve    the inference server on the GPU (examples/loadtest.rs, E1 one row per
#            request, with and without dynamic batching, next to a Session::run loop):
#            requests/s, p50 and p99 at 1, 16 and 64 clients, two rounds, into
#            loadtest.md (LOADTEST_SECONDS per cell, default 3; LOADTEST_CLIENTS).
#   full     every measurement: the autotuned gemm 4096³ in f32, f16 and f16-coop,
#            PyTorch, E1 and E2 at batch 1 with a spin-wait (with and without the
#            kernels' timing), every workload, batch and precision autotuned, a sweep
#            over every tile candidate and coop shape at the largest size, tiles and
#            coop shapes beyond the candidates, the warm-up study (one tile after 3, 60
#            and 3 warm-up runs, against the clock log), every gemm size untuned and
#            tuned, a Pipeline and a late member.
# Suites combine: `--suite tests,quick` runs both, in that order, into one archive.
#
# Writes, in a working folder packed at the end (or when cut short) into
# $OUT/NAME.tar.gz, NAME the suites joined by `-`, with report.md also copied to
# $OUT/NAME-report.md: devices.txt, tests.txt (the test runs), wgpu.jsonl (one object
# per line from `wgpu-ensemble bench --json`), torch.jsonl (benches/torch_baseline.py),
# loadtest.md (the load generator's table),
# torch_anchor.json, tiles.toml (the tiles and coop shapes the autotune chose, per shape
# class), clocks.csv (nvidia-smi every CLOCK_MS ms, default 100), log.txt (each step
# with its time, to read against clocks.csv), errors.txt, and report.md
# (benches/gpu/report.py: the targets next to PyTorch from the same run, f16-coop next
# to PyTorch's f16 / bf16, the server's figures, then every bench line). Results kept
# for the record go under benches/results/<machine>-<date>/.
#
# Smaller runs (a smoke test on lavapipe, without the test binary's GPU requirements):
#   GEMM_SIZES=64 BATCHES=1 WORKLOADS=E1 RUNS=2 SWEEP_RUNS=2 DEVICE=adapter:0 SKIP_TORCH=1 \
#   EXTRA_TILES= COOP_SHAPES= WARMUP_TILE= WGPU_ENSEMBLE_BIN=target/release/wgpu-ensemble \
#   OUT=/tmp/gpu-smoke bash benches/gpu/run.sh --suite full
# (or, with PyTorch on the CPU, TORCH_ARGS="--gemm 64 --batches 1 --runs 3" instead of
# SKIP_TORCH), and the server's load test on the CPU:
#   WGPU_ENSEMBLE_BIN=target/release/wgpu-ensemble LOADTEST_SECONDS=0.3 DEVICE=cpu \
#   WGPU_ENSEMBLE_LOADTEST=target/release/examples/loadtest OUT=/tmp/gpu-smoke \
#   bash benches/gpu/run.sh --suite serve
# `bash benches/gpu/check.sh` checks these scripts without a GPU (CI runs it).
set -u
cd "$(dirname "$0")/../.."

prepare() {
  set -e
  mkdir -p .gl .devbin
  if ! compgen -G ".gl/libvulkan1_*.deb" >/dev/null; then
    local lists
    lists=$(mktemp -d)
    mkdir -p "$lists/partial"
    local o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
    apt-get "${o[@]}" update -qq
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  fi
  local target=${CARGO_TARGET_DIR:-target}
  cargo build --release --bin wgpu-ensemble
  cp "$target/release/wgpu-ensemble" .devbin/
  # The one integration-test binary, built with the release profile.
  local it
  it=$(cargo test --release --test it --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        print(m["executable"])')
  [ -n "$it" ] || { echo "cargo test --test it --no-run gave no executable" >&2; exit 1; }
  cp "$it" .devbin/it
  cargo build --release --example loadtest
  cp "$target/release/examples/loadtest" .devbin/
  cp benches/torch_baseline.py .devbin/
  if [ -f ../shared/gpu/torch_anchor.py ]; then cp ../shared/gpu/torch_anchor.py .devbin/; fi
  # The device call carries at most 64 MiB: the binaries go without their symbols.
  if command -v strip >/dev/null; then
    strip .devbin/wgpu-ensemble .devbin/it .devbin/loadtest
  fi
  ls -la .gl .devbin
  du -sh .gl .devbin
  local mib
  mib=$(du -scm .gl .devbin | awk 'END { print $1 }')
  if [ "$mib" -gt 60 ]; then
    echo "WARNING: .gl and .devbin hold $mib MiB; a device call carries at most 64 MiB" >&2
  fi
}

if [ "${1:-}" = prepare ]; then
  prepare
  exit 0
fi

SUITES=
while [ $# -gt 0 ]; do
  case $1 in
    --suite) SUITES=${2:-}; shift 2 ;;
    --suite=*) SUITES=${1#--suite=}; shift ;;
    -h | --help) awk 'NR > 1 && /^set -u/ { exit } NR > 1' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (usage: benches/gpu/run.sh prepare | --suite tests|quick|split|serve|full[,...])" >&2; exit 2 ;;
  esac
done
[ -n "$SUITES" ] || { echo "usage: benches/gpu/run.sh prepare | --suite tests|quick|split|serve|full[,...]" >&2; exit 2; }
for s in ${SUITES//,/ }; do
  case $s in tests | quick | split | serve | full) ;; *) echo "unknown suite: $s (tests, quick, split, serve, full)" >&2; exit 2 ;; esac
done

OUT=${OUT:-/tmp/wgpu-ensemble-gpu}
NAME=${SUITES//,/-}
W=$(mktemp -d)
# shellcheck source=benches/gpu/env.sh
. benches/gpu/env.sh "$W"
trap 'finish "$NAME"' EXIT
trap 'exit 143' TERM INT
GEMM_SIZES=${GEMM_SIZES:-4096 1024 256}
BATCHES=${BATCHES:-1 1024 64}
WORKLOADS=${WORKLOADS:-E1 E2}
RUNS=${RUNS:-20}
cat "$W/devices.txt"
echo "device: $DEVICE"
log_clocks "${CLOCK_MS:-100}"

suite_tests() {
  # shellcheck disable=SC2086 # TEST_FILTERS is a list of filters
  tests ${TEST_FILTERS:-precision:: timing:: pipeline:: pipeline_workers:: device_tensor::}
}

suite_quick() {
  local i p
  for i in 1 2; do
    for p in f16-coop f32; do
      bench --workload gemm --batch 4096 --precision "$p" --runs 30 --warmup 10 --trusted-kernels \
        --autotune --autotune-cache "$W/tiles.toml"
      bench --workload E2 --batch 1024 --precision "$p" --runs 20 --warmup 10 --trusted-kernels \
        --autotune --autotune-cache "$W/tiles.toml"
    done
    NO_TIMING=1 bench --workload E1 --batch 1 --precision f32 --runs 100 --warmup 10 --trusted-kernels --spin-us 2000
  done
  # A Pipeline on one GPU against Session::run at E1 batch 1 and 64 (the session's
  # batch-1 lines are above).
  NO_TIMING=1 bench --workload E1 --batch 64 --precision f32 --runs 100 --warmup 10 --trusted-kernels --spin-us 2000
  NO_TIMING=1 bench --workload E1 --batch 1 --mode pipeline --runs 100 --trusted-kernels --spin-us 2000
  NO_TIMING=1 bench --workload E1 --batch 64 --mode pipeline --runs 100 --trusted-kernels --spin-us 2000
  # Input and output left on the device between runs (a DeviceTensor), when this
  # binary's bench has the flag: the whole run against the kernels alone.
  if "$B" bench --help 2>/dev/null | grep -q -- "${RESIDENT_FLAG:---resident}"; then
    for p in f32 f16-coop; do
      bench --workload gemm --batch 4096 --precision "$p" --runs 30 --warmup 10 --trusted-kernels \
        --autotune --autotune-cache "$W/tiles.toml" "${RESIDENT_FLAG:---resident}"
      bench --workload E2 --batch 1024 --precision "$p" --runs 20 --warmup 10 --trusted-kernels \
        --autotune --autotune-cache "$W/tiles.toml" "${RESIDENT_FLAG:---resident}"
    done
  else
    echo "no ${RESIDENT_FLAG:---resident} in this binary's bench: resident lines skipped" >> "$W/errors.txt"
  fi
  # The uncertainty outputs against the plain mean, alternating (E1 at 1 and 1024
  # rows), when this binary's bench has the flag.
  if "$B" bench --help 2>/dev/null | grep -q -- "--uncertainty"; then
    for i in 1 2; do
      NO_TIMING=1 bench --workload E1 --batch 1 --uncertainty --runs 100 --warmup 10 --trusted-kernels
      NO_TIMING=1 bench --workload E1 --batch 1024 --uncertainty --runs 30 --warmup 10 --trusted-kernels
    done
  fi
  suite_split
  torch --gemm 4096 --batches 1,1024 --precision f32,f16,bf16
  suite_serve
}

suite_split() {
  local i devices="$DEVICE/queue:0,$DEVICE/queue:1"
  # Without a Vulkan adapter DEVICE is `auto`, which has no queues.
  case $DEVICE in adapter:*) ;; *) devices="$DEVICE,$DEVICE" ;; esac
  for i in 1 2; do
    split_bench --workload "${SPLIT_WORKLOAD:-E2}" --batch "${SPLIT_BATCH:-1024}" --split all \
      --devices "$devices" --runs "${SPLIT_RUNS:-10}" --warmup 3 --trusted-kernels
  done
}

suite_serve() {
  loadtest --seconds "${LOADTEST_SECONDS:-3}" --clients "${LOADTEST_CLIENTS:-1,16,64}"
}

suite_full() {
  local first_gemm=${GEMM_SIZES%% *} p w b t s n
  # The autotune runs keep their choices (the winning tile per shape class) in tiles.toml.
  for p in f32 f16 f16-coop; do
    bench --workload gemm --batch "$first_gemm" --precision "$p" --runs "$RUNS" --autotune \
      --autotune-cache "$W/tiles.toml" --trusted-kernels
  done
  torch
  # Small runs, busy-polling for the result instead of sleeping on the fence.
  for w in $WORKLOADS; do
    NO_TIMING=1 bench --workload "$w" --batch 1 --precision f32 --runs "$RUNS" --trusted-kernels --spin-us 2000
    bench --workload "$w" --batch 1 --precision f32 --runs "$RUNS" --trusted-kernels --spin-us 2000
  done
  for w in $WORKLOADS; do
    for b in $BATCHES; do
      for p in f32 f16 f16-coop; do
        bench --workload "$w" --batch "$b" --precision "$p" --runs "$RUNS" --trusted-kernels --autotune \
          --autotune-cache "$W/tiles.toml"
      done
    done
  done
  # Every tile candidate (coop shape with f16-coop) at the largest size, one line each.
  for p in f32 f16 f16-coop; do
    bench --workload gemm --batch "$first_gemm" --precision "$p" --runs "${SWEEP_RUNS:-5}" --trusted-kernels --sweep
  done
  # Tiles beyond the candidates (f32, largest size), for the next round of tuning:
  # deeper slices, 64 threads, rectangular and larger workgroups.
  for t in ${EXTRA_TILES-16,16,8,8,32,vec4,prefetch 16,16,8,8,32,vec4 8,8,8,8,16,vec4 16,8,8,8,16,vec4 16,8,8,8,16,vec4,prefetch 8,16,8,8,16,vec4 32,16,8,8,16,vec4 32,32,4,4,16,vec4}; do
    bench --workload gemm --batch "$first_gemm" --precision f32 --runs "${SWEEP_RUNS:-5}" --trusted-kernels --tile "$t"
  done
  # Cooperative-matrix shapes beyond the candidates (BX,BY,TMC,TNC,BK[,prefetch]).
  for s in ${COOP_SHAPES-4,4,2,2,1,prefetch 4,4,2,2,4,prefetch 4,4,2,4,1,prefetch 4,4,4,4,1,prefetch 4,4,4,4,2,prefetch 2,4,4,4,1,prefetch 4,2,4,4,1,prefetch}; do
    bench --workload gemm --batch "$first_gemm" --precision f16-coop --coop-shape "$s" --runs "$RUNS" --warmup 10 --trusted-kernels
  done
  # Warm-up: one f32 tile after 3 warm-up runs, then after 60, then 3 again (the clock
  # governor lowers the SM clock when the GPU is mostly idle; read against clocks.csv).
  if [ -n "${WARMUP_TILE-16,16,4,8,16,vec4}" ]; then
    for n in 3 60 3; do
      bench --workload gemm --batch "$first_gemm" --precision f32 --tile "${WARMUP_TILE-16,16,4,8,16,vec4}" \
        --runs "$RUNS" --warmup "$n" --trusted-kernels
    done
  fi
  for n in $GEMM_SIZES; do
    for p in f32 f16 f16-coop; do
      bench --workload gemm --batch "$n" --precision "$p" --runs "$RUNS"
      if [ "$n" != "$first_gemm" ]; then
        bench --workload gemm --batch "$n" --precision "$p" --runs "$RUNS" --autotune --autotune-cache "$W/tiles.toml" --trusted-kernels
      fi
    done
  done
  bench --workload E1 --batch 64 --mode pipeline --runs 100 --trusted-kernels
  bench --workload E1 --batch 64 --mode late-member --late-timeout-ms 20 --runs "$RUNS" --trusted-kernels
}

for s in ${SUITES//,/ }; do
  stamp "suite $s"
  "suite_$s"
done
