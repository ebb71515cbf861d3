#!/usr/bin/env bash
# Runs `kvq compare --preset quick` on every task with the mechanisms its paper compares, one
# comparison directory per task under ${1:-runs/quick}. Sequential; resumes an interrupted run.
# Usage: scripts/compare_quick.sh [out-dir] [task ...]   (default: every task below)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/quick}"
shift || true
kv="softmax,kv,kv-pos,intention,softmax-intention"
intention="softmax,linear,intention,softmax-intention"
declare -A mechanisms=(
  [reverse]=$kv [sort]=$kv [copy]=$kv [sub]=$kv [swap]=$kv
  [fashion-mnist]=$kv [char-lm]=$kv [human-numbers]=$kv [translation]=$kv
  [icl-linear]=$intention [icl-gp]=$intention [icl-sinusoid]=$intention
  [few-shot]=$intention [distill]=$intention
)
order=(icl-linear icl-gp icl-sinusoid few-shot distill reverse sort copy sub swap human-numbers
       char-lm fashion-mnist translation)
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=("${order[@]}")
for task in "${tasks[@]}"; do
  [ -n "${mechanisms[$task]:-}" ] || { echo "compare_quick: unknown task '$task'" >&2; exit 2; }
  dir="$out/$task"
  resume=()
  [ -d "$dir" ] && resume=(--resume)
  echo "== $task -> $dir"
  ./build/kvq compare --task "$task" --preset quick --seeds 1 --mechanisms "${mechanisms[$task]}" \
    --run-dir "$dir" --quiet "${resume[@]}"
done
