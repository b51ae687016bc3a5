"""Multiple-choice scoring (`gptforge eval --task hellaswag`): batched against one request at a time.

N four-way items of HellaSwag-like lengths (contexts of 25-100 tokens, endings of 10-45, cut from the
bundled Shakespeare), scored by a randomly initialised gpt2-124m (fp32; the weights do not change
the work). Two contestants, alternating on blocks of items so that the machine's drift hits both:

- one at a time: each (context, ending) request through the model on its own, full logits,
  log_softmax, the ending's tokens summed: what a loop over requests does (lm-evaluation-harness
  with --batch_size 1);
- batched: `score_items` (each context once, through the blocks only, its keys and values cached;
  the endings of `--batch-size` items sorted by length and scored 8 rows to a pass against the cache).

Both give the same log-likelihoods (checked here, 1e-3; the tests check 1e-4 on a small model).

    python benchmarks/multiple_choice.py                    # 1,000 items, gpt2-124m (~25 min on 2 cores)
    python benchmarks/multiple_choice.py --items 300 --block 50   # the run recorded in README.md
    python benchmarks/multiple_choice.py --items 40 --preset gpt2-mini   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from datetime import date

import numpy as np
import torch

from gptforge import GPT, GPTConfig
from gptforge.device import matmul_peak_flops
from gptforge.evaluate.multiple_choice import encode_request, score_items
from gptforge.evaluate.tasks import ChoiceItem
from gptforge.text import read_documents
from gptforge.tokenizer import gpt2


def make_items(n: int, seed: int = 0) -> list[ChoiceItem]:
    enc = gpt2()
    tokens = enc.encode(" ".join(text for _, text in read_documents("builtin:shakespeare")))
    rng = random.Random(seed)

    def piece(lo: int, hi: int) -> str:
        start, length = rng.randrange(len(tokens) - hi), rng.randint(lo, hi)
        return enc.decode(tokens[start:start + length]).strip()

    return [ChoiceItem(piece(25, 100), [piece(10, 45) for _ in range(4)], rng.randrange(4)) for _ in range(n)]


def one_at_a_time(model: GPT, items: list[ChoiceItem]) -> list[list[float]]:
    out = []
    with torch.no_grad():
        for item in items:
            row = []
            for choice in item.choices:
                context, continuation = encode_request(gpt2(), item.context, " " + choice)
                ids = torch.tensor([context + continuation])
                logp = torch.log_softmax(model(ids[:, :-1])[0].float(), dim=-1)  # (T, V)
                targets = ids[0, 1:]
                row.append(float(logp[torch.arange(len(targets)), targets][-len(continuation):].double().sum()))
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--block", type=int, default=100, help="items per alternation (default 100)")
    parser.add_argument("--batch-size", type=int, default=8, help="items per batch (default 8, as the CLI)")
    parser.add_argument("--preset", default="gpt2-124m")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset)).eval()
    items = make_items(args.items)
    enc = gpt2().encode
    ctx_tokens = np.mean([len(enc(i.context)) for i in items])
    end_tokens = np.mean([len(enc(" " + c)) for i in items for c in i.choices])
    peak = matmul_peak_flops(torch.device("cpu"), torch.float32, n=2048) / 1e9
    print(f"{date.today()}  {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; fp32 matmul peak {peak:.0f} GFLOP/s")
    print(f"{args.preset}: {args.items} four-way items, context {ctx_tokens:.1f} tokens and ending "
          f"{end_tokens:.1f} tokens on average")

    times = {"one at a time": 0.0, "batched": 0.0}
    scores = {"one at a time": [], "batched": []}
    for b, start in enumerate(range(0, len(items), args.block)):
        block = items[start:start + args.block]
        order = ["one at a time", "batched"] if b % 2 == 0 else ["batched", "one at a time"]
        for name in order:
            began = time.perf_counter()
            got = one_at_a_time(model, block) if name == "one at a time" else \
                score_items(model, block, batch_size=args.batch_size)
            times[name] += time.perf_counter() - began
            scores[name] += got
        print(f"  block {b + 1}: one at a time {times['one at a time']:.1f} s, batched {times['batched']:.1f} s "
              f"(so far)", flush=True)
    gap = np.abs(np.array(scores["batched"]) - np.array(scores["one at a time"])).max()
    assert gap < 1e-3, gap
    print(f"largest log-likelihood difference between the two: {gap:.2e}")
    print("| contestant | time (s) | items/s | speed-up |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.1f} | {args.items / t:.2f} | {times['one at a time'] / t:.2f}x |")


if __name__ == "__main__":
    main()
