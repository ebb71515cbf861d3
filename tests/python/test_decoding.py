"""Incremental decoding from Python (torch.ops.kvq.intention_step / linear_step and the
kvq.functional wrappers): a prefill of a prefix plus one step per token equals the batched causal
op in float64, the given state is never modified, errors name the argument.

Run by CTest with KVQ_LIBRARY=build/libkvq_torch.so and PYTHONPATH=python.
"""
import pytest
import torch

from kvq import functional as KF

D64 = torch.float64


def rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.fixture
def qkv():
    torch.manual_seed(3)
    return tuple(torch.randn(2, 3, 11, 4, dtype=D64) for _ in range(3))


def decode(prefill, step, q, k, v, first):
    """Prefill of the first `first` tokens, then one step per token: all rows (B, H, T, dv)."""
    with torch.no_grad():
        out, state = prefill(q[:, :, :first], k[:, :, :first], v[:, :, :first])
        rows = [out]
        for t in range(first, q.shape[2]):
            row, state = step(state, q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1])
            rows.append(row)
    return torch.cat(rows, 2)


@pytest.mark.parametrize("first", [0, 1, 6])
def test_intention_steps_equal_the_causal_op(qkv, first):
    q, k, v = qkv
    for alpha in (torch.tensor(0.7, dtype=D64), torch.tensor([0.3, 1.0, 4.0], dtype=D64)):
        want = KF.intention(q, k, v, alpha, causal=True)
        prefill = lambda q, k, v: KF.intention_prefill(q, k, v, alpha)  # noqa: E731
        got = decode(prefill, KF.intention_step, q, k, v, first)
        assert rel_err(got, want) <= 1e-10


@pytest.mark.parametrize("first", [0, 1, 6])
def test_linear_steps_equal_the_causal_op(qkv, first):
    q, k, v = qkv
    want = KF.linear(q, k, v, causal=True)
    assert rel_err(decode(KF.linear_prefill, KF.linear_step, q, k, v, first), want) <= 1e-12


def test_steps_leave_the_given_state_alone(qkv):
    q, k, v = qkv
    alpha = torch.tensor(1.0, dtype=D64)
    with torch.no_grad():
        _, state = KF.intention_prefill(q[:, :, :4], k[:, :, :4], v[:, :, :4], alpha)
        before = tuple(x.clone() for x in state)
        _, after = KF.intention_step(state, q[:, :, 4:5], k[:, :, 4:5], v[:, :, 4:5])
        assert all(torch.equal(x, y) for x, y in zip(state, before))
        assert not torch.equal(after[0], state[0])
        # L L^T is alpha I + K^T K over the five keys.
        keys = k[:, :, :5]
        want = keys.transpose(-1, -2) @ keys + alpha * torch.eye(4, dtype=D64)
        assert rel_err(after[0] @ after[0].transpose(-1, -2), want) <= 1e-12

        _, lin = KF.linear_prefill(q[:, :, :4], k[:, :, :4], v[:, :, :4])
        lin_before = tuple(x.clone() for x in lin)
        KF.linear_step(lin, q[:, :, 4:5], k[:, :, 4:5], v[:, :, 4:5])
        assert all(torch.equal(x, y) for x, y in zip(lin, lin_before))


def test_errors_name_the_argument(qkv):
    q, k, v = qkv
    alpha = torch.tensor(1.0, dtype=D64)
    with torch.no_grad():
        _, state = KF.intention_prefill(q, k, v, alpha)
        with pytest.raises(RuntimeError, match="batch size B = 2"):
            KF.intention_step(state, q[:1, :, :1], k[:1, :, :1], v[:1, :, :1])
        with pytest.raises(RuntimeError, match=r"L must be \(B, H, d, d\)"):
            KF.intention_step((state[0][..., :3], state[1]), q[:, :, :1], k[:, :, :1], v[:, :, :1])
        _, lin = KF.linear_prefill(q, k, v)
        with pytest.raises(RuntimeError, match=r"z must be \(B, H, d\)"):
            KF.linear_step((lin[0], lin[1][0]), q[:, :, :1], k[:, :, :1], v[:, :, :1])
    qg = q[:, :, :1].clone().requires_grad_()
    with pytest.raises(RuntimeError, match="no backward"):
        KF.intention_step(state, qg, qg, v[:, :, :1])
