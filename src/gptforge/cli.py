"""The `gptforge` command line: one subcommand per job, each a thin layer over the Python API."""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import os
import sys

from . import __version__
from .config import TRAIN_CHOICES
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2) instead of the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="continue a prompt with a trained or randomly initialised model",
        description="Continue a prompt. The model is a checkpoint (or a run folder, whose newest "
                    "checkpoint is used), a Hugging Face GPT-2 folder, or a preset with random "
                    "weights for trying the pipeline.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder or run folder")
    src.add_argument("--preset", metavar="NAME", help="model preset (with --random-init)")
    src.add_argument("--hf", metavar="DIR", help="Hugging Face GPT-2 folder (or a hub id when online)")
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
    p.add_argument("--dtype", choices=TRAIN_CHOICES["dtype"], default="float32",
                   help="precision of the weights while generating (default: float32); bfloat16 "
                        "halves the model's memory, with slightly different logits (on the CPUs "
                        "measured it decodes slower than float32); float16 only on GPUs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.set_defaults(run=_run_generate)


def _run_generate(args) -> int:
    import torch

    from .checkpoint import load_model
    from .config import GPTConfig
    from .device import pick_device
    from .generate import check_sampling_args, prepare_for_decoding, stream
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
    if args.dtype == "float16" and device.type == "cpu":
        raise UserError("--dtype float16 is for GPUs (a CPU emulates it, very slowly); "
                        "use bfloat16 or float32")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    if args.checkpoint:
        model = load_model(args.checkpoint, device=device)
    elif args.hf:
        from .hf import load_hf_model

        model = load_hf_model(args.hf, device=device)
    else:
        config = GPTConfig.from_preset(args.preset)
        with torch.device(device):
            model = GPT(config)
    prepare_for_decoding(model, getattr(torch, args.dtype))

    enc = get_tokenizer()
    prompt_ids = enc.encode(args.prompt, allowed_special={"<|endoftext|>"}) or [EOT_ID]
    if max(prompt_ids) >= model.config.vocab_size:  # e.g. a tiny test model from another tool
        raise UserError(f"the prompt has GPT-2 token ids the model does not know: its vocabulary "
                        f"has {model.config.vocab_size} ids, the GPT-2 tokenizer's has 50257")
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


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare", help="tokenize text into a corpus folder (token shards + meta.json)",
        description="Tokenize INPUTs into a corpus folder: uint16 token shards train-00000.bin, ..., "
                    "val-00000.bin, ... and meta.json. Each file, book, work or row is one document; "
                    "documents are joined with <|endoftext|>. Streams in bounded memory on every core; "
                    "an interrupted prepare resumes when the same command is run again.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="a text file, a folder (all *.txt below it), a glob, builtin:shakespeare, "
                        "gutenberg:ID[,ID...], an http(s):// URL, hf:NAME[:CONFIG], or .jsonl / .parquet files")
    p.add_argument("--out", required=True, metavar="DIR", help="corpus folder to create")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share held out for validation (default: 0.1)")
    p.add_argument("--split", choices=("auto", "chars", "documents"), default="auto",
                   help="chars: the last F of the characters validate (the reference recipe); documents: "
                        "whole documents validate, chosen by --seed; auto (default): chars for one document "
                        "or too few to hold out whole, documents otherwise")
    p.add_argument("--seed", type=int, default=0, help="seed of the documents split (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing corpus folder")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="tokenizing processes (default: every core); the output is the same for any N")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                   help="tokens per shard file (default: 100,000,000 = 200 MB)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="stop after N tokens in all (e.g. a sample of a huge hf: dataset)")
    p.add_argument("--text-field", default="text", metavar="NAME",
                   help="column with the text in .jsonl / .parquet files and hf: datasets (default: text)")
    p.add_argument("--hf-split", default="train", metavar="NAME",
                   help="split of an hf: dataset to read (default: train)")
    p.add_argument("--gutenberg-top", type=int, default=0, metavar="N",
                   help="also take the first N books of Project Gutenberg's popular list")
    p.add_argument("--mirror", default=None, metavar="URL",
                   help="Project Gutenberg site or mirror for gutenberg: books (default: https://www.gutenberg.org)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where downloads are kept (default: ~/.cache/gptforge)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retries of a download after a server error or dropped connection (default: 3)")
    p.set_defaults(run=_run_prepare)


def _run_prepare(args) -> int:
    from .data import prepare_corpus
    from .sources import SourceOptions

    options = SourceOptions(text_field=args.text_field, hf_split=args.hf_split, cache_dir=args.cache_dir,
                            retries=args.retries, gutenberg_top=args.gutenberg_top)
    if args.mirror:
        options.mirror = args.mirror
    meta = prepare_corpus(args.inputs, args.out, val_fraction=args.val_fraction, split=args.split,
                          seed=args.seed, overwrite=args.overwrite, progress=sys.stderr.isatty(),
                          workers=args.workers, shard_tokens=args.shard_tokens, max_tokens=args.max_tokens,
                          options=options)
    tokens, docs = meta["tokens"], meta["documents"]
    n_shards = sum(len(s) for s in meta["shards"].values())
    print(f"wrote {args.out}: {tokens['train']:,} train and {tokens['val']:,} val tokens in {n_shards} shard(s) "
          f"from {docs['total']} document(s), {meta['characters']:,} characters (split by {meta['split']})")
    if meta["truncated"]:
        print(f"note: stopped at --max-tokens {meta['max_tokens']:,}")
    if meta["replaced_invalid_utf8"]:
        print(f"note: {meta['replaced_invalid_utf8']} invalid UTF-8 sequence(s) were replaced by U+FFFD")
    return 0


def _add_train(sub) -> None:
    import typing

    from .config import TrainConfig, field_docs

    p = sub.add_parser(
        "train", help="pretrain a model (no arguments: a quick CPU run on builtin:shakespeare)",
        description="Train a GPT. Settings come from the defaults, then --config, then the flags. "
                    "With no --data and no --config it runs the quickstart config "
                    "(gpt2-mini on builtin:shakespeare, 6 to 8 minutes on 2 CPU cores).",
    )
    p.add_argument("--config", metavar="FILE",
                   help="TOML file of settings, or a bundled one: the-verdict, gutenberg-345m, "
                        "shakespeare-cpu")
    p.add_argument("--resume", metavar="RUN",
                   help="continue RUN from its newest complete checkpoint, with its own config")
    hints = typing.get_type_hints(TrainConfig)
    docs = field_docs(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        default = "" if field.default is None else f" (default: {field.default})"
        kwargs = dict(dest=field.name, default=argparse.SUPPRESS, help=docs.get(field.name, "") + default)
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif field.name in TRAIN_CHOICES:
            p.add_argument(flag, choices=TRAIN_CHOICES[field.name], **kwargs)
        else:
            p.add_argument(flag, type=base, metavar=field.name.split("_")[-1].upper(), **kwargs)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from .config import TrainConfig, load_config_file
    from .train import train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    if args.resume:
        if args.config:
            raise UserError("--resume takes the run's own config; drop --config")
        train(resume=args.resume, progress=False if args.no_progress else None, **flags)
        return 0
    if args.config:
        settings = load_config_file(args.config)
    elif "data" not in flags:
        print("no --data or --config given: running the quickstart config shakespeare-cpu")
        settings = load_config_file("shakespeare-cpu")
    else:
        settings = {}
    train(TrainConfig.from_dict({**settings, **flags}),
          progress=False if args.no_progress else None)
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="loss, perplexity and bits per byte of a checkpoint on some text",
        description="Evaluate a checkpoint over non-overlapping windows of its context length: every "
                    "token after the first is predicted once.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="checkpoint or run folder")
    p.add_argument("--data", required=True, metavar="TEXT_OR_DIR",
                   help="prepared corpus folder (its val split) or text file / folder / glob")
    p.add_argument("--split", choices=("val", "train"), default="val",
                   help="split of a prepared corpus to evaluate (default: val)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    import json
    import math

    from .device import pick_device
    from .evaluate import evaluate_path, format_report

    result = evaluate_path(args.checkpoint, args.data, batch_size=args.batch_size,
                           device=pick_device(args.device), split=args.split,
                           progress=not args.json and sys.stderr.isatty())
    if args.json:  # strict JSON: an overflowing perplexity is null, not Infinity
        result = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in result.items()}
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert", help="GPT-2 weights from or to the Hugging Face format",
        description="Convert a Hugging Face GPT-2 folder (e.g. OpenAI's released weights) to a "
                    "gptforge checkpoint, or a checkpoint to a folder that transformers' "
                    "GPT2LMHeadModel.from_pretrained and AutoTokenizer.from_pretrained read.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR",
                     help="Hugging Face GPT-2 folder (config.json + model.safetensors or "
                          "pytorch_model.bin), or a hub id such as gpt2 when online")
    src.add_argument("--to-hf", metavar="CHECKPOINT", help="checkpoint or run folder to export")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="checkpoint folder (--from-hf) or Hugging Face folder (--to-hf) to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from .checkpoint import load_model, save_checkpoint
    from .hf import check_output_folder, export_hf, load_hf_model

    check_output_folder(args.out, args.overwrite)  # before a load that may take minutes
    if args.from_hf:
        model = load_hf_model(args.from_hf)
        save_checkpoint(args.out, model)
    else:
        model = load_model(args.to_hf)
        export_hf(model, args.out, overwrite=args.overwrite)
    c = model.config
    print(f"wrote {args.out}: {model.num_params():,} parameters ({c.n_layers} layers, {c.emb_dim} d, "
          f"{c.n_heads} heads, context {c.context_length})")
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw RUN/loss.png from RUN/metrics.jsonl",
                       description="Plot train and val loss against epochs (tokens seen on the top axis).")
    p.add_argument("run_dir", metavar="RUN", help="run folder")
    p.set_defaults(run=_run_plot)


def _run_plot(args) -> int:
    from .plot import plot_run

    print(f"wrote {plot_run(args.run_dir)}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure training or generation speed, memory and MFU",
        description="Time a training step (forward, loss, backward, AdamW on random tokens) or greedy "
                    "generation, and report tokens/s, memory and model FLOPs utilisation against a "
                    "matmul peak measured on the spot (see gptforge/bench.py for the formula).",
    )
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
    p.add_argument("--dtype", choices=TRAIN_CHOICES["dtype"], default="float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (train)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    import json

    from .bench import bench_generate, bench_train, check_positive, format_result

    check_positive(batch_size=args.batch_size, steps=args.steps, context_length=args.context_length,
                   prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens)
    if args.what == "train":
        result = bench_train(args.preset, args.context_length, args.batch_size or 2, args.steps,
                             dtype=args.dtype, device=args.device, compile=args.compile)
    else:
        result = bench_generate(args.preset, args.prompt_tokens, args.new_tokens, args.batch_size or 1,
                                dtype=args.dtype, device=args.device, use_cache=not args.no_kv_cache)
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gptforge",
        description="Pretrain GPT-2-family language models from scratch: prepare a corpus, train, "
                    "resume, evaluate, generate, and exchange weights with Hugging Face.",
    )
    parser.add_argument("--version", action="version", version=f"gptforge {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    _add_prepare(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_generate(sub)
    _add_convert(sub)
    _add_plot(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    # Under torchrun every rank meets the same mistake; one message is enough.
    speak = os.environ.get("RANK", "0") == "0"
    try:
        return args.run(args)
    except UserError as e:
        if speak:
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
