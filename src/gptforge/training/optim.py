"""The optimizer and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on matrices only."""
    # Decaying biases and LayerNorm gains just pulls them toward 0 for no regularising benefit.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # Fused: one kernel over all parameters (the whole gpt2-124m step 1.05x faster than with the
    # multi-tensor loop on 2 CPU cores), and it can skip a non-finite update without the host
    # looking at the gradients (see training.step.UpdateGuard).
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type in ("cpu", "cuda") or None)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for the update with 0-based index `step`: linear warmup, then constant or cosine."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
