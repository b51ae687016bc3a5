"""Loss curves of a run: train and val loss against epochs, with tokens seen on a second x-axis.

matplotlib is optional (the `plot` extra) and imported only here, through its object API with the
Agg canvas: no window ever opens, and the pyplot backend of a program that imports us is untouched.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..files import atomic_file
from .run_folder import METRICS, PLOT, is_number, parse_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a run folder's metrics.jsonl (or of that file itself), in file order.

    A last line that is not valid JSON is what a crash mid-write leaves, and is skipped quietly;
    a bad line elsewhere (damage to the file) is skipped with a warning.
    """
    path = Path(path)
    file = path / METRICS if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no metrics file at {file}; has the run evaluated at least once?")
    try:
        rows, bad = parse_metrics(file)
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror or e}") from None
    for lineno in bad:
        print(f"warning: {file}:{lineno}: skipping a line that is not a metrics row", file=sys.stderr)
    if not rows:
        raise UserError(f"{file} holds no metrics rows")
    return rows


def _loss(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if is_number(value) else math.nan  # null (no val split) plots as a gap


def loss_figure(rows: list[dict[str, Any]], title: str | None = None) -> Figure:
    """The matplotlib Figure (with an Agg canvas) of train/val loss against epochs and tokens."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, MaxNLocator

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
    return _save(loss_figure(rows, title), out_path)


def _save(fig: Figure, out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return out


def _require_matplotlib() -> None:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import matplotlib.ticker  # noqa: F401
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'gptforge[plot]'") from None


def plot_run(run_dir: str | os.PathLike) -> Path:
    """RUN/metrics.jsonl -> RUN/loss.png; returns the PNG's path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"no such run folder: {run}")
    return plot_losses(read_metrics(run), run / PLOT, title=run.resolve().name)


def compare_figure(runs: dict[str, list[dict[str, Any]]]) -> Figure:
    """One Figure with each run's val loss against tokens seen (its train loss, dashed, when it
    has no validation split), so runs of different batch sizes and lengths line up."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, rows in runs.items():
        by_step = {row["step"]: row for row in rows}  # the latest row of a step wins, as above
        rows = [by_step[s] for s in sorted(by_step)]
        tokens = np.array([float(r["tokens_seen"]) for r in rows])
        val = np.array([_loss(r, "val_loss") for r in rows])
        if np.isnan(val).all():
            ax.plot(tokens, [_loss(r, "train_loss") for r in rows], linestyle="--", label=f"{name} (train)")
        else:
            ax.plot(tokens, val, marker=".", label=name)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("val loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return fig


def plot_runs(run_dirs: list[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Several runs' val curves in one PNG (see compare_figure), written atomically."""
    _require_matplotlib()
    runs = {}
    for run_dir in run_dirs:
        run = Path(run_dir)
        if not run.is_dir():
            raise UserError(f"no such run folder: {run}")
        name = run.resolve().name
        runs[name if name not in runs else str(run)] = read_metrics(run)
    return _save(compare_figure(runs), out_path)


def plot_confusion(confusion: list[list[int]], classes: list[str], out_path: str | os.PathLike,
                   title: str = "") -> Path:
    """A classifier's confusion matrix (rows: the true class, columns: the predicted one) as a PNG."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(confusion)
    side = 2.5 + 0.5 * len(classes)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    ax.set_title(title)
    return _save(fig, out_path)
