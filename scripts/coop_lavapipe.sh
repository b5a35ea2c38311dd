#!/usr/bin/env bash
# Runs the precision tests on a lavapipe that has cooperative matrices, so that the
# cooperative-matrix kernel (Precision::F16CoopMatrix) is checked on a machine
# without a GPU.
#
# Debian 12's Mesa (22.3) has no VK_KHR_cooperative_matrix; lavapipe in Debian
# testing's Mesa (26.1 on 2026-11-26) lists 8x8x8 configurations, f16 x f16 -> f32
# among them. This script makes a minimal testing root with debootstrap (about half a
# minute), then runs this crate's precision tests with that root's dynamic loader and
# libraries: no chroot, nothing installed on the host but debootstrap.
#
# Usage, as root, from the repository root: bash scripts/coop_lavapipe.sh [TEST ARGS]
# (extra arguments go to the test binary, e.g. --nocapture).
# Exit status: 0 the tests passed; 1 a test failed; 2 the root could not be made
# (no network, or testing not installable today).
set -uo pipefail
cd "$(dirname "$0")/.."
SUITE=${COOP_SUITE:-testing}
ROOT=${COOP_ROOT:-/tmp/wgpu-ensemble-$SUITE-root}
LIB="$ROOT/usr/lib/x86_64-linux-gnu"

if [ ! -e "$LIB/libvulkan_lvp.so" ]; then
  if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } ||
      { echo "coop_lavapipe: cannot install debootstrap" >&2; exit 2; }
  fi
  rm -rf "$ROOT"
  # Bounded: a registry that stops answering must not hold CI for its whole budget.
  if ! timeout 900 debootstrap --variant=minbase --include=libvulkan1,mesa-vulkan-drivers \
      "$SUITE" "$ROOT" http://deb.debian.org/debian >"$ROOT.log" 2>&1; then
    echo "coop_lavapipe: debootstrap failed, see $ROOT.log" >&2
    tail -5 "$ROOT.log" >&2
    exit 2
  fi
fi

# The host's test binaries run on the root's glibc, which is newer and compatible.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$LIB/ld-linux-x86-64.so.2 --library-path $LIB"
export VK_ICD_FILENAMES="$ROOT/usr/share/vulkan/icd.d/lvp_icd.json"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
# Vulkan required by name: without it the _vulkan tests would skip, and pass.
export WGPU_ENSEMBLE_REQUIRE_GPU=1 WGPU_ENSEMBLE_REQUIRE_COOP=1 WGPU_ENSEMBLE_REQUIRE_BACKENDS=vulkan
# In the test profile: the tests below build it anyway (for the CLI tests), and a dev
# build would compile every dependency once more.
cargo run --profile test --quiet --bin wgpu-ensemble -- devices || true
# The precision tests of the one integration-test binary, on this Vulkan adapter only:
# the CPU's run in the main test run, and GL has no cooperative matrices.
cargo test --test it -- precision:: --skip _cpu --skip _gl "$@" || exit 1
