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

# The platform: PyTorch from PyPI, pinned (docs/python.md, "Platform"). 2.11.0 is the release whose
# CUDA (13.0) is the toolkit's on these machines and the lent GPU machines' PyTorch; its LibTorch
# builds the library, the CLI, the tests and the op library of the Python package.
torch_version=2.11.0
# The lowest PyTorch the package supports (docs/python.md): the test job builds the op library
# against it too and runs the Python suites on it.
torch_lowest=2.7.1

# Debian packages the build, the tests and the default data need.
packages=(
  build-essential cmake ninja-build git
  python3 python3-venv               # the project's environment .venv (the wheel, pytest, NLTK)
  libgloo-dev                         # gloo's headers for c10d's Gloo group (the wheel has the code)
  libblas-dev liblapack-dev libopenblas0-openmp  # libblas.so: kvq's CPU kernels call OpenBLAS
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

# PyPI's Linux torch wheel is its CUDA build: its CMake config needs the CUDA toolkit (nvcc), which
# these machines carry; everything also runs without a GPU.
cuda_root=""
for candidate in "${CUDA_HOME:-}" /usr/local/cuda; do
  if [ -n "$candidate" ] && [ -x "$candidate/bin/nvcc" ]; then cuda_root=$candidate; break; fi
done
if [ -z "$cuda_root" ] && ! command -v nvcc >/dev/null; then
  echo "error: the CUDA toolkit (nvcc) is needed to build against PyPI's torch wheel (a CUDA" >&2
  echo "build); install it, or set CUDA_HOME to its folder" >&2
  exit 1
fi
[ -n "$cuda_root" ] && export PATH="$cuda_root/bin:$PATH"

# Disk: the two environments (~10 GiB), the build folders (~9 GiB) and the data. Say so first
# when there is clearly less, instead of failing half-way through a download.
free_gib=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "${free_gib:-0}" -lt 20 ]; then
  echo "warning: ${free_gib} GiB free on $(df -P . | awk 'NR == 2 { print $6 }'); a first set-up" \
       "and test run needs about 20 GiB (environments ~10, build folders ~9)" >&2
fi

# A Python environment DIR holding exactly the pip requirements given (from PyPI): made anew when
# it is missing or was made with other requirements (its file kvq-requirements says which).
ensure_venv() {
  local dir=$1; shift
  if [ "$(cat "$dir/kvq-requirements" 2>/dev/null)" != "$*" ]; then
    echo "== creating $dir: $* (PyPI)"
    rm -rf "$dir"
    python3 -m venv "$dir"
    # No pip cache: the two torch wheels and their CUDA libraries are ~9 GiB unpacked, and a cache
    # would hold their downloads a second time.
    "$dir/bin/python" -m pip install -q --no-cache-dir --upgrade pip
    "$dir/bin/python" -m pip install -q --no-cache-dir "$@"
    echo "$*" > "$dir/kvq-requirements"
  fi
}
# The folder LibTorch's CMake config is found in, for the torch of Python $1.
torch_cmake_of() { "$1" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)'; }

# setuptools >= 70.1 builds wheels itself (pip install . of the package, below); torch 2.11 wants
# setuptools < 82.
ensure_venv .venv "torch==$torch_version" pytest nltk "setuptools>=70.1,<82"
python="$PWD/.venv/bin/python"
torch_cmake=$(torch_cmake_of "$python")

jobs=$(nproc)
echo "== configuring and building against torch $torch_version (Release, $jobs jobs)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$torch_cmake" \
  -DKVQ_PYTHON="$python" ${cuda_root:+-DCUDAToolkit_ROOT="$cuda_root"}
cmake --build build -j"$jobs"

if [ "$job" = main ]; then
  echo "== main job: kvq compare (sort, quick preset)"
  ./build/kvq compare --task sort --preset quick --seeds 1 \
    --mechanisms softmax,kv,kv-pos,intention,softmax-intention --run-dir build/compare-sort-quick
else
  echo "== test suite"
  # One torch thread per test process; ctest runs one process per core.
  OMP_NUM_THREADS=1 ctest --test-dir build --output-on-failure -j"$jobs"
  # The package as users install it: pip into the environment, against its torch, then its
  # tests from outside the repository over the installed copy.
  echo "== pip install --no-build-isolation . and the package tests over the installed copy"
  "$python" -m pip install -q --no-build-isolation --no-deps .
  (cd /tmp && OMP_NUM_THREADS=1 "$python" -m pytest -q -p no:cacheprovider \
     "$OLDPWD/tests/python/test_package.py")
  "$python" -m pip uninstall -q -y kvq
  # The lower end of the supported range: the op library against torch $torch_lowest in its own
  # environment, and the Python suites on it.
  ensure_venv .venv-torch-lowest "torch==$torch_lowest" pytest
  lowest_python="$PWD/.venv-torch-lowest/bin/python"
  echo "== the op library against torch $torch_lowest and the Python suites on it"
  cmake -S . -B build-torch-lowest -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_OPS_ONLY=ON \
    -DCMAKE_PREFIX_PATH="$(torch_cmake_of "$lowest_python")" \
    ${cuda_root:+-DCUDAToolkit_ROOT="$cuda_root"}
  cmake --build build-torch-lowest -j"$jobs" --target kvq_torch
  KVQ_LIBRARY="$PWD/build-torch-lowest/libkvq_torch.so" PYTHONPATH="$PWD/python" \
    OMP_NUM_THREADS=1 "$lowest_python" -m pytest -q -p no:cacheprovider \
    tests/python/test_errors.py tests/python/test_decoding.py tests/python/test_package.py \
    tests/python/test_traceable_ops.py
  # The readers of every input format again, under AddressSanitizer and UBSan: only kvq_formats
  # and its replay driver are built (not the mechanisms, models and tasks), and every fuzz corpus
  # file (fuzz/corpus) runs through its target. The whole suite under the sanitizers takes too
  # long for CI; docs/testing.md (Sanitizers) has the command.
  echo "== sanitizer subset: the format readers on the fuzz corpora (ASan + UBSan)"
  cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_PREFIX_PATH="$torch_cmake" ${cuda_root:+-DCUDAToolkit_ROOT="$cuda_root"} \
    -DKVQ_SANITIZE=address,undefined -DKVQ_BUILD_TESTS=OFF -DKVQ_BUILD_BENCHMARKS=OFF
  cmake --build build-sanitize -j"$jobs" --target kvq_fuzz_replay_formats
  OMP_NUM_THREADS=1 ctest --test-dir build-sanitize --output-on-failure -j"$jobs" -L fuzz-formats
fi
