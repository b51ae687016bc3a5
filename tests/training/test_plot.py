"""Tests for gptforge.training.plot: reading metrics.jsonl and writing loss.png."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from gptforge.errors import UserError
from gptforge.training.plot import compare_figure, loss_figure, plot_losses, plot_run, plot_runs, read_metrics

from helpers import run_cli_here

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 2048
STEPS_PER_EPOCH = 10


def row(step: int, val: float | None = 0.0) -> dict:
    return {"step": step, "epoch": step / STEPS_PER_EPOCH, "tokens_seen": step * TOKENS_PER_STEP,
            "train_loss": 10.0 - 0.2 * step, "val_loss": val if val is None else 10.5 - 0.2 * step,
            "lr": 4e-4, "elapsed_s": 0.1 * step}


def write_metrics(run, rows, tail: str = "") -> None:
    run.mkdir(exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    (run / "metrics.jsonl").write_text(text)


def test_read_metrics_skips_truncated_last_line(tmp_path):
    rows = [row(s) for s in range(0, 30, 5)]
    full = json.dumps(row(30))
    write_metrics(tmp_path / "run", rows, tail=full[: len(full) // 2])  # a crash mid-write
    assert read_metrics(tmp_path / "run") == rows
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == rows


def test_read_metrics_reads_nan_and_null_val_loss(tmp_path):
    rows = [row(0, val=None), {**row(5), "val_loss": math.nan}]
    write_metrics(tmp_path / "run", rows)  # json.dumps writes NaN as the bare word NaN
    got = read_metrics(tmp_path / "run")
    assert got[0]["val_loss"] is None and math.isnan(got[1]["val_loss"])


def test_read_metrics_user_errors(tmp_path):
    with pytest.raises(UserError, match="no metrics file"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "epo')
    with pytest.raises(UserError, match="no metrics rows"):
        read_metrics(tmp_path)
    with pytest.raises(UserError, match="no such run folder"):
        plot_run(tmp_path / "nowhere")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(UserError, match="no metrics file"):
        plot_run(tmp_path / "empty-run")


def test_plot_run_writes_png_and_leaves_no_temp_files(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, [row(s) for s in range(0, 50, 5)])
    out = plot_run(run)
    assert out == run / "loss.png"
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000  # axes, two curves, labels: far more than an empty image
    assert sorted(p.name for p in run.iterdir()) == ["loss.png", "metrics.jsonl"]
    # Replacing an existing plot works the same way.
    write_metrics(run, [row(s) for s in range(0, 80, 5)])
    plot_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["loss.png", "metrics.jsonl"]


def test_top_axis_shows_tokens_aligned_with_epochs():
    rows = [row(s) for s in range(0, 100, 5)]
    fig = loss_figure(rows, title="run")
    bottom, top = fig.axes
    assert bottom.get_xlabel() == "epochs"
    assert top.get_xlabel() == "tokens seen"
    assert top.get_xlim() == pytest.approx(bottom.get_xlim())
    # Each top tick sits at the epoch where its token count was reached.
    labels = [t.get_text() for t in top.get_xticklabels()]
    positions = top.get_xticks()
    assert len(positions) >= 2
    tokens_per_epoch = TOKENS_PER_STEP * STEPS_PER_EPOCH
    for label, epoch in zip(labels, positions):
        tokens = float(label.replace("k", "e3").replace("M", "e6"))
        assert epoch * tokens_per_epoch == pytest.approx(tokens, rel=1e-9, abs=1e-6)
    legend = [t.get_text() for t in bottom.get_legend().get_texts()]
    assert legend == ["train loss", "val loss"]


def test_no_validation_plots_train_only_and_resume_duplicates_keep_latest():
    rows = [row(s, val=None) for s in range(0, 30, 5)]
    rows += [{**row(20, val=None), "train_loss": 99.0}]  # logged again after a resume
    fig = loss_figure(rows)
    (train_line,) = fig.axes[0].get_lines()
    xs, ys = train_line.get_data()
    assert np.all(np.diff(xs) > 0)
    assert ys[list(xs).index(2.0)] == 99.0


def test_plot_does_not_touch_pyplot_backend(tmp_path):
    # Plotting must not import pyplot (which would pick and lock a GUI backend for the user).
    plot_losses([row(0), row(5)], tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE
    if "matplotlib.pyplot" in sys.modules:
        pytest.skip("pyplot was imported by something else in this process")
    assert "matplotlib.pyplot" not in sys.modules


def test_missing_matplotlib_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(UserError, match=r"pip install 'gptforge\[plot\]'"):
        plot_losses([row(0)], tmp_path / "p.png")
    assert not list(tmp_path.iterdir())


def test_several_runs_overlay_their_val_curves_against_tokens(tmp_path):
    write_metrics(tmp_path / "small", [row(s) for s in range(0, 30, 5)])
    write_metrics(tmp_path / "big", [{**row(s), "tokens_seen": 3 * row(s)["tokens_seen"]} for s in range(0, 20, 5)])
    write_metrics(tmp_path / "noval", [row(s, val=None) for s in range(0, 10, 5)])
    fig = compare_figure({name: read_metrics(tmp_path / name) for name in ("small", "big", "noval")})
    (ax,) = fig.axes
    lines = {line.get_label(): line.get_data() for line in ax.get_lines()}
    assert list(lines) == ["small", "big", "noval (train)"]
    assert list(lines["big"][0]) == [3 * row(s)["tokens_seen"] for s in range(0, 20, 5)]
    assert list(lines["small"][1]) == [row(s)["val_loss"] for s in range(0, 30, 5)]
    assert ax.get_xlabel() == "tokens seen"
    done = run_cli_here("plot", str(tmp_path / "small"), str(tmp_path / "big"), "--out", str(tmp_path / "both.png"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "both.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(UserError, match="no such run folder"):
        plot_runs([tmp_path / "small", tmp_path / "missing"], tmp_path / "x.png")
