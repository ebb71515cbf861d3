"""torch.ops.kvq.* under PyTorch 2.x's tracing (docs/python.md, "Ops under torch.compile"):

- torch.library.opcheck (schema, autograd registration, FakeTensor, AOT dispatch with dynamic
  shapes, which compares the traced backward with the eager one) for every op: each registry
  row's op, kvq.attention over every row, the internal _mechanism_forward and the decoding ops,
  causal and not, on contiguous inputs and on permuted-stride inputs with a key padding mask;
- torch.compile(fullgraph=True) of a small model on kvq.nn.MultiHeadKVQ for every mechanism,
  causal and not: compiled output and gradients equal eager ones in float64 to 1e-12.

Run by CTest with KVQ_LIBRARY=build/libkvq_torch.so and PYTHONPATH=python.
"""
import pytest
import torch

import kvq
from kvq._library import ops

D64 = torch.float64
B, H, T, D = 2, 3, 7, 4
MECHANISMS = kvq.mechanisms()
LAYOUTS = ["contiguous", "permuted+mask"]


def tensor(shape, layout, grad=True):
    """(B, H, T, d) values; 'permuted' ones are stored (B, T, H, d), as heads split from a
    projection are, so their strides are not contiguous."""
    if layout == "contiguous" or len(shape) != 4:
        x = torch.randn(shape, dtype=D64)
    else:
        x = torch.randn(shape[0], shape[2], shape[1], shape[3], dtype=D64).transpose(1, 2)
    return x.requires_grad_(grad)


def mask_for(layout):
    if layout == "contiguous":
        return None
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[1, -2:] = True
    return mask


def inputs(layout):
    torch.manual_seed(0)
    return {"q": tensor((B, H, T, D), layout), "k": tensor((B, H, T, D), layout),
            "v": tensor((B, H, T, D), layout),
            "alpha": (torch.rand(H, dtype=D64) + 0.5).requires_grad_(),
            "pos_weight": tensor((H, 10), layout), "pos_bias": tensor((H,), layout)}


def op_of(mechanism):
    """The registry row's op, e.g. torch.ops.kvq.softmax.default."""
    name = ops.mechanism_info(mechanism)[3]
    assert name.startswith("kvq::"), name
    return getattr(ops, name[len("kvq::"):]).default


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_opcheck_every_mechanism_op(mechanism, causal, layout):
    op = op_of(mechanism)
    values = inputs(layout)
    args = tuple(values[a.name] for a in op._schema.arguments if a.name in values)
    kwargs = {"causal": causal, "key_padding_mask": mask_for(layout)}
    torch.library.opcheck(op, args, kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_opcheck_attention_and_the_op_under_it(mechanism, causal, layout):
    _, uses_alpha, has_softmax, _, _ = ops.mechanism_info(mechanism)
    x = inputs(layout)
    alpha = x["alpha"] if uses_alpha else None
    pos = (x["pos_weight"], x["pos_bias"]) if mechanism == "kv-pos" else (None, None)
    kwargs = {"causal": causal, "key_padding_mask": mask_for(layout)}
    torch.library.opcheck(ops.attention.default,
                          (mechanism, x["q"], x["k"], x["v"], alpha, *pos), kwargs)
    torch.library.opcheck(
        ops._mechanism_forward.default,
        (mechanism, True, x["q"], x["k"], x["v"], alpha, *pos, causal, mask_for(layout), None,
         1e-6, 0.0, False, 0))


DECODING_OPS = ["intention_prefill", "intention_step", "linear_prefill", "linear_step"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck_decoding_ops(layout):
    """The decoding ops have no backward: opcheck on inputs that do not require gradients
    (its autograd registration check needs some that do), and their Autograd kernel refuses
    inputs that do, naming the op."""
    x = {name: t.detach() for name, t in inputs(layout).items()}
    q, k, v, alpha = x["q"], x["k"], x["v"], x["alpha"]
    one = [t[:, :, :1] for t in (q, k, v)]
    _, factor, kv_sum = ops.intention_prefill(q, k, v, alpha)
    _, s, z = ops.linear_prefill(q, k, v)
    calls = {"intention_prefill": (q, k, v, alpha), "intention_step": (factor, kv_sum, *one),
             "linear_prefill": (q, k, v), "linear_step": (s, z, *one)}
    checks = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    for name in DECODING_OPS:
        op = getattr(ops, name).default
        torch.library.opcheck(op, calls[name], test_utils=checks)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Autograd")
        with_grad = tuple(t.clone().requires_grad_() for t in calls[name])
        with pytest.raises(RuntimeError, match=f"kvq::{name}: decoding has no backward"):
            op(*with_grad)
        with torch.no_grad():
            op(*with_grad)


def test_meta_tensors_give_shapes():
    meta = [torch.empty(B, H, T, D, device="meta") for _ in range(3)]
    out = ops.intention(*meta, torch.ones(H, device="meta"), causal=True)
    assert out.device.type == "meta" and tuple(out.shape) == (B, H, T, D)
    out, factor, kv_sum = ops.intention_prefill(*meta, torch.ones(H, device="meta"))
    assert (tuple(factor.shape), tuple(kv_sum.shape)) == ((B, H, D, D), (B, H, D, D))


class TinyModel(torch.nn.Module):
    """Embedding-free block: attention, a residual, GELU and a linear head."""

    def __init__(self, mechanism, dropout=0.0):
        super().__init__()
        self.attn = kvq.nn.MultiHeadKVQ(16, 2, mechanism=mechanism, batch_first=True,
                                        dropout=dropout, dtype=D64)
        self.head = torch.nn.Linear(16, 16, dtype=D64)

    def forward(self, x, causal: bool):
        y, _ = self.attn(x, x, x, is_causal=causal)
        return self.head(torch.nn.functional.gelu(y) + x)


def run_and_grads(model, x, causal):
    model.zero_grad()
    x.grad = None
    y = model(x, causal)
    (y.square().sum() + y.sum()).backward()
    return [y.detach()] + [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_compile_fullgraph_matches_eager(mechanism, causal):
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = TinyModel(mechanism)
    x = torch.randn(2, 9, 16, dtype=D64, requires_grad=True)
    eager = run_and_grads(model, x, causal)
    compiled = run_and_grads(torch.compile(model, fullgraph=True), x, causal)
    names = ["output"] + [n for n, _ in model.named_parameters()] + ["input"]
    for name, got, want in zip(names, compiled, eager):
        # Relative to the tensor's scale, floored at 1: the key-projection bias of the softmax
        # mechanisms has a gradient that is 0 in exact arithmetic (scores are shift-invariant).
        err = (got - want).abs().max().item() / max(want.abs().max().item(), 1.0)
        assert err <= 1e-12, f"{name}: compiled differs from eager by {err:.3e}"


def test_compile_refuses_attention_dropout_in_training():
    torch._dynamo.reset()
    model = TinyModel("softmax", dropout=0.1)
    x = torch.randn(2, 9, 16, dtype=D64, requires_grad=True)
    with pytest.raises(Exception, match="cannot be traced"):
        torch.compile(model, fullgraph=True)(x, True)
    model.eval()  # no dropout in evaluation: traces
    torch.compile(model, fullgraph=True)(x, True)
