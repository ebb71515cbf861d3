"""torch.ops.kvq.* from Python: schemas load, outputs match plain-PyTorch float64 references,
gradients pass torch.autograd.gradcheck (finite differences, float64).

Usage: python3 test_torch_ops.py path/to/libkvq_torch.so
"""
import sys
import unittest

import torch

from references import ref_intention, ref_softmax

LIB = sys.argv.pop(1) if len(sys.argv) > 1 else "build/libkvq_torch.so"
torch.ops.load_library(LIB)
ops = torch.ops.kvq


class TorchOpsTest(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.B, self.H, self.T, self.d = 2, 2, 9, 4
        shape = (self.B, self.H, self.T, self.d)
        self.q, self.k, self.v = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
        self.mask = torch.zeros(self.B, self.T, dtype=torch.bool)
        self.mask[1, -3:] = True
        self.alpha = torch.tensor([0.5, 2.0], dtype=torch.float64)

    def assertClose(self, got, want, tol):
        err = ((got - want).abs().max() / want.abs().max()).item()
        self.assertLessEqual(err, tol, f"relative error {err:.3e}")

    def test_softmax_and_kv_match_reference(self):
        for causal in (False, True):
            for mask in (None, self.mask):
                self.assertClose(ops.softmax(self.q, self.k, self.v, causal, mask),
                                 ref_softmax(self.q, self.k, self.v, causal, mask), 1e-12)
                self.assertClose(ops.kv(self.k, self.v, causal, mask),
                                 ref_softmax(self.k, self.k, self.v, causal, mask), 1e-12)

    def test_intention_matches_reference(self):
        for causal in (False, True):
            for mask in (None, self.mask):
                for alpha in (self.alpha, torch.tensor(0.3, dtype=torch.float64)):
                    got = ops.intention(self.q, self.k, self.v, alpha, causal=causal,
                                        key_padding_mask=mask)
                    self.assertClose(got, ref_intention(self.q, self.k, self.v, alpha, causal, mask),
                                     1e-10)

    def test_positional_table_check_value(self):
        p = ops.positional_encoding_2d(6, 6, 10)[3, 5]
        want = torch.tensor([0.1411, -0.99, 0.1388, 0.9903, 0.0065, 1.0, -0.9589, 0.2837, 0.23,
                             0.9732])
        self.assertLessEqual((p - want).abs().max().item(), 5e-5)

    def test_gradcheck_every_op(self):
        """Every registered mechanism's op (the registry's rows, through mechanism_names and
        mechanism_info), its inputs built from the op's schema by argument name."""
        small = [x[:, :, :6, :3].clone().requires_grad_() for x in (self.q, self.k, self.v)]
        mask = self.mask[:, 3:].clone()
        values = dict(zip(("q", "k", "v"), small))
        values["alpha"] = self.alpha.clone().requires_grad_()
        values["pos_weight"] = torch.randn(2, 10, dtype=torch.float64, requires_grad=True)
        values["pos_bias"] = torch.randn(2, dtype=torch.float64, requires_grad=True)
        names = list(ops.mechanism_names())
        self.assertGreaterEqual(len(names), 8)
        for name in names:
            op_name = ops.mechanism_info(name)[3]
            self.assertTrue(op_name.startswith("kvq::"), op_name)
            op = getattr(ops, op_name[len("kvq::"):])
            tensors = [a.name for a in op.default._schema.arguments
                       if a.name in values]
            for causal in (False, True):
                def fn(*xs, op=op, tensors=tensors, causal=causal):
                    return op(**dict(zip(tensors, xs)), causal=causal, key_padding_mask=mask)
                inputs = tuple(values[t] for t in tensors)
                with self.subTest(mechanism=name, op=op_name, causal=causal):
                    self.assertTrue(torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7,
                                                             rtol=1e-6))

    def test_bad_input_names_the_argument(self):
        with self.assertRaisesRegex(RuntimeError, "alpha must be > 0"):
            ops.intention(self.q, self.k, self.v, torch.tensor(0.0, dtype=torch.float64))
        with self.assertRaisesRegex(RuntimeError, "key_padding_mask must have shape"):
            ops.softmax(self.q, self.k, self.v, key_padding_mask=self.mask[:, :3])
        with self.assertRaisesRegex(RuntimeError, r"k must have shape \(B, H, n, d\)"):
            ops.intention(self.q, self.k[0], self.v, self.alpha)


class OpBoundaryTest(unittest.TestCase):
    """What the ops take as it comes (issue 13, item 5): views, devices, dtypes, masks, NaN and
    Inf, zero lengths, sizes past 32-bit indices. Every op, through torch.ops.kvq."""

    def setUp(self):
        torch.manual_seed(1)
        self.B, self.H, self.T, self.d, self.dv = 2, 3, 6, 4, 2
        f64 = dict(dtype=torch.float64)
        self.q = torch.randn(self.B, self.H, self.T, self.d, **f64)
        self.k = torch.randn(self.B, self.H, self.T, self.d, **f64)
        self.v = torch.randn(self.B, self.H, self.T, self.dv, **f64)
        self.alpha = torch.tensor([0.5, 1.0, 2.0], **f64)
        self.w = torch.randn(self.H, 10, **f64)
        self.b0 = torch.randn(self.H, **f64)

    def calls(self, causal=False, mask=None):
        """name -> f(q, k, v, alpha) for every op (kv and kv_pos ignore q)."""
        w, b0 = self.w, self.b0
        return {
            "softmax": lambda q, k, v, a: ops.softmax(q, k, v, causal, mask),
            "kv": lambda q, k, v, a: ops.kv(k, v, causal, mask),
            "kv_pos": lambda q, k, v, a: ops.kv_pos(k, v, w, b0, causal, mask),
            "linear": lambda q, k, v, a: ops.linear(q, k, v, causal, mask),
            "linear_identity": lambda q, k, v, a: ops.linear_identity(q, k, v, causal, mask),
            "intention": lambda q, k, v, a: ops.intention(q, k, v, a, causal, mask),
            "softmax_intention": lambda q, k, v, a: ops.softmax_intention(q, k, v, a, causal, mask),
            "kernel_intention": lambda q, k, v, a: ops.kernel_intention(q, k, v, a, causal, mask),
            "attention": lambda q, k, v, a: ops.attention("intention", q, k, v, a, causal=causal,
                                                          key_padding_mask=mask),
        }

    def test_views_give_the_contiguous_result(self):
        views = {
            "permuted": lambda x: x.transpose(1, 2).contiguous().transpose(1, 2),
            "last dim strided": lambda x: x.transpose(-2, -1).contiguous().transpose(-2, -1),
            "expanded over B": lambda x: x[:1].expand_as(x),
            "expanded over rows": lambda x: x[:, :, :1].expand_as(x),
        }
        mask = torch.zeros(self.B, self.T, dtype=torch.bool)
        mask[1, -2:] = True
        for causal in (False, True):
            for name, fn in self.calls(causal, mask[:1].expand_as(mask)).items():
                for view_name, view in views.items():
                    with self.subTest(op=name, causal=causal, view=view_name):
                        outs, grads = [], []
                        for copy in (False, True):
                            leaves = [x.clone().requires_grad_() for x in (self.q, self.k, self.v)]
                            ins = [view(x) for x in leaves]
                            if copy:
                                ins = [x.contiguous().clone() for x in ins]
                            out = fn(*ins, self.alpha)
                            (out.sum(2).sum() + out.pow(2).sum()).backward()
                            outs.append(out.detach())
                            grads += [x.grad if x.grad is not None else torch.zeros_like(x)
                                      for x in leaves]
                        torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
                        for a, b in zip(grads[:3], grads[3:]):
                            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    def test_another_device_dtype_or_mask_kind_is_refused_by_name(self):
        meta = self.k.to("meta")
        for name, fn in self.calls().items():
            with self.subTest(op=name):
                with self.assertRaisesRegex(RuntimeError, "device"):
                    fn(self.q, meta, self.v, self.alpha)
                with self.assertRaisesRegex(RuntimeError, r"\bk\b.*floating|dtype"):
                    fn(self.q, self.k.long(), self.v, self.alpha)
                with self.assertRaisesRegex(RuntimeError, "dtype"):
                    fn(self.q, self.k, self.v.float(), self.alpha)
                with self.assertRaisesRegex(RuntimeError, "key_padding_mask"):
                    self.calls(False, torch.zeros(self.B, self.T, dtype=torch.bool,
                                                  device="meta"))[name](
                        self.q, self.k, self.v, self.alpha)
        # A float mask that requires grad is not a mask: refused, not differentiated.
        float_mask = torch.zeros(self.B, self.T, requires_grad=True)
        for name, fn in self.calls(False, float_mask).items():
            with self.subTest(op=name, mask="float, requires_grad"):
                with self.assertRaisesRegex(RuntimeError, "key_padding_mask must be a bool"):
                    fn(self.q, self.k, self.v, self.alpha)
        with self.assertRaisesRegex(RuntimeError, "alpha"):
            ops.intention(self.q, self.k, self.v, torch.ones(3, dtype=torch.long))
        with self.assertRaisesRegex(RuntimeError, "alpha is on the meta device"):
            ops.intention(self.q, self.k, self.v, self.alpha.to("meta"))
        with self.assertRaisesRegex(RuntimeError, "pos_weight"):
            ops.kv_pos(self.k, self.v, self.w.to("meta"), self.b0.to("meta"))
        with self.assertRaisesRegex(RuntimeError, "pos_weight"):
            ops.attention("softmax", self.q, self.k, self.v, pos_weight=self.w.to("meta"),
                          pos_bias=self.b0.to("meta"))

    def test_nan_gives_nan_rows_where_the_math_says(self):
        q = self.q.clone()
        q[0, 1, 2, 0] = float("nan")
        for causal in (False, True):
            for name, fn in self.calls(causal).items():
                if name in ("kv", "kv_pos"):
                    continue  # no queries of their own
                with self.subTest(op=name, causal=causal):
                    bad = ~fn(q, self.k, self.v, self.alpha).isfinite().all(-1)
                    want = torch.zeros_like(bad)
                    want[0, 1, 2] = True
                    self.assertTrue(torch.equal(bad, want), bad)
        # NaN or Inf at a padded key and value reaches no output.
        mask = torch.zeros(self.B, self.T, dtype=torch.bool)
        mask[:, 4] = True
        for value in (float("nan"), float("inf")):
            k, v = self.k.clone(), self.v.clone()
            k[:, :, 4] = value
            v[:, :, 4] = value
            for causal in (False, True):
                for name, fn in self.calls(causal, mask).items():
                    with self.subTest(op=name, causal=causal, padded=value):
                        out = fn(self.q, k, v, self.alpha)
                        if name in ("kv", "kv_pos"):
                            out = out[:, :, [0, 1, 2, 3, 5]]  # row 4 is the bad key as a query
                        self.assertTrue(out.isfinite().all())

    def test_zero_lengths(self):
        for shape_q, shape_kv, causal in (((2, 3, 0), (2, 3, 5), False),
                                           ((2, 3, 4), (2, 3, 0), False),
                                           ((2, 3, 0), (2, 3, 0), False),
                                           ((0, 3, 5), (0, 3, 5), True)):
            q = torch.randn(*shape_q, self.d, dtype=torch.float64, requires_grad=True)
            k = torch.randn(*shape_kv, self.d, dtype=torch.float64, requires_grad=True)
            v = torch.randn(*shape_kv, self.dv, dtype=torch.float64, requires_grad=True)
            for name, fn in self.calls(causal).items():
                if name in ("kv", "kv_pos") and shape_q != shape_kv:
                    continue
                with self.subTest(op=name, q=shape_q, kv=shape_kv, causal=causal):
                    out = fn(q, k, v, self.alpha)
                    out.pow(2).sum().backward()
                    rows = shape_kv[2] if name in ("kv", "kv_pos") else shape_q[2]
                    self.assertEqual(tuple(out.shape), (shape_q[0], 3, rows, self.dv))
                    if shape_kv[2] == 0:
                        self.assertTrue(torch.equal(out, torch.zeros_like(out)))

    def test_sizes_past_32_bit_indices(self):
        T = 65536  # T * T = 2^32 scores, never formed
        f64 = dict(dtype=torch.float64)
        q, k = (torch.rand(1, 1, T, 1, **f64) + 0.5 for _ in range(2))
        v = torch.randn(1, 1, T, 1, **f64)
        alpha = torch.tensor(0.7, **f64)
        for causal in (False, True):
            kv, kk = (k * v).cumsum(2), (k * k).cumsum(2)
            if not causal:
                kv, kk = kv[:, :, -1:].expand_as(kv), kk[:, :, -1:].expand_as(kk)
            torch.testing.assert_close(ops.linear_identity(q, k, v, causal), q * kv,
                                       rtol=1e-12, atol=0)
            torch.testing.assert_close(ops.intention(q, k, v, alpha, causal), q * kv / (kk + 0.7),
                                       rtol=1e-10, atol=0)
        big = torch.zeros(1, 1, 1, 1).expand(1, 1, 46341, 1)
        with self.assertRaisesRegex(RuntimeError, "kernel_intention: n = 46341 keys"):
            ops.kernel_intention(big, big, big, torch.ones(()))


if __name__ == "__main__":
    unittest.main(verbosity=2)
