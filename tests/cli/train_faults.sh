#!/bin/bash
# `kvq train` end to end (issue 13, items 3 and 4), on a tiny sort run:
#   1. a NaN loss injected at update 9 (--debug-nan-loss-at-step) with max_skipped_steps=0 stops
#      the run with exit status 3, a message naming the step and the loss, the checkpoint of
#      update 8 intact, and resume commands; the first of them (half the learning rate) finishes.
#   2. while another process holds the run directory's lock, --resume fails at once (status 1)
#      naming the directory as in use; once the lock is released, --resume works.
# Usage: train_faults.sh path/to/kvq
set -u
KVQ=$1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*"; echo "--- stderr:"; cat "$TMP/err"; exit 1; }

RUN=$TMP/run
SETS=(--set length=8 --set num_train=256 --set num_val=32 --set num_test=32 --set d_model=16
      --set ffn_dim=32 --set num_heads=2 --set num_layers=1 --set batch_size=32 --set epochs=2
      --set checkpoint_every=4 --set eval_batch_size=32 --set max_skipped_steps=0)

"$KVQ" --threads 1 train --task sort --mechanism intention --seed 1 "${SETS[@]}" --run-dir "$RUN" \
    --quiet --debug-nan-loss-at-step 9 >"$TMP/out" 2>"$TMP/err"
rc=$?
[ $rc -eq 3 ] || fail "exit status $rc, expected 3 (numerical fault)"
grep -q "numerical fault at step 9/16: non-finite loss (forward)" "$TMP/err" || fail "no step/loss"
grep -q "$RUN/checkpoint.pt (step 8) is intact" "$TMP/err" || fail "no checkpoint line"
[ ! -e "$RUN/results.json" ] || fail "results.json written by a stopped run"
echo "--- the stopped run says:"; cat "$TMP/err"

resume=$(grep -m1 -o "kvq train --resume --run-dir $RUN --set lr=[0-9.e-]*" "$TMP/err")
[ -n "$resume" ] || fail "no resume command with a smaller lr"

# Another writer holds the lock (this shell, on fd 9): --resume is refused at once.
exec 9>"$RUN/train.lock"
flock -n 9 || fail "could not take the lock for the test"
echo $$ >&9  # the holder's pid, as kvq writes it
"$KVQ" --threads 1 ${resume#kvq } --quiet >"$TMP/out" 2>"$TMP/err" 9>&-
rc=$?
[ $rc -eq 1 ] || fail "resume of a locked run: exit status $rc, expected 1"
grep -q "run directory $RUN is in use by another kvq process (pid $$" "$TMP/err" \
    || fail "no 'in use' message"
exec 9>&-

"$KVQ" --threads 1 ${resume#kvq } --quiet >"$TMP/out" 2>"$TMP/err"
rc=$?
[ $rc -eq 0 ] || fail "the suggested resume failed with status $rc"
[ -e "$RUN/results.json" ] || fail "no results.json after the resume"
grep -q "changed on resume: lr" "$TMP/out" || fail "the resume did not report the changed lr"
echo "PASS"
