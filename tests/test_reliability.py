"""Nothing lost: graceful interrupts, the divergence guard, checkpoint retention and failures."""

import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gptforge.config import TrainConfig
from gptforge.data import read_documents
from gptforge.train import Diverged, train

# `gptforge.train` the attribute is the function; the module itself is needed for monkeypatching
train_module = importlib.import_module("gptforge.train")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    docs = dict(read_documents("builtin:shakespeare").docs)
    path = tmp_path_factory.mktemp("text") / "plays.txt"
    path.write_text(docs["builtin:shakespeare/hamlet"][:60000], encoding="utf-8")
    return path


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def config(text, out, **fields):
    base = dict(data=str(text), preset="gpt2-tiny", context_length=32, batch_size=2, dropout=0.1,
                lr=1e-3, eval_every=2, eval_batches=1, save_every=1000, device="cpu", out=str(out))
    return TrainConfig(**{**base, **fields})


def test_nan_loss_stops_at_that_step_and_keeps_the_good_checkpoint(text, tmp_path, monkeypatch):
    real_loss, calls = train_module.batch_loss, {"n": 0}

    def poisoned(model, x, y):
        loss = real_loss(model, x, y)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 7:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_module, "batch_loss", poisoned)
    with pytest.raises(Diverged, match="step 7: loss nan"):
        train(config(text, tmp_path / "run", max_steps=20, save_every=3), progress=False)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000006"]
    assert rows(tmp_path / "run")[-1]["step"] == 6
    from gptforge import load_model
    assert all(torch.isfinite(p).all() for p in load_model(tmp_path / "run").parameters())


def test_skip_nonfinite_counts_and_goes_on(text, tmp_path, monkeypatch):
    real_loss, calls = train_module.batch_loss, {"n": 0}

    def poisoned(model, x, y):
        loss = real_loss(model, x, y)
        if model.training:
            calls["n"] += 1
            if calls["n"] in (3, 4):
                return loss * float("inf")
        return loss

    monkeypatch.setattr(train_module, "batch_loss", poisoned)
    result = train(config(text, tmp_path / "run", max_steps=6, skip_nonfinite=True), progress=False)
    assert result.step == 6 and math.isfinite(result.train_loss)
    state = torch.load(result.checkpoint / "train_state.pt", weights_only=True)
    assert state["position"]["skipped"] == 2


def test_keep_last_retains_the_newest_checkpoints(text, tmp_path):
    train(config(text, tmp_path / "run", max_steps=9, save_every=2, keep_last=2), progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000008", "step-00000009"]


def test_a_failing_save_keeps_the_previous_checkpoint(text, tmp_path, monkeypatch):
    real_save = train_module.save_checkpoint

    def disk_full(path, *args, **kwargs):
        if path.name == "step-00000004":
            raise OSError(28, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", disk_full)
    with pytest.raises(train_module.UserError, match="No space left on device; the previous checkpoint "
                                                     r"\(step-00000002\) is intact"):
        train(config(text, tmp_path / "run", max_steps=6, save_every=2), progress=False)
    from gptforge import load_model
    assert load_model(tmp_path / "run").config.context_length == 32


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_sigint_checkpoints_exits_0_and_resume_matches_an_uninterrupted_run(text, tmp_path):
    args = ["--data", str(text), "--preset", "gpt2-tiny", "--context-length", "32", "--batch-size", "2",
            "--dropout", "0.1", "--lr", "1e-3", "--eval-every", "1", "--eval-batches", "1",
            "--save-every", "1000", "--max-steps", "60", "--device", "cpu", "--no-progress"]
    straight = tmp_path / "straight"
    train_module_cli = [sys.executable, "-m", "gptforge", "train"]
    assert subprocess.run(train_module_cli + args + ["--out", str(straight)], capture_output=True).returncode == 0

    run = tmp_path / "run"
    proc = subprocess.Popen(train_module_cli + args + ["--out", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    assert _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Resume with: gptforge train --resume" in out
    stopped_at = len(rows(run))
    assert 5 <= stopped_at < 60
    assert (run / "checkpoints" / f"step-{stopped_at:08d}" / "config.json").exists()

    resumed = subprocess.run(train_module_cli + ["--resume", str(run), "--no-progress"], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    strip = lambda rs: [(r["step"], r["train_loss"], r["val_loss"]) for r in rs]
    assert strip(rows(run)) == strip(rows(straight))
