"""Which int8 matmul to decode with on a CPU: one 768 x 2304 linear layer (gpt2-124m's qkv) for 1
and 8 rows, cycling through 48 copies so the weights come from memory and not the L3, for our
float32 paths (the compiled kernel on the weights as trained, row-major, for up to FLOAT_ROWS rows;
the split product on column-major weights where no compiler is found), torch._int_mm, our Int8Linear (its compiled kernel, and its torch path around
_int_mm), fbgemm's dynamic quantization (torch.ao's
quantize_dynamic), and the weight-only kernels: torchao's Int8WeightOnlyConfig (when torchao is
installed) and aten._weight_int8pack_mm; our compiled kernels also on weights moved into huge pages
as prepare_for_decoding moves them (hold_in_huge_pages), and on the float32 panels the server keeps. Prints a markdown table (ms per call,
weight GB/s).

    python benchmarks/int8_kernels.py
"""

from __future__ import annotations

import time
import warnings
from functools import partial

import torch
import torch.nn as nn

from gptforge.model.cpu_decoding import FLOAT_ROWS, float_kernels, float_panels, hold_in_huge_pages, linear
from gptforge.model.quantize import Int8Linear

COPIES, K, N = 48, 768, 2304


def best_ms(calls, passes: int = 5) -> float:
    for call in calls:
        call()
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for call in calls:
            call()
        best = min(best, (time.perf_counter() - start) / len(calls))
    return 1000 * best


def main() -> None:
    warnings.filterwarnings("ignore")  # torch.ao's deprecation notices
    torch.manual_seed(0)
    weights = [torch.randn(N, K) * 0.02 for _ in range(COPIES)]
    scales = [w.abs().amax(1) / 127 for w in weights]
    int8 = [torch.round(w / s[:, None]).to(torch.int8) for w, s in zip(weights, scales)]
    column_major = [w.t().contiguous().t() for w in weights]
    ours = [Int8Linear(w).eval() for w in weights]  # (the kernel's panels where it built)
    plain = [Int8Linear(w, panels=False).eval() for w in weights]  # (N, K) int8, as without a compiler
    huge = hold_in_huge_pages(nn.ParameterList(w.clone() for w in weights))  # (copies: the others stay put)
    panels = [float_panels(w) for w in weights] if float_kernels() is not None else None
    ours_huge = hold_in_huge_pages(nn.ModuleList(Int8Linear(w).eval() for w in weights))
    zero = torch.zeros(N, dtype=torch.long)
    fbgemm = [torch.ops.quantized.linear_prepack(torch.quantize_per_channel(w, s, zero, 0, torch.qint8), None)
              for w, s in zip(weights, scales)]
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
        torchao = []
        for w in weights:
            layer = nn.Sequential(nn.Linear(K, N, bias=False))
            layer[0].weight.data = w.clone()
            quantize_(layer, Int8WeightOnlyConfig())
            torchao.append(layer)
    except ImportError:
        torchao = None
    print(f"{torch.get_num_threads()} thread(s), torch {torch.__version__}\n")
    print("| rows | kernel | ms | weight GB/s |\n|---|---|---:|---:|")
    for rows in (1, 8):
        x = torch.randn(rows, K)
        xq = torch.round(x / (x.abs().amax(1, keepdim=True) / 127)).to(torch.int8)
        linear_dynamic, int8pack_mm = torch.ops.quantized.linear_dynamic, torch.ops.aten._weight_int8pack_mm
        contestants = {
            "float32, ours (column-major: the split product)": (4, [partial(linear, x, w) for w in column_major]),
            "torch._int_mm alone": (1, [partial(torch._int_mm, xq, q.t()) for q in int8]),
            "Int8Linear, compiled kernel": (1, [partial(m, x) for m in ours]),
            "Int8Linear, torch path (_int_mm)": (1, [partial(m.forward_torch, x) for m in plain]),
            "fbgemm quantized::linear_dynamic": (1, [partial(linear_dynamic, x, p, True) for p in fbgemm]),
            # 12 copies only (it is that slow): they fit the L3, which flatters it
            "aten._weight_int8pack_mm": (1, [partial(int8pack_mm, x, q, s) for q, s in zip(int8, scales)][:12]),
        }
        if float_kernels() is not None and rows <= FLOAT_ROWS:
            contestants["float32, ours (row-major: the compiled kernel)"] = (4, [partial(linear, x, w) for w in weights])
            contestants["float32, ours (the compiled kernel), huge pages"] = (4, [partial(linear, x, w) for w in huge])
        if panels is not None:
            contestants["float32, ours (panels, as the server keeps them)"] = (
                4, [partial(linear, x, w, None, p) for w, p in zip(weights, panels)])
        contestants["Int8Linear, compiled kernel, huge pages"] = (1, [partial(m, x) for m in ours_huge])
        if torchao is not None:
            contestants["torchao Int8WeightOnlyConfig"] = (1, [partial(m, x) for m in torchao])
        with torch.no_grad():
            for name, (nbytes, calls) in contestants.items():
                ms = best_ms(calls)
                print(f"| {rows} | {name} | {ms:.3f} | {K * N * nbytes / ms / 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
