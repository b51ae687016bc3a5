"""The `gptforge` command line: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import codecs
import os
import sys

from . import __version__
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2) instead of the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="continue a prompt with a trained or randomly initialised model",
        description="Continue a prompt. The model is a checkpoint (or a run folder, whose newest "
                    "checkpoint is used) or a preset with random weights for trying the pipeline.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder or run folder")
    src.add_argument("--preset", metavar="NAME", help="model preset (with --random-init)")
    p.add_argument("--random-init", action="store_true",
                   help="use randomly initialised weights for --preset (seeded by --seed)")
    p.add_argument("--prompt", required=True, help="text to continue ('' starts from <|endoftext|>)")
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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.set_defaults(run=_run_generate)


def _run_generate(args) -> int:
    import torch

    from .checkpoint import load_model
    from .config import GPTConfig
    from .device import pick_device
    from .generate import check_sampling_args, stream
    from .model import GPT
    from .tokenizer import EOT_ID, get_tokenizer

    top_k = args.top_k or None
    check_sampling_args(args.temperature, top_k, args.top_p, args.max_new_tokens)
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.preset and not args.random_init:
        raise UserError("--preset needs --random-init (trained weights come from --checkpoint)")
    if args.random_init and not args.preset:
        raise UserError("--random-init needs --preset NAME")
    device = pick_device(args.device)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    if args.checkpoint:
        model = load_model(args.checkpoint, device=device)
    else:
        config = GPTConfig.from_preset(args.preset)
        with torch.device(device):
            model = GPT(config)
    model.eval()

    enc = get_tokenizer()
    prompt_ids = enc.encode(args.prompt, allowed_special={"<|endoftext|>"}) or [EOT_ID]
    ctx = model.config.context_length
    if len(prompt_ids) > ctx:
        print(f"note: the prompt has {len(prompt_ids)} tokens, more than the model's context of "
              f"{ctx}; the model sees only the last {ctx}", file=sys.stderr)
    idx = torch.tensor([prompt_ids] * args.num_samples, dtype=torch.long, device=device)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    steps = stream(model, idx, args.max_new_tokens, args.temperature, top_k, args.top_p,
                   eos_id=EOT_ID if args.stop_at_eos else None,
                   use_cache=not args.no_kv_cache, generator=generator)

    out = sys.stdout
    if args.num_samples == 1:  # stream tokens as they come, decoding UTF-8 across token boundaries
        out.write(args.prompt)
        out.flush()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for tokens, _ in steps:
            token = int(tokens[0])
            if args.stop_at_eos and token == EOT_ID:
                break
            out.write(decoder.decode(enc.decode_single_token_bytes(token)))
            out.flush()
        out.write(decoder.decode(b"", final=True) + "\n")
        return 0
    rows = [[] for _ in range(args.num_samples)]
    for tokens, alive in steps:
        for i in range(args.num_samples):
            if alive[i] and not (args.stop_at_eos and int(tokens[i]) == EOT_ID):
                rows[i].append(int(tokens[i]))
    for i, row in enumerate(rows):
        out.write(f"--- sample {i + 1}/{args.num_samples} ---\n{args.prompt}{enc.decode(row)}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gptforge",
        description="Pretrain GPT-2-family language models from scratch: prepare a corpus, train, "
                    "resume, evaluate, generate, and exchange weights with Hugging Face.",
    )
    parser.add_argument("--version", action="version", version=f"gptforge {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    _add_generate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except UserError as e:
        print(f"gptforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gptforge generate ... | head`
        sys.stderr.close()
        return 0
    except Exception as e:  # an internal error: one line unless the user asks for the traceback
        if os.environ.get("GPTFORGE_DEBUG"):
            raise
        print(f"gptforge: internal error: {type(e).__name__}: {e} "
              "(set GPTFORGE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
