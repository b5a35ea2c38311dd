"""numpy's matmul on this machine, as the CPU-side peer of `wgpu-ensemble bench
--workload gemm`: one JSON object per size, with the same fields.

    python3 benches/numpy_baseline.py [256,512,1024]
"""
import json
import sys
import time

import numpy as np

sizes = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "256,512,1024").split(",")]
for n in sizes:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    w = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    b = np.zeros(n, dtype=np.float32)
    for _ in range(3):
        a @ w.T + b
    times = []
    for _ in range(20):
        t = time.perf_counter()
        a @ w.T + b
        times.append(time.perf_counter() - t)
    times.sort()
    p50, p99 = times[10], times[-1]
    print(json.dumps({
        "workload": "gemm", "batch": n, "precision": "f32", "adapter": ["numpy " + np.__version__],
        "runs": len(times), "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3,
        "throughput_rows_per_s": n / p50, "gflops": 2 * n**3 / p50 / 1e9,
    }))
