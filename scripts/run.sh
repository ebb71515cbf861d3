#!/usr/bin/env bash
# kvq's one entry point for set-up, build and the two jobs of the README quick start.
#   bash scripts/run.sh main   install what is missing, build (Release), run the main job
#   bash scripts/run.sh test   install what is missing, build (Release), run the whole test suite
# Works as root on a fresh Debian 12 machine; needs nothing installed beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."

job=${1:-}
case "$job" in
  main|test) ;;
  *) echo "usage: bash scripts/run.sh {main|test}" >&2; exit 2 ;;
esac

# Debian packages the build, the tests and the default data need.
packages=(
  build-essential cmake git
  libtorch-dev libopenblas0-openmp    # LibTorch 1.13; OpenBLAS so its matmuls run at full speed
  libgloo-dev                         # the c10d Gloo headers of data-parallel training
  libblas-dev                         # libblas.so to link: kvq's CPU kernels call the same BLAS
  python3-torch                       # the Python op tests (same LibTorch build)
  python3-nltk                        # python.bleu_nltk: corpus BLEU against NLTK
  python3-pytest python3-pip python3-venv python3-setuptools python3-wheel  # the kvq package
  libgtest-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev zlib1g-dev
  gnuplot-nox
  # Default data sets (tasks.md): Fashion-MNIST, the King James Bible, and the German gettext
  # catalogs of a pinned package list for the English->German corpus (src/data/parallel_text.cpp).
  dataset-fashion-mnist bible-kjv gettext
  apt bash binutils-common coreutils diffutils dpkg findutils gcc-12-locales gettext-base git
  gnupg-l10n grep iso-codes libapt-pkg6.0 libc-l10n libpq5 make postgresql-client-15 sed tar wget
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q "${missing[@]}"
fi

jobs=$(nproc)
echo "== configuring and building (Release, $jobs jobs)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"

if [ "$job" = main ]; then
  echo "== main job: kvq compare (sort, quick preset)"
  ./build/kvq compare --task sort --preset quick --seeds 1 \
    --mechanisms softmax,kv,kv-pos,intention,softmax-intention --run-dir build/compare-sort-quick
else
  echo "== test suite"
  # One torch thread per test process; ctest runs one process per core.
  OMP_NUM_THREADS=1 ctest --test-dir build --output-on-failure -j"$jobs"
  # The readers of every input format again, under AddressSanitizer and UBSan: only kvq_formats
  # and its replay driver are built (not the mechanisms, models and tasks), and every fuzz corpus
  # file (fuzz/corpus) runs through its target. The whole suite under the sanitizers takes too
  # long for CI; README.md (Tests) has the command.
  echo "== sanitizer subset: the format readers on the fuzz corpora (ASan + UBSan)"
  cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKVQ_SANITIZE=address,undefined -DKVQ_BUILD_TESTS=OFF -DKVQ_BUILD_BENCHMARKS=OFF
  cmake --build build-sanitize -j"$jobs" --target kvq_fuzz_replay_formats
  OMP_NUM_THREADS=1 ctest --test-dir build-sanitize --output-on-failure -j"$jobs" -L fuzz-formats
fi
