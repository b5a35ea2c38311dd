#!/usr/bin/env bash
# Checks, on a machine without a GPU or PyTorch, the GPU scripts that only run
# elsewhere: the shell parses, every benchmark script is valid Python, and report.py
# turns the fixture folder (benches/gpu/fixture: made-up figures in the formats of
# bench --json, torch_baseline.py and the load generator) into the tables it should.
#
#     bash benches/gpu/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

for f in benches/gpu/run.sh benches/gpu/env.sh benches/gpu/check.sh; do
  bash -n "$f"
done
python3 - benches/*.py benches/gpu/report.py <<'PY'
import ast, sys
for path in sys.argv[1:]:
    with open(path) as f:
        ast.parse(f.read(), path)
PY

report=$(python3 benches/gpu/report.py benches/gpu/fixture)
expect() {
  grep -qF -- "$1" <<<"$report" || { echo "benches/gpu/report.py on the fixture: expected a line with: $1" >&2; exit 1; }
}
# The targets, PyTorch from the same run beside them.
expect "| dense f32 4096³, kernels alone, TFLOP/s | 50.9 | 34.4 | 45 | no |"
expect "| dense f16 / coop 4096³, kernels alone, TFLOP/s | 370 (f16) | 115 | 200 | no |"
expect "| E2 batch 1024 f32, TFLOP/s (whole run) | 43.5 | 28.2 | PyTorch eager (43.5) | no |"
expect "| Pipeline E1 batch 64, p50 latency / Session::run p50 | — | 1.39 | ≤ 1.5 (0.5 / 0.36 ms) | yes |"
# f16-coop beside PyTorch's f16 and bf16, autocast and cast.
expect "| gemm 4096³, kernels alone (PyTorch: result left on the GPU) | 300 | 370 | 290 | 360 | 115 | — |"
expect "| E2 batch 1024, whole run (PyTorch: best of eager, vmap) | 100 | 123 | 96.7 | 120 | 78.2 | — |"
# A resident line apart from the whole runs.
expect "| gemm | 4096 | f32 | 4.4 | 4 | 1.1 | 3.12e+04 |"
# The server's cells, both rounds.
expect "| server, batching | 64 | 4512 / 7268 | 10.9 / 7.88 | 42.9 / 19.7 | 0 | 35.7 / 49.3 |"
# One member split across two queues: the whole member's line, then the splits'.
expect "| E2 | 1024 | f32 | adapter:0/queue:0, adapter:0/queue:1 | whole | 4 | 4.4 | 2.56e+05 | 1 | 0.0e+00 |"
expect "| E2 | 1024 | f32 | adapter:0/queue:0, adapter:0/queue:1 | columns | 3.2 | 3.52 | 3.2e+05 | 1.25 | 2.4e-07 |"
# Every bench line with PyTorch's figure of the same precision.
expect "| E2 | 1024 | f16-coop | autotune | session | 5.27 | 5.8 | 7.82e+04 | 3.61 | 1.14e+05 | 3.34 |"
echo "benches/gpu: scripts parse, report.py renders the fixture"
