"""Training speeds measured side by side: each job runs once per round, the rounds alternate, and a
job's tokens/s is read from its run folder's metrics.jsonl between its evaluation at `skip` and its
last one (start-up and the first, slower steps left out; evaluations are not training time). The
fine-tuning, classification and DPO speed benchmarks use it; the first job is the one the others
are compared with (pretraining)."""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path


def add_harness_flags(parser: argparse.ArgumentParser, steps: int, skip: int, rounds: int) -> None:
    """--steps, --skip and --rounds, which every job run by `alternate` takes, with these defaults."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--skip", type=int, default=skip, help="steps left out of each rate (a multiple of 5)")
    parser.add_argument("--rounds", type=int, default=rounds)


def rate(run: Path, skip: int) -> float:
    """Tokens per second of training time between the evaluation at step `skip` and the last one."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["step"] == skip)
    last = rows[-1]
    return (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed_s"] - first["elapsed_s"])


def alternate(jobs: dict[str, Callable[[Path], object]], rounds: int, skip: int, work: Path) -> dict[str, list[float]]:
    """Each job's tokens/s in each round (a job writes its run into the folder it is given)."""
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    for r in range(rounds):
        for i, (name, job) in enumerate(jobs.items()):
            out = work / f"job{i}-round{r}"
            job(out)
            rates[name].append(rate(out, skip))
            print(f"round {r + 1}: {name}: {rates[name][-1]:,.0f} tokens/s", flush=True)
    return rates


def print_table(rates: dict[str, list[float]]) -> None:
    """A markdown table: each round's rate, the median, and the median against the first job's."""
    first = statistics.median(next(iter(rates.values())))
    rounds = len(next(iter(rates.values())))
    print("| job | " + " | ".join(f"round {r + 1}" for r in range(rounds)) + " | median | vs the first |")
    print("|---|" + "---|" * (rounds + 2))
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | " + " | ".join(f"{v:,.0f}" for v in values) + f" | {median:,.0f} | {median / first:.2f}x |")
