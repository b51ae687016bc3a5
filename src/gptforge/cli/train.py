"""`gptforge train`: Train a GPT. Settings come from the defaults, then --config, then the flags. With
no --data and no --config it runs the quickstart config (gpt2-mini on builtin:shakespeare, a few
minutes on 2 CPU cores)."""

from __future__ import annotations

from ..errors import UserError
from .common import add_config_flags, config_flags

NAME = "train"
HELP = "pretrain a model (no arguments: a quick CPU run on builtin:shakespeare)"


def add_arguments(p) -> None:
    from ..config import TrainConfig

    p.add_argument("--config", metavar="FILE",
                   help="TOML file of settings, or a bundled one: the-verdict, gutenberg-345m, "
                        "shakespeare-cpu")
    p.add_argument("--resume", metavar="RUN",
                   help="continue RUN from its newest intact checkpoint, with its own config")
    add_config_flags(p, TrainConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..config import TrainConfig, load_config_file
    from ..training import train
    from ..training.budget import process_start

    started = process_start()  # a --max-time budget covers Python's and torch's start-up too
    flags = config_flags(args, TrainConfig)
    progress = False if args.no_progress else None
    if args.resume:
        if args.config:
            raise UserError("--resume takes the run's own config; drop --config")
        train(resume=args.resume, progress=progress, started=started, **flags)
        return 0
    if args.config:
        settings = load_config_file(args.config)
    elif "data" not in flags:
        print("no --data or --config given: running the quickstart config shakespeare-cpu")
        settings = load_config_file("shakespeare-cpu")
    else:
        settings = {}
    train(TrainConfig.from_dict({**settings, **flags}), progress=progress, started=started)
    return 0
