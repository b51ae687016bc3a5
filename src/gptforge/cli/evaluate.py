"""`gptforge eval`: Evaluate a model. --task loss (default): loss, perplexity and bits per byte over
non-overlapping windows of its context length (every token after the first predicted once).
--task hellaswag / mc: zero-shot multiple choice on a JSONL file in HellaSwag's format (acc and
acc_norm, as lm-evaluation-harness scores them). --task retrieval: recall@k and MRR of an index
(--index) on your queries (JSONL of {"query", "relevant": [FILE, ...]}); --task qa: exact match and
token F1 of a chat model's answers (JSONL of {"question", "answer"}), with the index's passages and
without. --task classify: a classifier (`finetune --task classify`) on a labeled CSV/TSV/JSONL file:
accuracy, macro-F1 and the confusion matrix."""

from __future__ import annotations

import json
import math
import sys

from .common import add_device, add_quantize

NAME = "eval"
HELP = "loss / perplexity / bits per byte on text, or a multiple-choice benchmark (HellaSwag)"


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", metavar="PATH",
                   help="checkpoint or run folder, Hugging Face GPT-2 folder or hub id (every task but retrieval)")
    p.add_argument("--task", choices=("loss", "hellaswag", "mc", "classify", "retrieval", "qa"), default="loss",
                   help="loss: of text; hellaswag: HellaSwag's JSONL, cleaned as lm-evaluation-harness "
                        "does; mc: any JSONL of that shape (ctx, endings, label) as it is; classify: a "
                        "classifier on labeled texts; retrieval, qa: an index on your questions (see above) "
                        "(default: loss)")
    p.add_argument("--index", metavar="DIR", help="retrieval, qa: the index (gptforge index add)")
    p.add_argument("-k", type=int, default=None, metavar="N",
                   help="retrieval: chunks per query (default: 5); qa: passages per question (default: 4)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                   help="qa: longest answer, in tokens (default: 32)")
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
    add_quantize(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args) -> int:
    from ..device import pick_device
    from ..errors import UserError
    from ..evaluate import evaluate_path, format_report
    from ..evaluate.classify import evaluate_classifier, format_scores
    from ..evaluate.multiple_choice import evaluate_choice, format_choice_report

    progress = not args.json and sys.stderr.isatty()
    if args.task in ("retrieval", "qa"):
        result = _documents_task(args)
        report = _format_documents
    elif args.checkpoint is None:
        raise UserError(f"--task {args.task} needs --checkpoint")
    elif args.task == "loss":
        result = evaluate_path(args.checkpoint, args.data, batch_size=args.batch_size,
                               device=pick_device(args.device), split=args.split, progress=progress,
                               quantize=args.quantize)
        report = format_report
    elif args.task == "classify":
        result = evaluate_classifier(args.checkpoint, args.data, text_column=args.text_column,
                                     label_column=args.label_column, batch_size=args.batch_size,
                                     device=pick_device(args.device))
        report = format_scores
    else:
        result = evaluate_choice(args.checkpoint, args.data, task=args.task, limit=args.limit,
                                 batch_size=args.batch_size, device=pick_device(args.device), progress=progress,
                                 quantize=args.quantize)
        report = format_choice_report
    if args.json:  # strict JSON: an overflowing perplexity is null, not Infinity
        result = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in result.items()}
    print(json.dumps(result) if args.json else report(result))
    return 0


def _documents_task(args) -> dict:
    """--task retrieval or qa: an index measured on the user's own questions."""
    from ..checks import require_int
    from ..errors import UserError
    from ..retrieval.evaluation import evaluate_qa, evaluate_retrieval

    if not args.index:
        raise UserError(f"--task {args.task} needs --index DIR")
    if args.k is not None:
        require_int("-k", args.k)
    if args.task == "retrieval":
        return evaluate_retrieval(args.index, args.data, args.k or 5)
    if args.checkpoint is None:
        raise UserError("--task qa needs --checkpoint (a chat model)")
    require_int("--max-new-tokens", args.max_new_tokens)
    from ..chat import has_chat
    from ..device import pick_device
    from ..weights import load_any

    model = load_any(args.checkpoint, pick_device(args.device))
    if not has_chat(model):
        raise UserError("--task qa needs a chat model (one with a chat template): the passages go into its "
                        "system turn")
    return evaluate_qa(model, args.index, args.data, args.k or 4, args.max_new_tokens, args.limit)


def _format_documents(result: dict) -> str:
    if result["task"] == "retrieval":
        k = result["k"]
        return f"{result['queries']} queries: recall@{k} {result[f'recall@{k}']:.3f}, MRR {result['mrr']:.3f}"
    return (f"{result['questions']} questions, {result['k']} passages each:\n"
            f"  with retrieval     exact {result['exact_with']:.3f}  F1 {result['f1_with']:.3f}\n"
            f"  without retrieval  exact {result['exact_without']:.3f}  F1 {result['f1_without']:.3f}")
