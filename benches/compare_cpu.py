"""The CPU executor against ONNX Runtime, side by side on this machine: for every
workload and batch, `wgpu-ensemble bench --device cpu --json` and
benches/ort_baseline.py one after the other, in rounds (ours, ORT, ours, ORT), then a
markdown table of the p50 latencies and the ratio ORT / ours per round (>= 1.0: the
CPU executor is at least as fast).

    python3 benches/compare_cpu.py --python /tmp/ort-venv/bin/python \\
        [--bin target/release/wgpu-ensemble] [--workloads gemm,E1,E2] [--gemm 256,512,1024] \\
        [--batches 1,16,64,256,1024] [--e2-max-batch N] [--runs 200] [--heavy-runs 10] \\
        [--warmup 3] [--heavy-warmup 1] [--rounds 2] [--peer default] [--out DIR]

--python is an interpreter with onnx, onnxruntime and numpy (this script itself needs
only the standard library), e.g. a venv made by `python3 -m venv /tmp/ort-venv &&
/tmp/ort-venv/bin/pip install onnx onnxruntime numpy`. --bin defaults to
$WGPU_ENSEMBLE_BIN, else $CARGO_TARGET_DIR/release/wgpu-ensemble, else
target/release/wgpu-ensemble: build it with `cargo build --release --bin wgpu-ensemble`.

A cell whose run costs more than --heavy-gflop GFLOP (default 10: E2 from batch 64) is
timed --heavy-runs times (default 10) after --heavy-warmup warm-up runs (default 1)
instead of --runs (default 200) and --warmup; E2 at batch 1024 takes about a second
per run on two cores. 200 runs, not 30: on a shared machine the p50 of 30 runs of a
light cell (0.1 ms) took one burst of another tenant's load for the cell's level.
Both sides get the same runs and warm-up. The ONNX model of each workload is made once
and kept in ort_baseline.py's cache (E2's weights are 800 MB), and its output is
compared with numpy's once, in the first round.

With --out DIR: DIR/raw.jsonl (every JSON line of both sides, with "side" and "round"
added) and DIR/table.md (what is printed). Nothing else is written.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,16,64, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def workload_list(text):
    names = {"gemm": "gemm", "e1": "E1", "e2": "E2"}
    out = []
    for v in text.split(","):
        v = v.strip()
        if not v:
            continue
        if v.lower() not in names:
            raise argparse.ArgumentTypeError(f"unknown workload {v!r}: expected gemm, E1 or E2")
        out.append(names[v.lower()])
    return out


def gflop(workload, batch):
    widths, members = {
        "E1": ([784, 512, 512, 10], 4),
        "E2": ([1024, 4096, 4096, 1024], 8),
    }.get(workload, ([batch, batch], 1))
    return sum(2 * widths[i] * widths[i + 1] for i in range(len(widths) - 1)) * members * batch / 1e9


def default_bin():
    if os.environ.get("WGPU_ENSEMBLE_BIN"):
        return os.environ["WGPU_ENSEMBLE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(HERE, "..", "target")
    return os.path.join(target, "release", "wgpu-ensemble")


def run_json(cmd, timeout):
    """Runs `cmd`; its JSON lines, or an error in words."""
    started = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s: {' '.join(cmd)}"
    except OSError as e:
        return None, f"could not start {cmd[0]}: {e}"
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return None, f"exit {p.returncode}: {' '.join(cmd)}: {' / '.join(tail)}"
    rows = []
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if not rows:
        return None, f"no JSON line from {' '.join(cmd)}"
    for r in rows:
        r["wall_s"] = round(time.monotonic() - started, 2)
    return rows, None


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def main():
    ap = argparse.ArgumentParser(
        description="wgpu-ensemble's CPU executor against ONNX Runtime, interleaved rounds")
    ap.add_argument("--bin", default=default_bin(), help="the wgpu-ensemble binary")
    ap.add_argument("--python", default=sys.executable,
                    help="a Python with onnx, onnxruntime and numpy (default: this one)")
    ap.add_argument("--workloads", type=workload_list, default=["gemm", "E1", "E2"])
    ap.add_argument("--gemm", type=int_list, default=[256, 512, 1024])
    ap.add_argument("--batches", type=int_list, default=[1, 16, 64, 256, 1024])
    ap.add_argument("--e2-max-batch", type=int, default=0,
                    help="leave out E2 batches above this (0: none; E2 at 1024 is ~400 GFLOP a run)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--heavy-runs", type=int, default=10)
    ap.add_argument("--heavy-gflop", type=float, default=10.0)
    ap.add_argument("--heavy-warmup", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--peer", default="default", choices=("default", "all", "basic", "1thread"),
                    help="ONNX Runtime's configuration (see ort_baseline.py); default: its default session")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per call of either side")
    ap.add_argument("--out", help="a folder for raw.jsonl and table.md")
    args = ap.parse_args()
    if min(args.runs, args.heavy_runs, args.rounds) <= 0 or min(args.warmup, args.heavy_warmup) < 0:
        ap.error("--runs, --heavy-runs and --rounds must be positive, --warmup and "
                 "--heavy-warmup not negative")
    if not os.access(args.bin, os.X_OK):
        ap.error(f"no executable at {args.bin}: build it with `cargo build --release --bin "
                 "wgpu-ensemble` or pass --bin")

    probe = subprocess.run([args.python, "-c", "import onnx, onnxruntime, numpy"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        ap.error(f"{args.python} cannot import onnx, onnxruntime and numpy ({last}): pass "
                 "--python with a venv that has them (see the header of this script)")

    cells = []
    for w in args.workloads:
        if w == "gemm":
            cells += [("gemm", n) for n in args.gemm]
        else:
            cells += [(w, b) for b in args.batches
                      if not (w == "E2" and args.e2_max_batch and b > args.e2_max_batch)]

    raw = []
    results = {}  # (workload, batch) -> {"ours": [p50...], "ort": [p50...], "runs": n}
    errors = []
    ort_version = None
    for workload, batch in cells:
        heavy = gflop(workload, batch) > args.heavy_gflop
        runs = args.heavy_runs if heavy else args.runs
        warmup = args.heavy_warmup if heavy else args.warmup
        cell = results.setdefault((workload, batch), {"ours": [], "ort": [], "runs": runs})
        for rnd in range(1, args.rounds + 1):
            ours_cmd = [args.bin, "bench", "--device", "cpu", "--json", "--workload", workload,
                        "--batch", str(batch), "--runs", str(runs), "--warmup", str(warmup)]
            size = ["--gemm", str(batch)] if workload == "gemm" else ["--batches", str(batch)]
            ort_cmd = [args.python, os.path.join(HERE, "ort_baseline.py"), "--workloads", workload,
                       *size, "--peers", args.peer, "--runs", str(runs), "--warmup", str(warmup)]
            if rnd > 1:
                ort_cmd.append("--no-check")
            for side, cmd in (("ours", ours_cmd), ("ort", ort_cmd)):
                rows, err = run_json(cmd, args.timeout)
                p50 = None
                if err:
                    errors.append(f"{workload} batch {batch} round {rnd} {side}: {err}")
                    print(errors[-1], file=sys.stderr, flush=True)
                else:
                    for r in rows:
                        r.update(side=side, round=rnd)
                    raw.extend(rows)
                    p50 = rows[0].get("p50_ms")
                    if side == "ort":
                        ort_version = rows[0].get("onnxruntime", ort_version)
                cell[side].append(p50)
                print(f"{workload} batch {batch} round {rnd} {side}: p50 {fmt_ms(p50)} ms",
                      file=sys.stderr, flush=True)

    rounds = " / ".join(f"r{r}" for r in range(1, args.rounds + 1))
    lines = [
        f"wgpu-ensemble CPU (`bench --device cpu`) against ONNX Runtime {ort_version or '?'} "
        f"(CPU, `{args.peer}` session), {args.rounds} round(s), the sides alternating in each "
        f"cell (ours, ORT, ours, ORT, ...); warm-up runs {args.warmup} "
        f"({args.heavy_warmup} for the cells of more than {args.heavy_gflop:g} GFLOP); "
        f"ratio = ORT p50 / ours p50 (>= 1.0: at least as fast).",
        "",
        f"| workload | batch | runs | ours p50 ms ({rounds}) | ORT p50 ms ({rounds}) "
        f"| ORT / ours ({rounds}) | every round >= 1.0 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    met = 0
    for (workload, batch), cell in results.items():
        ratios = [o / s if (o is not None and s) else None for s, o in zip(cell["ours"], cell["ort"])]
        ok = all(r is not None and r >= 1.0 for r in ratios)
        met += ok
        name = f"gemm {batch}³" if workload == "gemm" else workload
        lines.append(
            f"| {name} | {batch} | {cell['runs']} | "
            + " / ".join(fmt_ms(v) for v in cell["ours"])
            + " | " + " / ".join(fmt_ms(v) for v in cell["ort"])
            + " | " + " / ".join("—" if r is None else f"{r:.2f}" for r in ratios)
            + f" | {'yes' if ok else 'no'} |"
        )
    lines.append("")
    lines.append(f"{met} of {len(results)} cells at ratio >= 1.0 in every round.")
    if errors:
        lines.append("")
        lines.append("Failed calls:")
        lines += [f"- {e}" for e in errors]
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "raw.jsonl"), "w") as f:
            for r in raw:
                f.write(json.dumps(r) + "\n")
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
