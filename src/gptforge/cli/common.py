"""What the commands share: the parser class, flags generated from a config dataclass, --device."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Literal

from ..config import base_type, field_docs


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2) instead of the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of a config dataclass (none for those in cls.cli_hidden): --field-name,
    its docstring as help, a Literal's values as choices, --x/--no-x for booleans. Unset flags are
    absent from the parsed args, so they never override a config file."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        if field.name in getattr(cls, "cli_hidden", ()):
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = base_type(hints[field.name])
        default = "" if field.default is None else f" (default: {field.default})"
        kwargs = dict(dest=field.name, default=argparse.SUPPRESS, help=docs.get(field.name, "") + default)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, choices=typing.get_args(kind), **kwargs)
        else:
            parser.add_argument(flag, type=kind, metavar=field.name.split("_")[-1].upper(), **kwargs)


def config_flags(args: argparse.Namespace, cls) -> dict:
    """The config fields the user set on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")


def add_run_arguments(parser: argparse.ArgumentParser, cls, bundled: str) -> None:
    """What a training command takes: --config (a file or one of the `bundled` configs),
    --resume, one flag per field of `cls`, --no-progress."""
    parser.add_argument("--config", metavar="FILE", help=f"TOML file of settings, or a bundled one: {bundled}")
    parser.add_argument("--resume", metavar="RUN",
                        help="continue RUN from its newest intact checkpoint, with its own config")
    add_config_flags(parser, cls)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_job(args: argparse.Namespace, cls, job, default_settings=None) -> int:
    """Start a training job (`job(config, progress=...)`, e.g. training.train) with the settings
    of the defaults, then --config (else default_settings(flags), when given), then the flags; or
    resume one (`job(resume=RUN, ...)`) with its own config and the flags that may change."""
    from ..config import load_config_file
    from ..errors import UserError

    flags = config_flags(args, cls)
    progress = False if args.no_progress else None
    if args.resume:
        if args.config:
            raise UserError("--resume takes the run's own config; drop --config")
        job(resume=args.resume, progress=progress, **flags)
        return 0
    if args.config:
        settings = load_config_file(args.config, cls)
    else:
        settings = default_settings(flags) if default_settings else {}
    job(cls.from_dict({**settings, **flags}), progress=progress)
    return 0
