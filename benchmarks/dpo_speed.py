"""DPO tokens/s against pretraining tokens/s, for the same model on the same machine.

All jobs run through the library's entry points (`train`, `finetune --method dpo`), in
alternation, in one process, from the same weights: pretraining continues the base on
builtin:shakespeare with the base's own tokenizer; DPO tunes the base's chat model (the same
shape, plus the two chat tokens) on builtin:tasks-preferences, with the reference log-probabilities
cached before training (their one forward per record is timed apart and reported), computed per
batch from a frozen copy, and with LoRA per batch with the adapter turned off. DPO counts the real
tokens of both answers' sequences (the reference pass reads the same tokens again and is not
counted). Each rate is taken between the evaluations at --skip and at the last step.

    python benchmarks/dpo_speed.py --base runs/mine --chat runs/tasks
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import torch
from alternating import add_harness_flags, alternate, print_table  # benchmarks/, beside this script

from gptforge import TrainConfig
from gptforge.training import train
from gptforge.training.config import FinetuneConfig
from gptforge.training.finetune import finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the pretrained base (a run folder with its tokenizer/)")
    parser.add_argument("--chat", required=True, help="the base fine-tuned into a chat model (tasks-full)")
    parser.add_argument("--batch-size", type=int, default=8, help="pretraining windows per batch")
    parser.add_argument("--dpo-batch-size", type=int, default=16, help="DPO pairs per batch (two sequences each)")
    add_harness_flags(parser, steps=25, skip=5, rounds=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dpo-speed-"))
    common = dict(max_steps=args.steps, eval_every=args.skip, eval_batches=1, save_every=0, lr=1e-5,
                  device="cpu", seed=0)
    dpo = dict(init_from=args.chat, data="builtin:tasks-preferences", method="dpo", batch_size=args.dpo_batch_size,
               epochs=1000, response_tokens=0, **common)
    jobs = {
        "pretrain": lambda out: train(TrainConfig.of(
            init_from=args.base, data="builtin:shakespeare", tokenizer=str(Path(args.base) / "tokenizer"),
            out=str(out), batch_size=args.batch_size, **common), progress=False),
        "DPO, reference cached": lambda out: finetune(FinetuneConfig.of(out=str(out), **dpo), progress=False),
        "DPO, reference per batch (frozen copy)": lambda out: finetune(FinetuneConfig.of(
            out=str(out), reference="per-batch", **dpo), progress=False),
        "DPO LoRA r=16, reference per batch (adapter off)": lambda out: finetune(FinetuneConfig.of(
            out=str(out), reference="per-batch", lora_rank=16, **dpo), progress=False),
    }
    cache_s: list[float] = []

    def reading_the_cache_time(job):
        def run(out: Path) -> None:
            said = StringIO()
            with redirect_stdout(said):  # the loop's lines, read for the reference cache's time
                job(out)
            if found := re.search(r"pairs cached in \S+ \(([\d.]+) s\)", said.getvalue()):
                cache_s.append(float(found.group(1)))
        return run

    rates = alternate({name: reading_the_cache_time(job) for name, job in jobs.items()}, args.rounds, args.skip, work)
    print(f"\n{args.steps} steps per run, rate from step {args.skip}, median of {args.rounds} alternating rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; caching the reference of the 300 "
          f"pairs took {statistics.median(cache_s):.1f} s (median)")
    print_table(rates)

if __name__ == "__main__":
    main()
