"""kvq from Python beside PyTorch's own attention, in one run (issue 38; docs/results/benchmarks.md).

    python bench/python_vs_sdpa.py ops   # kvq.functional vs F.scaled_dot_product_attention
    python bench/python_vs_sdpa.py lm    # one training step of a small causal LM:
                                         # kvq.nn.MultiHeadKVQ vs torch.nn.MultiheadAttention

ops: float32 q, k, v (B, H, T, d) with B=4 H=8 d=64 at T=1024 and 4096, and B=1 at T=16384;
causal and not; the forward alone and forward+backward (gradients of a fixed dO with respect to
q, k, v); the minimum time over repetitions (at least --min-time seconds, after a warm-up) and the
peak memory above the level before the call (Linux VmHWM, reset through /proc/self/clear_refs),
output and input gradients included. Each kvq mechanism's time is divided by SDPA's in the same
mode: ratio < 1 means kvq is faster.

lm: embedding, --layers pre-norm blocks (attention, 4x GELU MLP), tied head; AdamW; batch --batch
of T tokens; one step = forward, cross-entropy, backward, optimiser step, timed as above.

Uses the installed package, or the build tree with PYTHONPATH=python (build/libkvq_torch.so).
Measure on an idle machine; the gemm rate printed first is the machine's ceiling.
"""
import argparse
import ctypes
import json
import time

import torch
import torch.nn.functional as F

import kvq


def peak_extra_bytes(fn):
    """Peak resident memory while fn runs, above the resident memory before it. Free heap memory
    is returned to the system first (malloc_trim), as kvq bench does, so memory that earlier
    calls freed but glibc kept is not mistaken for memory in use."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    def field(name):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
        return float("nan")
    try:
        with open("/proc/self/clear_refs", "w") as reset:
            reset.write("5")
    except OSError:
        fn()
        return float("nan")
    before = field("VmRSS:")
    fn()
    return field("VmHWM:") - before


def min_time(fn, seconds):
    fn()  # warm-up
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops():
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / min_time(lambda: a @ b, 0.5) / 1e9


def attention_calls(causal):
    """name -> f(q, k, v): kvq's mechanisms through the package, and PyTorch's SDPA."""
    alpha = torch.ones(8)
    return {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "softmax": lambda q, k, v: kvq.functional.softmax(q, k, v, causal=causal),
        "kv": lambda q, k, v: kvq.functional.kv(k, v, causal=causal),
        "intention": lambda q, k, v: kvq.functional.intention(q, k, v, alpha[:q.shape[1]],
                                                              causal=causal),
        "linear": lambda q, k, v: kvq.functional.linear(q, k, v, causal=causal),
    }


def bench_ops(args):
    rows = []
    shapes = [(4, 1024), (4, 4096), (1, 16384)]
    for batch, length in shapes:
        if args.lengths and length not in args.lengths:
            continue
        for causal in (False, True):
            torch.manual_seed(0)
            q, k, v, grad = (torch.randn(batch, 8, length, 64) for _ in range(4))
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            for name, fn in attention_calls(causal).items():
                def forward():
                    with torch.no_grad():
                        fn(q, k, v)

                def both():
                    out = fn(*leaves)
                    torch.autograd.grad(out, leaves, grad, allow_unused=True)  # kv: no q

                row = {"mechanism": name, "B": batch, "T": length, "causal": causal,
                       "forward_ms": 1e3 * min_time(forward, args.min_time),
                       "forward_backward_ms": 1e3 * min_time(both, args.min_time),
                       "forward_MiB": peak_extra_bytes(forward) / 2 ** 20,
                       "forward_backward_MiB": peak_extra_bytes(both) / 2 ** 20}
                rows.append(row)
                base = next(r for r in rows if r["mechanism"] == "sdpa" and r["B"] == batch
                            and r["T"] == length and r["causal"] == causal)
                row["fwd_ratio"] = row["forward_ms"] / base["forward_ms"]
                row["fwd_bwd_ratio"] = row["forward_backward_ms"] / base["forward_backward_ms"]
                print("{mechanism:10s} B={B} T={T:<6d} causal={causal!s:5s} fwd {forward_ms:9.1f} ms"
                      " ({fwd_ratio:.2f}x sdpa, {forward_MiB:.0f} MiB)  fwd+bwd "
                      "{forward_backward_ms:9.1f} ms ({fwd_bwd_ratio:.2f}x sdpa, "
                      "{forward_backward_MiB:.0f} MiB)".format(**row), flush=True)
    return rows


class Block(torch.nn.Module):
    def __init__(self, width, heads, use_kvq):
        super().__init__()
        self.use_kvq = use_kvq
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        if use_kvq:
            self.attn = kvq.nn.MultiHeadKVQ(width, heads, mechanism="softmax", batch_first=True)
        else:
            self.attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                       torch.nn.Linear(4 * width, width))

    def forward(self, x, causal_mask):
        h = self.norm1(x)
        if self.use_kvq:
            a, _ = self.attn(h, h, h, is_causal=True)
        else:
            a, _ = self.attn(h, h, h, attn_mask=causal_mask, is_causal=True, need_weights=False)
        x = x + a
        return x + self.mlp(self.norm2(x))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab, width, heads, layers, use_kvq):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(Block(width, heads, use_kvq) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, tokens):
        length = tokens.shape[1]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(length)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x) @ self.embed.weight.t()


def bench_lm(args):
    rows = []
    for length in args.lengths or [256, 1024, 2048]:
        times = {}
        for name in ("torch.nn.MultiheadAttention", "kvq.nn.MultiHeadKVQ"):
            torch.manual_seed(0)
            model = TinyLM(256, args.width, args.heads, args.layers, name.startswith("kvq"))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            tokens = torch.randint(0, 256, (args.batch, length + 1))

            def step():
                logits = model(tokens[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            times[name] = min_time(step, args.min_time)
            peak = peak_extra_bytes(step)
            rows.append({"model": name, "T": length, "step_ms": 1e3 * times[name],
                         "tokens_per_s": args.batch * length / times[name],
                         "peak_MiB": peak / 2 ** 20})
        ratio = times["kvq.nn.MultiHeadKVQ"] / times["torch.nn.MultiheadAttention"]
        for row in rows[-2:]:
            row["kvq_over_torch"] = ratio
            print("{model:28s} T={T:<5d} step {step_ms:8.1f} ms  {tokens_per_s:8.0f} tok/s  "
                  "{peak_MiB:6.0f} MiB  kvq/torch {kvq_over_torch:.2f}".format(**row), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["ops", "lm"])
    parser.add_argument("--lengths", type=int, nargs="*", help="only these T")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--batch", type=int, default=8, help="lm: batch size")
    parser.add_argument("--width", type=int, default=256, help="lm: model width")
    parser.add_argument("--heads", type=int, default=4, help="lm: heads (width / heads = 64)")
    parser.add_argument("--layers", type=int, default=2, help="lm: blocks")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kvq from "
          f"{kvq.library_path}; gemm {gemm_gflops():.1f} GFLOP/s", flush=True)
    rows = bench_ops(args) if args.what == "ops" else bench_lm(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "rows": rows}, out, indent=1)


if __name__ == "__main__":
    main()
