"""One optimizer step: gradients summed over micro-batches, clipped, and applied unless they or
the loss are not finite, all queued on the device with no host sync."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed


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
        elif finite.item():  # an optimizer without a skip input (MuonAdamW, MPS): one host sync per step
            optimizer.step()
        self.scaler.update()


@dataclass
class StepParts:
    """What an optimizer step works with (see optimizer_step)."""

    step_model: torch.nn.Module  # what the forward calls: the wrapped model, or its torch.compile
    wrapped: torch.nn.Module  # the DDP / FSDP2 wrapper (or the model): when gradients sync
    loss_fn: Callable  # loss_fn(model, inputs, targets): a micro-batch's mean loss
    optimizer: torch.optim.Optimizer
    params: list  # the trainable parameters, whose gradient norm is clipped
    guard: UpdateGuard
    autocast: Any  # the run's torch.autocast context
    d: distributed.Dist
    device: torch.device
    grad_accum: int  # micro-batches per step
    grad_clip: float  # the gradient norm's limit; 0: no clipping


@dataclass
class StepOutput:
    """An optimizer step's loss (the mean of the micro-batch means, averaged over ranks) and
    gradient norm before clipping, both device scalars, and the tokens this rank read."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    tokens: int


def optimizer_step(parts: StepParts, batches: Iterator[tuple]) -> StepOutput:
    """One optimizer step over `parts.grad_accum` micro-batches from `batches`.

    A micro-batch is (inputs, targets) of (B, T) ids, or (inputs, targets, tokens) when some
    inputs are padding (tokens: how many are real). Queues work only: nothing here waits for the
    device.
    """
    optimizer, guard, device, grad_accum = parts.optimizer, parts.guard, parts.device, parts.grad_accum
    optimizer.zero_grad(set_to_none=True)
    loss, tokens = torch.zeros((), device=device), 0
    for micro in range(grad_accum):
        batch = next(batches)
        inputs, targets = (t.to(device, non_blocking=True) for t in batch[:2])
        # Gradients are averaged across ranks only after the last micro-batch.
        with distributed.gradient_sync(parts.wrapped, micro == grad_accum - 1), parts.autocast:
            micro_loss = parts.loss_fn(parts.step_model, inputs, targets) / grad_accum
        guard.scaler.scale(micro_loss).backward()
        loss += micro_loss.detach()
        tokens += batch[2] if len(batch) > 2 else inputs.numel()
    guard.scaler.unscale_(optimizer)
    max_norm = parts.grad_clip if parts.grad_clip > 0 else math.inf  # inf: measure the norm, never clip
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.params, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
        grad_norm = grad_norm.full_tensor()
    # Every rank sees the job's loss, so all ranks take the same skip decisions.
    loss = distributed.mean_over_ranks(loss, parts.d)
    guard.step(optimizer, loss, grad_norm)
    return StepOutput(loss, grad_norm, tokens)
