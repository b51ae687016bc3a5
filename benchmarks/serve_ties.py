"""Does decoding beside others change a greedy answer? Batched matmuls may round differently from a
single row's, which could flip a near-tie between the two most likely tokens on a long output.

N prompts of different lengths, T new tokens each, greedy: decoded together by the engine (all N
rows at once, each at its own position) and one at a time by the single-stream `generate`. Prints
how many answers are identical, the first differing position of the others, and the largest logit
difference between a row decoded in the batch and alone (the size of the rounding).

    python benchmarks/serve_ties.py                         # gpt2-124m random init, 16 x 256 tokens
    python benchmarks/serve_ties.py --checkpoint runs/mine  # a trained model
"""

from __future__ import annotations

import argparse
import time

import torch

from gptforge.generate import generate, model_for_generation
from gptforge.sampling import Sampling
from gptforge.serve.engine import Engine, Sequence


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--tokens", type=int, default=256)
    args = p.parse_args()
    model = model_for_generation(args.checkpoint, None if args.checkpoint else args.preset, seed=0)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V, (3 + 7 * i,), generator=g).tolist() for i in range(args.prompts)]

    batched: list[list[int]] = [[] for _ in prompts]
    engine = Engine(model, max_batch=len(prompts), max_queue=len(prompts))
    engine.submit([Sequence(pr, Sampling(max_new_tokens=args.tokens, temperature=0.0),
                            lambda t, r, out=out: t is not None and out.append(t)) for pr, out in zip(prompts, batched)])
    start = time.perf_counter()
    while engine.load()["running"] or engine.load()["waiting"]:
        engine.step()
    together_s = time.perf_counter() - start

    start = time.perf_counter()
    alone = [generate(model, torch.tensor([pr]), args.tokens, temperature=0.0)[0, len(pr):].tolist() for pr in prompts]
    alone_s = time.perf_counter() - start

    # The rounding itself: one decoding step of every row together versus each row alone.
    with torch.inference_mode():
        cache = model.new_cache(len(prompts))
        for i, pr in enumerate(prompts):
            model(torch.tensor([pr]), cache.rows(i, i + 1, [0]))
        last = torch.tensor([[pr[-1]] for pr in prompts])
        lengths = [len(pr) for pr in prompts]
        together = model(last, cache.rows(0, len(prompts), lengths))[:, -1]
        single = torch.cat([model(last[i:i + 1], cache.rows(i, i + 1, [lengths[i]]))[:, -1]
                            for i in range(len(prompts))])
    diff = (together - single).abs().max().item()

    same = sum(a == b for a, b in zip(batched, alone))
    firsts = [next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) for a, b in zip(batched, alone) if a != b]
    print(f"{args.checkpoint or args.preset + ' random init'}: {args.prompts} prompts x {args.tokens} greedy tokens")
    print(f"identical answers: {same}/{len(prompts)}; first difference at token {firsts or '-'}")
    print(f"largest logit difference, batched vs alone, one step: {diff:.2e}")
    print(f"time: together {together_s:.1f} s, one at a time {alone_s:.1f} s ({alone_s / together_s:.2f}x)")


if __name__ == "__main__":
    main()
