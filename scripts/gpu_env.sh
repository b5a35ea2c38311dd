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
