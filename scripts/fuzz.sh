#!/usr/bin/env bash
# Runs one libFuzzer target of fuzz/ for a while, over a copy of its committed corpus.
#   bash scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...]
#   bash scripts/fuzz.sh --list          the targets
#   bash scripts/fuzz.sh --seeds         rewrite the seed files fuzz/corpus/*/seed-* (gcc build)
# Configures build-fuzz/ (clang, -DKVQ_BUILD_FUZZERS=ON, ASan + UBSan; $KVQ_FUZZ_BUILD_DIR
# overrides the directory), builds kvq_fuzz_TARGET and runs it under `nice` for SECONDS over
# build-fuzz/corpus/TARGET, a fresh copy of fuzz/corpus/TARGET, so new inputs never reach the
# committed corpus unless asked: KVQ_FUZZ_MERGE=1 merges the inputs that add coverage back into
# fuzz/corpus/TARGET (libFuzzer -merge=1) afterwards. A finding is written to build-fuzz/ as
# crash-*, leak-*, timeout-* or oom-* (rerun it: build-fuzz/fuzz/kvq_fuzz_TARGET FILE); add it to
# fuzz/corpus/TARGET/ (a name that says what it was) with the fix, so the replay test
# fuzz.replay.TARGET keeps checking it. Extra arguments go to libFuzzer (e.g. -max_len=8192).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=$(sed -n 's/^set(KVQ_FUZZ_\(FORMAT\|LIBRARY\)_TARGETS \(.*\))$/\2/p' fuzz/CMakeLists.txt | tr '\n' ' ')

if [ "${1:-}" = "--list" ]; then
  echo $targets
  exit 0
fi
if [ "${1:-}" = "--seeds" ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  nice cmake --build build -j"$(nproc)" --target kvq_fuzz_seeds
  ./build/fuzz/kvq_fuzz_seeds fuzz/corpus
  exit 0
fi
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/fuzz.sh TARGET SECONDS [libFuzzer flags...] | --list | --seeds" >&2
  echo "targets: $targets" >&2
  exit 2
fi
target=$1
seconds=$2
shift 2
case " $targets " in
  *" $target "*) ;;
  *) echo "scripts/fuzz.sh: unknown target '$target'; targets: $targets" >&2; exit 2 ;;
esac
case "$seconds" in
  ''|*[!0-9]*) echo "scripts/fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac
command -v clang++ >/dev/null || {
  echo "scripts/fuzz.sh: clang++ not found (apt-get install clang libclang-rt-dev)" >&2; exit 2; }

dir=${KVQ_FUZZ_BUILD_DIR:-build-fuzz}
cmake -S . -B "$dir" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVQ_BUILD_FUZZERS=ON -DKVQ_SANITIZE=address,undefined -DKVQ_BUILD_TESTS=OFF \
  -DKVQ_BUILD_BENCHMARKS=OFF >/dev/null
nice cmake --build "$dir" -j"$(nproc)" --target "kvq_fuzz_$target"

corpus="$dir/corpus/$target"
rm -rf "$corpus"
mkdir -p "$corpus"
cp fuzz/corpus/"$target"/* "$corpus"/
# Torch's own allocations are not leaks kvq could fix, and its thread pools outlive the inputs.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export OMP_NUM_THREADS=1
cd "$dir"
nice ./fuzz/kvq_fuzz_"$target" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 \
  -print_final_stats=1 "$@" "corpus/$target"
if [ "${KVQ_FUZZ_MERGE:-0}" = 1 ]; then
  ./fuzz/kvq_fuzz_"$target" -merge=1 "../fuzz/corpus/$target" "corpus/$target"
fi
