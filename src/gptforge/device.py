"""The torch device: choosing it from a user's --device flag, waiting for it, measuring its matmul peak."""

from __future__ import annotations

import torch

from .errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA, then Apple's MPS, then the CPU; anything else must be usable here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} requested but MPS is not available on this machine")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of an n x n @ n x n matmul (best of `repeats`): the machine's practical peak, the
    denominator of model FLOPs utilisation (MFU)."""
    import time

    n = n or (8192 if device.type == "cuda" else 1024)
    # A private generator: measuring must not move the global RNG (training calls this after
    # restoring it, and resume has to stay exact).
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    a @ b  # warm-up: thread pools, kernels, allocations
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
