"""`gptforge train`: Train a GPT. Settings come from the defaults, then --config, then the flags. With
no --data and no --config it runs the quickstart config (the CPU speedrun recipe on
builtin:shakespeare, on a 5-minute clock on any machine)."""

from __future__ import annotations

from .common import add_run_arguments, run_job

NAME = "train"
HELP = "pretrain a model (no arguments: a 5-minute CPU run on builtin:shakespeare)"
QUICKSTART = "speedrun-cpu"  # the bundled config run when neither --data nor --config is given


def add_arguments(p) -> None:
    from ..training.config import TrainConfig

    add_run_arguments(p, TrainConfig, "speedrun-cpu, speedrun-gpu, shakespeare-cpu, the-verdict, gutenberg-345m")


def _quickstart(flags: dict) -> dict:
    """No --config: the quickstart's settings, unless --data says what to train on."""
    from ..training.config_files import load_config_file

    if "data" in flags:
        return {}
    print(f"no --data or --config given: running the quickstart config {QUICKSTART}")
    return load_config_file(QUICKSTART)


def run(args) -> int:
    from ..training import train
    from ..training.config import TrainConfig

    return run_job(args, TrainConfig, train, _quickstart)
