"""The KVQ mechanisms as functions with autograd (kvq's C++ kernels through torch.ops.kvq).

Common layout and conventions (docs/mechanisms.md):
    q (B, H, m, d) queries, k (B, H, n, d) keys, v (B, H, n, dv) values -> (B, H, m, dv).
    key_padding_mask: None or (B, n) bool, True = that key is ignored (PyTorch's convention).
    causal: query t sees keys s <= t (needs m == n).
    scale: multiplier of the dot-product scores; None = 1/sqrt(d).
    alpha: the ridge parameter, a tensor () or (H), every entry > 0; receives gradients.
A query whose keys are all masked outputs zeros in the softmax family (PyTorch gives NaN).
float32 and float64 run everywhere; half precision inputs are solved in float32.
"""
from ._library import ops

__all__ = ["softmax", "kv", "kv_pos", "linear", "linear_identity", "intention",
           "softmax_intention", "kernel_intention", "mesa", "positional_encoding_2d",
           "intention_prefill", "intention_step", "linear_prefill", "linear_step", "mesa_prefill",
           "mesa_step"]


def softmax(q, k, v, *, causal=False, key_padding_mask=None, scale=None):
    """Scaled dot-product attention: O = softmax(Q K^T * scale + mask) V.

    q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv) -> (B, H, m, dv). On the CPU (float32,
    float64) a tiled kernel computes it without an m x n buffer.
    """
    return ops.softmax(q, k, v, causal, key_padding_mask, scale)


def kv(k, v, *, causal=False, key_padding_mask=None, scale=None):
    """Key-value attention (Borji 2023): the queries are the keys, O = softmax(K K^T * scale) V.

    k (B, H, n, d), v (B, H, n, dv) -> (B, H, n, dv). The scores are symmetric.
    """
    return ops.kv(k, v, causal, key_padding_mask, scale)


def kv_pos(k, v, pos_weight, pos_bias, *, causal=False, key_padding_mask=None, scale=None):
    """Key-value attention with the 2D positional term (Borji 2023's asymmetric variant).

    S'_ij = sum_c w_c (S_ij + P_ijc) + b0 with S = K K^T * scale, P the (n, n, p) sinusoidal table
    of positional_encoding_2d and a Linear(p, 1) per head (weight w = pos_weight (H, p) or (p),
    bias b0 = pos_bias (H) or ()); O = softmax(S') V. k (B, H, n, d), v (B, H, n, dv) ->
    (B, H, n, dv). The (B, H, n, n, p) broadcast is never formed.
    """
    return ops.kv_pos(k, v, pos_weight, pos_bias, causal, key_padding_mask, scale)


def linear(q, k, v, *, causal=False, key_padding_mask=None, eps=1e-6):
    """Linear attention (Katharopoulos et al. 2020), phi(x) = elu(x) + 1:

    O = phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps); causal by chunked prefix sums.
    q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv) -> (B, H, m, dv).
    """
    return ops.linear(q, k, v, causal, key_padding_mask, eps)


def linear_identity(q, k, v, *, causal=False, key_padding_mask=None):
    """Unnormalised linear attention O = Q K^T V (the form Intention generalises).

    q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv) -> (B, H, m, dv). Registry name
    'linear-identity'.
    """
    return ops.linear_identity(q, k, v, causal, key_padding_mask)



def intention(q, k, v, alpha, *, causal=False, key_padding_mask=None):
    """Intention (Garnelo & Czarnecki 2023): O = Q (K^T K + alpha I)^{-1} K^T V.

    The ridge-regression solution of K W = V evaluated at the queries. Causal: row t uses
    A_t = alpha I + sum_{s<=t} k_s k_s^T and B_t = sum_{s<=t} k_s v_s^T exactly (chunk-parallel,
    linear in T). q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv), alpha () or (H) > 0 ->
    (B, H, m, dv).
    """
    return ops.intention(q, k, v, alpha, causal, key_padding_mask)


def softmax_intention(q, k, v, alpha, *, causal=False, key_padding_mask=None, scale=None):
    """Softmax attention with least-squares preconditioned queries (kvq's reading of the paper's
    softmax variant): O = softmax(Q (K^T K + alpha I)^{-1} K^T * scale) V; causal rows use A_t.

    q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv), alpha () or (H) > 0 -> (B, H, m, dv).
    """
    return ops.softmax_intention(q, k, v, alpha, causal, key_padding_mask, scale)


def kernel_intention(q, k, v, alpha, *, causal=False, key_padding_mask=None, scale=None):
    """Kernel ridge regression in dual form: O = kappa(Q, K) (kappa(K, K) + alpha I)^{-1} V with
    kappa(x, y) = exp(x . y * scale). O(n^3): for small n.

    q (B, H, m, d), k (B, H, n, d), v (B, H, n, dv), alpha () or (H) > 0 -> (B, H, m, dv).
    """
    return ops.kernel_intention(q, k, v, alpha, causal, key_padding_mask, scale)


def mesa(q, k, v, g, beta, lambda_, *, initial_state=None, output_final_state=False,
         key_padding_mask=None, chunk_size=64):
    """The Mesa layer (gated least squares; von Oswald et al. 2025, "MesaNet"), causal, exact.

    Per head, with log-decay g_t (<= 0), weight beta_t (in (0, 1]) and ridge lambda > 0:
        S_kk,t = exp(g_t) S_kk,t-1 + beta_t k_t k_t^T,  S_kv,t = exp(g_t) S_kv,t-1 + beta_t k_t v_t^T
        o_t = S_kv,t^T (S_kk,t + diag(lambda))^{-1} q_t
    with one Cholesky factorisation per token (no conjugate-gradient approximation) and an analytic
    backward for every input. g = 0, beta = 1, lambda = alpha is causal intention.

    q, k (B, H, T, d), v (B, H, T, dv), g and beta (B, H, T), lambda_ (H, d), (H) or () ->
    o (B, H, T, dv). initial_state: None (zero states) or (S_kk (B, H, d, d), S_kv (B, H, d, dv));
    S_kk is used as (S_kk + S_kk^T) / 2. output_final_state=True returns (o, (S_kk, S_kv)) with the
    states after the last token (differentiable). key_padding_mask (B, T) bool, True = padding: the
    token updates nothing (beta = 0, g = 0 there). chunk_size: checkpoint spacing of the backward
    (memory O(T / chunk_size * d * (d + dv)) per head; the result does not depend on it).
    CPU float32 and float64 only; no Meta kernel yet (not traceable by torch.compile).
    """
    kk, kv = (None, None) if initial_state is None else initial_state
    out, final_kk, final_kv = ops.mesa(q, k, v, g, beta, lambda_, kk, kv, key_padding_mask,
                                       chunk_size)
    return (out, (final_kk, final_kv)) if output_final_state else out


def positional_encoding_2d(rows, cols, channels):
    """The fixed sinusoidal 2D table of kv-pos, (rows, cols, channels) float32:
    P[i, j] = concat(e(i), e(j))[:channels], e(i) interleaved sin/cos of i * 10000^(-2k/ch)."""
    return ops.positional_encoding_2d(rows, cols, channels)


# ---- Incremental causal decoding: the state in, the state out ----
#
# prefill(q, k, v, ...) of a prefix of n >= 0 tokens returns the causal output (B, H, n, dv) and
# the state after them; step(state, q_t, k_t, v_t) takes one token, q_t, k_t (B, H, 1, d) and
# v_t (B, H, 1, dv), and returns its output (B, H, 1, dv) and the next state. The given state is
# never modified. Prefill + steps equal the batched causal op. Steps have no backward: call them
# under torch.no_grad() (or with tensors that do not require gradients).


def intention_prefill(q, k, v, alpha):
    """Causal intention over a prefix and the decoding state (L, B) after it: L (B, H, d, d) the
    lower Cholesky factor of A = alpha I + K^T K, B (B, H, d, dv) = K^T V.

    For an empty prefix pass k, v with n = 0 rows: then L = sqrt(alpha) I and B = 0.
    """
    out, factor, kv_sum = ops.intention_prefill(q, k, v, alpha)
    return out, (factor, kv_sum)


def intention_step(state, q, k, v):
    """One token of causal intention in O(d^2): L becomes the factor of A + k k^T by a rank-1
    Cholesky update (stays positive definite), B += k v^T, o = B^T A^{-1} q.

    Returns (o (B, H, 1, dv), (L, B)).
    """
    out, factor, kv_sum = ops.intention_step(state[0], state[1], q, k, v)
    return out, (factor, kv_sum)


def mesa_prefill(q, k, v, g, beta, lambda_):
    """Mesa over a prefix and the decoding state (S_kk, S_kv) after it: S_kk (B, H, d, d),
    S_kv (B, H, d, dv). Returns (o (B, H, T, dv), (S_kk, S_kv)); see mesa()."""
    return mesa(q, k, v, g, beta, lambda_, output_final_state=True)


def mesa_step(state, q, k, v, g, beta, lambda_):
    """One token of Mesa, exact, in O(d^3): S_kk = exp(g) S_kk + beta k k^T, S_kv likewise,
    o = S_kv^T (S_kk + diag(lambda))^{-1} q by one Cholesky factorisation. q, k (B, H, 1, d),
    v (B, H, 1, dv), g and beta (B, H, 1). Returns (o (B, H, 1, dv), (S_kk, S_kv)); the given state
    is not modified."""
    return mesa(q, k, v, g, beta, lambda_, initial_state=state, output_final_state=True,
                chunk_size=1)


def linear_prefill(q, k, v, *, eps=1e-6):
    """Causal linear attention over a prefix and the decoding state (S, z) after it:
    S (B, H, d, dv) = phi(K)^T V, z (B, H, d) = sum of phi(k), phi = elu + 1."""
    out, kv_sum, key_sum = ops.linear_prefill(q, k, v, eps)
    return out, (kv_sum, key_sum)


def linear_step(state, q, k, v, *, eps=1e-6):
    """One token of causal linear attention: S += phi(k) v^T, z += phi(k),
    o = phi(q)^T S / (phi(q) . z + eps). Returns (o (B, H, 1, dv), (S, z))."""
    out, kv_sum, key_sum = ops.linear_step(state[0], state[1], q, k, v, eps)
    return out, (kv_sum, key_sum)
