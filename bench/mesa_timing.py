"""Times kvq.functional.mesa on the CPU against causal intention and a per-token dense reference,
after checking it against that reference. A throwaway measurement for issue 41 (not `kvq bench`):

    KVQ_LIBRARY=build/libkvq_torch.so PYTHONPATH=python python bench/mesa_timing.py [T ...]

B=4, H=8, d=dv=64, float32 by default; the dense reference (one batched torch.linalg.solve per
token, all heads at once, autograd for its backward) runs at --ref-length tokens only.
"""
import argparse
import time

import torch

from kvq import functional as KF


def make(B, H, T, d, dv, dtype, seed=0):
    torch.manual_seed(seed)
    q = torch.randn(B, H, T, d, dtype=dtype)
    k = torch.randn(B, H, T, d, dtype=dtype) / d ** 0.5
    v = torch.randn(B, H, T, dv, dtype=dtype)
    g = torch.nn.functional.logsigmoid(torch.randn(B, H, T, dtype=dtype) + 3)  # about -0.05
    beta = torch.sigmoid(torch.randn(B, H, T, dtype=dtype))
    lam = 0.5 + torch.rand(H, d, dtype=dtype)
    return q, k, v, g, beta, lam


def dense(q, k, v, g, beta, lam):
    """Per token: dense states and one batched solve over (B, H)."""
    B, H, T, d = q.shape
    skk = q.new_zeros(B, H, d, d)
    skv = q.new_zeros(B, H, d, v.shape[-1])
    ridge = torch.diag_embed(lam.expand(H, d))
    rows = []
    for t in range(T):
        a = g[:, :, t].exp()[..., None, None]
        bk = beta[:, :, t, None] * k[:, :, t]
        skk = a * skk + bk[..., :, None] * k[:, :, t, None, :]
        skv = a * skv + bk[..., :, None] * v[:, :, t, None, :]
        x = torch.linalg.solve(skk + ridge, q[:, :, t, :, None])
        rows.append((skv.transpose(-2, -1) @ x).squeeze(-1))
    return torch.stack(rows, 2)


def timed(fn, repeat):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def fwd(f, args):
    def run():
        with torch.no_grad():
            f(*args)
    return run


def fwd_bwd(f, args):
    leaves = [a.detach().clone().requires_grad_() for a in args]

    def run():
        out = f(*leaves)
        out.backward(torch.ones_like(out))
    return run


def main():
    p = argparse.ArgumentParser()
    p.add_argument("lengths", nargs="*", type=int, default=[1024, 4096])
    p.add_argument("--ref-length", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    B, H, d, dv = 4, 8, 64, 64
    print(f"threads={torch.get_num_threads()} B={B} H={H} d={d} dv={dv} float32, best of {a.repeat}")
    # Correctness first: float32 kvq against the float64 dense reference.
    x = make(B, H, a.ref_length, d, dv, torch.float64)
    want = dense(*x)
    got = KF.mesa(*(t.float() for t in x))
    err = ((got.double() - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
    print(f"check: T={a.ref_length} float32 mesa vs float64 dense reference, nrmse {err:.2e}")
    mesa = lambda q, k, v, g, beta, lam: KF.mesa(q, k, v, g, beta, lam)
    alpha = torch.tensor(1.0)
    intention = lambda q, k, v, g, beta, lam: KF.intention(q, k, v, alpha, causal=True)
    x = make(B, H, a.ref_length, d, dv, torch.float32)
    t_ref = timed(fwd(dense, x), 1)
    t_ref_b = timed(fwd_bwd(dense, x), 1)
    t_m = timed(fwd(mesa, x), a.repeat)
    t_m_b = timed(fwd_bwd(mesa, x), a.repeat)
    print(f"T={a.ref_length}: dense per-token reference fwd {t_ref:.3f} s, fwd+bwd {t_ref_b:.3f} s; "
          f"mesa fwd {t_m:.3f} s ({t_ref / t_m:.1f}x), fwd+bwd {t_m_b:.3f} s ({t_ref_b / t_m_b:.1f}x)")
    for T in a.lengths:
        x = make(B, H, T, d, dv, torch.float32)
        t_m = timed(fwd(mesa, x), a.repeat)
        t_m_b = timed(fwd_bwd(mesa, x), a.repeat)
        t_i = timed(fwd(intention, x), a.repeat)
        t_i_b = timed(fwd_bwd(intention, x), a.repeat)
        tok = B * T
        print(f"T={T}: mesa fwd {t_m:.3f} s ({tok / t_m:.0f} tok/s), fwd+bwd {t_m_b:.3f} s; "
              f"causal intention fwd {t_i:.3f} s, fwd+bwd {t_i_b:.3f} s; "
              f"mesa/intention fwd {t_m / t_i:.1f}x, fwd+bwd {t_m_b / t_i_b:.1f}x")


if __name__ == "__main__":
    main()
