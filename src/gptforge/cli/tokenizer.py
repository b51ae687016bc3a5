"""`gptforge tokenizer`: Train a byte-level BPE tokenizer on your own text, and inspect one. A
tokenizer is `gpt2` (GPT-2's, bundled) or a folder written by `gptforge tokenizer train`
(tokenizer.json + meta.json); a corpus, run or checkpoint made with your own tokenizer holds a
copy of it in its `tokenizer/` folder."""

from __future__ import annotations

import math
import sys

from ..errors import UserError
from .common import add_source_flags, source_options

NAME = "tokenizer"
HELP = "train your own tokenizer; encode, decode and measure one"
TOKENIZER_HELP = "gpt2, or a tokenizer folder (default: gpt2)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(title="actions", metavar="ACTION", parser_class=type(p))
    train = sub.add_parser("train", help="train a byte-level BPE on INPUTs (the same INPUTs as prepare)",
                           description="Train a byte-level BPE (Hugging Face tokenizers, GPT-4-style "
                                       "pre-tokenisation) on every core, streaming the INPUTs; write DIR "
                                       "(tokenizer.json + meta.json). <|endoftext|> and the chat tokens are "
                                       "reserved. The same inputs and settings give the same tokenizer.json.")
    train.add_argument("inputs", nargs="*", metavar="INPUT",
                       help="text files, folders, globs, builtin:NAME, gutenberg:IDS, URLs, hf:NAME, "
                            ".jsonl / .parquet files (as in prepare)")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N",
                       help="ids in all, the 3 special tokens included (259 to 2^24; e.g. 8192)")
    train.add_argument("--out", required=True, metavar="DIR", help="tokenizer folder to create")
    train.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer folder")
    add_source_flags(train)
    train.set_defaults(action=_train)

    encode = sub.add_parser("encode", help="print the ids of a text", description="Print the ids of TEXT "
                            "(or of stdin), as plain text: a special token's literal text stays text.")
    encode.add_argument("text", nargs="?", help="text to encode (default: read stdin)")
    encode.add_argument("--tokenizer", default="gpt2", metavar="NAME_OR_DIR", help=TOKENIZER_HELP)
    encode.add_argument("--pieces", action="store_true", help="one token per line: its id and its bytes")
    encode.set_defaults(action=_encode)

    decode = sub.add_parser("decode", help="print the text of ids", description="Print the text of IDS "
                            "(or of the ids on stdin); invalid UTF-8 becomes U+FFFD.")
    decode.add_argument("ids", nargs="*", type=int, metavar="ID", help="ids (default: read stdin)")
    decode.add_argument("--tokenizer", default="gpt2", metavar="NAME_OR_DIR", help=TOKENIZER_HELP)
    decode.set_defaults(action=_decode)

    stats = sub.add_parser("stats", help="bytes per token and vocabulary coverage, beside GPT-2's",
                           description="Tokenize INPUTs with the tokenizer and with GPT-2's; print bytes per "
                                       "token (more is a longer text per context window) and the share of "
                                       "the vocabulary the text uses.")
    stats.add_argument("inputs", nargs="+", metavar="INPUT", help="text to measure on (as in prepare)")
    stats.add_argument("--tokenizer", default="gpt2", metavar="NAME_OR_DIR", help=TOKENIZER_HELP)
    stats.add_argument("--max-chars", type=int, default=10_000_000, metavar="N",
                       help="measure on the first N characters (default: 10,000,000)")
    add_source_flags(stats)
    stats.set_defaults(action=_stats)


def run(args) -> int:
    if not hasattr(args, "action"):
        raise UserError("name an action: gptforge tokenizer train|encode|decode|stats (see --help)")
    return args.action(args)


def _train(args) -> int:
    from ..tokenizer.train import train_tokenizer

    tokenizer = train_tokenizer(args.inputs, args.out, args.vocab_size, source_options(args),
                                overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(f"wrote {args.out}: tokenizer {tokenizer.name}, {tokenizer.vocab_size:,} ids "
          f"({', '.join(f'{t} = {i}' for t, i in tokenizer.special_tokens.items())})")
    if tokenizer.vocab_size < args.vocab_size:
        print(f"note: the text has no more pairs worth merging: {tokenizer.vocab_size:,} ids, not {args.vocab_size:,}")
    return 0


def _encode(args) -> int:
    from ..tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    ids = tokenizer.encode(sys.stdin.read() if args.text is None else args.text)
    if args.pieces:
        for i in ids:
            print(f"{i}\t{tokenizer.token_bytes(i)!r}")
    else:
        print(" ".join(map(str, ids)))
    return 0


def _decode(args) -> int:
    from ..tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    try:
        ids = args.ids or [int(word) for word in sys.stdin.read().split()]
    except ValueError as e:
        raise UserError(f"ids must be integers: {e}") from None
    bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
    if bad:
        raise UserError(f"id {bad[0]} is not in {tokenizer.name}'s vocabulary (0..{tokenizer.vocab_size - 1})")
    sys.stdout.write(tokenizer.decode(ids) + "\n")
    return 0


def _stats(args) -> int:
    from ..checks import require_int
    from ..tokenizer import gpt2, load_tokenizer
    from ..tokenizer.stats import tokenizer_stats

    require_int("--max-chars", args.max_chars)
    tokenizer = load_tokenizer(args.tokenizer)
    tokenizers = [tokenizer] if tokenizer is gpt2() else [tokenizer, gpt2()]
    results = tokenizer_stats(tokenizers, args.inputs, source_options(args), args.max_chars)
    first = results[0]
    print(f"{first['characters']:,} characters, {first['bytes']:,} bytes")
    rows = [("tokenizer", lambda r: r["tokenizer"]), ("vocabulary", lambda r: f"{r['vocab_size']:,}"),
            ("tokens", lambda r: f"{r['tokens']:,}"),
            ("bytes per token", lambda r: "-" if math.isnan(r["bytes_per_token"]) else f"{r['bytes_per_token']:.3f}"),
            ("ids used", lambda r: f"{r['ids_used']:,} ({100 * r['coverage']:.1f}%)"),
            ("encoded by", lambda r: r["encoder"])]
    for label, cell in rows:
        print(f"{label:<16}" + "".join(f"{cell(r):>24}" for r in results))
    return 0
