"""The table of NOTES.md from the raw outputs: one row per workload, batch, devices and
variant, the rounds (the files' -rN suffixes) side by side, separated by " / ".

    python3 table.py FOLDER
"""
import collections
import glob
import json
import os
import sys

ORDER = ["whole", "layers-mb1", "layers-mb2", "layers-mb4", "layers-mb8", "columns"]


def main():
    rows = collections.OrderedDict()
    for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.jsonl"))):
        rnd = path.rsplit("-r", 1)[1].split(".")[0]
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                key = (r["workload"], r["batch"], ",".join(r["devices"]), r["variant"])
                rows.setdefault(key, {})[rnd] = r
    print("| workload, batch | devices | variant | p50 ms (rounds) | p90 ms (rounds) "
          "| rows/s (rounds) | speedup (rounds) | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for k in sorted(rows, key=lambda k: (k[0], k[1], k[2], ORDER.index(k[3]))):
        by = rows[k]
        rounds = sorted(by)

        def col(field):
            return " / ".join(f"{by[n][field]:.3g}" for n in rounds)

        diff = max(by[n]["max_abs_diff"] for n in rounds)
        print(f"| {k[0]}, {k[1]} | {k[2]} | {k[3]} | {col('p50_ms')} | {col('p90_ms')} "
              f"| {col('throughput_rows_per_s')} | {col('speedup')} | {diff:.1e} |")


if __name__ == "__main__":
    main()
