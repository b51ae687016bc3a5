"""The training loop's host syncs, one concern each: reading a step's results off the device,
stopping a diverged run, agreeing across ranks (stop requests, token counts, rank 0's clock) and
measuring throughput. Between syncs the loop only queues work on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..errors import UserError
from .resume import Position
from .step import StepOutput, UpdateGuard

SYNC_EVERY = 10  # steps between the training loop's host syncs (progress, divergence, stopping)


class Diverged(UserError):
    """The loss or gradient became NaN/inf: that update was skipped, and the run stopped at the
    next sync point (at most SYNC_EVERY steps later, before any evaluation or save)."""


@dataclass
class StepReading:
    """A step's results and the update guard's record, read off the device in one copy."""

    loss: float
    grad_norm: float
    skipped: int  # updates the guard skipped this session
    first_step: int  # the first skipped update's step, loss and gradient norm (-1: none)
    first_loss: float
    first_norm: float


def read_step(out: StepOutput, guard: UpdateGuard) -> StepReading:
    """Wait for the device and read the step's loss and gradient norm and the guard's record."""
    loss, norm, count, first_step, first_loss, first_norm = torch.cat(
        [out.loss.detach().float().view(1), out.grad_norm.detach().float().view(1), guard.count.view(1),
         guard.first]).tolist()
    return StepReading(loss, norm, int(count), int(first_step), first_loss, first_norm)


def check_finite(reading: StepReading, guard: UpdateGuard, *, position: Position, skip_nonfinite: bool,
                 checkpoint: Path | None, say) -> None:
    """Stop a run whose update was not finite (Diverged), or with --skip-nonfinite report the
    updates skipped since the last report."""
    if reading.skipped <= guard.reported:
        return
    if not skip_nonfinite:
        raise Diverged(
            f"step {reading.first_step}: loss {reading.first_loss} / gradient norm {reading.first_norm} is not "
            f"finite; its update was skipped and training stopped at step {position.step} "
            f"(newest checkpoint: {checkpoint or 'none'}). Lower --lr, or pass "
            f"--skip-nonfinite")
    say(f"step {position.step}: {reading.skipped - guard.reported} update(s) with a non-finite loss "
        f"or gradient skipped since the last report ({position.skipped} so far)")
    guard.reported = reading.skipped


@dataclass
class Agreement:
    """What every rank takes from a sync: whether any rank was asked to stop, the tokens all ranks
    read since the last sync, and rank 0's clock reading (training.budget.Clock.reading)."""

    stop: bool
    tokens: int
    clock: list[float]


def agree(*, stop: bool, rank_tokens: int, clock: list[float], d: distributed.Dist,
          device: torch.device) -> Agreement:
    """One all-reduce: any rank's stop, the sum of the token counts, rank 0's clock for all."""
    shared = [float(stop), float(rank_tokens), *(clock if d.is_main else [0.0] * len(clock))]
    shared = distributed.all_sum(shared, d, device)
    return Agreement(shared[0] > 0, int(shared[1]), shared[2:])


class Throughput:
    """Tokens per second and model FLOP utilisation over a window of training steps, restarted
    after work that is not training (evaluations, samples, saves, an epoch's end)."""

    def __init__(self, flops_per_token: float, peak_flops: float):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.window = (time.perf_counter(), 0, 0)  # (start time, tokens seen, step) of the window

    def restart(self, position: Position) -> None:
        self.window = (time.perf_counter(), position.tokens_seen, position.step)

    def step_seconds(self, now: float, step: int) -> float:
        """Seconds per step in the window so far."""
        return (now - self.window[0]) / max(1, step - self.window[2])

    def close(self, now: float, position: Position) -> tuple[float, float]:
        """(tokens/s, MFU) of the window up to `now`, which starts the next window."""
        tokens_per_s = (position.tokens_seen - self.window[1]) / (now - self.window[0])
        self.window = (now, position.tokens_seen, position.step)
        return tokens_per_s, self.flops_per_token * tokens_per_s / self.peak_flops
