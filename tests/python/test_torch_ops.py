"""torch.ops.kvq.* from Python: schemas load, outputs match plain-PyTorch float64 references,
gradients pass torch.autograd.gradcheck (finite differences, float64).

Usage: python3 test_torch_ops.py path/to/libkvq_torch.so
"""
import math
import sys
import unittest

import torch

LIB = sys.argv.pop(1) if len(sys.argv) > 1 else "build/libkvq_torch.so"
torch.ops.load_library(LIB)
ops = torch.ops.kvq


def visible(b, n, causal, mask, t):
    """Keys query t of batch b may use."""
    keys = range(t + 1) if causal else range(n)
    return [s for s in keys if mask is None or not mask[b, s]]


def ref_softmax(q, k, v, causal=False, mask=None, scale=None):
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    for b in range(q.shape[0]):
        for t in range(q.shape[2]):
            s = visible(b, k.shape[2], causal, mask, t)
            if s:
                w = torch.softmax(q[b, :, t:t + 1] @ k[b, :, s].transpose(-1, -2) * scale, -1)
                out[b, :, t] = (w @ v[b, :, s])[:, 0]
    return out


def ref_intention(q, k, v, alpha, causal=False, mask=None):
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    d = q.shape[-1]
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            a = alpha if alpha.dim() == 0 else alpha[h]
            for t in range(q.shape[2]):
                s = visible(b, k.shape[2], causal, mask, t)
                ks, vs = k[b, h, s], v[b, h, s]
                w = torch.linalg.solve(ks.T @ ks + a * torch.eye(d, dtype=torch.float64), ks.T @ vs)
                out[b, h, t] = q[b, h, t] @ w
    return out


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
        small = [x[:, :, :6, :3].clone().requires_grad_() for x in (self.q, self.k, self.v)]
        mask = self.mask[:, 3:].clone()
        alpha = self.alpha.clone().requires_grad_()
        w = torch.randn(2, 10, dtype=torch.float64, requires_grad=True)
        b0 = torch.randn(2, dtype=torch.float64, requires_grad=True)
        q, k, v = small
        for causal in (False, True):
            cases = {
                "softmax": (lambda q, k, v: ops.softmax(q, k, v, causal, mask), (q, k, v)),
                "kv": (lambda k, v: ops.kv(k, v, causal, mask), (k, v)),
                "kv_pos": (lambda k, v, w, b0: ops.kv_pos(k, v, w, b0, causal, mask), (k, v, w, b0)),
                "linear": (lambda q, k, v: ops.linear(q, k, v, causal, mask), (q, k, v)),
                "linear_identity": (lambda q, k, v: ops.linear_identity(q, k, v, causal, mask),
                                    (q, k, v)),
                "intention": (lambda q, k, v, a: ops.intention(q, k, v, a, causal, mask),
                              (q, k, v, alpha)),
                "softmax_intention": (
                    lambda q, k, v, a: ops.softmax_intention(q, k, v, a, causal, mask),
                    (q, k, v, alpha)),
                "kernel_intention": (
                    lambda q, k, v, a: ops.kernel_intention(q, k, v, a, causal, mask),
                    (q, k, v, alpha)),
            }
            for name, (fn, inputs) in cases.items():
                with self.subTest(op=name, causal=causal):
                    self.assertTrue(torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7,
                                                             rtol=1e-6))

    def test_bad_input_names_the_argument(self):
        with self.assertRaisesRegex(RuntimeError, "alpha must be > 0"):
            ops.intention(self.q, self.k, self.v, torch.tensor(0.0, dtype=torch.float64))
        with self.assertRaisesRegex(RuntimeError, "key_padding_mask must have shape"):
            ops.softmax(self.q, self.k, self.v, key_padding_mask=self.mask[:, :3])
        with self.assertRaisesRegex(RuntimeError, r"k must have shape \(B, H, n, d\)"):
            ops.intention(self.q, self.k[0], self.v, self.alpha)


if __name__ == "__main__":
    unittest.main(verbosity=2)
