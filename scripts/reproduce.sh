#!/usr/bin/env bash
# Runs the experiments of one paper over its mechanisms and seeds with `kvq compare` and writes one
# Markdown table, docs/results/<paper>_<preset>.md: kvq's mean +- sample standard deviation over
# seeds beside the figure the paper (or its code's printout) reports, a note where the setups
# differ, the command, the commit and the date.
# Usage: scripts/reproduce.sh kv|intention [quick|paper] [seeds] [task ...]
#   kv:        reverse sort swap copy sub human-numbers char-lm translation fashion-mnist;
#              softmax, kv, kv-pos
#   intention: icl-linear icl-gp icl-sinusoid few-shot distill;
#              softmax, linear, intention, softmax-intention (preset "paper" = the tasks' `full`)
# seeds: default 1 at quick, 3 at paper. Runs go to runs/reproduce/<paper>_<preset>/<task>; an
# interrupted call resumes when run again. Sequential; set OMP_NUM_THREADS to share the machine, and
# KVQ to run another kvq binary than build/kvq (e.g. a copy that a rebuild cannot replace mid-run).
set -euo pipefail
cd "$(dirname "$0")/.."
paper="${1:?usage: scripts/reproduce.sh kv|intention [quick|paper] [seeds] [task ...]}"
preset="${2:-quick}"
case "$preset" in quick) seeds="${3:-1}" ;; paper) seeds="${3:-3}" ;;
  *) echo "reproduce: preset must be quick or paper, got '$preset'" >&2; exit 2 ;; esac
shift $(( $# < 3 ? $# : 3 ))
case "$paper" in
  kv) mechanisms=softmax,kv,kv-pos
      all=(reverse sort swap copy sub human-numbers char-lm translation fashion-mnist)
      task_preset=$preset ;;
  intention) mechanisms=softmax,linear,intention,softmax-intention
      all=(icl-linear icl-gp icl-sinusoid few-shot distill)
      task_preset=$([ "$preset" = paper ] && echo full || echo quick) ;;
  *) echo "reproduce: paper must be kv or intention, got '$paper'" >&2; exit 2 ;;
esac
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=("${all[@]}")
out="runs/reproduce/${paper}_${preset}"
for task in "${tasks[@]}"; do
  dir="$out/$task"
  resume=()
  if [ -d "$dir" ]; then resume=(--resume); fi
  echo "== $task ($task_preset, $seeds seed(s)) -> $dir"
  "${KVQ:-./build/kvq}" compare --task "$task" --preset "$task_preset" --seeds "$seeds" \
    --mechanisms "$mechanisms" --run-dir "$dir" --quiet "${resume[@]}"
done
mkdir -p docs/results
python3 scripts/results_table.py "$paper" "$preset" "$seeds" "$out" \
  "scripts/reproduce.sh $paper $preset $seeds ${tasks[*]}" > "docs/results/${paper}_${preset}.md"
echo "table: docs/results/${paper}_${preset}.md"
