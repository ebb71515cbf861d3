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
