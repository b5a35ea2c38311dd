"""Turns what benches/gpu/run.sh wrote into markdown: the speed targets next to
PyTorch from the same run, the half-precision figures next to PyTorch's f16 and bf16,
the server's figures, one member split across devices, then every measurement.

    python3 benches/gpu/report.py FOLDER

Reads FOLDER/wgpu.jsonl (`wgpu-ensemble bench --json`, one object per line),
FOLDER/torch.jsonl (benches/torch_baseline.py), FOLDER/torch_anchor.json
(shared/gpu/torch_anchor.py) and FOLDER/loadtest.md (examples/loadtest.rs's table);
any of them may be missing.
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


def is_resident(r):
    """A bench line whose input and output stayed on the device."""
    return r.get("resident") is True or "resident" in str(r.get("mode", ""))


def torch_precision(r):
    """A torch_baseline.py line's precision (lines from before --precision are f32)."""
    return r.get("precision") or "f32"


def read_loadtest(path):
    """The load generator's table rows as dicts, and its title line."""
    rows, title = [], None
    if not os.path.exists(path):
        return rows, title
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("loadtest:"):
                title = title or line
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) != 9 or not cells[0].isdigit():
                continue
            try:
                rows.append({
                    "round": int(cells[0]), "what": cells[1], "clients": int(cells[2]),
                    "requests": int(cells[3]), "failed": int(cells[4]),
                    "per_s": float(cells[5]), "p50": float(cells[6]), "p99": float(cells[7]),
                    "rows_per_run": cells[8],
                })
            except ValueError:
                pass
    return rows, title


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    ours = read_lines(os.path.join(out, "wgpu.jsonl"))
    torch_rows = read_lines(os.path.join(out, "torch.jsonl"))
    for r in torch_rows:
        r["precision"] = torch_precision(r)
    anchor = {}
    anchor_path = os.path.join(out, "torch_anchor.json")
    if os.path.exists(anchor_path):
        with open(anchor_path) as f:
            anchor = json.load(f)
    # Runs that uploaded the input and read the output back (resident runs apart).
    sessions = [r for r in ours if r.get("mode") == "session" and not is_resident(r)]
    resident = [r for r in ours if is_resident(r)]
    pipelines = [r for r in ours if r.get("mode") == "pipeline"]

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

    def row(what, theirs, mine, target, higher=True, shown=None):
        """`target` a number, or None where it is PyTorch's figure and that is missing."""
        if mine is None or target is None:
            met = "—"
        else:
            met = "yes" if (mine >= target if higher else mine <= target) else "no"
        label = shown if shown is not None else fmt(target)
        print(f"| {what} | {theirs} | {mine if isinstance(mine, str) else fmt(mine)} | {label} | {met} |")

    def torch_best(field, pick, mode="eager", **m):
        return best(torch_rows, field, pick=pick, mode=mode, **m)

    # The GEMM targets compare kernels: PyTorch multiplies tensors already on the
    # GPU, so the kernels' time alone (timestamp queries) is the peer of its figure;
    # a run's time also moves n² values each way over PCIe.
    f32 = tflops(sessions, "device_gflops", workload="gemm", batch=4096, precision="f32")
    f32_peer = anchor.get("gemm_fp32_strict_4096_tflops")
    if f32_peer is None:
        v = torch_best("gflops", max, mode="resident", workload="gemm", batch=4096, precision="f32")
        f32_peer = None if v is None else v / 1e3
    row("dense f32 4096³, kernels alone, TFLOP/s", fmt(f32_peer), f32, 45)
    half = tflops(
        sessions, "device_gflops", workload="gemm", batch=4096, precision=("f16", "f16-coop")
    )
    f16_peer = torch_best("gflops", max, mode="resident", workload="gemm", batch=4096, precision="f16")
    row(
        "dense f16 / coop 4096³, kernels alone, TFLOP/s",
        fmt(None if f16_peer is None else f16_peer / 1e3) + " (f16)",
        half,
        200,
    )

    def peer(key, scale=1.0, **m):
        """PyTorch's figure: the anchor's, else torch_baseline.py's eager f32 one."""
        if anchor.get(key) is not None:
            return anchor[key]
        v = torch_best(m.pop("field"), m.pop("pick"), precision="f32", **m)
        return None if v is None else v * scale

    e1 = best(sessions, "p50_ms", pick=min, workload="E1", batch=1, precision="f32")
    row(
        "E1 batch 1, f32, ms (whole run)",
        fmt(peer("E1_b1_eager_ms", field="p50_ms", pick=min, workload="E1", batch=1)),
        e1,
        0.30,
        higher=False,
    )
    e2 = tflops(sessions, workload="E2", batch=1024, precision="f32")
    e2_peer = peer("E2_b1024_eager_tflops", 1e-3, field="gflops", pick=max, workload="E2", batch=1024)
    row(
        "E2 batch 1024 f32, TFLOP/s (whole run)",
        fmt(e2_peer),
        e2,
        e2_peer,
        shown="PyTorch eager" + ("" if e2_peer is None else f" ({fmt(e2_peer)})"),
    )
    e2h = tflops(sessions, workload="E2", batch=1024, precision=("f16", "f16-coop"))
    e2h_peer = torch_best("gflops", max, workload="E2", batch=1024, precision="f16")
    row(
        "E2 batch 1024 f16 / coop, TFLOP/s (whole run)",
        fmt(None if e2h_peer is None else e2h_peer / 1e3) + " (f16)",
        e2h,
        44,
    )
    # A Pipeline on one device against one Session::run there (its p50), two ways:
    # the stream's latency from send to result (its p50), and its cost per input (the
    # stream's time over its inputs, what throughput measures).
    for batch in (1, 64):
        session_ms = best(sessions, "p50_ms", pick=min, workload="E1", batch=batch, precision="f32")
        p50 = best(pipelines, "p50_ms", pick=min, workload="E1", batch=batch)
        rate = best(pipelines, "throughput_rows_per_s", workload="E1", batch=batch)
        per_input = None if not rate else batch / rate * 1e3
        for what, ms in (("p50 latency", p50), ("time per input of the stream", per_input)):
            ratio = None if ms is None or not session_ms else ms / session_ms
            row(
                f"Pipeline E1 batch {batch}, {what} / Session::run p50",
                "—",
                ratio,
                1.5,
                higher=False,
                shown=f"≤ 1.5 ({fmt(ms)} / {fmt(session_ms)} ms)",
            )
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

    half_precision(sessions, torch_rows)
    resident_table(resident)
    split_table([r for r in ours if r.get("mode") == "split"])
    serving(*read_loadtest(os.path.join(out, "loadtest.md")))

    print(
        "\n## Every bench line\n\n"
        "| workload | batch | precision | tile | mode | p50 ms | p99 ms | GFLOP/s "
        "| kernels p50 ms | kernels GFLOP/s | PyTorch eager p50 ms (same precision) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in ours:
        if r.get("mode") == "split":
            continue
        theirs = best(
            torch_rows,
            "p50_ms",
            pick=min,
            workload=r.get("workload"),
            batch=r.get("batch"),
            mode="eager",
            precision="f32" if r.get("precision", "f32") == "f32" else "f16",
        )
        spin = f", spin {r['spin_us']} µs" if r.get("spin_us") else ""
        mode = r.get("mode")
        if is_resident(r) and "resident" not in str(mode):
            mode = f"{mode}, resident"
        if mode == "uncertainty":
            # `bench --uncertainty`: the plain mean, then every uncertainty output.
            mode = f"uncertainty: {r.get('variant')}, {fmt(r.get('ratio_to_mean'))}x the mean"
        print(
            f"| {r.get('workload')} | {r.get('batch')} | {r.get('precision')} | {r.get('tile')} "
            f"| {mode}{spin} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} "
            f"| {fmt(r.get('gflops'))} | {fmt(r.get('device_p50_ms'))} "
            f"| {fmt(r.get('device_gflops'))} | {fmt(theirs)} |"
        )


def half_precision(sessions, torch_rows):
    """f16-coop (and f16) next to PyTorch's f16 and bf16, autocast and cast, TFLOP/s."""
    if not any(r["precision"] in ("f16", "bf16") for r in torch_rows) and not any(
        r.get("precision") in ("f16", "f16-coop") for r in sessions
    ):
        return
    print(
        "\n## Half precision, TFLOP/s (PyTorch: `autocast` casts the f32 weights at every"
        " call, `cast` holds them in the type; both accumulate in f32)\n"
    )
    print(
        "| what | PyTorch f16 autocast | PyTorch f16 cast | PyTorch bf16 autocast "
        "| PyTorch bf16 cast | wgpu-ensemble f16-coop | wgpu-ensemble f16 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def theirs(precision, autocast, modes, **m):
        v = best(torch_rows, "gflops", pick=max, precision=precision, autocast=autocast,
                 mode=modes, **m)
        return fmt(None if v is None else v / 1e3)

    def mine(precision, key, **m):
        v = best(sessions, key, pick=max, precision=precision, **m)
        return fmt(None if v is None else v / 1e3)

    lines = (
        ("gemm 4096³, kernels alone (PyTorch: result left on the GPU)", "resident",
         "device_gflops", dict(workload="gemm", batch=4096)),
        ("gemm 4096³, whole run (PyTorch: result copied to the host)", "eager",
         "gflops", dict(workload="gemm", batch=4096)),
        ("E2 batch 1024, whole run (PyTorch: best of eager, vmap)", ("eager", "vmap"),
         "gflops", dict(workload="E2", batch=1024)),
        ("E2 batch 1024, kernels alone (wgpu-ensemble)", (), "device_gflops",
         dict(workload="E2", batch=1024)),
    )
    for what, modes, key, m in lines:
        cells = [theirs(p, a, modes, **m) for p in ("f16", "bf16") for a in (True, False)]
        print(f"| {what} | " + " | ".join(cells)
              + f" | {mine('f16-coop', key, **m)} | {mine('f16', key, **m)} |")


def resident_table(resident):
    """Runs with input and output on the device: the whole run next to its kernels."""
    if not resident:
        return
    print("\n## Resident input and output (no upload, no readback)\n")
    print("| workload | batch | precision | whole run p50 ms | kernels p50 ms | whole / kernels "
          "| whole-run GFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in resident:
        whole, kernels = r.get("p50_ms"), r.get("device_p50_ms")
        ratio = whole / kernels if whole and kernels else None
        print(f"| {r.get('workload')} | {r.get('batch')} | {r.get('precision')} | {fmt(whole)} "
              f"| {fmt(kernels)} | {fmt(ratio)} | {fmt(r.get('gflops'))} |")


def split_table(rows):
    """`bench --split`: one member whole on one device against split across devices,
    the variants of one run interleaved."""
    if not rows:
        return
    print("\n## One member across devices (`bench --split`; speedup = whole p50 / p50)\n")
    print("| workload | batch | precision | devices | variant | p50 ms | p90 ms | rows/s "
          "| speedup | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        devices = ", ".join(r.get("devices") or [])
        diff = r.get("max_abs_diff")
        print(f"| {r.get('workload')} | {r.get('batch')} | {r.get('precision')} | {devices} "
              f"| {r.get('variant')} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p90_ms'))} "
              f"| {fmt(r.get('throughput_rows_per_s'))} | {fmt(r.get('speedup'))} "
              f"| {'—' if diff is None else f'{diff:.1e}'} |")


def serving(rows, title):
    """The load generator's cells, the rounds side by side."""
    if not rows:
        return
    print("\n## The server (examples/loadtest.rs; its first line names the device)\n")
    if title:
        print(title + "\n")
    rounds = sorted({r["round"] for r in rows})
    names = " / ".join(f"r{n}" for n in rounds)
    print(f"| what | clients | requests/s ({names}) | p50 ms ({names}) | p99 ms ({names}) "
          f"| failed | rows/run ({names}) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    cells = {}
    for r in rows:
        cells.setdefault((r["what"], r["clients"]), {})[r["round"]] = r
    for (what, clients), by_round in cells.items():
        def col(key, f):
            return " / ".join(f(by_round[n][key]) if n in by_round else "—" for n in rounds)

        failed = sum(r["failed"] for r in by_round.values())
        print(f"| {what} | {clients} | {col('per_s', lambda v: f'{v:.0f}')} "
              f"| {col('p50', lambda v: f'{v:.3g}')} | {col('p99', lambda v: f'{v:.3g}')} "
              f"| {failed} | {col('rows_per_run', str)} |")


if __name__ == "__main__":
    main()
