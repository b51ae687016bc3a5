"""int8 inference on CPUs (`--quantize int8`): every linear layer's weight stored as int8 with one
scale per output channel, the LM head included, and each input row quantized to int8 on the fly
with a scale of its own, so the matmul is int8 x int8 -> int32 and comes back to float32 through
the two scales. Where a C compiler is found, every product runs a compiled kernel (native.py) that
streams the weights once for every 8 rows, from its own layout of them (to_panels, the only copy
kept); it beat torch._int_mm at every row count measured, 1 to 4096 (benchmarks/README.md).
Machines without one run the same arithmetic in torch ops around torch._int_mm: the same numbers,
bit for bit, either way.

Why not weight-only int8 (float activations, int8 weights): aten._weight_int8pack_mm took 0.73 ms
for one row through a 768 x 2304 weight read from memory, against 0.06 ms for Int8Linear's kernel
and 0.31 ms for our float32 path (benchmarks/int8_kernels.py, 2 cores, AVX-512). Why not torch.ao's
quantize_dynamic (fbgemm), as fast: it quantizes a whole batch with one activation scale, so a
row's tokens would depend on the other rows decoded with it (the server batches strangers
together), and it is deprecated. With a scale per row, every row's integers and its int32 sums are
exact whatever else is in the batch: the linear layers give a row in a batch exactly what they give
it alone.

Only for inference: the integer weights have no gradients, and a module in training mode refuses.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .native import library

QUANTIZATIONS = ("int8",)
_INT8_MAX = 127
PANEL = 16  # output rows per panel of the compiled kernels' weight layouts (to_panels, cpu_decoding.float_panels)


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 rows times a float32 scale per row (output channel)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, panels: bool | None = None):
        super().__init__()
        weight = weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / _INT8_MAX  # (N,)
        qweight = torch.round(weight / scale[:, None]).to(torch.int8)  # (N, K)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        # One copy of the integers: the compiled kernel's panels where it runs (panels=None: where it
        # built), else (N, K) row-major, handed to _int_mm transposed (oneDNN reads that layout
        # fastest for a few rows: 0.18 vs 0.25 ms at 768 x 2304 for one row, in one measurement).
        panels = native_kernel() is not None if panels is None else panels
        self.register_buffer("qweight", None if panels else qweight.contiguous())
        self.register_buffer("panels", to_panels(qweight) if panels else None)
        # each weight row's sum (the kernel multiplies unsigned bytes), padded to the panels' rows
        sums = F.pad(qweight.sum(dim=1, dtype=torch.int32), (0, -self.out_features % PANEL)) if panels else None
        self.register_buffer("panel_sums", sums, persistent=False)

    def int8_weight(self) -> torch.Tensor:
        """The weight's integers, (N, K) int8 (from the panels: a copy)."""
        if self.qweight is not None:
            return self.qweight
        P, K4 = self.panels.shape[:2]
        return self.panels.transpose(1, 2).reshape(P * PANEL, K4 * 4)[:self.out_features, :self.in_features].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("an int8-quantized model is for inference: train the float32 model")
        rows = x.reshape(-1, self.in_features)  # (M, K)
        native = native_kernel() if self.panels is not None and x.dtype == torch.float32 else None
        y = (self.forward_torch(rows) if native is None
             else self.forward_native(native, rows.contiguous(), torch.get_num_threads()))
        return y.view(*x.shape[:-1], self.out_features)

    def forward_native(self, function, rows: torch.Tensor, threads: int) -> torch.Tensor:
        """The product through the compiled kernel `function`: rows (M, K) contiguous -> (M, N)."""
        y = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32)
        if function(rows.data_ptr(), rows.shape[0], self.in_features, self.panels.data_ptr(),
                    self.panel_sums.data_ptr(), self.scale.data_ptr(), None if self.bias is None else self.bias.data_ptr(),
                    self.out_features, y.data_ptr(), threads) != 0:
            raise MemoryError("int8: no memory for the quantized rows")
        return y

    def forward_torch(self, rows: torch.Tensor) -> torch.Tensor:
        """The same product in torch ops, for any number of rows (M, K) -> (M, N)."""
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / _INT8_MAX  # (M, 1)
        q = torch.round(rows / row_scale).to(torch.int8)
        y = torch._int_mm(q, self.int8_weight().t()) * (row_scale * self.scale)  # (M, N) float32
        if self.bias is not None:
            y += self.bias
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def to_panels(qweight: torch.Tensor) -> torch.Tensor:
    """The (N, K) int8 weight in the compiled kernel's layout: panels of PANEL output rows, each
    group of 4 columns of those rows side by side, (ceil(N / 16), ceil(K / 4), 16, 4), zero-padded."""
    N, K = qweight.shape
    padded = F.pad(qweight, (0, -K % 4, 0, -N % PANEL))  # (16 * panels, 4 * groups)
    return padded.view(padded.shape[0] // PANEL, PANEL, -1, 4).transpose(1, 2).contiguous()


@functools.cache
def native_kernel():
    """The compiled kernel when it built and computes what forward_torch does on a small probe
    (bit for bit), else None: a miscompiling toolchain costs speed, never a token."""
    lib = library()
    if lib is None:
        return None
    function = lib.int8_linear
    generator = torch.Generator().manual_seed(0)
    layer = Int8Linear(torch.randn(40, 202, generator=generator), torch.randn(40, generator=generator), panels=True).eval()
    rows = torch.randn(3, 202, generator=generator)
    if not torch.equal(layer.forward_native(function, rows, 1), layer.forward_torch(rows)):
        warnings.warn("int8: the compiled kernel disagrees with torch on this machine; using torch._int_mm",
                      stacklevel=2)
        return None
    return function


def quantize_model(model: nn.Module, how: str | None) -> nn.Module:
    """Quantize `model` (a float32 CPU model ready to decode) in place and return it; how=None leaves
    it as it is. Every nn.Linear becomes an Int8Linear. The LM head's int8 copy holds the real
    vocabulary's rows only; a tied embedding keeps its float32 table for the lookups."""
    if how is None:
        return model
    if how not in QUANTIZATIONS:
        raise UserError(f"unknown quantization {how!r}; choose from {', '.join(QUANTIZATIONS)}")
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype != torch.float32:  # _int_mm's CPU kernel, float32 scales
        raise UserError(f"--quantize {how} runs on a CPU in float32 (--device cpu --dtype float32); "
                        f"this model is {str(weight.dtype).removeprefix('torch.')} on {weight.device}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    with torch.no_grad():
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    w = child.weight
                    if name == "lm_head" and vocab is not None:
                        w = w[:vocab]  # padded rows never get a logit
                    setattr(parent, name, Int8Linear(w, child.bias))
    return model.eval()
