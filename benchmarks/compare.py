"""gptforge against transformers' GPT-2 and against the reference code's approach, side by side.

One process, one machine, the same model size, measured in alternation so that the machine's noise
hits every contestant alike:

- training step (forward, cross-entropy, backward, AdamW) on random tokens;
- greedy generation of N new tokens after a short prompt.

"reference" is a plain re-implementation of how the reference material writes GPT-2: hand-written
LayerNorm and GELU, separate query/key/value projections, an explicit causal mask and softmax, an
untied output head, PyTorch-default AdamW, and generation that recomputes the whole context for every
new token. transformers needs `pip install transformers`.

    python benchmarks/compare.py                       # gpt2-124m, ctx 256, batch 2, 200 new tokens
    python benchmarks/compare.py --preset gpt2-tiny --steps 3 --new-tokens 20   # a quick look
    python benchmarks/compare.py --write-readme        # also record the table in benchmarks/README.md
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from gptforge import GPT, GPTConfig
from gptforge.device import matmul_peak_flops
from gptforge.evaluate import batch_loss
from gptforge.generate import generate
from gptforge.model import prepare_for_decoding
from gptforge.training.config import OptimArgs
from gptforge.training.optim import make_optimizer

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")  # profiler names of the matmul kernels

# --- the reference approach -----------------------------------------------------------------------

class RefLayerNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.scale, self.shift, self.eps = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d)), 1e-5

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class RefGELU(nn.Module):
    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


class RefAttention(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        d, self.h = c.emb_dim, c.n_heads
        self.q, self.k, self.v = (nn.Linear(d, d, bias=c.qkv_bias) for _ in range(3))
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(c.dropout)
        self.register_buffer("mask", torch.triu(torch.ones(c.context_length, c.context_length), 1))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (f(x).view(B, T, self.h, C // self.h).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(2, 3)
        scores.masked_fill_(self.mask.bool()[:T, :T], -torch.inf)
        weights = self.drop(torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1))
        return self.out((weights @ v).transpose(1, 2).reshape(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.n1, self.att, self.n2 = RefLayerNorm(c.emb_dim), RefAttention(c), RefLayerNorm(c.emb_dim)
        self.ff = nn.Sequential(nn.Linear(c.emb_dim, 4 * c.emb_dim), RefGELU(), nn.Linear(4 * c.emb_dim, c.emb_dim))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x):
        x = x + self.drop(self.att(self.n1(x)))
        return x + self.drop(self.ff(self.n2(x)))


class RefGPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.config = c
        self.tok, self.pos = nn.Embedding(c.vocab_size, c.emb_dim), nn.Embedding(c.context_length, c.emb_dim)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.Sequential(*(RefBlock(c) for _ in range(c.n_layers)))
        self.norm = RefLayerNorm(c.emb_dim)
        self.head = nn.Linear(c.emb_dim, c.vocab_size, bias=False)

    def forward(self, idx):
        x = self.drop(self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device)))
        return self.head(self.norm(self.blocks(x)))


@torch.no_grad()
def ref_generate(model: RefGPT, idx, new_tokens: int):
    for _ in range(new_tokens):  # the whole (cropped) context, every time
        logits = model(idx[:, -model.config.context_length:])[:, -1, :]
        idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return idx


# --- contestants ----------------------------------------------------------------------------------

def make_contestants(config: GPTConfig, with_transformers: bool):
    torch.manual_seed(0)
    ours = GPT(config)
    ref = RefGPT(config)
    out = {
        "gptforge": dict(model=ours, step=lambda m, x: batch_loss(m, x[:, :-1], x[:, 1:]),
                         gen=lambda m, idx, n: generate(m, idx, n, temperature=0.0),
                         prepare=prepare_for_decoding,
                         opt=make_optimizer(ours, OptimArgs(lr=1e-4), torch.device("cpu"))),
        "reference": dict(model=ref, step=lambda m, x: nn.functional.cross_entropy(
                              m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()),
                          gen=ref_generate,
                          opt=torch.optim.AdamW(ref.parameters(), lr=1e-4, foreach=False)),
    }
    if with_transformers:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length,
                                        n_embd=config.emb_dim, n_layer=config.n_layers, n_head=config.n_heads,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        out["transformers"] = dict(
            model=hf, step=lambda m, x: m(input_ids=x[:, :-1], labels=x[:, :-1]).loss,
            gen=lambda m, idx, n: m.generate(idx, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                             use_cache=True, pad_token_id=0,
                                             attention_mask=torch.ones_like(idx)),
            opt=torch.optim.AdamW(hf.parameters(), lr=1e-4))
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args) -> dict:
    torch.set_num_threads(torch.get_num_threads())
    config = GPTConfig.from_preset(args.preset, context_length=args.context_length, dropout=0.0)
    contestants = make_contestants(config, not args.no_transformers)
    T, B = config.context_length, args.batch_size
    x = torch.randint(0, config.vocab_size, (B, T + 1))
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_tokens))

    def train_step(c):
        c["model"].train()
        loss = c["step"](c["model"], x)
        c["opt"].zero_grad(set_to_none=True)
        loss.backward()
        c["opt"].step()

    train_times = {name: [] for name in contestants}
    for _ in range(args.warmup):
        for c in contestants.values():
            train_step(c)
    for _ in range(args.steps):  # alternate, so slow phases of the machine hit everyone
        for name, c in contestants.items():
            train_times[name].append(timed(lambda: train_step(c)))

    # The ceiling: the time gptforge's step spends in matmuls, which every implementation of this
    # model must do (6N FLOPs per token); everything else is what an implementation can remove.
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(contestants["gptforge"])
    matmul_s = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMULS) / 1e6

    gen_times = {name: [] for name in contestants}
    for c in contestants.values():
        c.get("prepare", nn.Module.eval)(c["model"])
        c["gen"](c["model"], prompt, 4)  # warm-up
    for _ in range(args.gen_repeats):
        for name, c in contestants.items():
            with torch.no_grad():
                gen_times[name].append(timed(lambda: c["gen"](c["model"], prompt, args.new_tokens)))

    peak = matmul_peak_flops(torch.device("cpu"), torch.float32)
    flops = contestants["gptforge"]["model"].flops_per_token(T)
    results = {}
    for name in contestants:
        step = statistics.median(train_times[name])
        gen = statistics.median(gen_times[name])
        results[name] = {"train_tokens_per_s": B * T / step, "step_s": step,
                         "gen_tokens_per_s": args.new_tokens / gen,
                         "mfu": flops * B * T / step / peak}
    return {"results": results, "peak_gflops": peak / 1e9, "config": config, "args": args,
            "matmul_s": matmul_s, "matmul_flops": (flops - 12 * config.n_layers * T * config.emb_dim) * B * T}


def table(report: dict) -> str:
    r = report["results"]
    lines = ["| implementation | train tokens/s | step (ms) | train MFU | vs reference | generate tokens/s | vs reference |",
             "|---|---|---|---|---|---|---|"]
    base = r["reference"]
    for name, v in r.items():
        lines.append(f"| {name} | {v['train_tokens_per_s']:.1f} | {v['step_s'] * 1000:.0f} | {100 * v['mfu']:.0f}% | "
                     f"{v['train_tokens_per_s'] / base['train_tokens_per_s']:.2f}x | {v['gen_tokens_per_s']:.1f} | "
                     f"{v['gen_tokens_per_s'] / base['gen_tokens_per_s']:.2f}x |")
    if "transformers" in r:
        t = r["transformers"]
        g = r["gptforge"]
        lines.append("")
        lines.append(f"gptforge / transformers: training {g['train_tokens_per_s'] / t['train_tokens_per_s']:.2f}x, "
                     f"generation {g['gen_tokens_per_s'] / t['gen_tokens_per_s']:.2f}x. Matmul peak measured: "
                     f"{report['peak_gflops']:.0f} GFLOP/s fp32.")
    tokens = report["args"].batch_size * report["config"].context_length
    ceiling = tokens / report["matmul_s"]
    lines.append("")
    lines.append(f"Ceiling: the matmuls of one gptforge step took {report['matmul_s'] * 1000:.0f} ms "
                 f"({report['matmul_flops'] / report['matmul_s'] / 1e9:.0f} GFLOP/s); with nothing else a "
                 f"step would give {ceiling:.0f} tokens/s = "
                 + ", ".join(f"{ceiling / v['train_tokens_per_s']:.2f}x {name}" for name, v in r.items()
                             if name != "gptforge") + ".")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--gen-repeats", type=int, default=2)
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--write-readme", action="store_true")
    args = p.parse_args()
    report = run(args)
    text = table(report)
    print(text)
    if args.write_readme:
        import transformers

        header = (f"\n### {args.preset}, context {args.context_length}, batch {args.batch_size}, "
                  f"{args.new_tokens} new tokens ({date.today().isoformat()})\n\n"
                  f"`python benchmarks/compare.py` on {platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} threads, torch {torch.__version__}, transformers "
                  f"{transformers.__version__}, Python {platform.python_version()}. Median of {args.steps} "
                  f"training steps and {args.gen_repeats} generations, contestants alternating.\n\n")
        readme = Path(__file__).with_name("README.md")
        existing = readme.read_text() if readme.exists() else "# Benchmarks\n"
        readme.write_text(existing.rstrip("\n") + "\n" + header + text + "\n")


if __name__ == "__main__":
    main()
