"""The Mesa layer from Python (torch.ops.kvq.mesa and kvq.functional.mesa): a per-token float64
reference written here from the math, causal intention as its ungated case, gradcheck of every
input in float64, decoding (prefill and steps) against the batched op, and errors that name the
argument.

Run with KVQ_LIBRARY=build/libkvq_torch.so and PYTHONPATH=python.
"""
import pytest
import torch

from kvq import functional as KF

D64 = torch.float64


def rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


def reference(q, k, v, g, beta, lam, kk=None, kv=None):
    """Per (batch, head) and token: the dense states and a dense solve."""
    B, H, T, d = q.shape
    dv = v.shape[-1]
    lam = lam.expand(H, d) if lam.dim() == 2 else lam.reshape(-1, 1).expand(H, d)
    out = torch.zeros(B, H, T, dv, dtype=D64)
    finals = []
    for b in range(B):
        for h in range(H):
            skk = kk[b, h].clone() if kk is not None else torch.zeros(d, d, dtype=D64)
            skv = kv[b, h].clone() if kv is not None else torch.zeros(d, dv, dtype=D64)
            for t in range(T):
                a = torch.exp(g[b, h, t])
                skk = a * skk + beta[b, h, t] * torch.outer(k[b, h, t], k[b, h, t])
                skv = a * skv + beta[b, h, t] * torch.outer(k[b, h, t], v[b, h, t])
                x = torch.linalg.solve(skk + torch.diag(lam[h]), q[b, h, t])
                out[b, h, t] = skv.T @ x
            finals.append((skk, skv))
    return out, finals


def inputs(B=2, H=3, T=9, d=4, dv=3, seed=0, state=False):
    torch.manual_seed(seed)
    q = torch.randn(B, H, T, d, dtype=D64)
    k = torch.randn(B, H, T, d, dtype=D64) / d ** 0.5
    v = torch.randn(B, H, T, dv, dtype=D64)
    g = -torch.rand(B, H, T, dtype=D64)
    beta = 0.1 + 0.9 * torch.rand(B, H, T, dtype=D64)
    lam = 0.5 + torch.rand(H, d, dtype=D64)
    if not state:
        return q, k, v, g, beta, lam
    m = torch.randn(B, H, d, d, dtype=D64)
    return q, k, v, g, beta, lam, m @ m.transpose(-2, -1) / d, 0.5 * torch.randn(B, H, d, dv, dtype=D64)


def test_matches_the_per_token_reference():
    q, k, v, g, beta, lam, kk, kv = inputs(state=True)
    out, (fkk, fkv) = KF.mesa(q, k, v, g, beta, lam, initial_state=(kk, kv),
                              output_final_state=True, chunk_size=4)
    want, finals = reference(q, k, v, g, beta, lam, kk, kv)
    assert rel_err(out, want) <= 1e-10
    assert rel_err(fkk, torch.stack([f[0] for f in finals]).reshape(fkk.shape)) <= 1e-12
    assert rel_err(fkv, torch.stack([f[1] for f in finals]).reshape(fkv.shape)) <= 1e-12


def test_ungated_equals_causal_intention():
    q, k, v, g, beta, _ = inputs(T=20)
    alpha = torch.tensor([0.5, 1.0, 3.0], dtype=D64)
    got = KF.mesa(q, k, v, torch.zeros_like(g), torch.ones_like(beta), alpha)
    want = KF.intention(q, k, v, alpha, causal=True)
    assert rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("first", [0, 1, 6])
def test_prefill_then_steps_equal_the_batched_op(first):
    q, k, v, g, beta, lam = inputs(T=12)
    want, (want_kk, want_kv) = KF.mesa(q, k, v, g, beta, lam, output_final_state=True)
    with torch.no_grad():
        rows, state = [], None
        if first > 0:
            out, state = KF.mesa_prefill(q[:, :, :first], k[:, :, :first], v[:, :, :first],
                                         g[:, :, :first], beta[:, :, :first], lam)
            rows.append(out)
        else:
            B, H, _, d = q.shape
            state = (torch.zeros(B, H, d, d, dtype=D64), torch.zeros(B, H, d, v.shape[-1], dtype=D64))
        for t in range(first, q.shape[2]):
            given = tuple(s.clone() for s in state)
            one = slice(t, t + 1)
            out, new_state = KF.mesa_step(state, q[:, :, one], k[:, :, one], v[:, :, one],
                                          g[:, :, one], beta[:, :, one], lam)
            assert all(torch.equal(a, b) for a, b in zip(state, given))  # not modified
            rows.append(out)
            state = new_state
    assert rel_err(torch.cat(rows, dim=2), want) <= 1e-12
    assert rel_err(state[0], want_kk) <= 1e-12 and rel_err(state[1], want_kv) <= 1e-12


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_gradcheck_every_input(chunk):
    args = [t.requires_grad_() for t in inputs(B=1, H=2, T=5, d=3, dv=2, seed=1, state=True)]
    mask = torch.tensor([[False, False, True, False, False]])

    def f(q, k, v, g, beta, lam, kk, kv):
        out, (fkk, fkv) = KF.mesa(q, k, v, g, beta, lam, initial_state=(kk, kv),
                                  output_final_state=True, key_padding_mask=mask,
                                  chunk_size=chunk)
        return out, fkk, fkv

    assert torch.autograd.gradcheck(f, args)


def test_errors_name_the_argument():
    q, k, v, g, beta, lam = inputs()
    with pytest.raises(RuntimeError, match="beta must have shape"):
        KF.mesa(q, k, v, g, beta[..., :-1], lam)
    with pytest.raises(RuntimeError, match="lambda must be > 0"):
        KF.mesa(q, k, v, g, beta, -lam)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        KF.mesa(*(t.half() for t in (q, k, v, g, beta, lam)))
