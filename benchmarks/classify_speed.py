"""Classification fine-tuning tokens/s against pretraining tokens/s, for the same model on the same
machine, side by side.

Every job starts from the same base model (default: a `speedrun-cpu` run) and goes through the
library's own entry points (`train` with --init-from on builtin:shakespeare, `finetune --task
classify` on builtin:sources) and the shared loop, in alternation, in one process. Classification
counts real tokens only (not the padding); its batch holds about as many tokens as a pretraining
batch (passages are short, so more of them). The rate of each run is taken between its
evaluations at --skip and at the last step (start-up and evaluations left out).

    python benchmarks/classify_speed.py --base runs/speedrun
    python benchmarks/classify_speed.py --base runs/speedrun --rounds 1 --steps 10 --skip 5   # a quick look
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from alternating import add_harness_flags, alternate, print_table  # benchmarks/, beside this script

from gptforge import TrainConfig
from gptforge.training import train
from gptforge.training.config import FinetuneConfig
from gptforge.training.finetune import finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the model every job starts from (a speedrun-cpu run)")
    parser.add_argument("--batch-size", type=int, default=8, help="pretraining windows per batch")
    parser.add_argument("--classify-batch-size", type=int, default=24, help="passages per classification batch")
    add_harness_flags(parser, steps=30, skip=10, rounds=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="classify-speed-"))
    common = {"init_from": args.base, "max_steps": args.steps, "eval_every": args.skip, "eval_batches": 1,
              "save_every": 0, "lr": 1e-4, "device": "cpu", "seed": 0}

    def classify(out: Path, **fields):
        cfg = FinetuneConfig.of(data="builtin:sources", task="classify", out=str(out),
                                batch_size=args.classify_batch_size, epochs=1000, **common, **fields)
        finetune(cfg, progress=False)

    jobs = {
        "pretrain": lambda out: train(TrainConfig.of(data="builtin:shakespeare", out=str(out), val_fraction=0.01,
                                                     batch_size=args.batch_size, **common), progress=False),
        "classify (all weights)": lambda out: classify(out),
        "classify (last block + head)": lambda out: classify(out, trainable="last", train_blocks=1),
        "classify (head only)": lambda out: classify(out, trainable="head"),
        "classify (LoRA r=8 + head)": lambda out: classify(out, lora_rank=8),
    }
    rates = alternate(jobs, args.rounds, args.skip, work)
    print(f"\n{args.base}, {args.steps} steps per run, rate from step {args.skip}, median of {args.rounds} "
          f"alternating rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print_table(rates)

if __name__ == "__main__":
    main()
