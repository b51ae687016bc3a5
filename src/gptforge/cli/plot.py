"""`gptforge plot`: Plot train and val loss against epochs (tokens seen on the top axis)."""

from __future__ import annotations

NAME = "plot"
HELP = "draw RUN/loss.png from RUN/metrics.jsonl"


def add_arguments(p) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run folder")


def run(args) -> int:
    from ..training.plot import plot_run

    print(f"wrote {plot_run(args.run_dir)}")
    return 0
