"""`gptforge bench`: training and generation speed, memory and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / peak FLOP/s, where
  achieved = flops_per_token * tokens per second, flops_per_token = 6 N + 12 L T d (training,
             see GPT.flops_per_token) or 2 N + 4 L T d (generation: forward only, T the context
             the new token attends to, on average),
  peak     = the FLOP/s of a large square matmul in the same dtype on the same device, measured on
             the spot, so the figure says how close the model gets to what this machine can do.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

from .config import GPTConfig
from .device import matmul_peak_flops, pick_device, synchronize
from .evaluate import batch_loss
from .generate import generate
from .model import GPT, prepare_for_decoding
from .training.config import OptimArgs
from .training.optim import make_optimizer


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _model(preset: str, context_length: int | None, device: torch.device, arch: str | None = None) -> GPT:
    overrides = {"context_length": context_length} if context_length else {}
    if arch:
        overrides["arch"] = arch
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset(preset, **overrides)).to(device)


def bench_train(preset: str = "gpt2-124m", context_length: int | None = 256, batch_size: int = 2,
                steps: int = 10, warmup: int = 2, dtype: str = "float32", device: str = "auto",
                compile: bool = False, arch: str | None = None, optimizer: str = "adamw") -> dict:
    """Median time of a full training step (forward, loss, backward, optimizer) on random tokens,
    with the preset's block or `arch`'s (gpt2, modern) and the trainer's AdamW or Muon."""
    dev = pick_device(device)
    model = _model(preset, context_length, dev, arch).train()
    T = model.config.context_length
    step_model = torch.compile(model) if compile else model
    optimizer = make_optimizer(model, OptimArgs(lr=1e-4, optimizer=optimizer), dev)  # the trainer's own
    autocast = torch.autocast(dev.type, dtype=getattr(torch, dtype), enabled=dtype != "float32")
    x = torch.randint(0, model.config.vocab_size, (batch_size, T + 1), device=dev)
    times = []
    for i in range(warmup + steps):
        synchronize(dev)
        start = time.perf_counter()
        with autocast:
            loss = batch_loss(step_model, x[:, :-1], x[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens_per_s = batch_size * T / step_s
    peak = matmul_peak_flops(dev, getattr(torch, dtype))
    achieved = model.flops_per_token(T) * tokens_per_s
    return {"what": "train", "preset": preset, "arch": model.config.arch, "optimizer": type(optimizer).__name__,
            "params": model.num_params(), "context_length": T, "batch_size": batch_size,
            "dtype": dtype, "device": str(dev), "steps": steps, "step_s": step_s,
            "tokens_per_s": tokens_per_s, "model_tflops": achieved / 1e12,
            "peak_tflops": peak / 1e12, "mfu": achieved / peak, "peak_memory_mb": _peak_memory_mb(dev)}


def bench_generate(preset: str = "gpt2-124m", prompt_tokens: int = 8, new_tokens: int = 200,
                   batch_size: int = 1, dtype: str = "float32", device: str = "auto",
                   use_cache: bool = True, repeats: int = 3, quantize: str | None = None,
                   arch: str | None = None) -> dict:
    """Greedy decoding speed: median over `repeats` runs of new tokens per second (of the
    quantized model with quantize="int8")."""
    dev = pick_device(device)
    model = prepare_for_decoding(_model(preset, None, dev, arch), getattr(torch, dtype), quantize)
    idx = torch.randint(0, model.config.vocab_size, (batch_size, prompt_tokens), device=dev)
    generate(model, idx, 4, temperature=0.0, use_cache=use_cache)  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(dev)
        start = time.perf_counter()
        generate(model, idx, new_tokens, temperature=0.0, use_cache=use_cache)
        synchronize(dev)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens_per_s = batch_size * new_tokens / seconds
    c = model.config
    mean_ctx = prompt_tokens + new_tokens / 2
    flops_per_token = model.flops_per_token(int(mean_ctx)) / 3  # forward only: a third of training
    peak = matmul_peak_flops(dev, getattr(torch, dtype))
    return {"what": "generate", "preset": preset, "arch": c.arch, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "batch_size": batch_size, "dtype": dtype, "quantize": quantize,
            "device": str(dev),
            "kv_cache": use_cache, "seconds": seconds, "tokens_per_s": tokens_per_s,
            "ms_per_token": 1000 * seconds / new_tokens, "n_layers": c.n_layers,
            "mfu": flops_per_token * tokens_per_s / peak, "peak_tflops": peak / 1e12,
            "peak_memory_mb": _peak_memory_mb(dev)}


def format_result(r: dict) -> str:
    if r["what"] == "train":
        head = (f"train {r['preset']} ({r['arch']} block, {r['params']:,} parameters, {r['optimizer']}) "
                f"T={r['context_length']} B={r['batch_size']} {r['dtype']} on {r['device']}")
        rows = [(f"step time (median of {r['steps']})", f"{r['step_s'] * 1000:.1f} ms"),
                ("tokens/s", f"{r['tokens_per_s']:,.0f}")]
    else:
        head = (f"generate {r['preset']} prompt={r['prompt_tokens']} new={r['new_tokens']} "
                f"B={r['batch_size']} {r['dtype']}{' ' + r['quantize'] if r.get('quantize') else ''} "
                f"kv_cache={r['kv_cache']} on {r['device']}")
        rows = [("tokens/s", f"{r['tokens_per_s']:,.1f}"), ("ms per token", f"{r['ms_per_token']:.2f}")]
    rows += [("peak memory", f"{r['peak_memory_mb']:,.0f} MiB"),
             ("MFU", f"{100 * r['mfu']:.1f}% of a measured {r['peak_tflops'] * 1000:,.0f} GFLOP/s matmul peak")]
    return "\n".join([head, *(f"  {label:<26} {value}" for label, value in rows)])
