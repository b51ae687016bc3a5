"""`gptforge bench`: Time a training step (forward, loss, backward, AdamW or Muon on random tokens) or greedy
generation, and report tokens/s, memory and model FLOPs utilisation against a matmul peak measured
on the spot (see gptforge/bench.py for the formula)."""

from __future__ import annotations

import json

from ..config import DTYPES
from .common import add_device, add_quantize

NAME = "bench"
HELP = "measure training or generation speed, memory and MFU"


def add_arguments(p) -> None:
    p.add_argument("what", choices=("train", "generate"))
    p.add_argument("--preset", default="gpt2-124m", help="model preset (default: gpt2-124m)")
    p.add_argument("--context-length", type=int, default=256,
                   help="training sequence length (train; default: 256)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per step (default: 2 for train, 1 for generate)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (default: 10)")
    p.add_argument("--prompt-tokens", type=int, default=8, help="prompt length (generate; default: 8)")
    p.add_argument("--new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--no-kv-cache", action="store_true", help="generate by full recompute")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (train)")
    p.add_argument("--arch", choices=("gpt2", "modern"), default=None,
                   help="block family on the preset's shape (default: the preset's)")
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw",
                   help="the trainer's optimizer to step (train; default: adamw)")
    add_device(p)
    add_quantize(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args) -> int:
    from ..bench import bench_generate, bench_train, format_result
    from ..checks import require_int
    from ..errors import UserError

    for name in ("batch_size", "steps", "context_length", "prompt_tokens", "new_tokens"):
        require_int("--" + name.replace("_", "-"), getattr(args, name), optional=True)
    if args.what == "train":
        if args.quantize:
            raise UserError("--quantize is for bench generate: training needs the float32 weights")
        result = bench_train(args.preset, args.context_length, args.batch_size or 2, args.steps,
                             dtype=args.dtype, device=args.device, compile=args.compile, arch=args.arch,
                             optimizer=args.optimizer)
    else:
        result = bench_generate(args.preset, args.prompt_tokens, args.new_tokens, args.batch_size or 1,
                                dtype=args.dtype, device=args.device, use_cache=not args.no_kv_cache,
                                quantize=args.quantize, arch=args.arch)
    print(json.dumps(result) if args.json else format_result(result))
    return 0
