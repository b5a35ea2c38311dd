"""The benchmark workloads of `wgpu-ensemble bench` in PyTorch, printing the same JSON
fields (one object per line, plus the PyTorch version), so that the two can be
compared on one GPU.

    python3 benches/torch_baseline.py [--device cuda] [--batches 1,64,1024] [--gemm 1024,4096]
        [--precision f32,f16,bf16] [--runs 30]

Workloads: gemm (an n x n layer at batch n, TF32 off), E1 (4 x MLP 784-512-512-10,
softmax outputs, mean) and E2 (8 x MLP 1024-4096-4096-1024, softmax outputs, mean),
each as an eager loop over the members and with torch.vmap. Latency includes copying
the result to the host, as `Session::run` does (the input is already on the device).

gemm also has a `resident` line: the layer alone, its result left on the device (the
peer of `bench`'s kernels-alone figures, `device_p50_ms` / `device_gflops`).

--precision (default f32) lists the precisions of gemm and E2 (E1 is timed in f32 only):
f32 (TF32 off), and f16 / bf16 two ways, each line with `"autocast"` saying which:
  autocast   the f32 model under `torch.autocast(dtype=...)`, as mixed-precision
             inference is usually written: the weights are cast at every call;
  cast       the model's weights and the input converted to the type once
             (`.to(dtype)`), as `bench --precision f16 / f16-coop` keeps f16 weights on
             the device.
cuBLAS accumulates half-precision GEMMs in f32 (PyTorch's default allows reduced-
precision reductions for f16 on some shapes; `allow_fp16_reduced_precision_reduction`
is recorded). Results are converted to f32 before the copy to the host.
"""
import argparse
import contextlib
import json
import sys
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


def measure(fn, ctx, device, runs, what):
    """timeit(fn) inside ctx(); None (and the error on stderr) where PyTorch refuses
    the combination, so that one failing line does not end the run."""
    try:
        with ctx():
            return timeit(fn, device, runs)
    except (RuntimeError, NotImplementedError, TypeError) as e:
        print(f"{what}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return None


def mlp(dims, device):
    layers = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device)


DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def report(workload, batch, mode, device_name, p50, p99, flops, runs, precision="f32", autocast=None):
    return {
        "workload": workload,
        "batch": batch,
        "precision": precision,
        "autocast": autocast,
        "adapter": [device_name],
        "torch": torch.__version__,
        "mode": mode,
        "runs": runs,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "throughput_rows_per_s": batch / p50,
        "gflops": flops / p50 / 1e9,
    }


def precisions(text):
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in ("f32", *DTYPES)]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected any of f32, f16, bf16, got {text!r}")
    return names


def variants(precision_list, dev):
    """(precision, autocast flag, dtype, context) for each precision asked for: f32
    once, f16 / bf16 under autocast and with the weights cast."""
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    for p in precision_list:
        if p == "f32":
            yield p, None, None, contextlib.nullcontext
        else:
            yield p, True, DTYPES[p], lambda d=DTYPES[p]: torch.autocast(kind, dtype=d)
            yield p, False, DTYPES[p], contextlib.nullcontext


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,64,1024")
    ap.add_argument("--gemm", default="256,1024,4096")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--precision", type=precisions, default=["f32"],
                    help="precisions of gemm and E2: any of f32, f16, bf16 (default f32)")
    args = ap.parse_args()
    dev = args.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def emit(r):
        r["allow_fp16_reduced_precision_reduction"] = \
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        print(json.dumps(r), flush=True)

    for n in [int(v) for v in args.gemm.split(",") if v]:
        for precision, autocast, dtype, ctx in variants(args.precision, dev):
            x = torch.randn(n, n, device=dev)
            lin = torch.nn.Linear(n, n).to(dev)
            if autocast is False:
                x, lin = x.to(dtype), lin.to(dtype)
            with torch.no_grad():
                whole = lambda: lin(x).float().cpu()
                resident = lambda: lin(x)
                for mode, fn in (("eager", whole), ("resident", resident)):
                    t = measure(fn, ctx, dev, args.runs, f"gemm {n} {mode} {precision} autocast={autocast}")
                    if t:
                        emit(report("gemm", n, mode, name, *t, 2 * n**3, args.runs, precision, autocast))

    for workload, k, dims in (("E1", 4, [784, 512, 512, 10]), ("E2", 8, [1024, 4096, 4096, 1024])):
        flops_per_row = k * sum(2 * dims[i] * dims[i + 1] for i in range(len(dims) - 1))
        wanted = args.precision if workload == "E2" else ["f32"]
        for precision, autocast, dtype, ctx in variants(wanted, dev):
            models = [mlp(dims, dev) for _ in range(k)]
            if autocast is False:
                models = [m.to(dtype) for m in models]
            params, buffers = stack_module_state(models)
            base = mlp(dims, "meta")
            if autocast is False:
                base = base.to(dtype)
            f = lambda p, b, x: functional_call(base, (p, b), (x,))
            for batch in [int(v) for v in args.batches.split(",") if v]:
                x = torch.randn(batch, dims[0], device=dev)
                if autocast is False:
                    x = x.to(dtype)
                with torch.no_grad():
                    eager = lambda: torch.stack([m(x).softmax(-1) for m in models]).mean(0).float().cpu()
                    vmapped = lambda: torch.vmap(f, in_dims=(0, 0, None))(params, buffers, x).softmax(-1).mean(0).float().cpu()
                    for mode, fn in (("eager", eager), ("vmap", vmapped)):
                        t = measure(fn, ctx, dev, args.runs,
                                    f"{workload} {batch} {mode} {precision} autocast={autocast}")
                        if t:
                            emit(report(workload, batch, mode, name, *t, flops_per_row * batch, args.runs,
                                        precision, autocast))
            del models, params, buffers


if __name__ == "__main__":
    main()
