# Sourced by scripts/gpu_bench.sh, gpu_recheck.sh and gpu_confirm.sh with the folder
# for devices.txt as $1: installs the Vulkan loader carried in .gl/ (the GPU machine
# has the NVIDIA ICD but no loader), sets XDG_RUNTIME_DIR, B (the binary: .devbin's,
# or WGPU_ENSEMBLE_BIN) and DEVICE (the first usable Vulkan adapter, unless set: the
# GL adapter of a headless NVIDIA machine is listed but cannot open a device).
if compgen -G ".gl/*.deb" >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
B=${WGPU_ENSEMBLE_BIN:-.devbin/wgpu-ensemble}
"$B" devices > "$1/devices.txt" 2>&1
DEVICE=${DEVICE:-$(awk -F'\t' '$2 == "Vulkan" && $5 == "usable" { print "adapter:" $1; exit }' "$1/devices.txt")}
DEVICE=${DEVICE:-auto}

# For the follow-up calls (gpu_recheck.sh, gpu_confirm.sh), which gather everything in
# the folder $1 and bring it back as one archive.
W=$1
# A line in tests.txt with the time, to read against clocks.csv.
stamp() { echo "== $(date +%T.%N) $*" >> "$W/tests.txt"; }
# The GPU's clocks, power and load every $1 ms into clocks.csv, until finish.
log_clocks() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu,temperature.gpu \
      --format=csv -lms "$1" > "$W/clocks.csv" 2>&1 &
    smi=$!
  fi
}
# Stops the clock log, writes report.md, packs everything into $OUT/$1.tar.gz and
# prints the failures, the errors and the report's targets.
finish() {
  stamp done
  [ -n "${smi:-}" ] && kill "$smi" 2>/dev/null
  python3 scripts/gpu_report.py "$W" > "$W/report.md" 2>> "$W/errors.txt"
  mkdir -p "$OUT"
  tar -czf "$OUT/$1.tar.gz" -C "$W" .
  grep -E "^test .*FAILED|exit [0-9]|^test result" "$W/tests.txt"
  cat "$W/errors.txt"
  head -12 "$W/report.md"
}
