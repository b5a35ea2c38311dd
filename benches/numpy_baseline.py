"""numpy's matmul on this machine, as the CPU-side peer of `wgpu-ensemble bench
--workload gemm`: one JSON object per size, with the same fields.

    python3 benches/numpy_baseline.py [256,512,1024]
"""
import argparse
import json
import time

import numpy as np


def sizes_list(text):
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,512,1024, got {text!r}")
    if any(n <= 0 for n in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


parser = argparse.ArgumentParser(
    description="numpy's matmul, the CPU-side peer of `wgpu-ensemble bench --workload gemm`")
parser.add_argument("sizes", nargs="?", type=sizes_list, default=[256, 512, 1024],
                    help="comma-separated n of the n x n x n products (default 256,512,1024)")
sizes = parser.parse_args().sizes
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
