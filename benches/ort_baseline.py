"""The benchmark workloads of `wgpu-ensemble bench --device cpu` in ONNX Runtime (CPU)
and numpy, printing the same JSON fields (one object per line), so that the CPU
executor can be compared with them on one machine.

    python3 benches/ort_baseline.py [--workloads gemm,E1,E2] [--gemm 256,512,1024]
        [--batches 1,16,64,256,1024] [--e2-max-batch N] [--peers default,numpy]
        [--runs 30] [--warmup 3] [--threads N] [--cache DIR]

Needs `onnx`, `onnxruntime` and `numpy` (e.g. a venv: `python3 -m venv /tmp/ort-venv &&
/tmp/ort-venv/bin/pip install onnx onnxruntime numpy`).

Workloads, as `src/bench.rs` builds them (random weights of the same shapes, seeded):
  gemm  one n x n dense layer (identity) at batch n: 2n³ FLOP per run;
  E1    4 x MLP 784-512-512-10 (relu, relu, softmax), mean of the members;
  E2    8 x MLP 1024-4096-4096-1024 (relu, relu, softmax), mean of the members.
Each is ONE ONNX graph built with `onnx.helper`: every member's layers as `Gemm`
(weights [out, in], `transB=1`, as PyTorch exports `nn.Linear`), `Relu`, `Softmax`, and
the members joined by a `Mean` node; the batch dimension is symbolic, so one model
serves every batch. The input is the one `bench` feeds (`(i * 7919 % 2000) / 1000 - 1`).

Peers (`--peers`, any of):
  default   `InferenceSession` with no options: the CPU execution provider, every core
            (intra-op threads 0 = one per core), and, in the Python API, every graph
            optimisation (ORT_ENABLE_ALL is its default);
  all       ORT_ENABLE_ALL and the CPU provider set explicitly (the same configuration
            as `default` in the Python API; kept for APIs whose default differs);
  basic     ORT_ENABLE_BASIC (no fusions beyond constant folding and the like);
  1thread   `default` with one intra-op thread;
  numpy     the same forward pass in numpy (`x @ W.T + b`, relu, softmax, mean).

Each line: workload, mode (`ort-default`, `ort-all`, `ort-basic`, `ort-1thread`,
`numpy`), batch, precision (`f32`), adapter (the peer and its version), runs, p50_ms,
p99_ms (nearest rank, as `bench`), throughput_rows_per_s, gflops, and the peer's
settings (onnxruntime / numpy versions, graph_optimization_level, intra_op_threads).
Latency is one call from the host array in to the host array out, as `Session::run`'s.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

WORKLOADS = {
    # name: (the layer widths, the number of members)
    "E1": ([784, 512, 512, 10], 4),
    "E2": ([1024, 4096, 4096, 1024], 8),
}
# Raised whenever the models (graph, weights, seed) change: the cache's files carry it.
MODEL_VERSION = 1
PEERS = ("default", "all", "basic", "1thread", "numpy")


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,16,64, got {text!r}")
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def name_list(choices):
    def parse(text):
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)}: expected any of {', '.join(choices)}")
        return names

    return parse


def shape(workload, batch):
    """The members' widths and their number (for gemm, `batch` is the layer's size)."""
    if workload == "gemm":
        return [batch, batch], 1
    return WORKLOADS[workload]


def flops(workload, batch):
    widths, members = shape(workload, batch)
    per_row = sum(2 * widths[i] * widths[i + 1] for i in range(len(widths) - 1))
    return per_row * members * batch


def bench_input(batch, width):
    """The input `wgpu-ensemble bench` feeds: (i * 7919 % 2000) / 1000 - 1, row-major."""
    i = np.arange(batch * width, dtype=np.int64)
    return ((i * 7919 % 2000).astype(np.float32) / 1000.0 - 1.0).reshape(batch, width)


def weights(workload, batch):
    """Every member's layers as (W [out, in], b [out]) in f32, seeded, scaled by
    1/sqrt(fan_in) so that the activations stay of order one."""
    widths, members = shape(workload, batch)
    rng = np.random.default_rng(19)
    out = []
    for _ in range(members):
        layers = []
        for i in range(len(widths) - 1):
            fan_in, fan_out = widths[i], widths[i + 1]
            w = rng.standard_normal((fan_out, fan_in), dtype=np.float32)
            w *= np.float32(1.0 / np.sqrt(fan_in))
            b = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.1)
            layers.append((w, b))
        out.append(layers)
    return out


def onnx_model(workload, members):
    """One graph: every member's Gemm (+ Relu, Softmax at the end) and a Mean."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width_in = members[0][0][0].shape[1]
    width_out = members[0][-1][0].shape[0]
    nodes, inits, outs = [], [], []
    for m, layers in enumerate(members):
        x = "x"
        for i, (w, b) in enumerate(layers):
            wn, bn, y = f"m{m}_w{i}", f"m{m}_b{i}", f"m{m}_y{i}"
            inits.append(numpy_helper.from_array(w, wn))
            inits.append(numpy_helper.from_array(b, bn))
            nodes.append(helper.make_node("Gemm", [x, wn, bn], [y], transB=1))
            x = y
            if workload == "gemm":
                continue
            a = f"m{m}_a{i}"
            if i < len(layers) - 1:
                nodes.append(helper.make_node("Relu", [x], [a]))
            else:
                nodes.append(helper.make_node("Softmax", [x], [a], axis=-1))
            x = a
        outs.append(x)
    nodes.append(helper.make_node("Mean", outs, ["y"]))
    graph = helper.make_graph(
        nodes,
        f"{workload}_ensemble",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model, full_check=False)
    return model


def model_path(workload, batch, cache):
    """The model's file, made once per workload (per size for gemm) and kept in
    `cache` (weights as external data: E2's are 800 MB)."""
    import onnx

    # The key names what the file holds (the script's model version, the workload, the
    # size), so that a cache made by another version of this script is not reused.
    key = f"v{MODEL_VERSION}-" + (f"gemm{batch}" if workload == "gemm" else workload)
    path = os.path.join(cache, f"{key}.onnx")
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        model = onnx_model(workload, weights(workload, batch))
        tmp = path + ".tmp"
        onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{key}.onnx.data", size_threshold=0)
        os.replace(tmp, path)
    return path


def ort_session(path, peer, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if peer == "basic":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif peer == "all":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if peer == "1thread":
        opts.intra_op_num_threads = 1
    elif threads:
        opts.intra_op_num_threads = threads
    if peer == "default" and not threads:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    else:
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess, opts


def numpy_forward(workload, members):
    def run(x):
        outs = []
        for layers in members:
            h = x
            for i, (w, b) in enumerate(layers):
                h = h @ w.T + b
                if workload == "gemm":
                    continue
                if i < len(layers) - 1:
                    np.maximum(h, 0, out=h)
                else:
                    h = np.exp(h - h.max(axis=-1, keepdims=True))
                    h /= h.sum(axis=-1, keepdims=True)
            outs.append(h)
        return outs[0] if len(outs) == 1 else np.mean(outs, axis=0)

    return run


def check(workload, batch, peer, got, want):
    """The ONNX model computes what the numpy forward pass does (the graph is the
    workload), within f32 tolerance; exits naming the first index that differs."""
    if got.shape != want.shape:
        sys.exit(f"{workload} batch {batch} ort-{peer}: expected an output of shape {want.shape} "
                 f"(numpy's), got {got.shape}")
    bad = ~np.isclose(got, want, rtol=1e-3, atol=1e-4)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        sys.exit(f"{workload} batch {batch} ort-{peer}: output differs from numpy's at {at}: "
                 f"expected {want[at]}, got {got[at]}")


def timeit(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    last = len(times) - 1
    return times[round(last * 0.5)], times[round(last * 0.99)]


def report(workload, batch, mode, adapter, p50, p99, runs, extra):
    r = {
        "workload": workload,
        "mode": mode,
        "batch": batch,
        "precision": "f32",
        "adapter": [adapter],
        "runs": runs,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "throughput_rows_per_s": batch / p50,
        "gflops": flops(workload, batch) / p50 / 1e9,
    }
    r.update(extra)
    return r


def cells(args):
    """(workload, batch) in the order measured."""
    out = []
    for w in args.workloads:
        if w == "gemm":
            out += [("gemm", n) for n in args.gemm]
        else:
            out += [(w, b) for b in args.batches
                    if not (w == "E2" and args.e2_max_batch and b > args.e2_max_batch)]
    return out


def main():
    ap = argparse.ArgumentParser(
        description="ONNX Runtime and numpy on the workloads of `wgpu-ensemble bench --device cpu`")
    ap.add_argument("--workloads", type=name_list(("gemm", "E1", "E2")), default=["gemm", "E1", "E2"])
    ap.add_argument("--gemm", type=int_list, default=[256, 512, 1024], help="gemm sizes n (n x n layer at batch n)")
    ap.add_argument("--batches", type=int_list, default=[1, 16, 64, 256, 1024], help="E1 and E2 batches")
    ap.add_argument("--e2-max-batch", type=int, default=0,
                    help="leave out E2 batches above this (E2 at 1024 is ~400 GFLOP a run); 0: none left out")
    ap.add_argument("--peers", type=name_list(PEERS), default=["default", "numpy"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0,
                    help="ONNX Runtime intra-op threads (0: its default, one per core)")
    ap.add_argument("--no-check", action="store_true",
                    help="skip comparing each ONNX Runtime output once with numpy's before timing")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "ort-baseline-models"),
                    help="where the ONNX models are kept between calls")
    args = ap.parse_args()
    if args.runs <= 0 or args.warmup < 0:
        ap.error(f"--runs must be positive and --warmup not negative, got {args.runs} and {args.warmup}")

    ort = None
    if any(p != "numpy" for p in args.peers):
        import onnxruntime as ort
    for workload, batch in cells(args):
        widths, _ = shape(workload, batch)
        x = bench_input(batch, widths[0])
        members = None
        for peer in args.peers:
            if peer == "numpy":
                if members is None:
                    members = weights(workload, batch)
                fn = numpy_forward(workload, members)
                p50, p99 = timeit(lambda: fn(x), args.runs, args.warmup)
                extra = {"numpy": np.__version__}
                print(json.dumps(report(workload, batch, "numpy", f"numpy {np.__version__}",
                                        p50, p99, args.runs, extra)), flush=True)
                continue
            sess, opts = ort_session(model_path(workload, batch, args.cache), peer, args.threads)
            if not args.no_check:
                if members is None:
                    members = weights(workload, batch)
                check(workload, batch, peer, sess.run(["y"], {"x": x})[0],
                      numpy_forward(workload, members)(x))
            p50, p99 = timeit(lambda: sess.run(["y"], {"x": x}), args.runs, args.warmup)
            extra = {
                "onnxruntime": ort.__version__,
                "graph_optimization_level": str(opts.graph_optimization_level).rsplit(".", 1)[-1],
                "intra_op_threads": 1 if peer == "1thread" else args.threads,
            }
            adapter = f"onnxruntime {ort.__version__} CPUExecutionProvider"
            print(json.dumps(report(workload, batch, f"ort-{peer}", adapter, p50, p99, args.runs, extra)),
                  flush=True)
            del sess


if __name__ == "__main__":
    sys.exit(main())
