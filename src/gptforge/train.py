"""The training loop: AdamW, periodic evaluation and samples, checkpoints, exact resume."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from . import distributed
from .bench import matmul_peak_flops
from .checkpoint import (TIED_KEY, is_complete, latest_checkpoint, load_train_state, load_weights,
                         read_checkpoint_config, save_checkpoint)
from .config import GPTConfig, TrainConfig
from .data import BatchLoader, load_splits, prefetch
from .device import pick_device
from .errors import UserError
from .evaluate import batch_loss, mean_loss
from .generate import generate
from .hf import load_initial_weights
from .model import GPT, VOCAB_ROW_PARAMS, vocab_rows
from .tokenizer import get_tokenizer

# What a resumed run may change; everything else must match the run's own config.
RESUMABLE_CHANGES = {"epochs", "max_steps", "eval_every", "eval_batches", "save_every", "sample_every",
                     "sample_prompt", "sample_tokens", "sample_temperature", "sample_top_k", "device",
                     "keep_last", "skip_nonfinite", "dtype", "compile", "distributed"}
SYNC_EVERY = 10  # steps between the training loop's host syncs (progress, divergence, stopping)


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


@dataclass
class Position:
    """Where the run is: restored exactly on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # next batch index within the epoch
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training wall time, summed over resumed sessions
    skipped: int = 0  # updates skipped for a non-finite loss or gradient (--skip-nonfinite)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for the update with 0-based index `step`: linear warmup, then constant or cosine."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Decay only matrices (linear weights, embeddings): decaying biases and LayerNorm gains just
    # pulls them toward 0 for no regularising benefit.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # Fused: one kernel over all parameters (the whole gpt2-124m step 1.05x faster than with the
    # multi-tensor loop on 2 CPU cores), and it can skip a non-finite update without the host
    # looking at the gradients (see UpdateGuard).
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type in ("cpu", "cuda") or None)


def vocab_rows_of_moments(optimizer_state: dict, config: GPTConfig, padded: bool) -> None:
    """Resize, in place, the AdamW moments of the matrices with padded vocabulary rows: saved with
    vocab_size rows like the weights (so a checkpoint does not depend on the padding), padded
    again when loaded."""
    for name in VOCAB_ROW_PARAMS:
        moments = optimizer_state["state"].get(name, {})
        for key, t in moments.items():
            moments[key] = vocab_rows(t, config, padded)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),  # plain types: weights_only
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _window_loader(tokens, cfg: TrainConfig, ctx: int, what: str, **kwargs) -> BatchLoader:
    try:
        return BatchLoader(tokens, max_length=ctx, batch_size=cfg.batch_size, **kwargs)
    except UserError as e:
        raise UserError(f"{what}: {e}") from None


def _resolve_config(config: TrainConfig | None, resume: str | None, fields: dict
                    ) -> tuple[TrainConfig, Path, Path | None]:
    """The run's config, its folder, and the checkpoint to resume from (None for a new run)."""
    if resume is None:
        cfg = dataclasses.replace(config, **fields) if config else TrainConfig(**fields)
        run_dir = Path(cfg.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
        if (run_dir / "checkpoints").exists() or (run_dir / "metrics.jsonl").exists():
            raise UserError(f"run folder {run_dir} already holds a run; continue it with "
                            f"--resume {run_dir} or choose another --out")
        return dataclasses.replace(cfg, out=str(run_dir)), run_dir, None

    run_dir = Path(resume)
    if not run_dir.is_dir():
        raise UserError(f"--resume: no such run folder: {run_dir}")
    _remove_stale_temporaries(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        saved = TrainConfig.from_dict(read_checkpoint_config(checkpoint)["train"])
    elif (run_dir / "config.json").is_file():
        # Stopped before its first checkpoint: nothing to lose, so start it over with its config.
        saved = TrainConfig.from_dict(read_checkpoint_config(run_dir)["train"])
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        tqdm.write(f"{run_dir} has no checkpoint yet: starting it over from step 0")
    else:
        raise UserError(f"--resume: {run_dir} has no complete checkpoint to resume from")
    given = dataclasses.asdict(config) if config else {}
    given.update(fields)
    for name, value in given.items():
        if name not in RESUMABLE_CHANGES and name != "out" and value != getattr(saved, name):
            raise UserError(f"{name.replace('_', '-')}={value!r} does not match the run's "
                            f"{getattr(saved, name)!r}; a resumed run keeps its config (only "
                            f"{', '.join(sorted(RESUMABLE_CHANGES))} may change)")
    changes = {k: v for k, v in given.items() if k in RESUMABLE_CHANGES}
    return dataclasses.replace(saved, **changes, out=str(run_dir)), run_dir, checkpoint


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written checkpoint folders left by a killed process are never read; tidy them."""
    for stale in (run_dir / "checkpoints").glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _initial_model(cfg: TrainConfig, device: torch.device) -> GPT:
    """The --init-from weights with the run's dropout, and its context cropped if asked: the
    first positions' embeddings are kept, which is how a shorter-context run reuses GPT-2."""
    source = load_initial_weights(cfg.init_from, device)  # checkpoint, run, HF folder or hub id
    src = source.config
    for name in ("emb_dim", "n_heads", "n_layers", "qkv_bias", "tie_embeddings"):
        wanted = getattr(cfg, name)
        if wanted is not None and wanted != getattr(src, name):
            raise UserError(f"--{name.replace('_', '-')} {wanted} does not match the --init-from model's "
                            f"{getattr(src, name)}; drop it to use the model's shape")
    ctx = cfg.context_length or src.context_length
    if ctx > src.context_length:
        raise UserError(f"--context-length {ctx} is longer than the --init-from model's "
                        f"{src.context_length} (it has no position embeddings beyond that)")
    model_cfg = dataclasses.replace(src, context_length=ctx,
                                    dropout=src.dropout if cfg.dropout is None else cfg.dropout)
    weights = {k: v for k, v in source.state_dict().items()
               if not (k == TIED_KEY and src.tie_embeddings)}
    weights["pos_emb.weight"] = weights["pos_emb.weight"][:ctx]
    with torch.device("meta"):
        model = GPT(model_cfg)
    load_weights(model, weights, source=str(cfg.init_from))
    return model


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows a crashed session wrote after the checkpoint we resume from."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a half-written last line
    path.write_text("".join(line + "\n" for line in kept))


def _sample(model: GPT, cfg: TrainConfig, device: torch.device) -> str:
    enc = get_tokenizer()
    prompt = enc.encode(cfg.sample_prompt, allowed_special={"<|endoftext|>"}) or [enc.eot_token]
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)  # never touches the global RNG
    out = generate(model, idx, cfg.sample_tokens, temperature=cfg.sample_temperature,
                   top_k=cfg.sample_top_k or None, generator=generator)
    return enc.decode(out[0].tolist())


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None,
          progress: bool | None = None, **fields) -> TrainResult:
    """Train a GPT; mirrors `gptforge train`.

    `train(data="notes.txt", max_steps=100)` starts a run; `train(resume="runs/x", max_steps=200)`
    continues one from its newest complete checkpoint with its own config (training-length and
    logging fields may change). `progress=None` shows the progress bar only on a terminal.
    """
    cfg, run_dir, resume_from = _resolve_config(config, str(resume) if resume else None, fields)
    d, device = distributed.setup(pick_device(cfg.device))
    # No teardown on an exception: its barrier would wait for ranks that may be blocked in another
    # collective; torchrun ends them once this process has exited.
    result = _train(cfg, run_dir, resume_from, d, device, progress)
    distributed.teardown(d)
    return result


@dataclass
class Loaders:
    """The run's batches and the optimizer steps they make."""

    train: BatchLoader
    train_eval: BatchLoader  # a fixed set of training batches, so evaluations are comparable
    val: BatchLoader | None
    train_tokens: int
    val_tokens: int
    steps_per_epoch: int
    batches_per_epoch: int  # steps_per_epoch * grad_accum: a last partial step's batches are dropped
    total_steps: int


def _loaders(cfg: TrainConfig, model_cfg: GPTConfig, d: distributed.Dist) -> Loaders:
    ctx, vocab = model_cfg.context_length, model_cfg.vocab_size
    train_tokens, val_tokens = load_splits(cfg.data, cfg.val_fraction)
    if cfg.val_data:
        val_tokens = load_splits(cfg.val_data, 0.0)[0]
    # Each rank reads its own slice of every global batch; evaluation reads whole batches on every
    # rank (it is a small share of the work, and the result then needs no reduction).
    train = _window_loader(train_tokens, cfg, ctx, "training split", stride=cfg.stride or ctx,
                           shuffle=cfg.shuffle, seed=cfg.seed, drop_last=True, mode=cfg.sampling,
                           rank=d.rank, world_size=d.world_size, vocab_size=vocab)
    if train.num_batches < cfg.grad_accum:
        raise UserError(f"training split: {train.windows.num_windows} window(s) of "
                        f"{ctx} tokens cannot fill one step of {cfg.grad_accum} x {cfg.batch_size}")
    train_eval = _window_loader(train_tokens, cfg, ctx, "training split", stride=cfg.stride or ctx,
                                shuffle=True, seed=cfg.seed + 1, drop_last=True, vocab_size=vocab)
    val = None
    if len(val_tokens) > 0:
        val = _window_loader(val_tokens, cfg, ctx, "validation split", stride=ctx,
                             shuffle=False, drop_last=False, vocab_size=vocab)
    steps_per_epoch = train.num_batches // cfg.grad_accum
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    return Loaders(train, train_eval, val, len(train_tokens), len(val_tokens), steps_per_epoch,
                   steps_per_epoch * cfg.grad_accum, total_steps)


class UpdateGuard:
    """Skips updates whose loss or gradient is not finite, without waiting for the device.

    Each step only queues work: the fused optimizer takes `found_inf` and leaves the weights and
    its state untouched where it is 1, and the first bad step is recorded in device tensors. The
    host reads them at the loop's periodic sync points, where it stops a diverged run or reports
    the skipped updates. With fp16 the gradient scaler owns the skipping (overflowing gradients are
    routine there), so only a non-finite loss counts.
    """

    def __init__(self, device: torch.device, scaler: torch.amp.GradScaler, step: int):
        self.scaler = scaler
        # The step is counted on the device as well, so recording the first bad one needs no copy
        # from the host (the float32 record is exact up to 2^24 steps).
        self.step_number = torch.tensor(step, device=device)
        self.count = torch.zeros((), device=device)
        self.first = torch.full((3,), -1.0, device=device)  # (step, loss, grad norm) of the first
        self.reported = 0

    def step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.step_number += 1
        finite = torch.isfinite(loss)
        if not self.scaler.is_enabled():
            finite &= torch.isfinite(grad_norm)
        found_inf = (~finite).float()
        record = torch.stack([self.step_number.float(), loss.float(), grad_norm.float()])
        self.first = torch.where((self.count == 0) & ~finite, record, self.first)
        self.count += found_inf
        if self.scaler.is_enabled():
            self.scaler.step(optimizer)  # skips steps whose gradients overflowed (or are NaN)
        elif optimizer.defaults.get("fused"):
            optimizer.found_inf = found_inf
            optimizer.step()
            del optimizer.found_inf
        elif finite.item():  # an optimizer without a skip input: one host sync per step
            optimizer.step()
        self.scaler.update()


def _optimizer_step(step_model: torch.nn.Module, wrapped: torch.nn.Module, batches, cfg: TrainConfig,
                    params: list, guard: UpdateGuard, optimizer, autocast, pos: Position,
                    d: distributed.Dist, device: torch.device) -> torch.Tensor:
    """One optimizer step over grad_accum micro-batches; returns the step's loss (a device scalar,
    the mean over the whole job's batch). Queues work only: nothing here waits for the device."""
    optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        inputs, targets = next(batches)
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        # Gradients are averaged across ranks only after the last micro-batch.
        with distributed.gradient_sync(wrapped, micro == cfg.grad_accum - 1), autocast:
            # Mean of equal-sized micro-batch means = the mean over the whole batch.
            micro_loss = batch_loss(step_model, inputs, targets) / cfg.grad_accum
        guard.scaler.scale(micro_loss).backward()
        loss += micro_loss.detach()
        pos.tokens_seen += inputs.numel() * d.world_size
    guard.scaler.unscale_(optimizer)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf  # inf: measure the norm, never clip
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
        grad_norm = grad_norm.full_tensor()
    # Every rank sees the job's loss, so all ranks take the same skip decisions.
    loss = distributed.mean_over_ranks(loss, d)
    guard.step(optimizer, loss, grad_norm)
    return loss


def _train(cfg: TrainConfig, run_dir: Path, resume_from: Path | None, d: distributed.Dist,
           device: torch.device, progress: bool | None) -> TrainResult:
    initial = None
    if resume_from is not None:  # the run's model, whatever preset or weights it started from
        model_cfg = GPTConfig.from_dict(read_checkpoint_config(resume_from)["model"])
    elif cfg.init_from:
        initial = _initial_model(cfg, device)
        model_cfg = initial.config
    else:
        model_cfg = cfg.model_config()
    ctx = model_cfg.context_length
    say = tqdm.write if d.is_main else (lambda *args, **kwargs: None)  # rank 0 speaks for the job

    data = _loaders(cfg, model_cfg, d)  # data first: a bad corpus should fail before the run folder exists
    total_steps = data.total_steps
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = initial if initial is not None else GPT(model_cfg).to(device)
    if resume_from is not None:  # before sharding and the optimizer: loading replaces parameters
        load_weights(model, load_file(resume_from / "model.safetensors", device=str(device)),
                     source=str(resume_from))
    wrapped = distributed.wrap(model, d, cfg.distributed, device)
    optimizer = make_optimizer(model, cfg, device)
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "float16")
    pos = Position()
    if d.enabled:
        torch.manual_seed(cfg.seed + d.rank)  # independent dropout masks on each rank
    if resume_from is not None:
        state = load_train_state(resume_from, device)
        vocab_rows_of_moments(state["optimizer"], model_cfg, padded=True)
        distributed.load_optimizer(model, optimizer, state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        pos = Position(**state["position"])
        per_rank = state.get("rng_per_rank", [])
        set_rng_state(per_rank[d.rank] if len(per_rank) == d.world_size else state["rng"])
        if d.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", pos.step)
        say(f"resuming {run_dir} from {resume_from.name} (step {pos.step}, epoch {pos.epoch + 1})")
    elif d.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    if d.is_main:
        resolved = {"model": model_cfg.to_dict(), "train": cfg.to_dict()}
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")

    say(f"run folder: {run_dir}")
    origin = cfg.init_from if cfg.init_from else cfg.preset
    ranks = f" x {d.world_size} processes ({cfg.distributed})" if d.enabled else ""
    say(f"model: {model.num_params():,} parameters ({origin}, context {ctx}) on {device}{ranks}")
    say(f"data: {data.train_tokens:,} train / {data.val_tokens:,} val tokens; {data.steps_per_epoch} "
        f"steps per epoch, {total_steps} steps in total")

    autocast = torch.autocast(device.type, dtype=getattr(torch, cfg.dtype),
                              enabled=cfg.dtype != "float32")
    metrics_path = run_dir / "metrics.jsonl"
    last = {"train_loss": math.nan, "val_loss": math.nan, "checkpoint": resume_from}

    def evaluate_now() -> None:
        last["evaluated_step"] = pos.step
        # An evaluation batch holds as many windows as an optimizer step of the whole job, read
        # as micro-batches, so --grad-accum 4 --batch-size 2 reports the same losses as
        # --batch-size 8, and 2 processes the same as --grad-accum 2.
        n = cfg.eval_batches * cfg.grad_accum * d.world_size
        with autocast:  # evaluate in the precision the run trains in
            last["train_loss"] = mean_loss(model, data.train_eval.batches(0), n, device)
            last["val_loss"] = mean_loss(model, data.val.batches(0), n, device) if data.val else math.nan
        row = {"step": pos.step, "epoch": pos.epoch + pos.batch / data.batches_per_epoch,
               "tokens_seen": pos.tokens_seen, "train_loss": last["train_loss"],
               "val_loss": None if math.isnan(last["val_loss"]) else last["val_loss"],
               "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(pos.elapsed_s, 3)}
        if not d.is_main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        say(f"epoch {row['epoch']:.2f} step {pos.step:>6}: train loss {last['train_loss']:.3f}, "
            f"val loss {last['val_loss']:.3f}")
        _redraw_plot(run_dir)

    def save_now() -> None:
        # Every rank takes part in gathering the full state; rank 0 writes it.
        weights, optimizer_state = distributed.full_state(model, optimizer)
        rngs = distributed.gather_objects(rng_state(), d)
        path = run_dir / "checkpoints" / f"step-{pos.step:08d}"
        if not d.is_main:  # the gathered state is complete on rank 0 only
            last["checkpoint"] = path
            return
        # vocab_size rows, as state_dict() gives them (FSDP's gathered tensors still have padding)
        weights = {k: vocab_rows(v, model_cfg, padded=False) for k, v in weights.items()}
        vocab_rows_of_moments(optimizer_state, model_cfg, padded=False)
        state = {"optimizer": optimizer_state, "position": dataclasses.asdict(pos), "rng": rngs[0],
                 "rng_per_rank": rngs if d.enabled else [], "scaler": scaler.state_dict()}
        try:
            last["checkpoint"] = save_checkpoint(path, model, cfg.to_dict(), state, weights=weights)
        except OSError as e:  # a full disk, a read-only folder: the previous checkpoint is untouched
            previous = last["checkpoint"].name if last["checkpoint"] else "none"
            raise UserError(f"could not write checkpoint {path}: {e.strerror or e}; the previous "
                            f"checkpoint ({previous}) is intact") from None
        if cfg.keep_last:
            prune_checkpoints(run_dir, cfg.keep_last)

    guard = UpdateGuard(device, scaler, pos.step)
    skipped_before = pos.skipped

    def sync(loss: torch.Tensor, stop: GracefulStop) -> tuple[float, bool]:
        """The loop's host sync: read the step's loss and the guard; returns the loss and whether
        the job stops now (every rank agrees: a signal may have reached only some of them)."""
        loss_now, count, first_step, first_loss, first_norm = torch.cat(
            [loss.detach().float().view(1), guard.count.view(1), guard.first]).tolist()
        pos.skipped = skipped_before + int(count)
        if count > guard.reported:
            if not cfg.skip_nonfinite:
                raise Diverged(
                    f"step {int(first_step)}: loss {first_loss} / gradient norm {first_norm} is not "
                    f"finite; its update was skipped and training stopped at step {pos.step} "
                    f"(newest checkpoint: {last['checkpoint'] or 'none'}). Lower --lr, or pass "
                    f"--skip-nonfinite")
            say(f"step {pos.step}: {int(count) - guard.reported} update(s) with a non-finite loss "
                f"or gradient skipped since the last report ({pos.skipped} so far)")
            guard.reported = int(count)
        stopping = stop.requested is not None
        if d.enabled:
            stopping = distributed.all_sum([float(stopping)], d, device)[0] > 0
            if stopping and not stop.requested:
                stop.requested = "a signal to another rank"
        return loss_now, stopping

    show_bar = progress if d.is_main else False
    bar = tqdm(total=total_steps, initial=pos.step, unit="step", dynamic_ncols=True,
               disable=None if show_bar is None else not show_bar, file=sys.stderr)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    step_model = torch.compile(wrapped) if cfg.compile else wrapped  # shares the parameters
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: fp32 range, ~8x the speed
        torch.backends.cudnn.allow_tf32 = True
    # MFU in the progress bar: the model's FLOP/s over what a large matmul reaches here, per rank.
    # Only when the bar is shown: on a CPU a float16 matmul is emulated and takes seconds to time.
    job_peak_flops = (matmul_peak_flops(device, getattr(torch, cfg.dtype)) * d.world_size
                      if not bar.disable else math.inf)
    flops_per_token = model.flops_per_token(ctx)
    window_start, window_tokens = time.perf_counter(), pos.tokens_seen
    stopping = False
    with GracefulStop() as stop:
        while pos.step < total_steps and not stopping:
            step_start = time.perf_counter()
            with contextlib.closing(prefetch(data.train.batches(pos.epoch, start=pos.batch),
                                             pin=device.type == "cuda")) as batches:
                while pos.batch + cfg.grad_accum <= data.batches_per_epoch:
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(pos.step, cfg, total_steps)
                    loss = _optimizer_step(step_model, wrapped, batches, cfg, params, guard,
                                           optimizer, autocast, pos, d, device)
                    pos.step += 1
                    pos.batch += cfg.grad_accum
                    bar.update(1)
                    evaluating = pos.step == 1 or (cfg.eval_every and pos.step % cfg.eval_every == 0)
                    sampling = cfg.sample_every and pos.step % cfg.sample_every == 0
                    saving = cfg.save_every and pos.step % cfg.save_every == 0
                    # Host syncs only every SYNC_EVERY steps and before anything that reads the
                    # state. A single process also syncs as soon as it is asked to stop; ranks
                    # wait for the next sync point, where they agree (a signal may have reached
                    # only some of them, and a rank stopping alone would hang the others).
                    if (pos.step % SYNC_EVERY == 0 or pos.step == total_steps or evaluating
                            or sampling or saving or pos.batch >= data.batches_per_epoch
                            or (stop.requested and not d.enabled)):
                        loss_now, stopping = sync(loss, stop)  # waits for the device
                        now = time.perf_counter()
                        tokens_per_s = (pos.tokens_seen - window_tokens) / (now - window_start)
                        window_start, window_tokens = now, pos.tokens_seen
                        bar.set_postfix(loss=f"{loss_now:.3f}", tok_s=f"{tokens_per_s:,.0f}",
                                        mfu=f"{100 * flops_per_token * tokens_per_s / job_peak_flops:.0f}%")
                    pos.elapsed_s += time.perf_counter() - step_start
                    if evaluating:
                        evaluate_now()
                    if sampling:
                        sample = _sample(model, cfg, device)  # every rank: FSDP needs them all
                        say(f"sample at step {pos.step}: {sample!r}")
                    if saving:
                        save_now()
                    if pos.step >= total_steps or stopping:
                        break
                    step_start = time.perf_counter()  # evaluating and saving are not training
                    if evaluating or sampling or saving:
                        window_start = step_start
            if pos.batch >= data.batches_per_epoch:
                sample = _sample(model, cfg, device)
                say(f"sample after epoch {pos.epoch + 1}: {sample!r}")
                pos.epoch += 1
                pos.batch = 0
                window_start = time.perf_counter()  # sampling is not training
        bar.close()
        if stopping:  # finish cleanly: checkpoint this step and say how to go on
            if last["checkpoint"] is None or last["checkpoint"].name != f"step-{pos.step:08d}":
                save_now()
            say(f"stopped by {stop.requested} at step {pos.step}; checkpoint {last['checkpoint']}. "
                f"Resume with: gptforge train --resume {run_dir}")
            return TrainResult(run_dir, last["checkpoint"], pos.step, pos.tokens_seen,
                               last["train_loss"], last["val_loss"], interrupted=True)

    if not _last_row_is(metrics_path, pos.step, last):
        evaluate_now()
    if last["checkpoint"] is None or last["checkpoint"].name != f"step-{pos.step:08d}":
        save_now()
    skipped = f", {pos.skipped} update(s) skipped as non-finite" if pos.skipped else ""
    say(f"done: step {pos.step}, {pos.tokens_seen:,} tokens, train loss {last['train_loss']:.3f}, "
        f"val loss {last['val_loss']:.3f}{skipped}; checkpoint {last['checkpoint']}")
    return TrainResult(run_dir, last["checkpoint"], pos.step, pos.tokens_seen,
                       last["train_loss"], last["val_loss"])


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


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints; incomplete folders are left for
    inspection, and the newest complete one is never deleted."""
    complete = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if is_complete(p))
    for old in complete[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def _last_row_is(metrics_path: Path, step: int, last: dict) -> bool:
    """Whether the newest evaluation is of this step (every rank decides alike: it tracks it)."""
    if "evaluated_step" in last:
        return last["evaluated_step"] == step
    if not metrics_path.exists():
        return False
    lines = metrics_path.read_text().splitlines()
    return bool(lines) and json.loads(lines[-1])["step"] == step


_plot_warned = False


def _redraw_plot(run_dir: Path) -> None:
    global _plot_warned
    try:
        from .plot import plot_run

        plot_run(run_dir)
    except (UserError, OSError) as e:  # no matplotlib, or a full disk: training goes on without it
        if not _plot_warned:
            tqdm.write(f"note: loss.png not drawn: {e}")
            _plot_warned = True



