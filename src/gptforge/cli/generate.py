"""`gptforge generate`: Continue a prompt. The model is a checkpoint (or a run folder, whose newest
checkpoint is used), a Hugging Face GPT-2 folder, or a preset with random weights for trying the
pipeline."""

from __future__ import annotations

import sys

from ..config import DTYPES
from ..errors import UserError
from .common import add_device

NAME = "generate"
HELP = "continue a prompt with a trained or randomly initialised model"


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", "--hf", dest="checkpoint", metavar="PATH",
                     help="checkpoint folder, run folder, Hugging Face GPT-2 folder, or a hub id when "
                          "online (--hf is another name for it)")
    src.add_argument("--preset", metavar="NAME", help="model preset (with --random-init)")
    p.add_argument("--random-init", action="store_true",
                   help="use randomly initialised weights for --preset (seeded by --seed)")
    p.add_argument("--prompt", required=True,
                   help="text to continue, always read as plain text ('' starts from <|endoftext|>)")
    p.add_argument("--chat", action="store_true",
                   help="--prompt is the user's message to a chat model (one fine-tuned with the chat "
                        "template): print its answer, which ends at its end-of-turn token (a model "
                        "without the chat tokens continues the text instead)")
    p.add_argument("--system", metavar="TEXT", help="with --chat: a system message before the user's")
    p.add_argument("--max-new-tokens", type=int, default=50, metavar="N",
                   help="number of tokens to generate (default: 50)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T",
                   help="sampling temperature; 0 is greedy decoding (default: 0.8)")
    p.add_argument("--top-k", type=int, default=200, metavar="K",
                   help="sample only from the K most likely tokens (default: 200; 0 turns it off)")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="sample only from the smallest set of tokens with probability >= P")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seed for sampling and for --random-init weights (default: random)")
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
    from ..generate import chat_text, check_sampling_args, generate_text, generate_texts, model_for_generation

    top_k = args.top_k or None
    check_sampling_args(args.temperature, top_k, args.top_p, args.max_new_tokens)
    require_int("--num-samples", args.num_samples)
    if args.preset and not args.random_init:
        raise UserError("--preset needs --random-init (trained weights come from --checkpoint)")
    if args.random_init and not args.preset:
        raise UserError("--random-init needs --preset NAME")
    if args.system is not None and not args.chat:
        raise UserError("--system goes with --chat")
    if args.chat and args.num_samples != 1:
        raise UserError("--chat gives one answer; drop --num-samples")
    model = model_for_generation(args.checkpoint, args.preset, args.seed, args.device, args.dtype)
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
