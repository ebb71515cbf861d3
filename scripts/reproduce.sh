#!/usr/bin/env bash
# Runs the experiments of one paper over its mechanisms and seeds with `kvq compare` and writes one
# Markdown table, docs/results/<paper>_<preset>.md: kvq's mean +- sample standard deviation over
# seeds beside the figure the paper (or its code's printout) reports, a note where the setups
# differ, the command, the commit and the date.
# Usage: scripts/reproduce.sh kv|intention [quick|paper] [seeds] [--grid SPEC] [task ...]
#   kv:        reverse sort swap copy sub human-numbers char-lm translation fashion-mnist;
#              softmax, kv, kv-pos
#   intention: icl-linear icl-gp icl-sinusoid few-shot distill;
#              softmax, linear, intention, softmax-intention (preset "paper" = the tasks' `full`)
# seeds: default 1 at quick, 3 at paper.
# --grid SPEC runs every cell of a grid of config values over the preset instead of the preset
#   alone: SPEC is words key=v1,v2,... (the cells are their product), or "paper", the KV paper's
#   grid of its synthetic tasks: "length=64,128 d_model=64,256 num_layers=2,4 num_heads=2,4" (16
#   cells; far beyond a 2-core machine, pick cells). Each cell's runs go to <task>/grid/<cell>; the
#   table, docs/results/<paper>_<preset>_grid.md, gives the mean over the cells run (the paper's
#   printout is such a mean) and every cell.
# Runs go to runs/reproduce/<paper>_<preset>/<task>; an interrupted call resumes when run again.
# Sequential; set OMP_NUM_THREADS to share the machine, and KVQ to run another kvq binary than
# build/kvq (e.g. a copy that a rebuild cannot replace mid-run).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/reproduce.sh kv|intention [quick|paper] [seeds] [--grid SPEC] [task ...]"
paper="${1:?$usage}"
preset="${2:-quick}"
case "$preset" in quick) seeds="${3:-1}" ;; paper) seeds="${3:-3}" ;;
  *) echo "reproduce: preset must be quick or paper, got '$preset'" >&2; exit 2 ;; esac
case "$seeds" in ''|*[!0-9]*|0) echo "reproduce: seeds must be a positive number, got '$seeds'" >&2
  exit 2 ;; esac
shift $(( $# < 3 ? $# : 3 ))
grid=""
if [ "${1:-}" = --grid ]; then
  grid="${2:?reproduce: --grid needs a SPEC; $usage}"
  shift 2
  [ "$grid" = paper ] && grid="length=64,128 d_model=64,256 num_layers=2,4 num_heads=2,4"
fi
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

# The cells: one line each, "key=value,key=value"; one empty cell without --grid.
cells=("")
for word in $grid; do
  case "$word" in *=?*) ;; *) echo "reproduce: --grid words must be key=v1,v2,..., got '$word'" >&2
    exit 2 ;; esac
  key=${word%%=*}
  IFS=, read -r -a values <<< "${word#*=}"
  next=()
  for cell in "${cells[@]}"; do
    for value in "${values[@]}"; do next+=("${cell:+$cell,}$key=$value"); done
  done
  cells=("${next[@]}")
done

out="runs/reproduce/${paper}_${preset}"
for task in "${tasks[@]}"; do
  for cell in "${cells[@]}"; do
    dir="$out/$task${cell:+/grid/$cell}"
    sets=()
    IFS=, read -r -a pairs <<< "$cell"
    for pair in "${pairs[@]}"; do sets+=(--set "$pair"); done
    # The Key-Value paper's feed-forward width is 2 d at every width d: a cell that sets d_model
    # and not ffn_dim gets ffn_dim = 2 d_model (ffn_dim is a width of its own in every task).
    if [ "$paper" = kv ] && [[ ",$cell," == *,d_model=* ]] && [[ ",$cell," != *,ffn_dim=* ]]; then
      d=${cell#*d_model=}; d=${d%%,*}
      sets+=(--set "ffn_dim=$((2 * d))")
    fi
    resume=()
    if [ -d "$dir" ]; then resume=(--resume); fi
    echo "== $task ($task_preset${cell:+, $cell}, $seeds seed(s)) -> $dir"
    "${KVQ:-./build/kvq}" compare --task "$task" --preset "$task_preset" --seeds "$seeds" \
      --mechanisms "$mechanisms" --run-dir "$dir" --quiet "${sets[@]}" "${resume[@]}"
  done
done
mkdir -p docs/results
table="docs/results/${paper}_${preset}${grid:+_grid}.md"
python3 scripts/results_table.py "$paper" "$preset" "$seeds" "$out" \
  "scripts/reproduce.sh $paper $preset $seeds${grid:+ --grid \"$grid\"} ${tasks[*]}" \
  ${grid:+--grid} > "$table"
echo "table: $table"
