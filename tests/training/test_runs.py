"""`gptforge runs`: each kind of run folder told apart, read from the files the loop writes."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys

import pytest

import gptforge.training.loop as loop
from gptforge.errors import UserError
from gptforge.training import Diverged, train
from gptforge.training.config import TrainConfig
from gptforge.training.run_folder import RunFolder
from gptforge.training.runs import format_runs, list_runs, summarize_run

from helpers import run_cli_here


def config(text, out, **fields):
    base = dict(data=str(text), preset="gpt2-tiny", context_length=32, batch_size=2, lr=1e-3, eval_every=2,
                eval_batches=1, save_every=1000, device="cpu", out=str(out))
    return TrainConfig.of(**{**base, **fields})


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(text, tmp_path_factory):
    """A folder with a finished, an interrupted (Ctrl-C), a diverged, a killed, a running, an
    empty run, and one from before status files."""
    root = tmp_path_factory.mktemp("runs")
    train(config(text, root / "a-finished", max_steps=4), progress=False)
    with pytest.MonkeyPatch.context() as mp:
        real_enter = loop.GracefulStop.__enter__

        def signalled(self):  # as if SIGINT arrived during the first step
            self.requested = "SIGINT"
            return real_enter(self)

        mp.setattr(loop.GracefulStop, "__enter__", signalled)
        assert train(config(text, root / "b-interrupted", max_steps=50), progress=False).interrupted
    with pytest.MonkeyPatch.context() as mp:
        real_loss = loop.batch_loss
        mp.setattr(loop, "batch_loss", lambda model, x, y: real_loss(model, x, y) * (math.inf if model.training else 1))
        with pytest.raises(Diverged):
            train(config(text, root / "c-diverged", max_steps=20), progress=False)
    # killed: its status still says running, but the process it names is gone
    shutil.copytree(root / "a-finished", root / "d-killed")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status = RunFolder(root / "d-killed").read_status()
    RunFolder(root / "d-killed").status_file.write_text(json.dumps({**status, "state": "running", "pid": dead.pid}))
    shutil.copytree(root / "a-finished", root / "e-running")
    RunFolder(root / "e-running").write_status("running", step=4)  # this process: alive
    (root / "f-empty").mkdir()
    shutil.copytree(root / "a-finished", root / "g-old")
    (root / "g-old" / "status.json").unlink()
    return root


def test_each_run_is_told_apart(runs):
    got = {r.name: r for r in list_runs(runs)}
    assert {name: r.status for name, r in got.items()} == {
        "a-finished": "finished", "b-interrupted": "interrupted", "c-diverged": "diverged",
        "d-killed": "interrupted", "e-running": "running", "f-empty": "empty", "g-old": "unknown"}
    finished = got["a-finished"]
    rows = metrics(runs / "a-finished")
    assert (finished.steps, finished.tokens_seen) == (4, 4 * 2 * 32)
    assert finished.best_val_loss == min(r["val_loss"] for r in rows)
    assert finished.last_val_loss == rows[-1]["val_loss"] and finished.val_bpb == rows[-1]["val_bpb"]
    assert finished.elapsed_s == pytest.approx(rows[-1]["elapsed_s"], abs=0.01)
    assert finished.model == "gpt2-tiny 2L 64d ctx32" and finished.data.endswith("plays.txt")
    assert got["b-interrupted"].steps == 1  # stopped at its first step, checkpointed
    assert "step 1: loss inf" in got["c-diverged"].problems[0]
    empty = got["f-empty"]
    assert (empty.steps, empty.model, empty.best_val_loss) == (None, None, None)


def test_the_table_shows_every_run_on_one_line(runs):
    table = format_runs(list_runs(runs)).splitlines()
    assert table[0].split()[:3] == ["run", "model", "data"]
    for line in table[1:8]:
        name, status = line.split()[0], line.split()[-1]
        assert status == summarize_run(runs / name).status
    assert len(table) == 9 and table[8].startswith("c-diverged: step 1: loss inf")


def test_a_corrupt_metrics_line_is_reported_not_a_crash(runs, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(runs / "a-finished", run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", '{"step": "two"}', *lines[1:]]) + "\n")
    summary = summarize_run(run)
    assert summary.status == "finished" and summary.steps == 4
    assert summary.problems == ["metrics.jsonl:2: not a metrics row, skipped",
                                "metrics.jsonl:3: not a metrics row, skipped"]
    done = run_cli_here("runs", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "damaged: metrics.jsonl:2: not a metrics row, skipped" in done.stdout


def test_a_run_on_another_host_is_not_guessed(tmp_path):
    run = RunFolder(tmp_path / "remote")
    run.create()
    run.status_file.write_text(json.dumps({"state": "running", "pid": 1, "host": socket.gethostname() + "-other"}))
    assert summarize_run(run.path).status == f"running? (on {socket.gethostname()}-other)"


def test_cli_lists_runs_as_a_table_or_json(runs):
    done = run_cli_here("runs", str(runs), "--json")
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["name"] for r in listed] == sorted(p.name for p in runs.iterdir())
    assert listed[0]["status"] == "finished" and listed[0]["steps"] == 4
    assert [r.name for r in list_runs(runs / "a-finished")] == ["a-finished"]  # a run folder itself
    with pytest.raises(UserError, match="no such folder"):
        list_runs(runs / "missing")
