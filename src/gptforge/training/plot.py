"""Loss curves of a run: train and val loss against epochs, with tokens seen on a second x-axis.

matplotlib is optional (the `plot` extra) and imported only here, through its object API with the
Agg canvas: no window ever opens, and the pyplot backend of a program that imports us is untouched.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..files import atomic_file
from .run_folder import METRICS, PLOT

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a run folder's metrics.jsonl (or of that file itself), in file order.

    A last line that is not valid JSON is what a crash mid-write leaves, and is skipped quietly;
    a bad line elsewhere (a crash, then a resume appending after it) is skipped with a warning.
    """
    path = Path(path)
    file = path / METRICS if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no metrics file at {file}; has the run evaluated at least once?")
    try:
        lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror or e}") from None
    numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
    rows = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)  # json reads NaN, which json.dumps writes for a NaN loss
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and all(_is_number(row.get(k)) for k in ("step", "epoch", "tokens_seen")):
            rows.append(row)
        elif k < len(numbered) - 1:
            print(f"warning: {file}:{lineno}: skipping a line that is not a metrics row", file=sys.stderr)
    if not rows:
        raise UserError(f"{file} holds no metrics rows")
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _loss(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if _is_number(value) else math.nan  # null (no val split) plots as a gap


def loss_figure(rows: list[dict[str, Any]], title: str | None = None) -> Figure:
    """The matplotlib Figure (with an Agg canvas) of train/val loss against epochs and tokens."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import EngFormatter, MaxNLocator
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'gptforge[plot]'") from None
    if not rows:
        raise UserError("no metrics rows to plot")

    # A resumed run logs the steps after its checkpoint again: the latest row of a step wins.
    by_step = {row["step"]: row for row in rows}
    rows = [by_step[s] for s in sorted(by_step)]
    epochs = np.array([float(r["epoch"]) for r in rows])
    tokens = np.array([float(r["tokens_seen"]) for r in rows])
    train = np.array([_loss(r, "train_loss") for r in rows])
    val = np.array([_loss(r, "val_loss") for r in rows])

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(epochs, train, marker=".", label="train loss")
    if not np.isnan(val).all():
        ax.plot(epochs, val, marker=".", linestyle="-.", label="val loss")
    ax.set_xlabel("epochs")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")

    # Top axis: the same x coordinates (epochs), with ticks placed where round token counts were
    # reached. Interpolating the logged (epoch, tokens) pairs keeps the two scales aligned even when
    # tokens per epoch changed mid-run (say, a resume with another batch size).
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    ticks = MaxNLocator(nbins=6).tick_values(tokens.min(), tokens.max())
    ticks = ticks[(ticks >= tokens.min()) & (ticks <= tokens.max())]
    top.set_xticks(np.interp(ticks, tokens, epochs), [EngFormatter(sep="")(t) for t in ticks])
    top.set_xlabel("tokens seen")
    if title:
        ax.set_title(title)
    return fig


def plot_losses(rows: list[dict[str, Any]], out_path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the loss plot as a PNG, atomically: a crash never leaves a half-written file."""
    fig = loss_figure(rows, title)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return out


def plot_run(run_dir: str | os.PathLike) -> Path:
    """RUN/metrics.jsonl -> RUN/loss.png; returns the PNG's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"no such run folder: {run}")
    return plot_losses(read_metrics(run), run / PLOT, title=run.resolve().name)
