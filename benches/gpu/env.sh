# Sourced by benches/gpu/run.sh on the GPU machine, with the working folder as $1:
# installs the Vulkan loader carried in .gl/ (the GPU machine has the NVIDIA ICD but no
# loader), sets XDG_RUNTIME_DIR, B (the binary: .devbin's, or WGPU_ENSEMBLE_BIN), IT
# (the integration-test binary: .devbin's, or WGPU_ENSEMBLE_IT), LT (the load generator:
# .devbin's, or WGPU_ENSEMBLE_LOADTEST) and DEVICE (the first
# usable Vulkan adapter, unless set: the GL adapter of a headless NVIDIA machine is
# listed but cannot open a device), and defines the helpers below.
if compgen -G ".gl/*.deb" >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
W=$1
B=${WGPU_ENSEMBLE_BIN:-.devbin/wgpu-ensemble}
IT=${WGPU_ENSEMBLE_IT:-.devbin/it}
LT=${WGPU_ENSEMBLE_LOADTEST:-.devbin/loadtest}
"$B" devices > "$W/devices.txt" 2>&1
DEVICE=${DEVICE:-$(awk -F'\t' '$2 == "Vulkan" && $5 == "usable" { print "adapter:" $1; exit }' "$W/devices.txt")}
DEVICE=${DEVICE:-auto}

# A line in log.txt with the time, to read against clocks.csv.
stamp() { echo "== $(date +%T.%N) $*" >> "$W/log.txt"; }

# The GPU's clocks, power and load every $1 ms into clocks.csv, until finish. The
# driver lowers the SM clock within seconds when the GPU is mostly idle, so a bench
# read against this log says whether it ran at full clock.
log_clocks() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu,temperature.gpu \
      --format=csv -lms "$1" > "$W/clocks.csv" 2>&1 &
    smi=$!
  fi
}

# One `wgpu-ensemble bench` line into wgpu.jsonl (a failure into errors.txt). Every run
# also times the kernels alone with timestamp queries (device_p50_ms, device_gflops:
# what PyTorch's GEMM on device-resident tensors is compared with), except with
# NO_TIMING=1 (the latency runs, measured both ways).
bench() {
  local timing=--device-timing
  [ -n "${NO_TIMING:-}" ] && timing=
  stamp "bench $*"
  timeout "${BENCH_TIMEOUT:-120}" "$B" bench --device "$DEVICE" --json $timing "$@" >> "$W/wgpu.jsonl" 2>> "$W/errors.txt" ||
    echo "failed ($?): $*" >> "$W/errors.txt"
}

# One `wgpu-ensemble bench --split` run into wgpu.jsonl, a line per variant (a failure
# into errors.txt): the devices are the arguments' --devices, so neither --device nor
# --device-timing (a split member's parts report no device time) is added.
split_bench() {
  stamp "split_bench $*"
  timeout "${BENCH_TIMEOUT:-120}" "$B" bench --json "$@" >> "$W/wgpu.jsonl" 2>> "$W/errors.txt" ||
    echo "failed ($?): split_bench $*" >> "$W/errors.txt"
}

# The integration tests whose names match any of the filters given, on the GPU, one
# thread, into tests.txt. A missing adapter or cooperative matrices fail rather than
# skip; tests named for another placement (SKIP_TESTS, default `_cpu _gl`: the CPU is
# covered by CI, and the GL adapter of a headless NVIDIA machine opens no device) are
# left out.
tests() {
  [ -x "$IT" ] || { echo "no test binary at $IT" | tee -a "$W/errors.txt"; return; }
  local skip=()
  for s in ${SKIP_TESTS-_cpu _gl}; do skip+=(--skip "$s"); done
  stamp "tests $*"
  WGPU_ENSEMBLE_REQUIRE_GPU=1 WGPU_ENSEMBLE_REQUIRE_COOP=${REQUIRE_COOP:-1} \
    WGPU_ENSEMBLE_REQUIRE_BACKENDS=${REQUIRE_BACKENDS:-vulkan} \
    timeout "${TESTS_TIMEOUT:-300}" "$IT" --test-threads 1 "$@" "${skip[@]}" >> "$W/tests.txt" 2>&1
  echo "tests $*: exit $?" | tee -a "$W/tests.txt"
}

# PyTorch on the same GPU: the anchor (FP32 GEMM and E1/E2, shared/gpu/torch_anchor.py,
# when carried) and benches/torch_baseline.py with TORCH_ARGS; SKIP_TORCH=1 skips both.
torch() {
  [ -n "${SKIP_TORCH:-}" ] && return
  if [ -f .devbin/torch_anchor.py ] && [ ! -f "$W/torch_anchor.json" ]; then
    stamp torch_anchor
    timeout 240 python3 .devbin/torch_anchor.py "$W/torch_anchor.json" > /dev/null 2>> "$W/errors.txt"
  fi
  if [ -f .devbin/torch_baseline.py ]; then
    stamp "torch_baseline $*"
    # shellcheck disable=SC2086 # TORCH_ARGS is a list of arguments
    timeout 240 python3 .devbin/torch_baseline.py ${TORCH_ARGS:-} "$@" >> "$W/torch.jsonl" 2>> "$W/errors.txt"
  fi
}

# The server's load test (examples/loadtest.rs) with its members on $DEVICE, the
# arguments given after, into loadtest.md (its markdown table; a failure into
# errors.txt). It starts two servers on loopback and drives them from client threads.
loadtest() {
  [ -x "$LT" ] || { echo "no load generator at $LT" | tee -a "$W/errors.txt"; return; }
  stamp "loadtest $*"
  timeout "${LOADTEST_TIMEOUT:-240}" "$LT" --device "$DEVICE" "$@" >> "$W/loadtest.md" 2>> "$W/errors.txt" ||
    echo "failed ($?): loadtest $*" >> "$W/errors.txt"
}

# Stops the clock log, writes report.md, packs the working folder into $OUT/$1.tar.gz
# (a device call brings back few files: one archive holds everything), copies
# report.md beside it and prints the failures, the errors and the report's targets.
finish() {
  stamp done
  [ -n "${smi:-}" ] && kill "$smi" 2>/dev/null
  python3 benches/gpu/report.py "$W" > "$W/report.md" 2>> "$W/errors.txt"
  mkdir -p "$OUT"
  tar -czf "$OUT/$1.tar.gz" -C "$W" .
  cp "$W/report.md" "$OUT/$1-report.md"
  grep -hE "^test .*FAILED|: exit [0-9]|^test result" "$W/tests.txt" 2>/dev/null
  cat "$W/errors.txt" 2>/dev/null
  head -16 "$W/report.md"
}
