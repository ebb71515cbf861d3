#!/usr/bin/env bash
# No kvq binary calls the libstdc++ copies that PyPI's libtorch.so exports (docs/python.md,
# "Two crashes seen with PyPI's LibTorch"): with the dynamic linker's binding log, the CLI and the
# op library loaded from Python must bind every std:: symbol they use outside libtorch.so.
#   libstdcxx_bindings.sh KVQ_CLI PYTHON LIBKVQ_TORCH
set -euo pipefail
cli=$1 python=$2 ops=$3
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

LD_DEBUG=bindings LD_DEBUG_OUTPUT="$log/cli" "$cli" --help > /dev/null
LD_DEBUG=bindings LD_DEBUG_OUTPUT="$log/python" "$python" -c \
  "import torch; torch.ops.load_library('$ops'); torch.ops.kvq.mechanism_names()"

checked=0
for kind in cli python; do
  # Lines: binding file A [0] to B [0]: normal symbol `NAME' [VERSION]
  from=$([ "$kind" = cli ] && basename "$cli" || basename "$ops")
  lines=$(cat "$log/$kind".* | grep -F "binding file" | grep -F "/$from " || true)
  [ -n "$lines" ] || { echo "FAIL: no bindings logged for $from" >&2; exit 1; }
  checked=$((checked + $(wc -l <<< "$lines")))
  bad=$(grep -E "to [^ ]*/libtorch\.so \[[0-9]+\]: normal symbol \`_ZN?K?St" <<< "$lines" || true)
  if [ -n "$bad" ]; then
    echo "FAIL: $from binds libstdc++ symbols to libtorch.so's copies:" >&2
    echo "$bad" >&2
    exit 1
  fi
done
echo "ok: $checked bindings of $(basename "$cli") and $(basename "$ops"), none to libtorch.so's std:: copies"
