"""The benchmark workloads of `wgpu-ensemble bench` in PyTorch, printing the same JSON
fields (one object per line, plus the PyTorch version), so that the two can be
compared on one GPU.

    python3 benches/torch_baseline.py [--device cuda] [--batches 1,64,1024] [--gemm 1024,4096]

Workloads: gemm (an n x n layer at batch n, TF32 off), E1 (4 x MLP 784-512-512-10,
softmax outputs, mean) and E2 (8 x MLP 1024-4096-4096-1024, softmax outputs, mean),
each as an eager loop over the members and with torch.vmap. Latency includes copying
the result to the host, as `Session::run` does.
"""
import argparse
import json
import time

import torch
from torch.func import functional_call, stack_module_state


def timeit(fn, device, runs=30, warmup=5):
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]


def mlp(dims, device):
    layers = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device)


def report(workload, batch, mode, device_name, p50, p99, flops, runs):
    return {
        "workload": workload,
        "batch": batch,
        "precision": "f32",
        "adapter": [device_name],
        "torch": torch.__version__,
        "mode": mode,
        "runs": runs,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "throughput_rows_per_s": batch / p50,
        "gflops": flops / p50 / 1e9,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--gemm", default="256,1024,4096")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    dev = args.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    for n in [int(v) for v in args.gemm.split(",") if v]:
        x = torch.randn(n, n, device=dev)
        lin = torch.nn.Linear(n, n).to(dev)
        with torch.no_grad():
            p50, p99 = timeit(lambda: lin(x).cpu(), dev, args.runs)
        print(json.dumps(report("gemm", n, "eager", name, p50, p99, 2 * n**3, args.runs)))

    for workload, k, dims in (("E1", 4, [784, 512, 512, 10]), ("E2", 8, [1024, 4096, 4096, 1024])):
        models = [mlp(dims, dev) for _ in range(k)]
        params, buffers = stack_module_state(models)
        base = mlp(dims, "meta")
        f = lambda p, b, x: functional_call(base, (p, b), (x,))
        flops_per_row = k * sum(2 * dims[i] * dims[i + 1] for i in range(len(dims) - 1))
        for batch in [int(v) for v in args.batches.split(",") if v]:
            x = torch.randn(batch, dims[0], device=dev)
            with torch.no_grad():
                eager = lambda: torch.stack([m(x).softmax(-1) for m in models]).mean(0).cpu()
                vmapped = lambda: torch.vmap(f, in_dims=(0, 0, None))(params, buffers, x).softmax(-1).mean(0).cpu()
                for mode, fn in (("eager", eager), ("vmap", vmapped)):
                    p50, p99 = timeit(fn, dev, args.runs)
                    print(json.dumps(report(workload, batch, mode, name, p50, p99, flops_per_row * batch, args.runs)))


if __name__ == "__main__":
    main()
