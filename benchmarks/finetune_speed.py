"""Fine-tuning tokens/s against pretraining tokens/s, for the same model on the same machine.

Both run through the library's own entry points (`train` and `finetune`, the shared loop, their
real batches), in alternation, in one process. Fine-tuning counts only real tokens (not the
padding); its batch size is chosen so that a batch holds about as many tokens as a pretraining
batch (short examples, more of them), which makes this a measure of what fine-tuning adds
(padding, masking, collating whole examples), not of the batch shape. The rate of each run is
taken between its evaluations at --skip and at the last step, so start-up and the first (slower)
steps are left out; evaluations are not training time (the loop does not count them).

    python benchmarks/finetune_speed.py                 # gpt2-mini, ctx 256, 3 rounds of 25 steps
    python benchmarks/finetune_speed.py --rounds 1 --steps 8 --skip 2 --preset gpt2-tiny   # a quick look
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from alternating import add_harness_flags, alternate, print_table  # benchmarks/, beside this script

from gptforge import GPT, GPTConfig, TrainConfig, prepare_corpus
from gptforge.tokenizer import gpt2
from gptforge.training import train
from gptforge.training.config import FinetuneConfig
from gptforge.training.finetune import finetune
from gptforge.weights import save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-mini")
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="pretraining sequences per batch")
    parser.add_argument("--finetune-batch-size", type=int, default=48, help="fine-tuning examples per batch")
    add_harness_flags(parser, steps=25, skip=5, rounds=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ft-speed-"))
    torch.manual_seed(0)
    config = GPTConfig.from_preset(args.preset, context_length=args.context_length)
    base = save_checkpoint(work / "base", GPT(config, gpt2()))
    corpus = work / "corpus"
    prepare_corpus(["builtin:shakespeare"], corpus, progress=False)
    common = dict(max_steps=args.steps, eval_every=args.skip, eval_batches=1, save_every=0, lr=1e-4,
                  device="cpu", seed=0)
    jobs = {
        "pretrain": lambda out: train(TrainConfig.of(data=str(corpus), preset=args.preset, out=str(out),
                                                  context_length=args.context_length,
                                                  batch_size=args.batch_size, **common), progress=False),
        "finetune (full)": lambda out: finetune(FinetuneConfig.of(
            init_from=str(base), data="builtin:tasks", out=str(out), batch_size=args.finetune_batch_size,
            epochs=1000, response_tokens=0, **common), progress=False),
        "finetune (LoRA r=16)": lambda out: finetune(FinetuneConfig.of(
            init_from=str(base), data="builtin:tasks", out=str(out), batch_size=args.finetune_batch_size,
            epochs=1000, response_tokens=0, lora_rank=16, **common), progress=False),
    }
    rates = alternate(jobs, args.rounds, args.skip, work)
    print(f"\n{args.preset}, context {args.context_length}, {args.steps} steps per run, rate from step "
          f"{args.skip}, median of {args.rounds} alternating rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print_table(rates)

if __name__ == "__main__":
    main()
