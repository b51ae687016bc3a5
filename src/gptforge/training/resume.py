"""The exact-resume contract: what a checkpoint's train_state.pt holds, and putting it back.

A resumed run gives the same losses, bit for bit on a CPU, as one that never stopped. That takes
the weights (model.safetensors), and in train_state.pt: the optimizer's state, the fp16 loss
scaler's, the loop's Position (step, epoch, batch within the epoch, ...), and every RNG state
(Python's, numpy's, torch's CPU and CUDA generators; one set per rank under torchrun). The data
order is a function of the seed and the epoch alone (gptforge.data.batches), so the position
in it is enough.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import distributed
from ..errors import UserError
from ..weights.checkpoint import (
    load_train_state,
    newest_intact_checkpoint,
    read_checkpoint_config,
)
from .config import RunConfig, TrainConfig
from .run_folder import RunFolder, warn


@dataclass
class Position:
    """Where the run is: the training loop's state, restored exactly on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # next batch index within the epoch
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training wall time, summed over resumed sessions
    wall_s: float = 0.0  # the whole job's wall time (start-up, evaluations, saves too), all sessions
    skipped: int = 0  # updates skipped for a non-finite loss or gradient (--skip-nonfinite)


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


def capture(position: Position, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, d: distributed.Dist) -> tuple[dict, dict]:
    """(full weights, train state) of this moment; complete on rank 0. Every rank must call it:
    gathering a sharded model's state is a collective."""
    weights, optimizer_state = distributed.full_state(model, optimizer)
    rngs = distributed.gather_objects(rng_state(), d)
    state = {"optimizer": optimizer_state, "position": dataclasses.asdict(position), "rng": rngs[0],
             "rng_per_rank": rngs if d.enabled else [], "scaler": scaler.state_dict()}
    return weights, state


def restore(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, d: distributed.Dist, device: torch.device) -> Position:
    """Put a checkpoint's train state back (the weights are already loaded); returns its Position.
    A checkpoint from a job with another number of ranks restores rank 0's RNG on every rank."""
    state = load_train_state(checkpoint, device)
    distributed.load_optimizer(model, optimizer, state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    per_rank = state.get("rng_per_rank", [])
    set_rng_state(per_rank[d.rank] if len(per_rank) == d.world_size else state["rng"])
    return Position(**state["position"])


def resolve_run(config: RunConfig | None, resume: str | Path | None, fields: dict, cls=TrainConfig
                ) -> tuple[RunConfig, RunFolder, Path | None]:
    """The run's config, its folder, and the checkpoint to resume from (None for a new run).

    Resuming takes the newest checkpoint whose files are all intact (a corrupt newer one is named
    and set aside as step-N.corrupt, so that the checkpoints this run writes are the newest) and
    the run's own config, in which only the fields marked resumable may change.
    """
    if resume is None:
        cfg = config.replace(**fields) if config else cls.of(**fields)
        run = RunFolder(cfg.checkpoints.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
        if run.holds_a_run():
            raise UserError(f"run folder {run} already holds a run; continue it with "
                            f"--resume {run} or choose another --out")
        return cfg.replace(out=str(run)), run, None

    run = RunFolder(resume)
    if not run.path.is_dir():
        raise UserError(f"--resume: no such run folder: {run}")
    run.remove_stale_temporaries()
    checkpoint = newest_intact_checkpoint(run.path, warn, set_aside_skipped=True)
    if checkpoint is not None:
        saved = cls.from_dict(read_checkpoint_config(checkpoint)["train"])
    elif run.config_file.is_file():
        # Stopped before its first checkpoint: nothing to lose, so start it over with its config.
        saved = cls.from_dict(run.read_config()["train"])
        run.metrics_file.unlink(missing_ok=True)
        tqdm.write(f"{run} has no checkpoint yet: starting it over from step 0")
    else:
        raise UserError(f"--resume: {run} has no complete checkpoint to resume from")
    given = config.to_dict() if config else {}
    given.update(cls.flatten(fields))
    resumable = cls.fields_where("resumable")
    for name, value in given.items():
        if name not in resumable and name != "out" and value != saved.get(name):
            raise UserError(f"{name.replace('_', '-')}={value!r} does not match the run's "
                            f"{saved.get(name)!r}; a resumed run keeps its config (only "
                            f"{', '.join(sorted(resumable))} may change)")
    changes = {k: v for k, v in given.items() if k in resumable}
    return saved.replace(**changes, out=str(run)), run, checkpoint
