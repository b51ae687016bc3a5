"""The optimizer (AdamW, or Muon with AdamW) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from .config import OptimArgs

HIDDEN = "blocks."  # parameters under this prefix are the blocks' own; Muon takes their matrices


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for the blocks' weight matrices and AdamW for everything else (embeddings,
    LM head, gains, biases), as one optimizer: its param_groups are AdamW's then Muon's (the same
    dicts) and one state serves both, so the loop, the gradient scaler and the (distributed)
    checkpoints handle it like any single optimizer.

    Muon has no input to skip a step on the device (AdamW's fused found_inf), so the update guard
    reads the finiteness flag every step with it (training.step.UpdateGuard): free on a CPU,
    one wait for the queue per step on a GPU.
    """

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Muon):
        self.adamw, self.muon = adamw, muon
        super().__init__(adamw.param_groups + muon.param_groups, {})
        self._share()

    def _share(self) -> None:
        n = len(self.adamw.param_groups)
        self.adamw.param_groups, self.muon.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.adamw.state = self.muon.state = self.state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # load_state_dict comes here with new groups and state
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        self.adamw.step()
        self.muon.step()


def make_optimizer(model: torch.nn.Module, cfg: OptimArgs, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, weight decay on matrices only; with cfg.optimizer
    'muon', Muon for the blocks' 2-D weights and AdamW for the rest (MuonAdamW)."""
    # Decaying biases and LayerNorm gains just pulls them toward 0 for no regularising benefit.
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if cfg.optimizer == "muon" and n.startswith(HIDDEN) and p.dim() == 2]
    taken = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in taken]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    # Fused: one kernel over all parameters (the whole gpt2-124m step 1.05x faster than with the
    # multi-tensor loop on 2 CPU cores), and it can skip a non-finite update without the host
    # looking at the gradients (see training.step.UpdateGuard).
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type in ("cpu", "cuda") or None)
    if cfg.optimizer != "muon":
        return adamw
    if not hidden:
        raise UserError("--optimizer muon: the model has no trainable weight matrices in its blocks")
    # Moonshot's scaling gives Muon's update the RMS of an AdamW update, so the same learning rate
    # and weight decay suit both ("Muon is Scalable for LLM Training", 2025).
    muon = torch.optim.Muon(hidden, lr=cfg.muon_lr or cfg.lr, weight_decay=cfg.weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    return MuonAdamW(adamw, muon)


def peak_lr(group: dict, cfg: OptimArgs) -> float:
    """The peak learning rate of a parameter group: --muon-lr (default --lr) for Muon's, --lr else."""
    muon = "ns_steps" in group  # a hyperparameter only Muon's groups have
    return (cfg.muon_lr or cfg.lr) if muon else cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, cfg: OptimArgs, factor: float) -> None:
    """Every group's learning rate: its peak times the schedule's factor (see lr_factor)."""
    for group in optimizer.param_groups:
        group["lr"] = peak_lr(group, cfg) * factor


def lr_factor(step: int, cfg: OptimArgs, total_steps: int, time_progress: float = 0.0) -> float:
    """The learning rate of update `step` (0-based) relative to the peak: a linear warmup over the
    first warmup_steps, then constant or a cosine down to min_lr / lr.

    The cosine runs on the run's progress, max(steps done / total_steps, time_progress), where
    time_progress is the share of a --max-time budget used (0 without one), so that a run that
    stops on the clock has decayed its learning rate by then. The decay starts where the warmup
    ends (progress warmup_steps / total_steps).
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    warmup = cfg.warmup_steps / total_steps if total_steps else 0.0
    by_steps = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    by_time = (time_progress - warmup) / (1 - warmup) if warmup < 1 else 0.0
    progress = min(1.0, max(by_steps, by_time))
    floor = cfg.min_lr / cfg.lr
    return floor + 0.5 * (1 - floor) * (1 + math.cos(math.pi * progress))
