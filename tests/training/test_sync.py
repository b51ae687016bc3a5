"""The loop's host syncs (training.sync) and which periodic jobs a step has (loop.Due), in
process, without a training run."""

import pytest
import torch

from gptforge.distributed import Dist
from gptforge.training.loop import Due
from gptforge.training.resume import Position
from gptforge.training.step import StepOutput, UpdateGuard
from gptforge.training.sync import Diverged, Throughput, agree, check_finite, read_step

CPU = torch.device("cpu")


class Said(list):
    def __call__(self, text):
        self.append(text)


def guard_after(losses):
    """An UpdateGuard that has seen updates with these losses (gradient norm 1)."""
    guard = UpdateGuard(CPU, torch.amp.GradScaler("cpu", enabled=False), step=0)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    for loss in losses:
        param.grad = torch.ones(1)
        guard.step(optimizer, torch.tensor(loss), torch.tensor(1.0))
    return guard


def test_a_reading_names_the_first_bad_update():
    guard = guard_after([1.0, float("nan"), float("inf")])
    reading = read_step(StepOutput(torch.tensor(2.5), torch.tensor(0.5), tokens=8), guard)
    assert (reading.loss, reading.grad_norm, reading.skipped, reading.first_step) == (2.5, 0.5, 2, 2)
    with pytest.raises(Diverged, match="step 2: loss nan / gradient norm 1.0 is not finite"):
        check_finite(reading, guard, position=Position(step=3), skip_nonfinite=False, checkpoint=None, say=Said())
    said = Said()
    check_finite(reading, guard, position=Position(step=3, skipped=2), skip_nonfinite=True, checkpoint=None,
                 say=said)
    assert said == ["step 3: 2 update(s) with a non-finite loss or gradient skipped since the last report (2 so far)"]
    check_finite(reading, guard, position=Position(step=3), skip_nonfinite=True, checkpoint=None, say=said)
    assert len(said) == 1  # reported once


def test_one_process_agrees_with_itself():
    agreed = agree(stop=True, rank_tokens=64, clock=[1.0, 0.1, -1.0, -1.0, -1.0], d=Dist(), device=CPU)
    assert (agreed.stop, agreed.tokens, agreed.clock) == (True, 64, [1.0, 0.1, -1.0, -1.0, -1.0])


def test_throughput_is_measured_over_its_window():
    meter = Throughput(flops_per_token=6.0, peak_flops=60.0)
    p = Position(step=10, tokens_seen=100)
    meter.restart(p)
    start = meter.window[0]
    p.step, p.tokens_seen = 14, 500
    now = start + 2.0
    assert meter.step_seconds(now, p.step) == pytest.approx(0.5)
    tokens_per_s, mfu = meter.close(now, p)
    assert tokens_per_s == pytest.approx(200.0) and mfu == pytest.approx(20.0)
    assert meter.window == (now, 500, 14)  # the next window starts there


def test_which_jobs_a_step_has():
    every = dict(eval_every=5, sample_every=0, save_every=10)
    assert Due.at(1, **every) == Due(evaluate=True, sample=False, save=False)  # the first step is evaluated
    assert not Due.at(3, **every).any()
    assert Due.at(10, **every) == Due(evaluate=True, sample=False, save=True)
    assert Due.at(10, **every).costs(epoch_done=True) == ["evaluate", "save", "sample"]
