"""The `gptforge` command line: one module per command. Each has a docstring (its --help text),
NAME, HELP (its line in `gptforge --help`), add_arguments(parser) and run(args), which calls one
library function and prints the result."""

from __future__ import annotations

import argparse
import errno
import os
import sys

from .. import __version__
from ..errors import UserError, one_line
from . import (
    ask,
    bench,
    chat,
    classify,
    convert,
    evaluate,
    finetune,
    generate,
    index,
    plot,
    prepare,
    runs,
    serve,
    tokenizer,
    train,
)
from .common import Parser

# in the order --help lists them
COMMANDS = (tokenizer, prepare, train, finetune, evaluate, classify, generate, chat, ask, serve, index, convert, runs,
            plot, bench)


# OSErrors that say a path given by the user cannot name a file at all (too long, a loop of links).
NAME_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP)


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="gptforge",
        description="Pretrain GPT-2-family language models from scratch: prepare a corpus, train, "
                    "resume, evaluate, generate, and exchange weights with Hugging Face.",
    )
    parser.add_argument("--version", action="version", version=f"gptforge {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.__doc__)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
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
            print(f"gptforge: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gptforge generate ... | head`
        sys.stderr.close()
        return 0
    except Exception as e:  # an internal error: one line unless the user asks for the traceback
        if isinstance(e, OSError) and e.errno in NAME_ERRNOS and not os.environ.get("GPTFORGE_DEBUG"):
            if speak:  # a path the user typed that no file can have, met wherever it is first used
                print(f"gptforge: error: {e.strerror}: {one_line(_shorten(str(e.filename)))}", file=sys.stderr)
            return 2
        if os.environ.get("GPTFORGE_DEBUG"):
            raise
        print(f"gptforge: internal error: {type(e).__name__}: {one_line(str(e))} "
              "(set GPTFORGE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
