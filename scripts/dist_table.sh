#!/usr/bin/env bash
# The data-parallel table of docs/results/distributed.md: one worker with 2 threads against 2 workers with 1 thread
# each (kvq train --nproc 2, Gloo on 127.0.0.1), on the sort and char-lm quick runs. Run it on an
# otherwise idle machine; it prints a markdown table and leaves the runs in OUT_DIR.
#   bash scripts/dist_table.sh [path/to/kvq] [OUT_DIR]
# SORT_SETS and LM_SETS add arguments to the sort and char-lm runs, e.g. a short check of the
# script: SORT_SETS="--set epochs=1" LM_SETS="--set steps=200" bash scripts/dist_table.sh
set -euo pipefail
KVQ=${1:-build/kvq}
OUT=${2:-build/dist-table}
read -r -a SORT_EXTRA <<<"${SORT_SETS:-}"
read -r -a LM_EXTRA <<<"${LM_SETS:-}"
rm -rf "$OUT"
mkdir -p "$OUT"
unset RANK WORLD_SIZE OMP_NUM_THREADS

run() {  # name, kvq arguments...
  local name=$1
  shift
  local start=$SECONDS
  "$KVQ" "$@" --quiet --run-dir "$OUT/$name" >"$OUT/$name.out" 2>"$OUT/$name.err" || {
    echo "failed: $name (see $OUT/$name.err)" >&2
    tail -3 "$OUT/$name.err" >&2
    exit 1
  }
  echo $((SECONDS - start)) >"$OUT/$name.wall"
}

for task in sort char-lm; do
  if [ "$task" = sort ]; then extra=("${SORT_EXTRA[@]}"); else extra=("${LM_EXTRA[@]}"); fi
  echo "== $task: 1 worker x 2 threads" >&2
  run "$task-1x2" --threads 2 train --task "$task" --preset quick "${extra[@]}"
  echo "== $task: 2 workers x 1 thread" >&2
  run "$task-2x1" --threads 1 train --task "$task" --preset quick --nproc 2 "${extra[@]}"
done

/usr/bin/python3 - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
print("| task | layout | train s | in collectives s | items/s (mean of train records) | test |")
print("|---|---|---|---|---|---|")
for task, metric in (("sort", "token_acc"), ("char-lm", "loss")):
    for layout, label in (("1x2", "1 worker x 2 threads"), ("2x1", "2 workers x 1 thread")):
        run = f"{out}/{task}-{layout}"
        results = json.load(open(run + "/results.json"))
        rates = [r["tok_per_s"] for r in map(json.loads, open(run + "/metrics.jsonl"))
                 if r.get("split") == "train" and "tok_per_s" in r]
        comm = results.get("comm_seconds")
        print(f"| {task} | {label} | {results['train_seconds']:.1f} | "
              f"{'-' if comm is None else f'{comm:.1f}'} | {sum(rates) / len(rates):,.0f} | "
              f"{metric} {results['test'][metric]:.4f} |")
PYEOF
