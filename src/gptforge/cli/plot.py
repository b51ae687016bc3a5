"""`gptforge plot`: Plot one run's train and val loss against epochs (tokens seen on the top axis)
into RUN/loss.png, or several runs' val loss against tokens seen in one picture (--out)."""

from __future__ import annotations

NAME = "plot"
HELP = "draw RUN/loss.png from RUN/metrics.jsonl, or compare several runs"


def add_arguments(p) -> None:
    p.add_argument("run_dirs", metavar="RUN", nargs="+", help="run folder(s)")
    p.add_argument("--out", metavar="PNG",
                   help="with several runs: the picture to write (default: compare.png here)")


def run(args) -> int:
    from ..training.plot import plot_run, plot_runs

    if len(args.run_dirs) == 1 and not args.out:
        print(f"wrote {plot_run(args.run_dirs[0])}")
    else:
        print(f"wrote {plot_runs(args.run_dirs, args.out or 'compare.png')}")
    return 0
