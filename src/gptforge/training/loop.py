"""The training loop, shared by every job: optimizer steps over the job's batches, with periodic
evaluations, samples, checkpoints and host syncs, a clean stop on Ctrl-C/SIGTERM, and a stop on
divergence. A job (pretraining, fine-tuning) plugs in a Task: its batches, its loss, how it
evaluates and what it samples.

The Trainer's loop runs over its state, a Position (training.resume: what a checkpoint holds);
each step is training.step.optimizer_step, the host syncs are training.sync, the time budget is
training.budget, and the periodic jobs (evaluate, sample, save) are a Jobs.
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
from ..weights.checkpoint import CheckpointWriteError, save_checkpoint, write_failure
from .budget import Clock, start_clock
from .config import RunConfig
from .loggers import LogHub, check_packages, open_loggers
from .optim import lr_factor, make_optimizer, set_lr
from .resume import Position, capture, restore
from .run_folder import RunFolder, warn
from .step import StepOutput, StepParts, UpdateGuard, optimizer_step
from .sync import SYNC_EVERY, Diverged, Throughput, agree, check_finite, read_step

__all__ = ["SYNC_EVERY", "Diverged", "Due", "GracefulStop", "Jobs", "Task", "TrainResult", "Trainer"]


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
    # Optional: further results of the latest evaluate() (a classifier's val accuracy, ...), added
    # to its metrics.jsonl row; the numbers among them are logged and printed too.
    eval_metrics: dict


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


@dataclass
class Due:
    """The periodic jobs due after a step."""

    evaluate: bool
    sample: bool
    save: bool

    @classmethod
    def at(cls, step: int, *, eval_every: int, sample_every: int, save_every: int) -> "Due":
        """Each job every so many steps (0: never here); an evaluation after the first step too."""
        def every(n: int) -> bool:
            return bool(n) and step % n == 0

        return cls(every(eval_every) or step == 1, every(sample_every), every(save_every))

    def any(self) -> bool:
        return self.evaluate or self.sample or self.save

    def costs(self, epoch_done: bool) -> list[str]:
        """The jobs the time budget sets time aside for before the next step (an epoch's end
        brings a sample)."""
        return [job for job, now in (("evaluate", self.evaluate), ("save", self.save),
                                     ("sample", self.sample or epoch_done)) if now]


class Trainer:
    """One run of the loop over its state, `position` (a Position): the checkpoints the jobs
    write hold it with the weights, optimizer, scaler and RNG states (training.resume).
    `started` is the time.monotonic() reading at which the job began (default: now); a
    --max-time budget counts from there (training.budget)."""

    def __init__(self, cfg: RunConfig, run: RunFolder, model: torch.nn.Module, task: Task, *,
                 total_steps: int, d: distributed.Dist, device: torch.device,
                 resume_from: Path | None = None, progress: bool | None = None,
                 loss_fn: Callable | None = None, started: float | None = None):
        self.cfg, self.run, self.model, self.task, self.d, self.device = cfg, run, model, task, d, device
        self.total_steps, self.progress = total_steps, progress
        check_packages(cfg.logging.log)  # a missing logging package fails before the run folder exists
        self.say = tqdm.write if d.is_main else (lambda *args, **kwargs: None)  # rank 0 speaks for the job
        self.parts = _step_parts(cfg, model, d, device, loss_fn or batch_loss)
        scaler = self.parts.guard.scaler
        self.position, evaluated_step = Position(), None
        if resume_from is not None:
            self.position, evaluated_step = resume(run, resume_from, model=model, optimizer=self.parts.optimizer,
                                                   scaler=scaler, d=d, device=device, say=self.say)
            self.parts.guard = UpdateGuard(device, scaler, self.position.step)  # it counts steps on the device
        elif d.is_main:
            run.create()
        self.log = _open_run(cfg, run, model, self.position, d)
        self.skipped_before = self.position.skipped
        self.stop, self.stopping = GracefulStop(), False
        self.rank_tokens = 0  # tokens this rank read since the last sync
        self.say(f"run folder: {run}")
        save_bytes = 3 * sum(w.numel() * w.element_size() for w in model.parameters())  # + 2 moments
        self.clock = start_clock(max_time=cfg.optim.max_time, used_s=self.position.wall_s, started=started,
                                 step=self.position.step, save_bytes=save_bytes, say=self.say,
                                 eval_steps=2 * cfg.eval.eval_batches * d.world_size / 3)  # a forward: ~1/3 step
        self.jobs = Jobs(cfg=cfg, run=run, model=model, task=task, optimizer=self.parts.optimizer, scaler=scaler,
                         autocast=self.parts.autocast, d=d, log=self.log, clock=self.clock, say=self.say,
                         checkpoint=resume_from, evaluated_step=evaluated_step)

    def evaluate(self) -> None:
        """Evaluate now (a job may do it before training: finetune's step 0)."""
        self.jobs.evaluate(self.position)

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
        if not self.d.is_main:
            return
        p = self.position
        try:
            self.run.write_status(state, step=p.step, tokens_seen=p.tokens_seen, elapsed_s=round(p.elapsed_s, 3),
                                  **details)
        except OSError as e:
            if state == "finished":
                raise
            # The run is ending on an error already (a full disk, most likely): that error is the
            # one to report. `gptforge runs` tells a dead "running" process apart (process_alive).
            warn(f"warning: could not record {state!r} in {self.run.status_file}: {e.strerror or e}")

    def _fit(self) -> TrainResult:
        """The loop: optimizer steps, epoch after epoch, until total_steps or a stop."""
        p, cfg, task, jobs, grad_accum = self.position, self.cfg, self.task, self.jobs, self.cfg.optim.grad_accum
        self.model.train()
        if self.cfg.compute.compile:
            self.parts.step_model = torch.compile(self.parts.wrapped)  # shares the parameters
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: fp32 range, ~8x the speed
            torch.backends.cudnn.allow_tf32 = True
        with self.stop, self._progress_bar() as bar:
            while not self._done():
                self.meter.restart(p)
                with contextlib.closing(prefetch(task.batches(p.epoch, start=p.batch),
                                                 pin=self.device.type == "cuda")) as batches:
                    while p.batch + grad_accum <= task.batches_per_epoch:
                        step_start = time.perf_counter()
                        self._set_lr()
                        out = optimizer_step(self.parts, batches)
                        p.step, p.batch = p.step + 1, p.batch + grad_accum
                        # Ranks of padded batches read different counts: this rank's stands in for
                        # every rank's until the next sync adds up the real ones.
                        p.tokens_seen += out.tokens * self.d.world_size
                        self.rank_tokens += out.tokens
                        bar.update(1)
                        due = Due.at(p.step, eval_every=cfg.eval.eval_every, sample_every=cfg.eval.sample_every,
                                     save_every=cfg.checkpoints.save_every)
                        if self._sync_due() or due.any():
                            self._sync(out, due)  # waits for the device
                        p.elapsed_s += time.perf_counter() - step_start
                        self._timed("evaluate", due.evaluate, jobs.evaluate, p)
                        self._timed("sample", due.sample, jobs.sample, p, f"at step {p.step}")
                        self._timed("save", due.save, jobs.save, p)
                        if self._done():
                            break
                        if due.any():  # their time is not training time
                            self.meter.restart(p)
                if self._epoch_done():
                    self._timed("sample", True, jobs.sample, p, f"after epoch {p.epoch + 1}")
                    p.epoch, p.batch = p.epoch + 1, 0
        return self._finish()

    def _done(self) -> bool:
        return self.position.step >= self.total_steps or self.stopping or self.clock.out_of_time

    def _epoch_done(self) -> bool:
        return self.position.batch + self.cfg.optim.grad_accum > self.task.batches_per_epoch

    def _set_lr(self) -> None:
        """The learning rate of the coming update, from the run's progress in steps and in time."""
        p, optim = self.position, self.cfg.optim
        set_lr(self.parts.optimizer, optim,
               lr_factor(p.step, optim, self.total_steps, self.clock.progress(p.step)))

    def _timed(self, job: str, due: bool, work: Callable, *args) -> None:
        """Run a periodic job when due, recording its cost for the time budget."""
        if due:
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

    def _sync(self, out: StepOutput, due: Due) -> None:
        """Read the step (training.sync), stop a diverged run, agree across ranks on stopping,
        the token count and rank 0's clock, plan the time budget, show and log the step."""
        p, guard = self.position, self.parts.guard
        reading = read_step(out, guard)
        p.skipped = self.skipped_before + reading.skipped
        check_finite(reading, guard, position=p, skip_nonfinite=self.cfg.optim.skip_nonfinite,
                     checkpoint=self.jobs.checkpoint, say=self.say)
        now = time.perf_counter()
        agreed = agree(stop=self.stop.requested is not None, rank_tokens=self.rank_tokens,
                       clock=self.clock.reading(self.meter.step_seconds(now, p.step)), d=self.d, device=self.device)
        p.tokens_seen += agreed.tokens - self.rank_tokens * self.d.world_size  # every rank's real count
        self.rank_tokens = 0
        tokens_per_s, mfu = self.meter.close(now, p)
        self.stopping = agreed.stop
        if self.stopping and not self.stop.requested:
            self.stop.requested = "a signal to another rank"
        self.clock.agree(p.step, agreed.clock, due.costs(self._epoch_done()), SYNC_EVERY)
        if self.clock.budget_s is not None:
            self.bar.total = p.step + self.clock.steps_left(p.step)
        self.bar.set_postfix(loss=f"{reading.loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{100 * mfu:.0f}%")
        self.log.scalars(p.step, {"train/loss": reading.loss, "train/lr": self.parts.optimizer.param_groups[0]["lr"],
                                  "train/grad_norm": reading.grad_norm, "train/tokens_per_s": tokens_per_s,
                                  "train/mfu": mfu, "train/tokens_seen": p.tokens_seen,
                                  "train/skipped_updates": p.skipped})

    def _finish(self) -> TrainResult:
        """The last evaluation and checkpoint (unless this step has them), and the summary."""
        p, jobs = self.position, self.jobs
        if self.clock.out_of_time:
            self.say(f"time budget {self.cfg.optim.max_time} used: stopping at step {p.step} "
                     f"({self.clock.now():.0f} s so far) for the final evaluation and checkpoint")
        if not self.stopping and jobs.evaluated_step != p.step:
            jobs.evaluate(p)
        if not jobs.saved(p.step):
            jobs.save(p)
        result = TrainResult(self.run.path, jobs.checkpoint, p.step, p.tokens_seen, *jobs.losses,
                             interrupted=self.stopping, wall_s=self.clock.now())
        if self.stopping:
            self.say(f"stopped by {self.stop.requested} at step {p.step}; checkpoint {jobs.checkpoint}. "
                     f"Resume with: gptforge {self.cfg.command} --resume {self.run}")
            return result
        skipped = f", {p.skipped} update(s) skipped as non-finite" if p.skipped else ""
        self.say(f"done: step {p.step} after {result.wall_s:.0f} s, {p.tokens_seen:,} tokens, train loss "
                 f"{jobs.losses[0]:.3f}, val loss {jobs.losses[1]:.3f}{skipped}; checkpoint {jobs.checkpoint}")
        return result

    @contextlib.contextmanager
    def _progress_bar(self):
        """The progress bar, and the throughput meter whose tokens/s and MFU it shows."""
        show = self.progress if self.d.is_main else False
        self.bar = tqdm(total=self.total_steps, initial=self.position.step, unit="step", dynamic_ncols=True,
                        disable=None if show is None else not show, file=sys.stderr)
        # MFU: the model's FLOP/s over what a large matmul reaches here, per rank. Only when the
        # bar is shown or logged: on a CPU a float16 matmul is emulated and takes seconds to time.
        peak_flops = (matmul_peak_flops(self.device, getattr(torch, self.cfg.compute.dtype)) * self.d.world_size
                      if not self.bar.disable or self.log else math.inf)
        self.meter = Throughput(self.model.flops_per_token(self.model.config.context_length), peak_flops)
        try:
            yield self.bar
        finally:
            self.bar.close()


class Jobs:
    """The periodic jobs of a run: evaluate, sample, save. They leave the newest checkpoint
    (`checkpoint`), the step of the latest evaluation and its (train, val) losses."""

    def __init__(self, *, cfg: RunConfig, run: RunFolder, model: torch.nn.Module, task,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, autocast, d: distributed.Dist,
                 log: LogHub, clock: Clock, say, checkpoint: Path | None, evaluated_step: int | None):
        self.cfg, self.run, self.model, self.task = cfg, run, model, task
        self.optimizer, self.scaler, self.autocast, self.d = optimizer, scaler, autocast, d
        self.log, self.clock, self.say = log, clock, say
        self.checkpoint, self.evaluated_step = checkpoint, evaluated_step
        self.resumed_from = checkpoint  # at the start, the checkpoint this session resumed from (or None)
        self.losses = (math.nan, math.nan)  # (train, val) of the latest evaluation

    def evaluate(self, p: Position) -> None:
        """Train and val loss now: a metrics row, a line, a redrawn plot."""
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
        # A task's own measures of this evaluation (DPO's rewards, a classifier's scores), NaN written as null.
        extra = {k: None if isinstance(v, float) and math.isnan(v) else v
                 for k, v in (getattr(self.task, "eval_metrics", None) or {}).items()}
        numbers = {k: v for k, v in extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.append_metrics({
            "step": p.step, "epoch": epoch, "tokens_seen": p.tokens_seen, "train_loss": train_loss,
            "val_loss": val, "lr": self.optimizer.param_groups[0]["lr"], "elapsed_s": round(p.elapsed_s, 3),
            **({"val_bpb": val_bpb} if val_bpb is not None else {}), **extra})
        self.log.scalars(p.step, {"eval/train_loss": train_loss, "eval/val_loss": val, "eval/val_bpb": val_bpb,
                                  **{f"eval/{k}": v for k, v in numbers.items()}})
        shown = "".join(f", {k.replace('_', ' ')} {v:.3f}" for k, v in numbers.items()
                        if k.startswith("val_"))
        self.say(f"epoch {epoch:.2f} step {p.step:>6}: train loss {train_loss:.3f}, val loss {val_loss:.3f}{shown}")
        _redraw_plot(self.run)

    def sample(self, p: Position, when: str) -> None:
        """A sample of the task's, printed and logged."""
        text = self.task.sample(self.model)
        self.say(f"sample {when}: {text!r}")
        self.log.text(p.step, "sample", text)

    def save(self, p: Position) -> None:
        """A checkpoint of this step (every rank takes part in gathering the state; rank 0 writes)."""
        self.log.flush()  # first: what a checkpoint's steps logged is on disk before it exists
        p.wall_s = self.clock.now()  # rank 0's is the one written
        weights, state = capture(p, self.model, self.optimizer, self.scaler, self.d)
        path = self.run.checkpoint(p.step)
        if not self.d.is_main:  # the gathered state is complete on rank 0 only
            self.checkpoint = path
            return
        try:
            self.checkpoint = save_checkpoint(path, self.model, self.cfg.to_dict(), state, weights=weights)
        except (CheckpointWriteError, OSError) as e:  # a full disk, a read-only folder
            error = e if isinstance(e, CheckpointWriteError) else write_failure(path, e)
            previous = self.checkpoint.name if self.checkpoint else "none"
            raise UserError(f"{error}; the previous checkpoint ({previous}) is intact") from None
        if self.cfg.checkpoints.keep_last:
            # Never pruned: the checkpoint this session resumed from (the last one known good before
            # it) and the one just written.
            self.run.prune(self.cfg.checkpoints.keep_last, protect=(self.resumed_from, self.checkpoint))

    def saved(self, step: int) -> bool:
        """Whether the newest checkpoint is the one of `step`."""
        return self.checkpoint is not None and self.checkpoint.name == self.run.checkpoint(step).name


def _step_parts(cfg: RunConfig, model: torch.nn.Module, d: distributed.Dist, device: torch.device,
                loss_fn: Callable) -> StepParts:
    """The model wrapped for the run's ranks, its optimizer, loss scaler and autocast."""
    wrapped = distributed.wrap(model, d, cfg.compute.distributed, device)
    # The trainable parameters, taken now: FSDP2 swaps a module's registered parameters for
    # unsharded copies during a forward and leaves the root's so after one without backward
    # (an evaluation), and those copies never get a gradient.
    params = [w for w in model.parameters() if w.requires_grad]
    optimizer = make_optimizer(model, cfg.optim, device)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.compute.dtype == "float16")
    autocast = torch.autocast(device.type, dtype=getattr(torch, cfg.compute.dtype),
                              enabled=cfg.compute.dtype != "float32")
    if d.enabled:
        torch.manual_seed(cfg.seed + d.rank)  # independent dropout masks on each rank
    return StepParts(step_model=wrapped, wrapped=wrapped, loss_fn=loss_fn, optimizer=optimizer, params=params,
                     guard=UpdateGuard(device, scaler, 0), autocast=autocast, d=d, device=device,
                     grad_accum=cfg.optim.grad_accum, grad_clip=cfg.optim.grad_clip)


def resume(run: RunFolder, checkpoint: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler, d: distributed.Dist, device: torch.device, say) -> tuple[Position, int | None]:
    """Put a checkpoint's train state back (training.resume.restore) and cut the run's metrics
    back to its step: its Position, and the step of its latest evaluation (None: none yet)."""
    position = restore(checkpoint, model, optimizer, scaler, d, device)
    if d.is_main:
        run.truncate_metrics(position.step)
    # Every rank reads the same answer whether or not rank 0 has truncated the file yet.
    steps = [s for s in run.metrics_steps() if s <= position.step]
    say(f"resuming {run} from {checkpoint.name} (step {position.step}, epoch {position.epoch + 1})")
    return position, steps[-1] if steps else None


def _open_run(cfg: RunConfig, run: RunFolder, model: torch.nn.Module, position: Position,
              d: distributed.Dist) -> LogHub:
    """Write the run's resolved config and status (rank 0), and open the loggers of --log."""
    if not d.is_main:
        return LogHub([])
    resolved = {"model": model.config.to_dict(), "train": cfg.to_dict()}
    run.write_config(resolved, tokenizer_of(model))
    run.write_status("running", step=position.step)
    return open_loggers(cfg.logging.log, run, position.step, resolved, cfg.logging.wandb_project)


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
