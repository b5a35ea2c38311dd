#!/usr/bin/env bash
# Prepares, on the build machine, everything scripts/gpu_bench.sh needs on the lent
# GPU machine (see shared/gpu/README.md): Debian's Vulkan loader packages in .gl/ (the
# GPU machine has the NVIDIA ICD but no loader), and in .devbin/ the release binary,
# the precision test binary (it checks Precision::F16CoopMatrix on the hardware), the
# timing test binary (device timing's timestamps there), and the PyTorch baselines. Both folders are ignored by git; carry both in the device call:
#   run(command="OUT=$OUT bash scripts/gpu_bench.sh", carry=[".gl", ".devbin"])
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gl .devbin
if ! compgen -G ".gl/libvulkan1_*.deb" >/dev/null; then
  lists=$(mktemp -d)
  mkdir -p "$lists/partial"
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
  apt-get "${o[@]}" update -qq
  (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
cargo build --release --bin wgpu-ensemble
cp target/release/wgpu-ensemble .devbin/
# The precision and timing test binaries, built with the release profile.
for t in precision timing pipeline; do
  test_bin=$(cargo test --release --test "$t" --no-run --message-format=json 2>/dev/null |
    T="$t" python3 -c 'import json,os,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == os.environ["T"]:
        print(m["executable"])')
  cp "$test_bin" ".devbin/$t"
done
cp benches/torch_baseline.py .devbin/
if [ -f ../shared/gpu/torch_anchor.py ]; then cp ../shared/gpu/torch_anchor.py .devbin/; fi
ls -la .gl .devbin
du -sh .gl .devbin
