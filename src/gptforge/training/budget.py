"""The wall-clock budget of a run (--max-time): how much of it is used, when the loop next syncs,
and when it must stop so that the final evaluation and checkpoint still fit.

The clock is the whole job's: it runs from the start of the process (the CLI) or of `train()`,
through data loading, evaluations, samples and saves, and a resumed run adds the time its earlier
sessions used (Position.wall_s, saved in every checkpoint). Decisions are taken only at the
loop's sync points, from rank 0's readings, which every rank receives there: so under torchrun all
ranks stop at the same step and set the same learning rates.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from ..errors import UserError

SLACK_S = 0.5  # kept free at the end: process exit, and the error in the estimates below
MARGIN = 1.25  # costs of evaluations, saves and samples are taken this much larger
SAVE_BYTES_PER_S = 200e6  # a first guess at writing (and hashing) a checkpoint, until one is timed


def parse_duration(text, name: str = "duration") -> float:
    """Seconds in a duration such as '90s', '10m', '2h', '1.5h' or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    raw = str(text).strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in units else (raw, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise UserError(f"{name} must be a positive duration such as 90s, 10m or 2h, got {text!r}")
    return seconds


def process_start() -> float:
    """The time.monotonic() reading at which this process started (Linux, from /proc), so that a
    budget covers Python's and torch's start-up too; elsewhere, now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(0.0, age)


class Clock:
    """The job's time, and (with a budget) the plan that keeps the run inside it.

    `reading()` is this rank's measurements; `agree()` takes rank 0's (the same on every rank)
    and decides: stop now, or run until the sync at step `next_sync`. Costs not yet measured are
    estimated: an evaluation from the step time (`eval_steps` steps: a forward pass is about a
    third of a training step), a save from the checkpoint's size (`save_bytes`), a sample as one
    step and a second.
    """

    JOBS = ("evaluate", "save", "sample")

    def __init__(self, budget_s: float | None, used_s: float, started: float, step: int, eval_steps: float,
                 save_bytes: float):
        self.budget_s, self.used_s, self.started = budget_s, used_s, started
        self.eval_steps, self.save_bytes = eval_steps, save_bytes  # for estimates, until measured
        self.costs = dict.fromkeys(self.JOBS, -1.0)  # -1: not measured yet
        self.step_s = 0.0  # seconds per training step, as last measured
        self.synced = (step, used_s)  # (step, job time after that step's periodic jobs)
        self.next_sync = step + 1 if budget_s is not None else None  # a first sync after one step
        self.out_of_time = False
        self.warm = False  # whether a step after the first has been timed

    def now(self) -> float:
        """Seconds of the whole job so far, on this process's clock."""
        return self.used_s + time.monotonic() - self.started

    def measured(self, job: str, seconds: float) -> None:
        self.costs[job] = seconds

    def reading(self, step_s: float) -> list[float]:
        """What this rank knows: [job time now, seconds per step, evaluation, save, sample cost]."""
        return [self.now(), step_s, *(self.costs[job] for job in self.JOBS)]

    def cost(self, job: str) -> float:
        """Seconds to set aside for one `job`: its last measured cost (or an estimate), plus a margin."""
        if self.costs[job] >= 0:
            return MARGIN * self.costs[job]
        if job == "evaluate":
            return MARGIN * self.eval_steps * self.step_s
        if job == "save":
            return MARGIN * self.save_bytes / SAVE_BYTES_PER_S
        return MARGIN * self.step_s + 1.0

    def agree(self, step: int, reading: list[float], due: list[str], sync_every: int) -> None:
        """Take rank 0's reading at the sync after update `step`, whose periodic jobs `due` run
        next; a final evaluation and save must still fit after the last step."""
        now, self.step_s, *costs = reading
        self.costs = dict(zip(self.JOBS, costs))
        after_jobs = now + sum(self.cost(job) for job in due)
        self.synced = (step, after_jobs)
        if self.budget_s is None:
            return
        left = self.available() - after_jobs  # seconds of training steps still affordable
        first, self.warm = not self.warm, True
        if left < self.step_s:
            if first and left > 0:
                # The first step also pays for warm-up (allocations, first-call set-up), often
                # several times a later step's cost: time one more before deciding none fits.
                self.next_sync = step + 1
            else:
                self.out_of_time = True
            return
        # Sync again within half of what is left: the last steps are checked ever more closely,
        # so a slower step near the end overruns by a fraction of a step, not by many.
        self.next_sync = step + max(1, min(sync_every, int(left / (2 * self.step_s)) if self.step_s else 1))

    def available(self) -> float:
        """Seconds of the budget that training steps may use: the budget less the final
        evaluation and save, and a little slack."""
        return self.budget_s - SLACK_S - self.cost("evaluate") - self.cost("save")

    def progress(self, step: int) -> float:
        """Share of the budget's training time used when update `step` starts (0 without a
        budget): from the agreed reading, plus one measured step time per update since."""
        if self.budget_s is None:
            return 0.0
        synced_step, synced_s = self.synced
        return max(0.0, (synced_s + (step - synced_step) * self.step_s) / max(self.available(), 1e-9))

    def steps_left(self, step: int) -> int:
        """About how many more updates fit (for the progress bar)."""
        if self.budget_s is None or not self.step_s:
            return 0
        return max(0, int((self.available() - self.synced[1]) / self.step_s) - (step - self.synced[0]))


def start_clock(*, max_time: str | None, used_s: float, started: float | None, step: int, eval_steps: float,
                save_bytes: float, say) -> Clock:
    """The job's clock, with the --max-time budget it plans against (if any): from `started` (a
    time.monotonic() reading; default: now) plus the `used_s` of earlier sessions."""
    budget = parse_duration(max_time, "max-time") if max_time else None
    clock = Clock(budget, used_s, time.monotonic() if started is None else started, step, eval_steps, save_bytes)
    if budget is not None:
        say(f"time budget {max_time}: {max(0.0, budget - clock.now()):.0f} s left, ending "
            f"with an evaluation and a checkpoint; a run on the clock is not bitwise reproducible "
            f"(a step-based one is)")
    return clock
