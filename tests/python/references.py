"""Plain-PyTorch float64 references of the KVQ mechanisms, row by row over the visible keys,
shared by the Python suites (test_torch_ops.py, test_package.py)."""
import math

import torch


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
