"""Data-parallel training through torchrun: DDP or FSDP2, and one process as the degenerate case.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is a no-op, so the
training loop has one code path for a laptop and for a cluster.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from .errors import UserError

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    env = os.environ
    return Dist(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def describe(d: Dist, mode: str) -> str:
    """' x N processes (ddp)' under torchrun, '' in one process: for a job's summary line."""
    return f" x {d.world_size} processes ({mode})" if d.enabled else ""


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun prepared; each rank gets its own GPU (LOCAL_RANK)."""
    d = from_env()
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=10), device_id=device if device.type == "cuda" else None)
    return d, device


def teardown(d: Dist) -> None:
    """Leave the process group only after every rank is done, so no rank tears down a group
    another is still using (the cause of the occasional SIGABRT at exit)."""
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, mode: str, device: torch.device) -> nn.Module:
    """The module the training step calls: the model itself, a DDP wrapper, or (FSDP2) the model
    with its blocks and root sharded in place."""
    if not d.enabled:
        return model
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    raise UserError(f"--distributed must be ddp or fsdp, got {mode!r}")


def gradient_sync(step_model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if isinstance(step_model, nn.parallel.DistributedDataParallel) and not enabled:
        return step_model.no_sync()
    if hasattr(step_model, "set_requires_gradient_sync"):  # an FSDP2 module
        step_model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """Sum host numbers over ranks (a host sync: for the loop's periodic agreement only)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def mean_over_ranks(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of a device tensor over ranks, without a host sync (queued like any kernel)."""
    if not d.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / d.world_size


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state, on the CPU (complete on rank 0), keyed by parameter
    name so that any world size and either wrapper can load it. Every rank must call this."""
    return (get_model_state_dict(model, options=FULL),
            get_optimizer_state_dict(model, optimizer, options=FULL))


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def gather_objects(obj, d: Dist) -> list:
    """One picklable object from every rank (RNG states), in rank order; in-process only."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out
