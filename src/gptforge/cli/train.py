"""`gptforge train`: Train a GPT. Settings come from the defaults, then --config, then the flags. With
no --data and no --config it runs the quickstart config (gpt2-mini on builtin:shakespeare, a few
minutes on 2 CPU cores)."""

from __future__ import annotations

from .common import add_run_arguments, run_job

NAME = "train"
HELP = "pretrain a model (no arguments: a quick CPU run on builtin:shakespeare)"


def add_arguments(p) -> None:
    from ..config import TrainConfig

    add_run_arguments(p, TrainConfig, "the-verdict, gutenberg-345m, shakespeare-cpu")


def _quickstart(flags: dict) -> dict:
    """No --config: the quickstart's settings, unless --data says what to train on."""
    from ..config import load_config_file

    if "data" in flags:
        return {}
    print("no --data or --config given: running the quickstart config shakespeare-cpu")
    return load_config_file("shakespeare-cpu")


def run(args) -> int:
    from ..config import TrainConfig
    from ..training import train

    return run_job(args, TrainConfig, train, _quickstart)
