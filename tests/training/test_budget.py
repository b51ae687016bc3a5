"""--max-time: a run ends on the clock, with its final evaluation and checkpoint inside the
budget; a resumed run keeps what is left; the learning rate follows the run's progress in time."""

import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from gptforge.cli.train import QUICKSTART
from gptforge.errors import UserError
from gptforge.training import train
from gptforge.training.budget import SLACK_S, Clock, parse_duration
from gptforge.training.config import OptimArgs, TrainConfig
from gptforge.training.optim import lr_factor

from helpers import assert_user_error, run_cli_here


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def budget_config(text, out, **fields):
    base = dict(data=str(text), preset="gpt2-tiny", context_length=64, batch_size=4, lr=2e-3, min_lr=2e-4,
                lr_schedule="cosine", warmup_steps=5, epochs=1000, eval_every=40, eval_batches=2,
                save_every=100, device="cpu", out=str(out))
    return TrainConfig.of(**{**base, **fields})


def test_durations():
    assert [parse_duration(t) for t in ("90s", "10m", "2h", "1.5h", "45", " 3M ")] == [90, 600, 7200, 5400, 45, 180]
    for bad in ("", "ten minutes", "0s", "-5m", "10d", "infm", "nan"):
        with pytest.raises(UserError, match="positive duration such as 90s"):
            parse_duration(bad)
    assert_user_error(run_cli_here("train", "--max-time", "10 minutes", "--device", "cpu"),
                      "max-time must be a positive duration")


def test_the_schedule_runs_on_the_larger_of_step_and_time_progress():
    cfg = OptimArgs(lr=1.0, min_lr=0.1, lr_schedule="cosine", warmup_steps=0)
    cosine = lambda q: 0.1 + 0.45 * (1 + math.cos(math.pi * q))  # noqa: E731
    assert lr_factor(10, cfg, 1000, time_progress=0.5) == pytest.approx(cosine(0.5))  # time ahead
    assert lr_factor(800, cfg, 1000, time_progress=0.5) == pytest.approx(cosine(0.8))  # steps ahead
    assert lr_factor(10, cfg, 1000, time_progress=1.3) == pytest.approx(0.1)  # never below the floor
    warm = OptimArgs(lr=1.0, min_lr=0.0, lr_schedule="cosine", warmup_steps=100)
    assert lr_factor(49, warm, 1000, time_progress=0.9) == 0.5  # warmup is counted in steps
    assert lr_factor(100, warm, 1000, time_progress=0.1) == pytest.approx(1.0)  # decay starts after it
    assert lr_factor(100, warm, 1000, time_progress=0.55) == pytest.approx(0.5)  # half of (0.1, 1]
    assert lr_factor(10, OptimArgs(lr=1.0), 1000, time_progress=0.9) == 1.0  # constant stays constant


def test_the_clock_plans_syncs_and_stops_before_the_final_jobs():
    clock = Clock(100.0, used_s=20.0, started=time.monotonic(), step=0, eval_steps=2.0, save_bytes=400e6)
    assert clock.available() == 100 - SLACK_S - 1.25 * 2.0  # no step timed yet; a save of 400 MB: 2 s
    assert clock.next_sync == 1 and clock.progress(0) == pytest.approx(20 / clock.available())
    # rank 0's reading: 50 s used, 1 s per step, an evaluation costs 2 s, a save 3 s, no sample yet
    clock.agree(10, [50.0, 1.0, 2.0, 3.0, -1.0], due=["evaluate"], sync_every=10)
    available = 100 - SLACK_S - 1.25 * (2 + 3)  # the final evaluation and save, with a margin
    assert clock.available() == pytest.approx(available)
    left = available - (50 + 1.25 * 2)  # this step's evaluation runs first
    assert clock.next_sync == 10 + min(10, int(left / 2)) and not clock.out_of_time
    assert clock.progress(14) == pytest.approx((52.5 + 4) / available)  # one step time per update since
    clock.agree(20, [available - 0.5, 1.0, 2.0, 3.0, -1.0], due=[], sync_every=10)
    assert clock.out_of_time  # less than one step is left before the final jobs
    # The first sync's step time includes warm-up: it alone never ends the run while time is left.
    def cold_start():
        clock = Clock(30.0, used_s=0.0, started=time.monotonic(), step=0, eval_steps=2.0, save_bytes=1e6)
        clock.agree(1, [20.0, 9.0, 1.0, 0.1, -1.0], due=[], sync_every=10)  # 8.125 s left, a 9 s first step
        assert not clock.out_of_time and clock.next_sync == 2
        return clock
    warm = cold_start()
    warm.agree(2, [21.0, 1.0, 1.0, 0.1, -1.0], due=[], sync_every=10)  # the second step took 1 s
    assert not warm.out_of_time and warm.next_sync == 2 + int(7.125 / 2)
    slow = cold_start()
    slow.agree(2, [29.0, 9.0, 1.0, 0.1, -1.0], due=[], sync_every=10)  # still 9 s a step: nothing fits
    assert slow.out_of_time
    late = Clock(30.0, used_s=0.0, started=time.monotonic(), step=0, eval_steps=2.0, save_bytes=1e6)
    late.agree(1, [29.0, 9.0, 1.0, 0.1, -1.0], due=[], sync_every=10)  # past the final jobs' start already
    assert late.out_of_time
    no_budget = Clock(None, 0.0, time.monotonic(), 0, 2.0, 1e6)
    no_budget.agree(10, [5.0, 1.0, -1.0, -1.0, -1.0], due=[], sync_every=10)
    assert no_budget.next_sync is None and no_budget.progress(10) == 0.0 and not no_budget.out_of_time


class TickingTime:
    """A stand-in for the `time` module of the training code: every reading of its clock moves it
    on by `tick` seconds, so a run's "duration" is a count of clock readings (steps, evaluations,
    saves), the same on an idle machine and a loaded one. What the budget decides from it is then
    exact: a load on the machine can neither end a run early nor make it overrun."""

    def __init__(self, tick: float):
        self.tick, self.t = tick, 1000.0

    def monotonic(self) -> float:
        self.t += self.tick
        return self.t

    perf_counter = monotonic

    def __getattr__(self, name):  # time.time() and the rest, as they are
        return getattr(time, name)


@pytest.fixture
def ticking(monkeypatch):
    """Every module of a training run reads TickingTime instead of the machine's clock."""
    import gptforge.training.budget
    import gptforge.training.loop
    import gptforge.training.pretrain
    import gptforge.training.sync

    clock = TickingTime(0.05)  # a gpt2-tiny step reads the clock 2-3 times: ~0.1-0.15 s
    for module in (gptforge.training.budget, gptforge.training.loop, gptforge.training.pretrain,
                   gptforge.training.sync):
        monkeypatch.setattr(module, "time", clock)
    return clock


@pytest.mark.slow  # ~80 steps
def test_a_budget_run_ends_in_time_with_its_final_evaluation_and_checkpoint(text, tmp_path, capsys, ticking):
    start = ticking.t
    result = train(budget_config(text, tmp_path / "run", max_time="12s", max_steps=2000), progress=False)
    wall = ticking.t - start
    said = capsys.readouterr().out
    assert "not bitwise reproducible" in said and "time budget 12s used" in said
    assert 1 < result.step < 2000  # the clock ended it, not the step limit
    assert wall <= 12.0, wall  # the final evaluation and checkpoint fit inside the budget ...
    assert wall >= 12.0 * 0.6, wall  # ...and it used most of it
    assert result.wall_s <= wall
    history = rows(result.run_dir)
    assert history[-1]["step"] == result.step  # the final evaluation, at the last step
    assert result.checkpoint.name == f"step-{result.step:08d}" and (result.checkpoint / "config.json").exists()
    # the learning rate decayed on the clock, long before the 1000 epochs' steps
    assert history[-1]["lr"] < 2e-4 + 0.1 * (2e-3 - 2e-4)
    assert all(a["lr"] >= b["lr"] for a, b in zip(history[1:], history[2:]))
    state = torch.load(result.checkpoint / "train_state.pt", weights_only=True)
    assert 0 < state["position"]["wall_s"] <= result.wall_s


@pytest.mark.slow  # ~90 steps in two sessions
def test_a_resumed_budget_run_keeps_what_is_left(text, tmp_path, ticking):
    first = train(budget_config(text, tmp_path / "run", max_time="14s", max_steps=15), progress=False)
    assert first.step == 15 and first.wall_s < 7  # stopped by its step limit, with time left
    start = ticking.t
    second = train(resume=tmp_path / "run", max_steps=10**6, progress=False)
    session = ticking.t - start
    left = 14.0 - first.wall_s
    assert 0.6 * left <= session <= left, (session, left)  # this session had only what was left
    assert 0.6 * 14.0 <= second.wall_s <= 14.0 and second.step > first.step
    state = torch.load(second.checkpoint / "train_state.pt", weights_only=True)
    assert state["position"]["wall_s"] > first.wall_s


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_the_quickstart_ends_in_time_on_a_machine_half_as_fast(tmp_path):
    """`gptforge train` with no --config and no --data (the quickstart, its tokenizer trained
    first) on one core and one thread (about half this machine), its 5-minute budget cut to 45 s:
    it still ends within the budget + 10%, measured from outside the process."""
    budget = 45
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    core = str(max(os.sched_getaffinity(0)))  # one of the cores this test may use
    cmd = ["taskset", "-c", core, sys.executable, "-m", "gptforge", "train", "--max-time", f"{budget}s",
           "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=10 * budget)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"running the quickstart config {QUICKSTART}" in proc.stdout
    assert wall <= budget * 1.1, (wall, proc.stdout)
    history = rows(tmp_path / "run")
    last = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    assert history[-1]["step"] == int(last.name.removeprefix("step-")) > 3
