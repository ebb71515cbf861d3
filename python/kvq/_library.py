"""Loads kvq's operator library (libkvq_torch.so) into torch.ops.kvq, once.

Search order: $KVQ_LIBRARY; the copy `pip install .` put inside this package (_kvq_torch*.so);
the repository's build tree (build/libkvq_torch.so next to python/), for use without installing.
"""
import glob
import os

import torch

_NAME = "libkvq_torch.so"
_here = os.path.dirname(os.path.abspath(__file__))


def load():
    env = os.environ.get("KVQ_LIBRARY")
    if env and not os.path.isfile(env):
        raise FileNotFoundError(f"KVQ_LIBRARY={env}: no such file")
    installed = sorted(glob.glob(os.path.join(_here, "_kvq_torch*.so")))  # by `pip install .`
    candidates = [env] if env else installed + [os.path.join(_here, "..", "..", "build", _NAME)]
    for path in candidates:
        if os.path.isfile(path):
            torch.ops.load_library(path)
            return os.path.abspath(path)
    raise FileNotFoundError(
        "kvq: cannot find libkvq_torch.so (looked at " + ", ".join(candidates) + "). Install the "
        "package with `python3 -m pip install --no-build-isolation .` from the repository, build "
        "it with `cmake --build build --target kvq_torch`, or set KVQ_LIBRARY.")


library_path = load()
ops = torch.ops.kvq
