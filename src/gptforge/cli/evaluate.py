"""`gptforge eval`: Evaluate a model. --task loss (default): loss, perplexity and bits per byte over
non-overlapping windows of its context length (every token after the first predicted once).
--task hellaswag / mc: zero-shot multiple choice on a JSONL file in HellaSwag's format (acc and
acc_norm, as lm-evaluation-harness scores them). --task classify: a classifier (`finetune --task
classify`) on a labeled CSV/TSV/JSONL file: accuracy, macro-F1 and the confusion matrix."""

from __future__ import annotations

import json
import math
import sys

from .common import add_device

NAME = "eval"
HELP = "loss / perplexity / bits per byte on text, or a multiple-choice benchmark (HellaSwag)"


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="checkpoint or run folder, Hugging Face GPT-2 folder or hub id")
    p.add_argument("--task", choices=("loss", "hellaswag", "mc", "classify"), default="loss",
                   help="loss: of text; hellaswag: HellaSwag's JSONL, cleaned as lm-evaluation-harness "
                        "does; mc: any JSONL of that shape (ctx, endings, label) as it is; classify: a "
                        "classifier on labeled texts (default: loss)")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="loss: prepared corpus folder (its val split) or text file / folder / glob; "
                        "hellaswag, mc: a JSONL file, or an http(s) URL downloaded once into the cache; "
                        "classify: a CSV, TSV or JSONL file with a text and a label column")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="split of a prepared corpus to evaluate (default: val)")
    p.add_argument("--limit", type=int, metavar="N", help="hellaswag, mc: score only the first N items")
    p.add_argument("--text-column", metavar="NAME", help="classify: the text column (default: detected)")
    p.add_argument("--label-column", metavar="NAME", help="classify: the label column (default: detected)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="windows (loss) or items (hellaswag, mc) per forward pass (default: 8)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args) -> int:
    from ..device import pick_device
    from ..evaluate import evaluate_path, format_report
    from ..evaluate.classify import evaluate_classifier, format_scores
    from ..evaluate.multiple_choice import evaluate_choice, format_choice_report

    progress = not args.json and sys.stderr.isatty()
    if args.task == "loss":
        result = evaluate_path(args.checkpoint, args.data, batch_size=args.batch_size,
                               device=pick_device(args.device), split=args.split, progress=progress)
        report = format_report
    elif args.task == "classify":
        result = evaluate_classifier(args.checkpoint, args.data, text_column=args.text_column,
                                     label_column=args.label_column, batch_size=args.batch_size,
                                     device=pick_device(args.device))
        report = format_scores
    else:
        result = evaluate_choice(args.checkpoint, args.data, task=args.task, limit=args.limit,
                                 batch_size=args.batch_size, device=pick_device(args.device), progress=progress)
        report = format_choice_report
    if args.json:  # strict JSON: an overflowing perplexity is null, not Infinity
        result = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in result.items()}
    print(json.dumps(result) if args.json else report(result))
    return 0
