"""The Python package `kvq` (python/kvq): functional wrappers equal the ops and plain float64
references, MultiHeadKVQ equals torch.nn.MultiheadAttention for softmax, state dicts move between
the C++ and the Python module, every functional passes gradcheck, errors name the argument.

Run by CTest with KVQ_LIBRARY=build/libkvq_torch.so and PYTHONPATH=python, or after
`pip install .` with plain `python3 -m pytest tests/python/test_package.py`.
"""
import pytest
import torch

import kvq
from kvq import functional as KF
from references import ref_intention, ref_softmax, visible

torch.manual_seed(0)
D64 = torch.float64


def ref_linear_identity(q, k, v, causal=False, mask=None):
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=D64)
    for b in range(q.shape[0]):
        for t in range(q.shape[2]):
            s = visible(b, k.shape[2], causal, mask, t)
            if s:
                out[b, :, t] = ((q[b, :, t:t + 1] @ k[b, :, s].transpose(-1, -2)) @ v[b, :, s])[:, 0]
    return out


def rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.fixture
def qkv():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 9, 4, dtype=D64) for _ in range(3))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, -3:] = True
    return q, k, v, mask


def test_package_lists_registry_mechanisms():
    assert kvq.mechanisms() == ["softmax", "kv", "kv-pos", "linear", "linear-identity",
                                "intention", "softmax-intention", "kernel-intention"]


def test_every_registry_row_has_its_op():
    for name in kvq.mechanisms():
        op = kvq.ops.mechanism_info(name)[3]
        namespace, _, schema = op.partition("::")
        assert namespace == "kvq" and hasattr(kvq.ops, schema), f"{name}: no op {op}"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_functional_equals_ops_and_reference(qkv, causal, masked):
    q, k, v, mask = qkv
    mask = mask if masked else None
    alpha = torch.tensor([0.5, 1.0, 2.0], dtype=D64)
    cases = [
        (KF.softmax(q, k, v, causal=causal, key_padding_mask=mask),
         kvq.ops.softmax(q, k, v, causal, mask), ref_softmax(q, k, v, causal, mask), 1e-12),
        (KF.kv(k, v, causal=causal, key_padding_mask=mask),
         kvq.ops.kv(k, v, causal, mask), ref_softmax(k, k, v, causal, mask), 1e-12),
        (KF.linear_identity(q, k, v, causal=causal, key_padding_mask=mask),
         kvq.ops.linear_identity(q, k, v, causal, mask),
         ref_linear_identity(q, k, v, causal, mask), 1e-12),
        (KF.intention(q, k, v, alpha, causal=causal, key_padding_mask=mask),
         kvq.ops.intention(q, k, v, alpha, causal, mask),
         ref_intention(q, k, v, alpha, causal, mask), 1e-10),
    ]
    for got, op, want, tol in cases:
        assert torch.equal(got, op)
        assert rel_err(got, want) <= tol


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_every_functional(causal):
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 6, 3, dtype=D64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, -2:] = True
    alpha = torch.tensor([0.7, 1.3], dtype=D64, requires_grad=True)
    w = torch.randn(2, 10, dtype=D64, requires_grad=True)
    b0 = torch.randn(2, dtype=D64, requires_grad=True)
    kw = dict(causal=causal, key_padding_mask=mask)
    cases = {
        "softmax": (lambda q, k, v: KF.softmax(q, k, v, **kw), (q, k, v)),
        "kv": (lambda k, v: KF.kv(k, v, **kw), (k, v)),
        "kv_pos": (lambda k, v, w, b0: KF.kv_pos(k, v, w, b0, **kw), (k, v, w, b0)),
        "linear": (lambda q, k, v: KF.linear(q, k, v, **kw), (q, k, v)),
        "linear_identity": (lambda q, k, v: KF.linear_identity(q, k, v, **kw), (q, k, v)),
        "intention": (lambda q, k, v, a: KF.intention(q, k, v, a, **kw), (q, k, v, alpha)),
        "softmax_intention": (lambda q, k, v, a: KF.softmax_intention(q, k, v, a, **kw),
                              (q, k, v, alpha)),
        "kernel_intention": (lambda q, k, v, a: KF.kernel_intention(q, k, v, a, **kw),
                             (q, k, v, alpha)),
    }
    for name, (fn, inputs) in cases.items():
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6), name


def copy_mha_weights(mha, ours):
    E = mha.embed_dim
    with torch.no_grad():
        for i, proj in enumerate((ours.q_proj, ours.k_proj, ours.v_proj)):
            proj.weight.copy_(mha.in_proj_weight[i * E:(i + 1) * E])
            proj.bias.copy_(mha.in_proj_bias[i * E:(i + 1) * E])
        ours.out_proj.weight.copy_(mha.out_proj.weight)
        ours.out_proj.bias.copy_(mha.out_proj.bias)


@pytest.mark.parametrize("batch_first", [False, True])
def test_multi_head_softmax_equals_torch_multihead_attention(batch_first):
    torch.manual_seed(3)
    E, H, B, T, S = 12, 3, 2, 7, 5
    mha = torch.nn.MultiheadAttention(E, H, batch_first=batch_first, dtype=D64)
    ours = kvq.nn.MultiHeadKVQ(E, H, mechanism="softmax", batch_first=batch_first, dtype=D64)
    copy_mha_weights(mha, ours)
    shape = (lambda t: (B, t, E)) if batch_first else (lambda t: (t, B, E))
    x, mem = torch.randn(shape(T), dtype=D64), torch.randn(shape(S), dtype=D64)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, -2:] = True
    want, _ = mha(x, mem, mem, key_padding_mask=pad, need_weights=False)
    got, weights = ours(x, mem, mem, key_padding_mask=pad)
    assert weights is None
    assert rel_err(got, want) <= 1e-12
    causal = torch.nn.Transformer.generate_square_subsequent_mask(T).to(D64)
    want, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    for got in (ours(x, x, x, attn_mask=causal)[0], ours(x, x, x, is_causal=True)[0]):
        assert rel_err(got, want) <= 1e-12


@pytest.mark.parametrize("alpha_init,alpha_floor", [
    (1.0, 1e-4), (0.5, 0.25), (1e-3, 1e-4), (3.0, 2.999), (6.0, 1.0), (19.5, 0.1), (25.0, 1e-4),
    (400.0, 1.0)])
def test_alpha_parametrisation_agrees_with_cpp(alpha_init, alpha_floor):
    """One rule for alpha = softplus(raw) + alpha_floor and its inverse, in C++ and Python alike,
    on both sides of softplus's threshold (an excess above 20 is kept as it is)."""
    cpp = torch.classes.kvq.MultiHeadKVQ(8, 2, "intention", "", True, alpha_init=alpha_init,
                                         alpha_floor=alpha_floor)
    py = kvq.nn.MultiHeadKVQ(8, 2, mechanism="intention", batch_first=True, alpha_init=alpha_init,
                             alpha_floor=alpha_floor)
    cpp_raw = cpp.state_dict()["alpha_raw"]
    assert torch.equal(py.alpha_raw.detach(), cpp_raw)
    alpha = kvq.nn.alpha_from_raw(cpp_raw.double(), alpha_floor)
    assert torch.allclose(alpha, torch.full_like(alpha, alpha_init), rtol=1e-6, atol=0)


@pytest.mark.parametrize("mechanism,projection,options", [
    ("softmax", None, {}), ("kv", None, {}), ("kv-pos", None, {}), ("intention", None, {}),
    ("softmax-intention", "kv", {}), ("linear", None, {}),
    ("kv-pos", None, {"pos_map": "layer", "pos_channels": 6}),
    ("intention", None, {"alpha_init": 0.5, "learn_alpha": False, "chunk_size": 2}),
    ("softmax", None, {"bias": False, "scale": 0.3})])
def test_state_dict_round_trip_between_cpp_and_python(tmp_path, mechanism, projection, options):
    torch.manual_seed(4)
    E, H = 16, 4
    cpp = torch.classes.kvq.MultiHeadKVQ(E, H, mechanism, projection or "", True, **options)
    py = kvq.nn.MultiHeadKVQ(E, H, mechanism=mechanism, projection=projection, batch_first=True,
                             **options)
    assert sorted(cpp.state_dict().keys()) == sorted(py.state_dict().keys())
    x = torch.randn(2, 6, E)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, -2:] = True
    # C++ -> Python, in memory and through a file written by kvq::nn::save_state_dict.
    py.load_state_dict(cpp.state_dict())
    want = cpp.forward(x, x, x, pad, True)
    assert torch.equal(py(x, x, x, key_padding_mask=pad, is_causal=True)[0], want)
    path = str(tmp_path / "cpp_state.pt")
    cpp.save(path)
    fresh = kvq.nn.MultiHeadKVQ(E, H, mechanism=mechanism, projection=projection, batch_first=True,
                                **options)
    fresh.load_state_dict(torch.load(path))
    assert torch.equal(fresh(x, x, x, key_padding_mask=pad, is_causal=True)[0], want)
    # Python -> C++, through torch.save of the state dict.
    with torch.no_grad():
        for p in py.parameters():
            p.add_(0.01 * torch.randn_like(p))
    want = py(x, x, x, key_padding_mask=pad, is_causal=True)[0]
    path = str(tmp_path / "py_state.pt")
    torch.save(dict(py.state_dict()), path)
    cpp.load(path)
    assert torch.equal(cpp.forward(x, x, x, pad, True), want)


def test_kv_pos_map_per_layer_is_the_per_head_map_with_equal_rows():
    torch.manual_seed(5)
    E, H = 16, 4
    layer = kvq.nn.MultiHeadKVQ(E, H, mechanism="kv-pos", pos_map="layer", batch_first=True,
                                dtype=D64)
    assert layer.pos_weight.shape == (10,) and layer.pos_bias.shape == ()
    head = kvq.nn.MultiHeadKVQ(E, H, mechanism="kv-pos", batch_first=True, dtype=D64)
    assert head.pos_weight.shape == (H, 10) and head.pos_bias.shape == (H,)
    state = layer.state_dict()
    state["pos_weight"] = layer.pos_weight.detach().expand(H, 10).clone()
    state["pos_bias"] = layer.pos_bias.detach().expand(H).clone()
    head.load_state_dict(state)
    x = torch.randn(2, 6, E, dtype=D64)
    assert rel_err(head(x, x, x, is_causal=True)[0], layer(x, x, x, is_causal=True)[0]) <= 1e-12
    with pytest.raises(ValueError, match="pos_map must be 'head'.*or 'layer'.*got 'heads'"):
        kvq.nn.MultiHeadKVQ(E, H, mechanism="kv-pos", pos_map="heads")


def test_bad_input_names_the_argument(qkv):
    q, k, v, mask = qkv
    with pytest.raises(RuntimeError, match="alpha must be > 0"):
        KF.intention(q, k, v, torch.tensor(0.0, dtype=D64))
    with pytest.raises(RuntimeError, match="key_padding_mask must have shape"):
        KF.softmax(q, k, v, key_padding_mask=mask[:, :3])
    with pytest.raises(RuntimeError, match="unknown mechanism|valid"):
        kvq.nn.MultiHeadKVQ(8, 2, mechanism="sofmax")
    with pytest.raises(ValueError, match="embed_dim must be a positive multiple of num_heads"):
        kvq.nn.MultiHeadKVQ(10, 3)
    with pytest.raises(ValueError, match="projection must be one of"):
        kvq.nn.MultiHeadKVQ(8, 2, projection="qk")
    with pytest.raises(ValueError, match="pos_map applies only to the kv-pos projection, and "
                                         "mechanism 'kv' runs with projection 'kv'"):
        kvq.nn.MultiHeadKVQ(8, 2, mechanism="kv", pos_map="layer")
    with pytest.raises(ValueError, match="pos_channels applies only to the kv-pos projection"):
        kvq.nn.MultiHeadKVQ(8, 2, mechanism="softmax", pos_channels=6)
    with pytest.raises(ValueError, match=r"alpha_init applies only to the mechanisms with a ridge "
                                         r"alpha \(.*intention.*\), and mechanism 'softmax'"):
        kvq.nn.MultiHeadKVQ(8, 2, alpha_init=10.0)
    with pytest.raises(ValueError, match="learn_alpha applies only"):
        kvq.nn.MultiHeadKVQ(8, 2, mechanism="kv-pos", learn_alpha=False)
    with pytest.raises(ValueError, match=r"chunk_size applies only to the chunk-parallel causal "
                                         r"mechanisms \(.*intention.*\), not to mechanism 'kv'"):
        kvq.nn.MultiHeadKVQ(8, 2, mechanism="kv", chunk_size=4)
    kvq.nn.MultiHeadKVQ(8, 2, mechanism="linear", chunk_size=4)
    kvq.nn.MultiHeadKVQ(8, 2, mechanism="softmax", projection="kv-pos", pos_map="layer")
    kvq.nn.MultiHeadKVQ(8, 2, mechanism="intention", alpha_init=10.0, learn_alpha=False)
    m = kvq.nn.MultiHeadKVQ(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="need_weights"):
        m(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="attn_mask"):
        m(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="query must have shape"):
        m(x[0], x, x)
    with pytest.raises(RuntimeError, match="pos_map applies only to the kv-pos projection"):
        torch.classes.kvq.MultiHeadKVQ(8, 2, "kv", "", True, pos_map="layer")
    cpp = torch.classes.kvq.MultiHeadKVQ(8, 2, "softmax", "", True)
    with pytest.raises(RuntimeError, match="missing key 'q_proj.weight'"):
        cpp.load_state_dict(kvq.nn.MultiHeadKVQ(8, 2, mechanism="kv").state_dict())


def test_buffer_cache_keeps_the_kernels_buffers_until_emptied():
    limit = kvq.ops.buffer_cache_limit()
    try:
        kvq.empty_buffer_cache()
        kvq.set_buffer_cache_limit(1 << 30)
        q, k, v = (torch.randn(2, 4, 512, 64, requires_grad=True) for _ in range(3))  # 1 MiB each
        out = kvq.functional.intention(q, k, v, torch.tensor(1.0), causal=True)
        out.backward(torch.ones_like(out))
        first = out.detach().clone()
        del out, q.grad, k.grad, v.grad
        assert kvq.buffer_cache_bytes() >= 4 << 20  # the output and three gradients at least
        again = kvq.functional.intention(q, k, v, torch.tensor(1.0), causal=True)
        assert torch.equal(again, first)
        del again
        kvq.empty_buffer_cache()
        assert kvq.buffer_cache_bytes() == 0
        kvq.set_buffer_cache_limit(0)
        kvq.functional.intention(q, k, v, torch.tensor(1.0), causal=True).sum().backward()
        assert kvq.buffer_cache_bytes() == 0
        with pytest.raises(RuntimeError, match="bytes must be >= 0"):
            kvq.set_buffer_cache_limit(-1)
    finally:
        kvq.set_buffer_cache_limit(limit)
