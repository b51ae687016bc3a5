"""`gptforge prepare`: Tokenize INPUTs into a corpus folder: token shards train-00000.bin, ...,
val-00000.bin, ... (uint16, or uint32 for a vocabulary over 65,536) and meta.json, with GPT-2's
tokenizer or your own (--tokenizer). Each file, book, work or row is one document; documents are
joined with <|endoftext|>. Streams in bounded memory on every core; an interrupted prepare resumes
when the same command is run again."""

from __future__ import annotations

import sys

from .common import add_source_flags, source_options

NAME = "prepare"
HELP = "tokenize text into a corpus folder (token shards + meta.json)"


def add_arguments(p) -> None:
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
    p.add_argument("--tokenizer", default="gpt2", metavar="NAME_OR_DIR",
                   help="gpt2, or a folder from `gptforge tokenizer train` (copied into the corpus) (default: gpt2)")
    add_source_flags(p)


def run(args) -> int:
    from ..data import prepare_corpus
    from ..tokenizer import load_tokenizer

    meta = prepare_corpus(args.inputs, args.out, val_fraction=args.val_fraction, split=args.split,
                          seed=args.seed, overwrite=args.overwrite, progress=sys.stderr.isatty(),
                          workers=args.workers, shard_tokens=args.shard_tokens, max_tokens=args.max_tokens,
                          options=source_options(args), tokenizer=load_tokenizer(args.tokenizer))
    tokens, docs = meta["tokens"], meta["documents"]
    n_shards = sum(len(s) for s in meta["shards"].values())
    print(f"wrote {args.out}: {tokens['train']:,} train and {tokens['val']:,} val tokens in {n_shards} shard(s) "
          f"from {docs['total']} document(s), {meta['characters']:,} characters (split by {meta['split']}; "
          f"tokenizer {meta['tokenizer']['name']}, {meta['dtype']})")
    if meta["truncated"]:
        print(f"note: stopped at --max-tokens {meta['max_tokens']:,}")
    if meta["replaced_invalid_utf8"]:
        print(f"note: {meta['replaced_invalid_utf8']} invalid UTF-8 sequence(s) were replaced by U+FFFD")
    return 0
