"""The parts the model's switches choose between (see GPTConfig): a norm, an MLP, rotary embeddings.

Each follows the formula of the architecture it comes from, so that a model built of them computes
what that architecture computes (weights.hf exports the matching combinations to transformers).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import GPTConfig
from .cpu_decoding import Linear, decoding_kernels


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    """GPT-2's LayerNorm (its bias only where the config has biases), or RMSNorm: x / rms(x) * gain."""
    if config.norm == "rmsnorm":
        return RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (the same parameter), which runs the compiled kernel (cpu_decoding.decoding_kernels)
    wherever float32 rows go through it with gradients off: one call where torch's CPU RMSNorm takes
    six ops, ~13 us each time on the machine measured, 49 times per token in a 12-layer modern block
    (QK-norm included). The same formula, summed in the kernel's own order, row by row: a row's
    numbers do not depend on the rows beside it."""

    @property
    def epsilon(self) -> float:
        """eps, or float32's machine epsilon where it is None (as torch's RMSNorm)."""
        return torch.finfo(torch.float32).eps if self.eps is None else self.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K = x.shape[-1]
        if (0 < x.numel() and self.weight is not None and self.weight.shape == (K,)
                and self.weight.dtype == torch.float32 and (lib := decoding_kernels(x)) is not None):
            rows = x.reshape(-1, K).contiguous()
            y = torch.empty_like(rows)
            lib.rms_norm(rows.data_ptr(), self.weight.contiguous().data_ptr(), self.epsilon, rows.shape[0], K,
                         y.data_ptr())
            return y.view(x.shape)
        return super().forward(x)


class MLP(nn.Module):
    """out_proj(act(fc(x))): GPT-2's tanh GELU, squared ReLU, or SwiGLU. For SwiGLU, fc holds the
    gate's and the up projection's rows stacked ([gate; up]), so both come from one matmul and the
    block computes silu(gate) * up."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind, width = config.mlp, config.mlp_width
        self.fc = Linear(config.emb_dim, 2 * width if self.kind == "swiglu" else width, bias=config.bias)
        self.out_proj = Linear(width, config.emb_dim, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's GELU is the tanh approximation
        return self.dropout(self.out_proj(h))


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (B, 1, T, head_dim) in float32, of the rotary angles at `positions` (B, T).

    Dimension pair (i, i + head_dim/2) turns by position * theta^(-2i/head_dim): the "rotate half"
    layout of GPT-NeoX, Llama and Qwen in transformers, so their weights need no permutation.
    Computed for every forward from the positions (a few small ops), so nothing depends on a
    cached table's length, device or dtype.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)  # (head_dim/2,)
    freqs = positions[..., None].float() * inv_freq  # (B, T, head_dim/2)
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, head_dim)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nh, T, hs) with each dimension pair (i, i + hs/2) rotated by its angle."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
