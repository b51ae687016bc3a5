"""The training loop, shared by every job: optimizer steps over the job's batches, with periodic
evaluations, samples, checkpoints and host syncs, a clean stop on Ctrl-C/SIGTERM, and a stop on
divergence. A job (pretraining, fine-tuning) plugs in a Task: its batches, its loss, how it
evaluates and what it samples.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from .. import distributed
from ..data import prefetch
from ..device import matmul_peak_flops
from ..errors import UserError, first_line
from ..evaluate import batch_loss
from ..tokenizer import tokenizer_of
from ..weights.checkpoint import save_checkpoint
from .budget import Clock, parse_duration
from .config import RunConfig
from .loggers import LogHub, check_packages, open_loggers
from .optim import lr_factor, make_optimizer, set_lr
from .resume import Position, capture, restore
from .run_folder import RunFolder
from .step import UpdateGuard, optimizer_step

SYNC_EVERY = 10  # steps between the training loop's host syncs (progress, divergence, stopping)


class Task(Protocol):
    """What a job trains on; the loop calls nothing else of it."""

    batches_per_epoch: int  # micro-batches per epoch, a multiple of grad_accum

    def batches(self, epoch: int, start: int) -> Iterator[tuple]:
        """The micro-batches of `epoch` from index `start` on (see training.step.optimizer_step)."""

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        """(train loss, val loss) of the model now; NaN for a split it does not have."""

    def sample(self, model: torch.nn.Module) -> str:
        """A text that shows what the model does now."""

    # Optional: UTF-8 bytes per val token of the evaluated batches, which turns the val loss into
    # bits per byte (comparable across tokenizers); absent or None when unknown.
    val_bytes_per_token: float | None


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves behind."""

    run_dir: Path
    checkpoint: Path
    step: int
    tokens_seen: int
    train_loss: float
    val_loss: float
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM, after saving a checkpoint
    wall_s: float = 0.0  # the whole job's wall time when it ended, earlier sessions included


class Diverged(UserError):
    """The loss or gradient became NaN/inf: that update was skipped, and the run stopped at the
    next sync point (at most SYNC_EVERY steps later, before any evaluation or save)."""


class GracefulStop:
    """First Ctrl-C or SIGTERM: ask the loop to stop after the current step and checkpoint.
    A second one aborts at once (checkpoints are atomic, so nothing is corrupted)."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        tqdm.write(f"{self.requested}: finishing this step (under torchrun: the step where all "
                   "ranks next agree, within 10) and saving a checkpoint (press Ctrl-C again to "
                   "abort at once)")

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signals reach only that one
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One run of the loop. Its state is `position` (a Position), which the checkpoints written
    by `save` hold together with the weights, optimizer, scaler and RNG states (training.resume).
    `started` is the time.monotonic() reading at which the job began (default: now); a
    --max-time budget counts from there (training.budget)."""

    def __init__(self, cfg: RunConfig, run: RunFolder, model: torch.nn.Module, task: Task,
                 total_steps: int, d: distributed.Dist, device: torch.device,
                 resume_from: Path | None = None, progress: bool | None = None,
                 loss_fn: Callable | None = None, started: float | None = None):
        self.cfg, self.run, self.model, self.task, self.d, self.device = cfg, run, model, task, d, device
        self.total_steps, self.loss_fn, self.progress = total_steps, loss_fn or batch_loss, progress
        check_packages(cfg.logging.log)  # a missing logging package fails before the run folder exists
        self.say = tqdm.write if d.is_main else (lambda *args, **kwargs: None)  # rank 0 speaks for the job
        self.wrapped = distributed.wrap(model, d, cfg.compute.distributed, device)
        # The trainable parameters, taken now: FSDP2 swaps a module's registered parameters for
        # unsharded copies during a forward and leaves the root's so after one without backward
        # (an evaluation), and those copies never get a gradient.
        self.params = [w for w in model.parameters() if w.requires_grad]
        self.optimizer = make_optimizer(model, cfg.optim, device)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.compute.dtype == "float16")
        self.autocast = torch.autocast(device.type, dtype=getattr(torch, cfg.compute.dtype),
                                       enabled=cfg.compute.dtype != "float32")
        if d.enabled:
            torch.manual_seed(cfg.seed + d.rank)  # independent dropout masks on each rank
        self.position, self.checkpoint, self.evaluated_step = Position(), resume_from, None
        if resume_from is not None:
            self.position = restore(resume_from, model, self.optimizer, self.scaler, d, device)
            if d.is_main:
                run.truncate_metrics(self.position.step)
            # Every rank reads the same answer whether or not rank 0 has truncated the file yet.
            steps = [s for s in run.metrics_steps() if s <= self.position.step]
            self.evaluated_step = steps[-1] if steps else None
            self.say(f"resuming {run} from {resume_from.name} (step {self.position.step}, "
                     f"epoch {self.position.epoch + 1})")
        elif d.is_main:
            run.create()
        resolved = {"model": model.config.to_dict(), "train": cfg.to_dict()}
        self.log = LogHub([])  # the loggers of --log, on rank 0
        if d.is_main:
            run.write_config(resolved, tokenizer_of(model))
            run.write_status("running", step=self.position.step)
            self.log = open_loggers(cfg.logging.log, run, self.position.step, resolved, cfg.logging.wandb_project)
        self.guard = UpdateGuard(device, self.scaler, self.position.step)
        self.skipped_before = self.position.skipped
        self.losses = (math.nan, math.nan)  # (train, val) of the latest evaluation
        self.stop, self.stopping, self.bar = GracefulStop(), False, None
        self.rank_tokens = 0  # tokens this rank read since the last sync
        self.say(f"run folder: {run}")
        self._start_clock(started)

    def _start_clock(self, started: float | None) -> None:
        """The job's clock, and with --max-time the budget it plans against (training.budget)."""
        cfg, p = self.cfg, self.position
        budget = parse_duration(cfg.optim.max_time, "max-time") if cfg.optim.max_time else None
        eval_steps = 2 * cfg.eval.eval_batches * self.d.world_size / 3  # forward passes cost ~1/3 of a step
        save_bytes = 3 * sum(w.numel() * w.element_size() for w in self.model.parameters())  # + 2 moments
        self.clock = Clock(budget, p.wall_s, time.monotonic() if started is None else started, p.step,
                           eval_steps, save_bytes)
        if budget is not None:
            self.say(f"time budget {cfg.optim.max_time}: {max(0.0, budget - self.clock.now()):.0f} s left, ending "
                     f"with an evaluation and a checkpoint; a run on the clock is not bitwise reproducible "
                     f"(a step-based one is)")

    def fit(self) -> TrainResult:
        """Train, and record in the run folder's status how it ended."""
        try:
            result = self._fit()
        except BaseException as e:
            state = ("diverged" if isinstance(e, Diverged) else
                     "interrupted" if isinstance(e, (KeyboardInterrupt, SystemExit)) else "failed")
            self._record(state, error=first_line(e))
            raise
        finally:
            self.log.close()
        self._record("interrupted" if result.interrupted else "finished")
        return result

    def _record(self, state: str, **details) -> None:
        if self.d.is_main:
            p = self.position
            self.run.write_status(state, step=p.step, tokens_seen=p.tokens_seen, elapsed_s=round(p.elapsed_s, 3),
                                  **details)

    def _fit(self) -> TrainResult:
        """The loop: optimizer steps, epoch after epoch, until total_steps or a stop."""
        p, cfg, model = self.position, self.cfg, self.model
        model.train()
        step_model = torch.compile(self.wrapped) if cfg.compute.compile else self.wrapped  # shares the parameters
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: fp32 range, ~8x the speed
            torch.backends.cudnn.allow_tf32 = True
        with self.stop, self._progress_bar():
            while p.step < self.total_steps and not (self.stopping or self.clock.out_of_time):
                self._start_window()
                with contextlib.closing(prefetch(self.task.batches(p.epoch, start=p.batch),
                                                 pin=self.device.type == "cuda")) as batches:
                    while p.batch + cfg.optim.grad_accum <= self.task.batches_per_epoch:
                        step_start = time.perf_counter()
                        self._set_lr()
                        loss, grad_norm, tokens = optimizer_step(step_model, self.wrapped, batches,
                                                      cfg.optim.grad_accum,
                                                      self.loss_fn, self.optimizer, self.params, self.guard,
                                                      cfg.optim.grad_clip, self.autocast, self.d, self.device)
                        p.step, p.batch = p.step + 1, p.batch + cfg.optim.grad_accum
                        # Ranks of padded batches read different counts: this rank's stands in for
                        # every rank's until the next sync adds up the real ones.
                        p.tokens_seen += tokens * self.d.world_size
                        self.rank_tokens += tokens
                        self.bar.update(1)
                        evaluating, sampling, saving = (self._due(every) for every in
                                                        (cfg.eval.eval_every, cfg.eval.sample_every,
                                                         cfg.checkpoints.save_every))
                        evaluating = evaluating or p.step == 1
                        if self._sync_due() or evaluating or sampling or saving:
                            self._sync(loss, grad_norm, evaluating, sampling, saving)  # waits for the device
                        p.elapsed_s += time.perf_counter() - step_start
                        if evaluating:
                            self._timed("evaluate", self.evaluate)
                        if sampling:
                            self._timed("sample", self.sample, f"at step {p.step}")
                        if saving:
                            self._timed("save", self.save)
                        if p.step >= self.total_steps or self.stopping or self.clock.out_of_time:
                            break
                        if evaluating or sampling or saving:  # their time is not training time
                            self._start_window()
                if self._epoch_done():
                    self._timed("sample", self.sample, f"after epoch {p.epoch + 1}")
                    p.epoch, p.batch = p.epoch + 1, 0
        return self._finish()

    # --- the periodic jobs ---------------------------------------------------------------------

    def _due(self, every: int) -> bool:
        return bool(every) and self.position.step % every == 0

    def _epoch_done(self) -> bool:
        return self.position.batch + self.cfg.optim.grad_accum > self.task.batches_per_epoch

    def _set_lr(self) -> None:
        """The learning rate of the coming update, from the run's progress in steps and in time."""
        p = self.position
        set_lr(self.optimizer, self.cfg.optim,
               lr_factor(p.step, self.cfg.optim, self.total_steps, self.clock.progress(p.step)))

    def _timed(self, job: str, work: Callable, *args) -> None:
        """Run a periodic job, recording its cost for the time budget."""
        start = time.monotonic()
        work(*args)
        self.clock.measured(job, time.monotonic() - start)

    def _sync_due(self) -> bool:
        """Host syncs happen every SYNC_EVERY steps, at the last step and the end of an epoch, and
        before anything that reads the state. A single process also syncs as soon as it is asked
        to stop; ranks wait for the next sync point, where they agree (a signal may have reached
        only some of them, and a rank stopping alone would hang the others)."""
        p = self.position
        return (p.step % SYNC_EVERY == 0 or p.step == self.total_steps or self._epoch_done()
                or p.step == self.clock.next_sync  # a time budget's plan (training.budget)
                or (self.stop.requested is not None and not self.d.enabled))

    def _sync(self, loss: torch.Tensor, grad_norm: torch.Tensor, evaluating: bool, sampling: bool,
              saving: bool) -> None:
        """Read the step's loss, gradient norm and the update guard; stop a diverged run; agree on
        stopping, on the clock (rank 0's) and the time budget's plan; log the training scalars."""
        p, guard = self.position, self.guard
        loss_now, norm, count, first_step, first_loss, first_norm = torch.cat(
            [loss.detach().float().view(1), grad_norm.detach().float().view(1), guard.count.view(1),
             guard.first]).tolist()
        p.skipped = self.skipped_before + int(count)
        if count > guard.reported:
            if not self.cfg.optim.skip_nonfinite:
                raise Diverged(
                    f"step {int(first_step)}: loss {first_loss} / gradient norm {first_norm} is not "
                    f"finite; its update was skipped and training stopped at step {p.step} "
                    f"(newest checkpoint: {self.checkpoint or 'none'}). Lower --lr, or pass "
                    f"--skip-nonfinite")
            self.say(f"step {p.step}: {int(count) - guard.reported} update(s) with a non-finite loss "
                     f"or gradient skipped since the last report ({p.skipped} so far)")
            guard.reported = int(count)
        now = time.perf_counter()
        step_s = (now - self.window[0]) / max(1, p.step - self.window[2])
        reading = self.clock.reading(step_s)
        shared = [float(self.stop.requested is not None), float(self.rank_tokens),
                  *(reading if self.d.is_main else [0.0] * len(reading))]
        shared = distributed.all_sum(shared, self.d, self.device)  # rank 0's clock for all; any rank's stop
        p.tokens_seen += int(shared[1]) - self.rank_tokens * self.d.world_size  # every rank's real count
        self.rank_tokens = 0
        tokens_per_s = (p.tokens_seen - self.window[1]) / (now - self.window[0])
        self.window = (now, p.tokens_seen, p.step)
        self.stopping = shared[0] > 0
        if self.stopping and not self.stop.requested:
            self.stop.requested = "a signal to another rank"
        due = [job for job, now_due in (("evaluate", evaluating), ("save", saving),
                                        ("sample", sampling or self._epoch_done())) if now_due]
        self.clock.agree(p.step, shared[2:], due, SYNC_EVERY)
        if self.clock.budget_s is not None:
            self.bar.total = p.step + self.clock.steps_left(p.step)
        mfu = self.flops_per_token * tokens_per_s / self.peak_flops
        self.bar.set_postfix(loss=f"{loss_now:.3f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{100 * mfu:.0f}%")
        self.log.scalars(p.step, {"train/loss": loss_now, "train/lr": self.optimizer.param_groups[0]["lr"],
                                  "train/grad_norm": norm, "train/tokens_per_s": tokens_per_s, "train/mfu": mfu,
                                  "train/tokens_seen": p.tokens_seen, "train/skipped_updates": p.skipped})

    def evaluate(self) -> None:
        """Train and val loss now: a metrics row, a line, a redrawn plot."""
        p = self.position
        self.evaluated_step = p.step
        with self.autocast:  # evaluate in the precision the run trains in
            self.losses = self.task.evaluate(self.model)
        if not self.d.is_main:
            return
        train_loss, val_loss = self.losses
        val = None if math.isnan(val_loss) else val_loss
        bytes_per_token = getattr(self.task, "val_bytes_per_token", None)
        val_bpb = val / math.log(2) / bytes_per_token if val is not None and bytes_per_token else None
        epoch = p.epoch + p.batch / self.task.batches_per_epoch
        self.run.append_metrics({
            "step": p.step, "epoch": epoch, "tokens_seen": p.tokens_seen, "train_loss": train_loss,
            "val_loss": val, "lr": self.optimizer.param_groups[0]["lr"], "elapsed_s": round(p.elapsed_s, 3),
            **({"val_bpb": val_bpb} if val_bpb is not None else {})})
        self.log.scalars(p.step, {"eval/train_loss": train_loss, "eval/val_loss": val, "eval/val_bpb": val_bpb})
        self.say(f"epoch {epoch:.2f} step {p.step:>6}: train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        _redraw_plot(self.run)

    def sample(self, when: str) -> None:
        """A sample of the task's, printed and logged."""
        text = self.task.sample(self.model)
        self.say(f"sample {when}: {text!r}")
        self.log.text(self.position.step, "sample", text)

    def save(self) -> None:
        """A checkpoint of this step (every rank takes part in gathering the state; rank 0 writes)."""
        self.log.flush()  # first: what a checkpoint's steps logged is on disk before it exists
        self.position.wall_s = self.clock.now()  # rank 0's is the one written
        weights, state = capture(self.position, self.model, self.optimizer, self.scaler, self.d)
        path = self.run.checkpoint(self.position.step)
        if not self.d.is_main:  # the gathered state is complete on rank 0 only
            self.checkpoint = path
            return
        try:
            self.checkpoint = save_checkpoint(path, self.model, self.cfg.to_dict(), state, weights=weights)
        except OSError as e:  # a full disk, a read-only folder: the previous checkpoint is untouched
            previous = self.checkpoint.name if self.checkpoint else "none"
            raise UserError(f"could not write checkpoint {path}: {e.strerror or e}; the previous "
                            f"checkpoint ({previous}) is intact") from None
        if self.cfg.checkpoints.keep_last:
            self.run.prune(self.cfg.checkpoints.keep_last)

    def _finish(self) -> TrainResult:
        """The last evaluation and checkpoint (unless this step has them), and the summary."""
        p = self.position
        if self.clock.out_of_time:
            self.say(f"time budget {self.cfg.optim.max_time} used: stopping at step {p.step} "
                     f"({self.clock.now():.0f} s so far) for the final evaluation and checkpoint")
        if not self.stopping and self.evaluated_step != p.step:
            self.evaluate()
        if self.checkpoint is None or self.checkpoint.name != self.run.checkpoint(p.step).name:
            self.save()
        result = TrainResult(self.run.path, self.checkpoint, p.step, p.tokens_seen, *self.losses,
                             interrupted=self.stopping, wall_s=self.clock.now())
        if self.stopping:
            self.say(f"stopped by {self.stop.requested} at step {p.step}; checkpoint {self.checkpoint}. "
                     f"Resume with: gptforge {self.cfg.command} --resume {self.run}")
            return result
        skipped = f", {p.skipped} update(s) skipped as non-finite" if p.skipped else ""
        self.say(f"done: step {p.step} after {result.wall_s:.0f} s, {p.tokens_seen:,} tokens, train loss "
                 f"{self.losses[0]:.3f}, val loss {self.losses[1]:.3f}{skipped}; checkpoint {self.checkpoint}")
        return result

    # --- progress ------------------------------------------------------------------------------

    def _start_window(self) -> None:
        """Start a new tokens/s measurement (after work that is not training)."""
        self.window = (time.perf_counter(), self.position.tokens_seen, self.position.step)

    @contextlib.contextmanager
    def _progress_bar(self):
        show = self.progress if self.d.is_main else False
        self.bar = tqdm(total=self.total_steps, initial=self.position.step, unit="step", dynamic_ncols=True,
                        disable=None if show is None else not show, file=sys.stderr)
        # MFU: the model's FLOP/s over what a large matmul reaches here, per rank. Only when the
        # bar is shown or logged: on a CPU a float16 matmul is emulated and takes seconds to time.
        self.peak_flops = (matmul_peak_flops(self.device, getattr(torch, self.cfg.compute.dtype)) * self.d.world_size
                           if not self.bar.disable or self.log else math.inf)
        self.flops_per_token = self.model.flops_per_token(self.model.config.context_length)
        try:
            yield self.bar
        finally:
            self.bar.close()


_plot_warned = False


def _redraw_plot(run: RunFolder) -> None:
    global _plot_warned
    try:
        from .plot import plot_run

        plot_run(run.path)
    except (UserError, OSError) as e:  # no matplotlib, or a full disk: training goes on without it
        if not _plot_warned:
            tqdm.write(f"note: loss.png not drawn: {e}")
            _plot_warned = True
