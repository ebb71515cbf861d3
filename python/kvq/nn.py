"""kvq.nn.MultiHeadKVQ: multi-head attention over any KVQ mechanism, with the conventions of
torch.nn.MultiheadAttention and the parameters (names and shapes) of the C++ kvq::nn::MultiHeadKVQ,
so state dicts move between the two (kvq::nn::save_state_dict / torch.load, torch.save /
kvq::nn::read_state_dict)."""
import inspect
import math

import torch
from torch import nn
from torch.nn import functional as F

from ._library import ops

__all__ = ["MultiHeadKVQ", "alpha_from_raw", "alpha_raw_for"]

_PROJECTIONS = ("qkv", "kv", "kv-pos")


def alpha_from_raw(raw, alpha_floor):
    """alpha = softplus(raw) + alpha_floor: a head's ridge parameter from the raw parameter the
    module learns, positive by construction (kvq::nn::alpha_from_raw)."""
    return F.softplus(raw) + alpha_floor


def alpha_raw_for(alpha, alpha_floor):
    """The raw parameter whose alpha_from_raw is alpha: softplus^{-1}(alpha - alpha_floor), taken
    as the excess itself above 20, where torch's softplus is the identity (kvq::nn::alpha_raw_for;
    tests/python/test_package.py checks that the two agree)."""
    excess = alpha - alpha_floor
    return excess if excess > 20.0 else excess + math.log(-math.expm1(-excess))


def _mechanisms_where(field):
    """The registered mechanisms whose kvq::mechanism_info flag at index field is set."""
    return ", ".join(m for m in ops.mechanism_names() if ops.mechanism_info(m)[field])


def _refuse_unused_options(mechanism, projection, uses_alpha, chunked, **options):
    """ValueError for an option away from its default that this layer would ignore, as the C++
    module's check_attention_options: the ridge options without a ridge alpha, chunk_size without
    a chunk-parallel causal form, the kv-pos options without the kv-pos projection."""
    defaults = inspect.signature(MultiHeadKVQ.__init__).parameters
    for name, value in options.items():
        if value == defaults[name].default:
            continue
        if name.startswith("pos_"):
            if projection != "kv-pos":
                raise ValueError(f"MultiHeadKVQ: {name} applies only to the kv-pos projection, "
                                 f"and mechanism '{mechanism}' runs with projection "
                                 f"'{projection}'; leave it unset")
        elif name == "chunk_size":
            if not chunked:
                raise ValueError(f"MultiHeadKVQ: chunk_size applies only to the chunk-parallel "
                                 f"causal mechanisms ({_mechanisms_where(4)}), not to mechanism "
                                 f"'{mechanism}'; leave it unset")
        elif not uses_alpha:
            raise ValueError(f"MultiHeadKVQ: {name} applies only to the mechanisms with a ridge "
                             f"alpha ({_mechanisms_where(1)}), and mechanism '{mechanism}' has "
                             f"none; leave it unset")


class MultiHeadKVQ(nn.Module):
    """Multi-head attention with a KVQ mechanism inside:

        q = x_q W_q (projection 'qkv') or x_q W_k ('kv', 'kv-pos': tied); k = x_kv W_k; v = x_kv W_v
        heads = mechanism(q, k, v, alpha, causal, key_padding_mask); out = concat(heads) W_o

    Args:
        embed_dim: model width E, a multiple of num_heads.
        num_heads: heads H; head width E / H.
        mechanism: a registered name (kvq.mechanisms()): 'softmax', 'kv', 'kv-pos', 'linear',
            'linear-identity', 'intention', 'softmax-intention', 'kernel-intention'.
        projection: 'qkv', 'kv' or 'kv-pos'; None = the mechanism's own.
        dropout: dropout on the attention weights (mechanisms with a softmax), in training.
        bias: biases in the input and output projections.
        batch_first: inputs (B, T, E) when True, (T, B, E) when False (as nn.MultiheadAttention).
        alpha_init, alpha_floor, learn_alpha: the per-head ridge parameter
            alpha = softplus(alpha_raw) + alpha_floor, learned unless learn_alpha is False.
        pos_channels: channels p of kv-pos's positional table.
        pos_map: kv-pos's map Linear(p, 1): 'head' = one per head (pos_weight (H, p), pos_bias
            (H)), 'layer' = one shared by the heads (pos_weight (p), pos_bias ()), as the
            paper's code.
        chunk_size: chunk of the causal chunk-parallel algorithms; 0 = the head width.
        scale: score scale; None = 1 / sqrt(head width).

    As the C++ module, it raises ValueError for an option set away from its default that the
    layer would ignore: alpha_init, alpha_floor or learn_alpha without a ridge alpha, chunk_size
    without a chunk-parallel causal form, pos_channels or pos_map without the kv-pos projection.
    """

    def __init__(self, embed_dim, num_heads, mechanism="softmax", projection=None, dropout=0.0,
                 bias=True, batch_first=False, alpha_init=1.0, alpha_floor=1e-4,
                 learn_alpha=True, pos_channels=10, pos_map="head", chunk_size=0, scale=None,
                 device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"MultiHeadKVQ: embed_dim must be a positive multiple of num_heads, "
                             f"got embed_dim={embed_dim}, num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiHeadKVQ: dropout must be in [0, 1), got {dropout}")
        default_projection, uses_alpha, has_softmax, _, chunked = ops.mechanism_info(mechanism)
        projection = default_projection if projection is None else projection
        if projection not in _PROJECTIONS:
            raise ValueError(f"MultiHeadKVQ: projection must be one of {', '.join(_PROJECTIONS)}"
                             f" (or None), got '{projection}'")
        if projection == "kv-pos" and not has_softmax:
            raise ValueError(f"MultiHeadKVQ: projection 'kv-pos' adds a term to softmax scores, "
                             f"and mechanism '{mechanism}' has none")
        _refuse_unused_options(mechanism, projection, uses_alpha, chunked, alpha_init=alpha_init,
                               alpha_floor=alpha_floor, learn_alpha=learn_alpha,
                               chunk_size=chunk_size, pos_channels=pos_channels, pos_map=pos_map)
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.mechanism, self.projection = mechanism, projection
        self.dropout, self.batch_first = dropout, batch_first
        self.alpha_floor, self.chunk_size, self.scale = alpha_floor, chunk_size, scale
        self._uses_alpha, self._has_softmax = uses_alpha, has_softmax
        factory = {"device": device, "dtype": dtype}

        def linear():
            return nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

        self.q_proj = linear() if projection == "qkv" else None
        self.k_proj, self.v_proj, self.out_proj = linear(), linear(), linear()
        # As torch.nn.MultiheadAttention (and the C++ module): Xavier-uniform input projections,
        # zero biases.
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            if proj is not None:
                nn.init.xavier_uniform_(proj.weight)
                if bias:
                    nn.init.zeros_(proj.bias)
        if bias:
            nn.init.zeros_(self.out_proj.bias)
        if uses_alpha:
            excess = alpha_init - alpha_floor
            if not (alpha_floor > 0 and excess > 0):
                raise ValueError(f"MultiHeadKVQ: need alpha_init > alpha_floor > 0, got "
                                 f"alpha_init={alpha_init}, alpha_floor={alpha_floor}")
            raw = torch.full((num_heads,), alpha_raw_for(alpha_init, alpha_floor), **factory)
            if learn_alpha:
                self.alpha_raw = nn.Parameter(raw)
            else:
                self.register_buffer("alpha_raw", raw)
        if projection == "kv-pos":
            if pos_channels <= 0:
                raise ValueError(f"MultiHeadKVQ: pos_channels must be positive, got {pos_channels}")
            if pos_map not in ("head", "layer"):
                raise ValueError(f"MultiHeadKVQ: pos_map must be 'head' (one kv-pos map per head) "
                                 f"or 'layer' (one per layer), got '{pos_map}'")
            bound = 1.0 / math.sqrt(pos_channels)
            heads = (num_heads,) if pos_map == "head" else ()
            self.pos_weight = nn.Parameter(
                torch.empty(heads + (pos_channels,), **factory).uniform_(-bound, bound))
            self.pos_bias = nn.Parameter(torch.empty(heads, **factory).uniform_(-bound, bound))

    def alpha(self):
        """The positive per-head ridge parameter (H), or None for mechanisms without one."""
        if not self._uses_alpha:
            return None
        return alpha_from_raw(self.alpha_raw, self.alpha_floor)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False,
                attn_mask=None, is_causal=False):
        """query (B, m, E) / key, value (B, n, E) with batch_first, else (m, B, E) / (n, B, E).

        key_padding_mask: None or (B, n) bool, True = ignore that key. Causal attention:
        is_causal=True, or attn_mask the (m, m) causal mask (True / -inf above the diagonal);
        other attn_masks are not supported. need_weights must be False: the weights are never
        materialised. Returns (output, None), output shaped like query.
        """
        if need_weights:
            raise ValueError("MultiHeadKVQ: need_weights=True is not supported: kvq never "
                             "materialises the attention weights; pass need_weights=False")
        causal = bool(is_causal) or self._is_causal_mask(attn_mask, query)
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.dim() != 3 or x.shape[-1] != self.embed_dim:
                layout = "(B, T, E)" if self.batch_first else "(T, B, E)"
                raise ValueError(f"MultiHeadKVQ: {name} must have shape {layout} with "
                                 f"E = {self.embed_dim}, got {tuple(x.shape)}")
        self_attention = query is key
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        batch, m, n = query.shape[0], query.shape[1], key.shape[1]
        if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool or
                                             tuple(key_padding_mask.shape) != (batch, n)):
            raise ValueError(f"MultiHeadKVQ: key_padding_mask must be a bool tensor of shape "
                             f"(B, n) = ({batch}, {n}), got {key_padding_mask.dtype} "
                             f"{tuple(key_padding_mask.shape)}")

        def heads(x):  # (B, T, E) -> (B, H, T, E / H)
            return x.view(batch, x.shape[1], self.num_heads, -1).transpose(1, 2)

        k = heads(self.k_proj(key))
        if self.q_proj is not None:
            q = heads(self.q_proj(query))
        else:  # tied projection; in self-attention q is k itself
            q = k if self_attention else heads(self.k_proj(query))
        v = heads(self.v_proj(value))
        out = ops.attention(self.mechanism, q, k, v, self.alpha(),
                            getattr(self, "pos_weight", None), getattr(self, "pos_bias", None),
                            causal, key_padding_mask, self.scale, self.dropout, self.training,
                            self.chunk_size)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, m, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _is_causal_mask(self, attn_mask, query):
        if attn_mask is None:
            return False
        length = query.shape[1] if self.batch_first else query.shape[0]
        future = torch.ones(length, length, dtype=torch.bool, device=attn_mask.device).triu(1)
        if tuple(attn_mask.shape) == (length, length):
            is_bool = attn_mask.dtype == torch.bool
            masked = attn_mask if is_bool else torch.isneginf(attn_mask)
            only_zero_or_masked = is_bool or bool(torch.all((attn_mask == 0) | masked))
            if only_zero_or_masked and torch.equal(masked, future):
                return True
        raise ValueError("MultiHeadKVQ: attn_mask supports only the causal mask (True or -inf "
                         "above the diagonal, shape (L, L)); use is_causal=True and "
                         "key_padding_mask for padding")

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"mechanism={self.mechanism}, projection={self.projection}, "
                f"batch_first={self.batch_first}")
