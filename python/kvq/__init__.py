"""kvq: the Keys-Values-Queries family of attention mechanisms for PyTorch.

The least-squares Intention module (Garnelo & Czarnecki 2023) and the query-free Key-Value
Transformer attention (Borji 2023), next to softmax and linear attention, computed by kvq's C++
library through torch.ops.kvq:

    import kvq
    out = kvq.functional.intention(q, k, v, alpha, causal=True)
    attn = kvq.nn.MultiHeadKVQ(128, 4, mechanism="softmax-intention", batch_first=True)

Layout: q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv) -> (B, H, m, dv); key_padding_mask (B, n)
bool, True = ignore that key. The math of every mechanism: docs/mechanisms.md.
"""
from ._library import library_path, ops
from . import functional, nn

__all__ = ["functional", "nn", "ops", "library_path", "mechanisms"]


def mechanisms():
    """The registered mechanism names (kvq's registry, the single source of names)."""
    return list(ops.mechanism_names())
