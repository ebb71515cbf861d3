#!/bin/bash
# Data-parallel `kvq train` end to end (issue 11), two workers with one thread each on 127.0.0.1:
#   1. --nproc 2 and the torchrun environment set by hand (and torchrun itself, when PYTHON
#      has torch) give the same metrics and test results;
#   2. kill -9 of a --nproc group after its first checkpoint, then --resume, ends with the
#      uninterrupted run's metrics and results;
#   3. a resume with another world size and a batch the workers cannot split are refused with
#      clear messages;
#   4. a worker killed mid-run makes the other exit non-zero, naming its rank and the cause,
#      well within the bound below; a worker whose store never comes up fails after its
#      --dist-timeout.
# Usage: train_distributed.sh path/to/kvq [PYTHON]   (PYTHON default: python3)
set -u
KVQ=$1
PY=${2:-python3}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$TMP"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$TMP"/*.err; do echo "--- $f:"; tail -5 "$f"; done; exit 1; }
export OMP_NUM_THREADS=1
free_port() {
  $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits up to $2 seconds for pid $1 (a child of this shell) to end; STATUS is its exit status,
# or "running".
wait_for() {
  local end=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
  if kill -0 "$1" 2>/dev/null; then STATUS=running; else wait "$1"; STATUS=$?; fi
}
# Waits up to 120 s for file $1.
wait_file() {
  local end=$((SECONDS + 120))
  while [ ! -e "$1" ] && [ $SECONDS -lt $end ]; do sleep 0.05; done
  [ -e "$1" ]
}
# Same metrics records (time fields aside) and test results in run directories $1 and $2.
same_runs() {
  $PY - "$1" "$2" <<'PYEOF'
import json, sys
def load(run):
    records = []
    for line in open(run + "/metrics.jsonl"):
        r = json.loads(line)
        records.append({k: v for k, v in r.items() if not k.endswith("_per_s") and k != "mfu"})
    results = json.load(open(run + "/results.json"))
    return records, results["test"], results["best_val"], results.get("world_size")
a, b = load(sys.argv[1]), load(sys.argv[2])
if a != b:
    print("differ:", sys.argv[1], sys.argv[2])
    for x, y in zip(a[0], b[0]):
        if x != y: print(" ", x, "\n ", y); break
    print(" ", a[1:], "\n ", b[1:])
    sys.exit(1)
PYEOF
}

SETS=(--task sort --seed 1 --set length=8 --set num_train=512 --set num_val=32 --set num_test=32
      --set d_model=16 --set ffn_dim=32 --set num_heads=2 --set num_layers=1 --set batch_size=32
      --set epochs=40 --set checkpoint_every=8 --set eval_every=16 --set eval_batch_size=16 --quiet)

# 1. --nproc 2 against the torchrun environment.
"$KVQ" train "${SETS[@]}" --run-dir "$TMP/a" --nproc 2 >"$TMP/a.out" 2>"$TMP/a.err" \
    || fail "--nproc 2 run failed"
grep -q '"world_size": 2' "$TMP/a/results.json" || fail "results.json does not record 2 workers"
PORT=$(free_port)
for r in 0 1; do
  RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
      "$KVQ" train "${SETS[@]}" --run-dir "$TMP/b" >"$TMP/b$r.out" 2>"$TMP/b$r.err" &
  PIDS+=($!)
done
for p in "${PIDS[@]}"; do wait "$p" || fail "torchrun-environment worker failed"; done
PIDS=()
same_runs "$TMP/a" "$TMP/b" || fail "--nproc 2 and the torchrun environment differ"
if $PY -c "import torch.distributed.run" 2>/dev/null; then
  # --redirects 1 --tee 1: torch 1.13's launcher could not parse its default "0" on Python 3.11
  # (docs/distributed.md's torchrun lines); 2.x takes them too.
  $PY -m torch.distributed.run --nproc_per_node 2 --master_port "$(free_port)" --no_python \
      --redirects 1 --tee 1 \
      "$KVQ" train "${SETS[@]}" --run-dir "$TMP/c" >"$TMP/c.out" 2>"$TMP/c.err" \
      || fail "torchrun launch failed"
  same_runs "$TMP/a" "$TMP/c" || fail "--nproc 2 and torchrun differ"
  echo "torchrun: same results as --nproc 2"
else
  echo "(no torch in $PY: the torchrun launch itself is not run)"
fi

# 2. kill -9 of the group after its first checkpoint, then --resume.
"$KVQ" train "${SETS[@]}" --run-dir "$TMP/d" --nproc 2 >"$TMP/d.out" 2>"$TMP/d.err" &
launcher=$!
PIDS+=($launcher)
wait_file "$TMP/d/checkpoint.pt" || fail "no checkpoint within 120 s"
kill -9 $launcher
wait $launcher 2>/dev/null
PIDS=()
sleep 1  # the workers die with the launcher (PR_SET_PDEATHSIG); let the kernel reap them
[ ! -e "$TMP/d/results.json" ] || fail "the run ended before the kill; make it longer"
"$KVQ" train --resume --run-dir "$TMP/d" --nproc 2 --quiet >"$TMP/d2.out" 2>"$TMP/d2.err" \
    || fail "--resume of the killed group failed"
same_runs "$TMP/a" "$TMP/d" || fail "killed + resumed differs from uninterrupted"

# 3. Refusals.
"$KVQ" train --resume --run-dir "$TMP/a" --quiet >"$TMP/e.out" 2>"$TMP/e.err"
[ $? -eq 1 ] || fail "a resume with 1 worker of a 2-worker run was not refused"
grep -q "was written by a group of 2 worker(s), and this run has 1; resume with 2" "$TMP/e.err" \
    || fail "no clear message for a resume with another world size"
"$KVQ" train "${SETS[@]}" --set batch_size=30 --run-dir "$TMP/f" --nproc 4 >"$TMP/f.out" 2>"$TMP/f.err"
[ $? -eq 1 ] || fail "batch_size 30 on 4 workers was not refused"
grep -q "batch_size 30 is not divisible by the 4 workers" "$TMP/f.err" \
    || fail "no clear message for a batch the workers cannot split"

# 4. Failures: a worker killed mid-run, then a store that never comes up.
for victim in 1 0; do
  PORT=$(free_port)
  rm -rf "$TMP/g"
  for r in 0 1; do
    RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT \
        "$KVQ" train "${SETS[@]}" --set epochs=1000 --run-dir "$TMP/g" --dist-timeout 30 \
        >"$TMP/g$r.out" 2>"$TMP/g$r.err" &
    PIDS+=($!)
  done
  wait_file "$TMP/g/checkpoint.pt" || fail "no checkpoint within 120 s"
  kill -9 "${PIDS[$victim]}"
  other=$((1 - victim))
  wait_for "${PIDS[$other]}" 120
  status=$STATUS
  wait "${PIDS[$victim]}" 2>/dev/null
  PIDS=()
  [ "$status" != running ] || fail "rank $other still runs 120 s after rank $victim was killed"
  [ "$status" -ne 0 ] || fail "rank $other exited 0 after rank $victim was killed"
  grep -q "distributed: rank $other of 2: .* failed: " "$TMP/g$other.err" \
      || fail "rank $other's error does not name its rank and the cause"
  echo "rank $victim killed: rank $other exited with status $status: $(grep -m1 distributed "$TMP/g$other.err")"
done
RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$(free_port) \
    "$KVQ" train "${SETS[@]}" --run-dir "$TMP/h" --dist-timeout 3 >"$TMP/h.out" 2>"$TMP/h.err" &
pid=$!
wait_for $pid 120
status=$STATUS
[ "$status" != running ] || { kill -9 $pid; fail "a worker without a store still waits after 120 s"; }
[ "$status" -eq 1 ] || fail "a worker without a store exited with $status"
grep -q "rank 1 of 2: cannot reach the store at 127.0.0.1:" "$TMP/h.err" \
    || fail "no clear message for an unreachable store"
echo "PASS"
