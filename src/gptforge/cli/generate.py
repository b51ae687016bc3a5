"""`gptforge generate`: Continue a prompt. The model is a checkpoint (or a run folder, whose newest
checkpoint is used), a Hugging Face GPT-2 folder, or a preset with random weights for trying the
pipeline."""

from __future__ import annotations

import sys

from ..config import DTYPES
from .common import add_device, add_model_source, add_sampling_flags, model_from_args

NAME = "generate"
HELP = "continue a prompt with a trained or randomly initialised model"


def add_arguments(p) -> None:
    add_model_source(p, "seed for sampling and for --random-init weights (default: random)")
    p.add_argument("--prompt", required=True,
                   help="text to continue, always read as plain text ('' starts from <|endoftext|>)")
    add_sampling_flags(p, max_new_tokens=50, temperature=0.8, top_k=200)
    p.add_argument("--stop-at-eos", action="store_true",
                   help="stop a sample when it produces <|endoftext|>")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="recompute the whole context for every token (slower; for checking)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="number of independent continuations (default: 1)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="precision of the weights while generating (default: float32); bfloat16 "
                        "halves the model's memory, with slightly different logits (on the CPUs "
                        "measured it decodes slower than float32); float16 only on GPUs")
    add_device(p)


def run(args) -> int:
    from ..checks import require_int
    from ..generate import check_sampling_args, generate_text, generate_texts

    top_k = args.top_k or None
    check_sampling_args(args.temperature, top_k, args.top_p, args.max_new_tokens)
    require_int("--num-samples", args.num_samples)
    model = model_from_args(args, args.dtype)
    sampling = dict(temperature=args.temperature, top_k=top_k, top_p=args.top_p, seed=args.seed,
                    stop_at_eos=args.stop_at_eos, use_cache=not args.no_kv_cache)
    out = sys.stdout
    if args.num_samples == 1:  # streamed as it comes
        for piece in generate_text(model, args.prompt, args.max_new_tokens, include_prompt=True, **sampling):
            out.write(piece)
            out.flush()
        out.write("\n")
        return 0
    texts = generate_texts(model, args.prompt, args.num_samples, args.max_new_tokens, **sampling)
    for i, text in enumerate(texts):
        out.write(f"--- sample {i + 1}/{args.num_samples} ---\n{args.prompt}{text}\n")
    return 0
