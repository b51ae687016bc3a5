"""`gptforge runs`: List the runs under a folder (default: runs/) with their model, data, steps,
tokens seen, best and last val loss, val bits per byte, training time and status: finished,
interrupted (stopped by a signal, or its process is gone), diverged, failed, running, or empty."""

from __future__ import annotations

import json

NAME = "runs"
HELP = "a table of the runs under runs/ (or DIR): progress, losses, status"


def add_arguments(p) -> None:
    p.add_argument("folder", metavar="DIR", nargs="?", default="runs",
                   help="folder holding run folders, or one run folder (default: runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead")


def run(args) -> int:
    from ..training.runs import as_dicts, format_runs, list_runs

    runs = list_runs(args.folder)
    if args.json:
        for row in as_dicts(runs):
            print(json.dumps(row))
    else:
        print(format_runs(runs))
    return 0
