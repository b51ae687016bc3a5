"""`gptforge ask`: One question answered from your documents: its best passages in the index
(gptforge index add) go into a chat model's prompt, most relevant first, trimmed to fit its context;
the answer is printed, then the passages it was given, numbered as in the prompt ([1], [2], ...),
with their file and lines."""

from __future__ import annotations

from ..config import DTYPES
from .common import (
    add_device,
    add_index_flags,
    add_model_source,
    add_quantize,
    add_sampling_flags,
    model_from_args,
    retriever_from_args,
    sampling_from_args,
)

NAME = "ask"
HELP = "answer one question from your documents (an index), with its sources"


def add_arguments(p) -> None:
    p.add_argument("question", metavar="QUESTION", help="the question")
    add_model_source(p, "seed for sampling and --random-init weights (default: random)")
    add_index_flags(p, required=True)
    p.add_argument("--system", default=None, metavar="TEXT", help="a system prompt before the passages")
    add_sampling_flags(p, max_new_tokens=256, temperature=0.0, top_k=0)
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="precision of the weights (default: float32)")
    add_device(p)
    add_quantize(p)


def run(args) -> int:
    import sys

    from ..chat import sources_lines
    from ..checks import require_int
    from ..retrieval.ask import question_prompt, stream_answer

    sampling = sampling_from_args(args)
    require_int("-k", args.passages)
    model = model_from_args(args, args.dtype)
    retrieve = retriever_from_args(args, model)
    ids, passages = question_prompt(model, args.question, retrieve, args.system, args.max_new_tokens)
    out = sys.stdout
    for piece in stream_answer(model, ids, sampling):
        out.write(piece)
        out.flush()
    out.write("\n\nsources:\n" if passages else "\n\n(no passage matched the question)\n")
    out.write("".join(f"{line}\n" for line in sources_lines(passages)))
    return 0
