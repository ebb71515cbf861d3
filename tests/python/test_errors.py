"""Bad input reaches Python as an exception carrying kvq's message, for every op of torch.ops.kvq,
the decoding ops and kvq.nn.MultiHeadKVQ: a wrong shape, dtype or device, alpha <= 0, and a
least-squares system that is not numerically positive definite. (On a PyTorch 2.x wheel these once
ended the process; docs/python.md, "Platform", says why.)

Run by CTest with KVQ_LIBRARY=build/libkvq_torch.so and PYTHONPATH=python.
"""
import pytest
import torch

import kvq
from kvq._library import ops

B, H, T, D = 2, 2, 6, 4
F32 = torch.float32
DECODING = ("intention_prefill", "intention_step", "linear_prefill", "linear_step")


def step_state(name):
    """A valid decoding state of the step op `name`, from its prefill on valid inputs."""
    ok = [torch.randn(B, H, T, D) for _ in range(3)]
    if name == "intention_step":
        return ops.intention_prefill(*ok, torch.ones(H))[1:]
    return ops.linear_prefill(*ok)[1:]


def call(name, q, k, v, alpha):
    """The op `name` on (B, H, T, d) q, k, v and alpha (H); steps on the first token."""
    pos = (torch.zeros(H, 10, dtype=k.dtype), torch.zeros(H, dtype=k.dtype))
    if name in ("intention_step", "linear_step"):
        return getattr(ops, name)(*step_state(name), q[:, :, :1], k[:, :, :1],
                                  v[:, :, :1])
    if name == "attention":
        return ops.attention("intention", q, k, v, alpha)
    # A registry row's op or a prefill: its tensor arguments by name from its schema.
    values = {"q": q, "k": k, "v": v, "alpha": alpha, "pos_weight": pos[0], "pos_bias": pos[1]}
    op = getattr(ops, name)
    return op(*[values[a.name] for a in op.default._schema.arguments if a.name in values])


MECHANISM_OPS = [ops.mechanism_info(m)[3][len("kvq::"):] for m in kvq.mechanisms()]
ALL_OPS = MECHANISM_OPS + ["attention"] + list(DECODING)
ALPHA_OPS = ["intention", "softmax_intention", "kernel_intention", "attention",
             "intention_prefill"]
# The operand a bad shape, dtype or device is given to (q, or k for the ops without q), as the
# message names it.
BAD_OPERAND = {"kv": "k", "kv_pos": "k"}


def operands():
    torch.manual_seed(0)
    return [torch.randn(B, H, T, D) for _ in range(3)] + [torch.ones(H)]


def with_bad(name, transform):
    """The operands with `transform` applied to the one the op's message names."""
    q, k, v, alpha = operands()
    if BAD_OPERAND.get(name, "q") == "k":
        return q, transform(k), v, alpha
    return transform(q), k, v, alpha


@pytest.mark.parametrize("name", ALL_OPS)
def test_wrong_shape_dtype_and_device_are_refused_by_name(name):
    operand = BAD_OPERAND.get(name, "q")
    with pytest.raises(RuntimeError, match=rf"\b{operand}\b.*(shape|4-D)"):
        call(name, *with_bad(name, lambda x: x[0]))
    with pytest.raises(RuntimeError, match=rf"\b{operand}\b.*(floating|dtype)"):
        call(name, *with_bad(name, lambda x: x.long()))
    with pytest.raises(RuntimeError, match="device"):
        call(name, *with_bad(name, lambda x: x.to("meta")))


@pytest.mark.parametrize("name", ALPHA_OPS)
def test_alpha_not_positive_is_refused(name):
    q, k, v, _ = operands()
    with pytest.raises(RuntimeError, match="alpha must be > 0"):
        call(name, q, k, v, torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", ALPHA_OPS)
def test_system_not_positive_definite_is_reported(name, causal):
    """Huge rank-one keys and a tiny alpha in float32: K^T K + alpha I is singular in float32."""
    q, _, v, _ = operands()
    k = torch.full((B, H, T, D), 1e4)
    alpha = torch.full((H,), 1e-6)
    if name == "kernel_intention":
        k, alpha = torch.full((B, H, T, D), 1.0), torch.full((H,), 1e-10)
    if name == "intention_prefill" and not causal:
        pytest.skip("a prefill is causal")
    extra = {} if name == "intention_prefill" else {"causal": causal}
    fn = {"intention": ops.intention, "softmax_intention": ops.softmax_intention,
          "kernel_intention": ops.kernel_intention, "intention_prefill": ops.intention_prefill,
          "attention": lambda *a, **kw: ops.attention("intention", *a, **kw)}[name]
    with pytest.raises(RuntimeError, match="not numerically positive definite in Float"):
        fn(q, k, v, alpha, **extra)


def test_module_errors():
    attn = kvq.nn.MultiHeadKVQ(8, 2, mechanism="intention", batch_first=True)
    with pytest.raises(ValueError, match="query must have shape"):
        attn(torch.randn(2, 5, 7), torch.randn(2, 5, 7), torch.randn(2, 5, 7))
    with pytest.raises(RuntimeError, match="dtype"):  # from the projection, as in PyTorch's
        x = torch.ones(2, 5, 8, dtype=torch.long)
        attn(x, x, x)
    with pytest.raises(ValueError, match="alpha_init > alpha_floor"):
        kvq.nn.MultiHeadKVQ(8, 2, mechanism="intention", alpha_init=1e-5)
    with pytest.raises(RuntimeError, match="unknown mechanism 'no-such'; valid mechanisms"):
        kvq.nn.MultiHeadKVQ(8, 2, mechanism="no-such")
    huge = torch.full((2, 5, 8), 1e5, requires_grad=True)
    with torch.no_grad():
        for p in attn.parameters():
            p.fill_(1.0)
    with pytest.raises(RuntimeError, match="not numerically positive definite"):
        attn(huge, huge, huge, is_causal=True)[0].sum().backward()
