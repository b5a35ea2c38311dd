"""Turns what benches/gpu/run.sh wrote into markdown: the speed targets next to
PyTorch from the same run, then every measurement.

    python3 benches/gpu/report.py FOLDER

Reads FOLDER/wgpu.jsonl (`wgpu-ensemble bench --json`, one object per line),
FOLDER/torch.jsonl (benches/torch_baseline.py) and FOLDER/torch_anchor.json
(shared/gpu/torch_anchor.py); any of them may be missing.
"""
import json
import os
import sys


def read_lines(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    return rows


def best(rows, key, pick=max, **match):
    """The best value of `key` over the rows whose fields equal `match` (a field
    given as a tuple matches any of its values)."""
    values = []
    for r in rows:
        ok = True
        for k, v in match.items():
            want = v if isinstance(v, tuple) else (v,)
            if r.get(k) not in want:
                ok = False
                break
        if ok and r.get(key) is not None:
            values.append(r[key])
    return pick(values) if values else None


def fmt(v, unit=""):
    return "—" if v is None else f"{v:.3g}{unit}"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    ours = read_lines(os.path.join(out, "wgpu.jsonl"))
    torch_rows = read_lines(os.path.join(out, "torch.jsonl"))
    anchor = {}
    anchor_path = os.path.join(out, "torch_anchor.json")
    if os.path.exists(anchor_path):
        with open(anchor_path) as f:
            anchor = json.load(f)
    sessions = [r for r in ours if r.get("mode") == "session"]

    def tflops(rows, key="gflops", **m):
        v = best(rows, key, **m)
        return None if v is None else v / 1e3

    adapter = next((r["adapter"][0] for r in sessions if r.get("adapter")), "?")
    torch_device = anchor.get("gpu") or next(
        (r["adapter"][0] for r in torch_rows if r.get("adapter")), "?"
    )
    torch_version = anchor.get("torch") or next(
        (r["torch"] for r in torch_rows if r.get("torch")), "?"
    )
    print(f"Device: {adapter}; PyTorch {torch_version} on {torch_device}\n")
    print("| what | PyTorch (same run) | wgpu-ensemble (best) | target | met |")
    print("| --- | --- | --- | --- | --- |")

    def row(what, theirs, mine, target, higher=True):
        met = "—" if mine is None else ("yes" if (mine >= target if higher else mine <= target) else "no")
        print(f"| {what} | {theirs} | {mine if isinstance(mine, str) else fmt(mine)} | {target} | {met} |")

    # The GEMM targets compare kernels: PyTorch multiplies tensors already on the
    # GPU, so the kernels' time alone (timestamp queries) is the peer of its figure;
    # a run's time also moves n² values each way over PCIe.
    f32 = tflops(sessions, "device_gflops", workload="gemm", batch=4096, precision="f32")
    row(
        "dense f32 4096³, kernels alone, TFLOP/s",
        fmt(anchor.get("gemm_fp32_strict_4096_tflops")),
        f32,
        25,
    )
    half = tflops(
        sessions, "device_gflops", workload="gemm", batch=4096, precision=("f16", "f16-coop")
    )
    row(
        "dense f16 / coop 4096³, kernels alone, TFLOP/s",
        fmt(anchor.get("gemm_fp32_tf32_4096_tflops")) + " (TF32)",
        half,
        100,
    )
    def peer(key, scale=1.0, **m):
        """PyTorch's figure: the anchor's, else torch_baseline.py's eager one (marked)."""
        if anchor.get(key) is not None:
            return fmt(anchor[key])
        v = best(torch_rows, m.pop("field"), pick=m.pop("pick"), mode="eager", **m)
        return "—" if v is None else fmt(v * scale) + " (baseline)"

    e1 = best(sessions, "p50_ms", pick=min, workload="E1", batch=1, precision="f32")
    row(
        "E1 batch 1, f32, ms (whole run)",
        peer("E1_b1_eager_ms", field="p50_ms", pick=min, workload="E1", batch=1),
        e1,
        0.30,
        higher=False,
    )
    e2 = tflops(sessions, workload="E2", batch=1024, precision="f32")
    row(
        "E2 batch 1024 f32, TFLOP/s (whole run)",
        peer("E2_b1024_eager_tflops", 1e-3, field="gflops", pick=max, workload="E2", batch=1024),
        e2,
        22,
    )
    e2h = tflops(sessions, workload="E2", batch=1024, precision=("f16", "f16-coop"))
    row("E2 batch 1024 f16 / coop, TFLOP/s (whole run)", "—", e2h, 44)
    print(
        "\nWhole-run figures for the GEMMs (upload, kernels, readback): f32 "
        + fmt(tflops(sessions, workload="gemm", batch=4096, precision="f32"))
        + ", f16 / coop "
        + fmt(tflops(sessions, workload="gemm", batch=4096, precision=("f16", "f16-coop")))
        + " TFLOP/s; E2 batch 1024 kernels alone: f32 "
        + fmt(tflops(sessions, "device_gflops", workload="E2", batch=1024, precision="f32"))
        + ", f16 / coop "
        + fmt(
            tflops(
                sessions, "device_gflops", workload="E2", batch=1024, precision=("f16", "f16-coop")
            )
        )
        + " TFLOP/s."
    )

    print(
        "\n| workload | batch | precision | tile | mode | p50 ms | p99 ms | GFLOP/s "
        "| kernels p50 ms | kernels GFLOP/s | PyTorch eager p50 ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in ours:
        theirs = best(
            torch_rows,
            "p50_ms",
            pick=min,
            workload=r.get("workload"),
            batch=r.get("batch"),
            mode="eager",
        )
        spin = f", spin {r['spin_us']} µs" if r.get("spin_us") else ""
        print(
            f"| {r.get('workload')} | {r.get('batch')} | {r.get('precision')} | {r.get('tile')} "
            f"| {r.get('mode')}{spin} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} "
            f"| {fmt(r.get('gflops'))} | {fmt(r.get('device_p50_ms'))} "
            f"| {fmt(r.get('device_gflops'))} | {fmt(theirs)} |"
        )


if __name__ == "__main__":
    main()
