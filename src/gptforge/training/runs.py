"""`gptforge runs`: what each run under a folder is, reached and doing, read from its run folder
(config.json, metrics.jsonl, status.json, checkpoints) without loading any weights."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from .run_folder import RunFolder, finite_or_none, is_number, parse_metrics, process_alive


@dataclass
class RunSummary:
    """One line of `gptforge runs`; None where the run does not say."""

    name: str
    path: str
    status: str  # finished, interrupted, diverged, failed, running, empty, or unknown (no status file)
    model: str | None = None
    data: str | None = None
    steps: int | None = None
    tokens_seen: int | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    val_bpb: float | None = None  # bits per byte of the last evaluation's val loss
    elapsed_s: float | None = None  # training time, summed over resumed sessions
    problems: list[str] = field(default_factory=list)  # e.g. corrupt metrics lines


def summarize_run(path: str | os.PathLike) -> RunSummary:
    run = RunFolder(path)
    summary = RunSummary(name=run.path.name, path=str(run.path), status="empty")
    status = run.read_status()
    summary.model, summary.data = _model_and_data(run)
    if run.metrics_file.is_file():
        _add_metrics(summary, run)
    if status is not None:
        summary.status = _state(status)
        for key in ("steps", "tokens_seen", "elapsed_s"):
            value = status.get("step" if key == "steps" else key)
            if is_number(value) and (getattr(summary, key) is None or value > getattr(summary, key)):
                setattr(summary, key, value)
        if status.get("error") and summary.status in ("diverged", "failed"):
            summary.problems.append(str(status["error"]))
    elif run.holds_a_run() or run.config_file.is_file():
        summary.status = "unknown"  # a run from before status files, or one that never started
    return summary


def _state(status: dict) -> str:
    """What a status file's state means now: "running" written by a process that has died (a kill,
    a power cut) is an interrupted run; on another host nobody here can tell."""
    state = str(status.get("state"))
    if state != "running":
        return state
    alive = process_alive(status)
    return "running" if alive else "interrupted" if alive is False else f"running? (on {status.get('host')})"


def _model_and_data(run: RunFolder) -> tuple[str | None, str | None]:
    try:
        config = run.read_config()
        model, train = config["model"], config["train"]
        origin = train.get("init_from") or train.get("preset")
        shape = f"{model['n_layers']}L {model['emb_dim']}d ctx{model['context_length']}"
        return f"{origin} {shape}", str(train.get("data"))
    except (UserError, OSError, ValueError, KeyError, TypeError):
        return None, None


def _add_metrics(summary: RunSummary, run: RunFolder) -> None:
    try:
        rows, bad = parse_metrics(run.metrics_file)
    except OSError as e:
        summary.problems.append(f"cannot read {run.metrics_file.name}: {e.strerror or e}")
        return
    summary.problems += [f"{run.metrics_file.name}:{line}: not a metrics row, skipped" for line in bad]
    if not rows:
        return
    by_step = {row["step"]: row for row in rows}  # a resumed run's latest row of a step wins
    rows = [by_step[s] for s in sorted(by_step)]
    last = rows[-1]
    summary.steps, summary.tokens_seen = int(last["step"]), int(last["tokens_seen"])
    summary.elapsed_s = finite_or_none(last.get("elapsed_s"))
    vals = [v for v in (finite_or_none(r.get("val_loss")) for r in rows) if v is not None]
    if vals:
        summary.best_val_loss, summary.last_val_loss = min(vals), vals[-1]
    summary.val_bpb = finite_or_none(last.get("val_bpb"))


def list_runs(folder: str | os.PathLike = "runs") -> list[RunSummary]:
    """Every run folder directly under `folder` (or `folder` itself when it is one), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no such folder: {folder}")
    if _is_run(folder):
        return [summarize_run(folder)]
    return [summarize_run(p) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _is_run(folder: Path) -> bool:
    run = RunFolder(folder)
    return run.holds_a_run() or run.config_file.is_file() or run.status_file.is_file()


def format_runs(runs: list[RunSummary]) -> str:
    """An aligned table, then one line per problem found."""
    if not runs:
        return "no runs"
    header = ("run", "model", "data", "steps", "tokens", "best val", "last val", "val bpb", "time", "status")
    lines = [header] + [(
        r.name, r.model or "-", _shorten(r.data or "-", 28), _count(r.steps), _count(r.tokens_seen),
        _loss(r.best_val_loss), _loss(r.last_val_loss), _loss(r.val_bpb), _duration(r.elapsed_s), r.status,
    ) for r in runs]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7, 8}
    table = ["  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in lines]
    notes = [f"{r.name}: {problem}" for r in runs for problem in r.problems]
    return "\n".join(table + notes)


def as_dicts(runs: list[RunSummary]) -> list[dict]:
    return [asdict(r) for r in runs]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _loss(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"
