"""`gptforge generate`: Continue a prompt. The model is a checkpoint (or a run folder, whose newest
checkpoint is used), a Hugging Face GPT-2 folder, or a preset with random weights for trying the
pipeline."""

from __future__ import annotations

import sys

from ..config import DTYPES
from .common import add_device, add_model_source, add_quantize, add_sampling_flags, model_from_args, sampling_from_args

NAME = "generate"
HELP = "continue a prompt with a trained or randomly initialised model"


def add_arguments(p) -> None:
    add_model_source(p, "seed for sampling and for --random-init weights (default: random)")
    p.add_argument("--prompt", required=True,
                   help="text to continue, always read as plain text ('' starts from <|endoftext|>)")
    p.add_argument("--chat", action="store_true",
                   help="--prompt is the user's message to a chat model (one fine-tuned with the chat "
                        "template): print its answer, which ends at its end-of-turn token (a model "
                        "without the chat tokens continues the text instead)")
    p.add_argument("--system", metavar="TEXT", help="with --chat: a system message before the user's")
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
    add_quantize(p)


def run(args) -> int:
    from ..chat import chat_text
    from ..checks import require_int
    from ..errors import UserError
    from ..generate import generate_text, generate_texts

    top_k = args.top_k or None
    sampling_from_args(args)  # checks the flags
    require_int("--num-samples", args.num_samples)
    if args.system is not None and not args.chat:
        raise UserError("--system goes with --chat")
    if args.chat and args.num_samples != 1:
        raise UserError("--chat gives one answer; drop --num-samples")
    model = model_from_args(args, args.dtype)
    out = sys.stdout
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system is not None else [])
        for piece in chat_text(model, messages + [{"role": "user", "content": args.prompt}], args.max_new_tokens,
                               temperature=args.temperature, top_k=top_k, top_p=args.top_p, seed=args.seed,
                               use_cache=not args.no_kv_cache):
            out.write(piece)
            out.flush()
        out.write("\n")
        return 0
    sampling = dict(temperature=args.temperature, top_k=top_k, top_p=args.top_p, seed=args.seed,
                    stop_at_eos=args.stop_at_eos, use_cache=not args.no_kv_cache)
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
