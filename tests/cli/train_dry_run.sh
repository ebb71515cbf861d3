#!/bin/bash
# `kvq train --dry-run` makes the checks the run makes before it reads data (issue 39, item 7):
# char-lm's quick preset warms up for 100 updates, so --set steps=100 leaves the cosine schedule
# nothing to decay over. The dry run fails with the run's own message, the run fails with it
# before it creates the run directory, and steps=101 passes the dry run.
# Usage: train_dry_run.sh path/to/kvq
set -u
KVQ=$1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*"; echo "--- dry run:"; cat "$TMP/dry"; echo "--- run:"; cat "$TMP/run"; exit 1; }
touch "$TMP/dry" "$TMP/run"

ARGS=(train --task char-lm --preset quick --set steps=100 --set warmup_steps=100)
"$KVQ" "${ARGS[@]}" --dry-run >"$TMP/out" 2>"$TMP/dry"
[ $? -ne 0 ] || fail "the dry run accepted steps=100 with warmup_steps=100"
grep -q "total_steps (100) must be > warmup_steps (100)" "$TMP/dry" || fail "no schedule message"

"$KVQ" "${ARGS[@]}" --run-dir "$TMP/runs/cl" --quiet >"$TMP/out" 2>"$TMP/run"
[ $? -ne 0 ] || fail "the run accepted steps=100 with warmup_steps=100"
[ "$(grep "error" "$TMP/dry")" = "$(grep "error" "$TMP/run")" ] \
    || fail "the dry run and the run fail with different messages"
[ ! -e "$TMP/runs/cl" ] || fail "the refused run created its directory"

"$KVQ" train --task char-lm --preset quick --set steps=101 --set warmup_steps=100 --dry-run \
    >"$TMP/out" 2>"$TMP/dry" || fail "the dry run refused steps=101"
grep -q "steps *= 101" "$TMP/out" || fail "the dry run did not print the config"
echo "--- the dry run of steps=100 says:"; grep "error" "$TMP/run"
echo "PASS"
