"""Nothing lost: graceful interrupts, the divergence guard, checkpoint retention and failures."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import gptforge.training.loop as loop
from gptforge.errors import UserError
from gptforge.training import Diverged, train
from gptforge.training.config import TrainConfig

from helpers import WriteFaults, assert_user_error, run_cli, run_cli_here, wait_for


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def config(text, out, **fields):
    base = dict(data=str(text), preset="gpt2-tiny", context_length=32, batch_size=2, dropout=0.1,
                lr=1e-3, eval_every=2, eval_batches=1, save_every=1000, device="cpu", out=str(out))
    return TrainConfig.of(**{**base, **fields})


def poison_training_loss(monkeypatch, steps: set[int], value: float) -> None:
    """Multiply the training loss of the given (1-based) steps by NaN or inf."""
    real_loss, calls = loop.batch_loss, {"n": 0}

    def poisoned(model, x, y):
        loss = real_loss(model, x, y)
        if model.training:
            calls["n"] += 1
            if calls["n"] in steps:
                return loss * value
        return loss

    monkeypatch.setattr(loop, "batch_loss", poisoned)


def test_nan_loss_stops_at_that_step_and_keeps_the_good_checkpoint(text, tmp_path, monkeypatch):
    poison_training_loss(monkeypatch, {7}, float("nan"))
    with pytest.raises(Diverged, match="step 7: loss nan"):
        train(config(text, tmp_path / "run", max_steps=20, save_every=3), progress=False)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003", "step-00000006"]
    assert rows(tmp_path / "run")[-1]["step"] == 6
    from gptforge import load_any
    assert all(torch.isfinite(p).all() for p in load_any(tmp_path / "run").parameters())


def test_skip_nonfinite_counts_and_goes_on(text, tmp_path, monkeypatch):
    poison_training_loss(monkeypatch, {3, 4}, float("inf"))
    result = train(config(text, tmp_path / "run", max_steps=6, skip_nonfinite=True), progress=False)
    assert result.step == 6 and math.isfinite(result.train_loss)
    state = torch.load(result.checkpoint / "train_state.pt", weights_only=True)
    assert state["position"]["skipped"] == 2


@pytest.mark.slow  # a run saving every step
def test_keep_last_retains_the_newest_checkpoints(text, tmp_path):
    train(config(text, tmp_path / "run", max_steps=9, save_every=2, keep_last=2), progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-00000008", "step-00000009"]


def test_a_failing_save_keeps_the_previous_checkpoint(text, tmp_path, monkeypatch):
    real_save = loop.save_checkpoint

    def disk_full(path, *args, **kwargs):
        if path.name == "step-00000004":
            raise OSError(28, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", disk_full)
    with pytest.raises(UserError, match="no space left on device; the previous checkpoint "
                                                     r"\(step-00000002\) is intact"):
        train(config(text, tmp_path / "run", max_steps=6, save_every=2), progress=False)
    from gptforge import load_any
    assert load_any(tmp_path / "run").config.context_length == 32


@pytest.mark.slow  # processes and SIGINT
def test_sigint_checkpoints_exits_0_and_resume_matches_an_uninterrupted_run(text, tmp_path):
    args = ["--data", str(text), "--preset", "gpt2-tiny", "--context-length", "32", "--batch-size", "2",
            "--dropout", "0.1", "--lr", "1e-3", "--eval-every", "1", "--eval-batches", "1",
            "--save-every", "1000", "--max-steps", "60", "--device", "cpu", "--no-progress"]
    straight = tmp_path / "straight"
    cli = [sys.executable, "-m", "gptforge", "train"]
    assert subprocess.run(cli + args + ["--out", str(straight)], capture_output=True).returncode == 0

    run = tmp_path / "run"
    proc = subprocess.Popen(cli + args + ["--out", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    assert wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Resume with: gptforge train --resume" in out
    stopped_at = len(rows(run))
    assert 5 <= stopped_at < 60
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
    assert (run / "checkpoints" / f"step-{stopped_at:08d}" / "config.json").exists()

    resumed = subprocess.run(cli + ["--resume", str(run), "--no-progress"], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    strip = lambda rs: [(r["step"], r["train_loss"], r["val_loss"]) for r in rs]
    assert strip(rows(run)) == strip(rows(straight))
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 20 restarts of a process: ~4 minutes on 2 loaded cores
def test_kill_9_anywhere_then_resume_reaches_the_uninterrupted_losses(text, tmp_path):
    """SIGKILL at random moments (start-up, mid-step, mid-checkpoint-save), 20 times: each
    restart with --resume picks up from the newest complete checkpoint and the finished run's
    losses equal those of a run that was never interrupted."""
    import random

    args = ["--data", str(text), "--preset", "gpt2-tiny", "--context-length", "32", "--batch-size", "2",
            "--dropout", "0.1", "--lr", "1e-3", "--eval-every", "1", "--eval-batches", "1",
            "--save-every", "2", "--keep-last", "2", "--max-steps", "300", "--device", "cpu",
            "--no-progress"]  # keep-last: 150 checkpoints of each run would fill ~10 GB of disk
    cli = [sys.executable, "-m", "gptforge", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    began = time.monotonic()
    proc = subprocess.Popen(cli + args + ["--out", str(straight)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    assert wait_for(lambda: (straight / "config.json").exists() or proc.poll() is not None, timeout=600)
    startup = time.monotonic() - began  # python + torch + data: ~1.5 s on a fast machine, more on a slow one
    assert proc.wait(timeout=600) == 0

    # Kills land in the start-up, mid-step and mid-save, on any machine: the times scale with it.
    run, rng, kills = tmp_path / "run", random.Random(0), 0
    while True:
        # Killed before the run wrote its config (start-up is seconds on a slow machine), there is
        # nothing to resume yet: like a user, run the original command again.
        started = (run / "config.json").exists()
        command = cli + (["--resume", str(run), "--no-progress"] if started else args + ["--out", str(run)])
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if kills < 20:
            try:
                proc.wait(timeout=rng.uniform(0.5 * startup, 2.5 * startup))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                kills += 1
                continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
        if kills >= 20:
            break
    assert kills == 20
    strip = lambda rs: [(r["step"], r["train_loss"], r["val_loss"]) for r in rs]
    assert strip(rows(run)) == strip(rows(straight))
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_hostile_pickle_is_refused_and_never_run(text, tmp_path):
    run = tmp_path / "run"
    train(config(text, run, max_steps=2), progress=False)
    checkpoint = run / "checkpoints" / "step-00000002"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import hashlib
    import pickle
    with open(checkpoint / "train_state.pt", "wb") as f:
        pickle.dump(Evil(), f)
    meta = json.loads((checkpoint / "config.json").read_text())  # even with a matching hash
    meta["files"]["train_state.pt"] = hashlib.sha256((checkpoint / "train_state.pt").read_bytes()).hexdigest()
    (checkpoint / "config.json").write_text(json.dumps(meta))
    r = run_cli_here("train", "--resume", str(run), "--max-steps", "3")
    assert_user_error(r, "train_state.pt is not a gptforge train state")  # one line, no torch advice
    assert "weights_only" not in r.stderr
    assert not marker.exists()


def checkpoint_names(run) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_a_fault_during_a_save_fails_the_run_truthfully_and_resume_takes_the_intact_one(text, tmp_path, monkeypatch,
                                                                                       error):
    from gptforge.training.runs import summarize_run
    from gptforge.weights.checkpoint import verify_checkpoint

    faults = WriteFaults(monkeypatch, armed=False)
    real_save = loop.save_checkpoint

    def counted(path, *args, **kwargs):  # counts the writes of the step-4 save only
        faults.armed = path.name == "step-00000004"
        try:
            return real_save(path, *args, **kwargs)
        finally:
            faults.armed = False

    monkeypatch.setattr(loop, "save_checkpoint", counted)
    train(config(text, tmp_path / "clean", max_steps=4, save_every=2), progress=False)
    writes = faults.count
    reason = os.strerror(error).lower()
    for k in sorted({1, 2, writes // 2, writes - 1, writes}):  # first, middle and last writes, the fsyncs
        run = tmp_path / f"run-{k}"
        faults.count, faults.fail_at, faults.error = 0, k, error
        with pytest.raises(UserError) as raised:
            train(config(text, run, max_steps=4, save_every=2), progress=False)
        assert str(raised.value) == (f"could not write checkpoint {run / 'checkpoints' / 'step-00000004'}: "
                                     f"{reason}; the previous checkpoint (step-00000002) is intact")
        # No half-written temporary left behind. Only the last fsync (of the checkpoints folder)
        # comes after the rename, when step 4 is complete but the save still reported as failed.
        assert checkpoint_names(run) == ["step-00000002"] + (["step-00000004"] if k == writes else [])
        for name in checkpoint_names(run):
            verify_checkpoint(run / "checkpoints" / name)
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "failed" and status["error"] == str(raised.value)
        assert summarize_run(run).status == "failed"
        faults.fail_at = 0
        resumed = train(resume=run, max_steps=4, progress=False)
        assert resumed.step == 4 and checkpoint_names(run) == ["step-00000002", "step-00000004"]
        verify_checkpoint(run / "checkpoints" / "step-00000004")


def test_a_status_that_cannot_be_replaced_on_a_full_disk_is_rewritten_in_place(tmp_path, monkeypatch):
    from gptforge.training import run_folder

    run = run_folder.RunFolder(tmp_path)
    run.write_status("running", step=3)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_folder, "write_json", full)
    run.write_status("failed", step=3, error="could not write checkpoint")
    assert run.read_status()["state"] == "failed" and run.read_status()["error"] == "could not write checkpoint"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 5 MB tmpfs, as a nearly full disk (needs root and a sandbox that allows the mount)."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(folder)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_during_a_save_is_one_line_a_failed_status_and_an_intact_checkpoint(text, tiny_bpe_dir,
                                                                                       small_tmpfs):
    # A tiny model with a 400-id tokenizer: one checkpoint is ~1.3 MB, and the disk fills during a
    # later one (keep-last 0 keeps them all).
    run = small_tmpfs / "run"
    result = run_cli("train", "--data", str(text), "--tokenizer", str(tiny_bpe_dir), "--preset", "gpt2-tiny",
                     "--context-length", "32", "--batch-size", "2", "--eval-every", "100", "--eval-batches", "1",
                     "--save-every", "1", "--max-steps", "20", "--device", "cpu", "--no-progress", "--out", str(run))
    assert_user_error(result, "no space left on device")
    assert "could not write checkpoint" in result.stderr and "is intact" in result.stderr
    names = checkpoint_names(run)
    assert names and all(not n.startswith(".") for n in names)
    from gptforge.weights.checkpoint import verify_checkpoint

    for name in names:
        verify_checkpoint(run / "checkpoints" / name)
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    listed = run_cli("runs", str(run))
    assert listed.returncode == 0 and "failed" in listed.stdout
