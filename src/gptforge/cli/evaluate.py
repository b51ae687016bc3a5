"""`gptforge eval`: Evaluate a checkpoint over non-overlapping windows of its context length: every
token after the first is predicted once."""

from __future__ import annotations

import json
import math
import sys

from .common import add_device

NAME = "eval"
HELP = "loss, perplexity and bits per byte of a checkpoint on some text"


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint or run folder")
    p.add_argument("--data", required=True, metavar="TEXT_OR_DIR",
                   help="prepared corpus folder (its val split) or text file / folder / glob")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="split of a prepared corpus to evaluate (default: val)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args) -> int:
    from ..device import pick_device
    from ..evaluate import evaluate_path, format_report

    result = evaluate_path(args.checkpoint, args.data, batch_size=args.batch_size,
                           device=pick_device(args.device), split=args.split,
                           progress=not args.json and sys.stderr.isatty())
    if args.json:  # strict JSON: an overflowing perplexity is null, not Infinity
        result = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in result.items()}
    print(json.dumps(result) if args.json else format_report(result))
    return 0
