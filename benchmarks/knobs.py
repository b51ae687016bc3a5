"""Which speed knobs win what: gptforge's training step and decoding with each knob off and on,
side by side in one process, plus a profile of the training step by kind of work.

    python benchmarks/knobs.py                   # gpt2-124m, context 256, batch 2, 200 new tokens
    python benchmarks/knobs.py --preset gpt2-mini --steps 3 --new-tokens 20   # a quick look

Training variants (fp32): the shipped step (fused AdamW) against PyTorch's default multi-tensor
AdamW, and the LM head + loss with the padded 50304-row matrix against a 50257-row one.
Decoding: one token's matrix-vector products alone (the MLP weights of 12 layers, too big for the
caches) with the weights as trained (row-major), column-major, and column-major split across the
threads (gptforge.model.cpu_decoding.linear); then whole greedy decoding (batch 1): full recompute, the KV cache
with the weights as trained (the compiled float32 kernels where they build), the KV cache after
prepare_for_decoding as on a machine without a C compiler (column-major, the split product), and
prepare_for_decoding in bfloat16.
"""

from __future__ import annotations

import argparse
import statistics
import unittest.mock
from collections import defaultdict

import torch
import torch.nn.functional as F
from compare import MATMULS, timed  # benchmarks/ is on the path when this runs as a script
from torch.profiler import ProfilerActivity, profile

from gptforge import GPT, GPTConfig
from gptforge.device import matmul_peak_flops
from gptforge.generate import generate
from gptforge.model import prepare_for_decoding
from gptforge.model import cpu_decoding
from gptforge.model.cpu_decoding import linear
from gptforge.training.config import OptimArgs
from gptforge.training.optim import make_optimizer

# How the profile's operators are grouped (anything else is "other").
KINDS = {
    "matmul": MATMULS,
    "attention (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                         "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "optimizer": ("aten::_fused_adamw_",),
    "cross-entropy": ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward",
                      "aten::nll_loss_backward"),
    "GELU, LayerNorm": ("aten::gelu", "aten::gelu_backward", "aten::native_layer_norm",
                        "aten::native_layer_norm_backward"),
}


def median_time(fn, repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def training(config: GPTConfig, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = GPT(config).train()
    x = torch.randint(0, config.vocab_size, (batch, config.context_length + 1))
    optimizers = {
        "fused AdamW (shipped)": make_optimizer(model, OptimArgs(lr=1e-4), torch.device("cpu")),
        "foreach AdamW (PyTorch default)": torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True),
    }

    def step(opt):
        loss = model(x[:, :-1], targets=x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for opt in optimizers.values():  # warm-up, and both optimizers get their state
        step(opt)
    times = defaultdict(list)
    for _ in range(steps):  # alternate, so slow phases of the machine hit both
        for name, opt in optimizers.items():
            times[name].append(timed(lambda: step(opt)))
    result = {name: statistics.median(t) for name, t in times.items()}

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(optimizers["fused AdamW (shipped)"])
    by_kind = defaultdict(float)
    for event in prof.key_averages():
        kind = next((k for k, names in KINDS.items() if event.key in names), None)
        if kind:
            by_kind[kind] += event.self_cpu_time_total / 1e6
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
    by_kind["other"] = total - sum(by_kind.values())
    T, c = config.context_length, config
    attention_flops = 12 * c.n_layers * T * c.emb_dim  # per token, inside SDPA, not in the matmuls
    return {"steps": result, "profile": dict(by_kind), "profile_total": total,
            "flops_per_step": model.flops_per_token(T) * batch * T,
            "matmul_flops_per_step": (model.flops_per_token(T) - attention_flops) * batch * T}


def matmul_shapes(config: GPTConfig, batch: int, repeats: int) -> dict:
    """GFLOP/s of each weight's three training matmuls alone: forward x @ W.T, and backward
    dX = dY @ W and dW = dY.T @ x, with W stored as nn.Linear keeps it."""
    torch.manual_seed(0)
    n, d = batch * config.context_length, config.emb_dim
    shapes = {"qkv": (3 * d, d), "attention out": (d, d), "MLP fc": (4 * d, d), "MLP proj": (d, 4 * d),
              "LM head": (config.padded_vocab_size, d)}
    out = {}
    for name, (o, i) in shapes.items():
        w, x, dy = torch.randn(o, i), torch.randn(n, i), torch.randn(n, o)
        flops = 2 * n * o * i
        out[name] = [flops / median_time(f, repeats) / 1e9
                     for f in (lambda: F.linear(x, w), lambda: dy @ w, lambda: dy.t() @ x)]
    return out


def lm_head(config: GPTConfig, batch: int, repeats: int) -> dict:
    """Forward and backward of the LM head and the loss alone, padded or not."""
    torch.manual_seed(0)
    n, d, V = batch * config.context_length, config.emb_dim, config.vocab_size
    h = torch.randn(n, d, requires_grad=True)
    y = torch.randint(0, V, (n,))
    out = {}
    for name, rows in (("50257 rows", V), ("padded 50304 rows (shipped)", config.padded_vocab_size)):
        w = (torch.randn(rows, d) * 0.02).requires_grad_()
        bias = torch.zeros(rows)
        bias[V:] = float("-inf")
        run = lambda: F.cross_entropy(F.linear(h, w, bias), y).backward()  # noqa: E731
        run()
        out[name] = median_time(run, repeats)
    return out


def matrix_vector(config: GPTConfig, repeats: int) -> dict:
    """x (1, d) times the 2 * n_layers MLP weights of the model, as one decoding step does."""
    torch.manual_seed(0)
    d = config.emb_dim
    row_major = [torch.randn(4 * d, d) for _ in range(2 * config.n_layers)]  # as nn.Linear keeps them
    column_major = [w.t().contiguous().t() for w in row_major]
    x = torch.randn(1, d)
    variants = {
        "row-major (as trained)": lambda: [F.linear(x, w) for w in row_major],
        "column-major": lambda: [F.linear(x, w) for w in column_major],
        "column-major, split over threads": lambda: [linear(x, w) for w in column_major],
    }
    out = {}
    with torch.no_grad():
        for name, fn in variants.items():
            fn()
            out[name] = median_time(fn, repeats)
    return {"seconds": out, "bytes": sum(w.numel() * 4 for w in row_major)}


def without_kernels(fn):
    """fn() as on a machine without a C compiler: the compiled float32 kernels hidden."""
    with unittest.mock.patch.object(cpu_decoding, "float_kernels", lambda: None):
        return fn()


def decoding(config: GPTConfig, new_tokens: int, repeats: int) -> dict:
    prompt = torch.randint(0, config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    variants = {}
    torch.manual_seed(0)
    plain = GPT(config).eval()
    variants["full recompute (no cache)"] = lambda: generate(plain, prompt, new_tokens, temperature=0,
                                                             use_cache=False)
    variants["KV cache, row-major weights"] = lambda: generate(plain, prompt, new_tokens, temperature=0)
    torch.manual_seed(0)
    column = without_kernels(lambda: prepare_for_decoding(GPT(config)))  # column-major: the split product
    variants["KV cache, prepare_for_decoding, no compiler"] = lambda: without_kernels(
        lambda: generate(column, prompt, new_tokens, temperature=0))
    torch.manual_seed(0)
    low = prepare_for_decoding(GPT(config), torch.bfloat16)
    variants["KV cache, prepared, bfloat16"] = lambda: generate(low, prompt, new_tokens, temperature=0)
    for fn in variants.values():  # warm-up: the first call pays one-off allocations
        fn()
    times = defaultdict(list)
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    same = torch.equal(variants["KV cache, row-major weights"](), variants["KV cache, prepare_for_decoding, no compiler"]())
    return {"tokens_per_s": {k: new_tokens / statistics.median(v) for k, v in times.items()},
            "column_major_same_tokens": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--gen-repeats", type=int, default=3)
    args = p.parse_args()
    config = GPTConfig.from_preset(args.preset, context_length=args.context_length, dropout=0.0)
    tokens = args.batch_size * config.context_length

    train = training(config, args.batch_size, args.steps)
    peak = matmul_peak_flops(torch.device("cpu"), torch.float32)
    print(f"training step, {args.preset}, context {config.context_length}, batch {args.batch_size}, fp32 "
          f"(median of {args.steps}; matmul peak {peak / 1e9:.0f} GFLOP/s)")
    base = train["steps"]["foreach AdamW (PyTorch default)"]
    for name, s in train["steps"].items():
        print(f"  {name:34s} {s * 1000:7.0f} ms  {tokens / s:7.1f} tokens/s  "
              f"MFU {100 * train['flops_per_step'] / s / peak:4.1f}%  {base / s:.3f}x")
    print(f"profile of one shipped step ({train['profile_total'] * 1000:.0f} ms of operator time):")
    for kind, s in sorted(train["profile"].items(), key=lambda kv: -kv[1]):
        print(f"  {kind:34s} {s * 1000:7.0f} ms  {100 * s / train['profile_total']:4.1f}%")
    matmul_s = train["profile"].get("matmul", 0.0)
    print(f"  matmuls alone run at {train['matmul_flops_per_step'] / matmul_s / 1e9:.0f} GFLOP/s; with nothing "
          f"else the step would give {tokens / matmul_s:.0f} tokens/s")

    print("each training matmul alone, GFLOP/s (forward, dX, dW):")
    for name, rates in matmul_shapes(config, args.batch_size, args.steps).items():
        print(f"  {name:34s} " + "  ".join(f"{r:5.0f}" for r in rates))

    head = lm_head(config, args.batch_size, args.steps)
    print("LM head + cross-entropy, forward and backward:")
    for name, s in head.items():
        print(f"  {name:34s} {s * 1000:7.1f} ms")

    mv = matrix_vector(config, 20)
    print(f"one token's products with the {2 * config.n_layers} MLP weights ({mv['bytes'] / 1e6:.0f} MB):")
    for name, sec in mv["seconds"].items():
        print(f"  {name:34s} {sec * 1000:7.2f} ms  {mv['bytes'] / sec / 1e9:5.1f} GB/s")

    gen = decoding(config, args.new_tokens, args.gen_repeats)
    print(f"greedy decoding, batch 1, {args.new_tokens} new tokens after 8 (median of {args.gen_repeats}):")
    base = gen["tokens_per_s"]["full recompute (no cache)"]
    for name, rate in gen["tokens_per_s"].items():
        print(f"  {name:34s} {rate:7.1f} tokens/s  {rate / base:5.2f}x")
    print(f"  the compiled kernels and torch's path (no compiler) give the same tokens: {gen['column_major_same_tokens']}")


if __name__ == "__main__":
    main()
