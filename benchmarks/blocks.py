"""Training speed and MFU of GPT-2's block against the modern one (and Muon against AdamW), measured
side by side in one process, the contestants alternating (this machine drifts by +-15% in a day).

    python benchmarks/blocks.py                      # gpt2-124m vs modern-124m, context 256, batch 2
    python benchmarks/blocks.py --rounds 3 --steps 4 --context-length 128

Each contestant is `gptforge bench train` (gptforge.bench.bench_train): the median time of a whole
training step on random tokens; MFU = the model's 6N + 12 L T d FLOPs per token times tokens/s over
a large fp32 matmul measured on the spot. Both presets have GPT-2 small's shape and, with SwiGLU's
8/3 width, blocks of the same size, so their FLOPs per token are within 0.1% of each other: the
comparison is of how well each block uses the machine.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from gptforge.bench import bench_train
from gptforge.device import matmul_peak_flops

CONTESTANTS = {
    "gpt2 block, AdamW": dict(preset="gpt2-124m"),
    "modern block, AdamW": dict(preset="modern-124m"),
    "modern block, Muon": dict(preset="modern-124m", optimizer="muon"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default: 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per contestant and round (default: 5)")
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=2)
    args = p.parse_args()
    gflops = matmul_peak_flops(torch.device("cpu"), torch.float32, n=2048) / 1e9
    print(f"fp32 2048x2048 matmul: {gflops:.0f} GFLOP/s; torch {torch.__version__}, {torch.get_num_threads()} threads")
    results: dict[str, list[dict]] = {name: [] for name in CONTESTANTS}
    for _ in range(args.rounds):
        for name, kwargs in CONTESTANTS.items():
            results[name].append(bench_train(context_length=args.context_length, batch_size=args.batch_size,
                                             steps=args.steps, warmup=1, device="cpu", **kwargs))
    base = statistics.median(r["tokens_per_s"] for r in results["gpt2 block, AdamW"])
    print("| contestant | parameters | step (ms) | tokens/s | MFU | vs gpt2 block |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        tokens = statistics.median(r["tokens_per_s"] for r in runs)
        step = statistics.median(r["step_s"] for r in runs)
        mfu = statistics.median(r["mfu"] for r in runs)
        print(f"| {name} | {runs[0]['params']:,} | {1000 * step:.0f} | {tokens:.1f} | {100 * mfu:.0f}% | "
              f"{tokens / base:.2f}x |")


if __name__ == "__main__":
    main()
