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

__all__ = ["functional", "nn", "ops", "library_path", "mechanisms", "empty_buffer_cache",
           "buffer_cache_bytes", "set_buffer_cache_limit"]


def mechanisms():
    """The registered mechanism names (kvq's registry, the single source of names)."""
    return list(ops.mechanism_names())


def empty_buffer_cache():
    """Returns the idle buffers of kvq's CPU kernels to the system.

    kvq's CPU kernels take their outputs, saved state and input gradients of 1 MiB or more from a
    cache of buffers that kvq tensors freed before, so a repeated call or training step reuses
    memory already mapped instead of paying page faults for fresh memory (as PyTorch's CUDA
    caching allocator does on a GPU; docs/python.md, "Memory").
    """
    ops.empty_buffer_cache()


def buffer_cache_bytes():
    """Bytes held now in idle buffers of kvq's CPU kernels."""
    return ops.buffer_cache_bytes()


def set_buffer_cache_limit(num_bytes):
    """The most bytes kept idle in the buffer cache (default 2 GiB, or KVQ_BUFFER_CACHE_MIB from
    the environment); 0 turns the cache off."""
    ops.set_buffer_cache_limit(int(num_bytes))
