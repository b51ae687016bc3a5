"""`gptforge classify`: Classify texts with a classifier made by `gptforge finetune --task classify`:
each TEXT's label and the probability of every class, or with --data FILE (CSV, TSV or JSONL with a
text column) every record's, written to --out as JSONL (the record's text, the predicted label,
the probabilities, and its own label as true_label when the file has a label column)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_device

NAME = "classify"
HELP = "label texts with a classifier (finetune --task classify), with the class probabilities"


def add_arguments(p) -> None:
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="classifier checkpoint or run folder")
    p.add_argument("--data", metavar="FILE", help="classify every record of this CSV, TSV or JSONL file")
    p.add_argument("--text-column", metavar="NAME", help="with --data: the text column (default: detected)")
    p.add_argument("--out", metavar="FILE", help="with --data: write the predictions here as JSONL (default: stdout)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default: 16)")
    add_device(p)


def run(args) -> int:
    from ..data.labeled import read_texts
    from ..device import pick_device
    from ..errors import UserError
    from ..evaluate.classify import check_classifier, predict
    from ..files import atomic_write
    from ..weights import load_any

    if bool(args.texts) == bool(args.data):
        raise UserError("give TEXTs to classify or --data FILE (not both)")
    if args.out and not args.data:
        raise UserError("--out is for --data")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.out and not Path(args.out).parent.is_dir():  # before a load and a pass that may take minutes
        raise UserError(f"no such folder: {Path(args.out).parent}")
    records = read_texts(args.data, args.text_column) if args.data else [{"text": t} for t in args.texts]
    model = check_classifier(load_any(args.checkpoint, pick_device(args.device)), args.checkpoint)
    predictions = predict(model, [r["text"] for r in records], args.batch_size)
    rows = [{**record, **prediction} for record, prediction in zip(records, predictions)]
    if args.data:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if args.out:
            atomic_write(Path(args.out), lines)
            print(f"wrote {args.out}: {len(rows)} predictions")
        else:
            print(lines, end="")
        return 0
    for row in rows:
        probs = ", ".join(f"{c} {p:.3f}" for c, p in row["probabilities"].items())
        print(f"{row['label']}\t({probs})\t{row['text']}")
    return 0
