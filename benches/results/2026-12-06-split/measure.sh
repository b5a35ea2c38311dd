#!/usr/bin/env bash
# usage: measure.sh OUTDIR WORKLOAD BATCH RUNS_GPU RUNS_CPU ROUND
# Times `bench --split all` over the four device pairs of these notes, one JSONL file per
# pair and round in OUTDIR, each command with the load average and its duration in
# OUTDIR/log.txt. RUNS_GPU timed runs where a part is an adapter, RUNS_CPU on cpu,cpu.
set -u
export XDG_RUNTIME_DIR=/tmp
B=${WGPU_ENSEMBLE_BIN:-target/release/wgpu-ensemble}
out=$1 w=$2 b=$3 rg=$4 rc=$5 round=$6
for d in "adapter:0/queue:0,adapter:0/queue:1" "adapter:0,adapter:1" "cpu,cpu" "adapter:0,cpu"; do
  runs=$rg; [ "$d" = cpu,cpu ] && runs=$rc
  tag=$(echo "$d" | tr ':/,' '-_+')
  f="$out/$w-b$b-$tag-r$round.jsonl"
  echo "== $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg) bench --workload $w --batch $b --split all --devices $d --runs $runs --warmup 1 --trusted-kernels --json" | tee -a "$out/log.txt"
  start=$(date +%s)
  timeout 900 "$B" bench --workload "$w" --batch "$b" --split all --devices "$d" --runs "$runs" --warmup 1 --trusted-kernels --json > "$f" 2>> "$out/log.txt" || echo "failed ($?): $d" | tee -a "$out/log.txt"
  echo "   took $(( $(date +%s) - start )) s; load after $(cut -d' ' -f1-3 /proc/loadavg); other builds: $(pgrep -fc 'cargo test|rustc')" | tee -a "$out/log.txt"
done
