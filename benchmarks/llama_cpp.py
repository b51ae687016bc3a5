"""Batch-1 decoding speed against llama.cpp, in one run on one machine: gptforge float32 (with the
compiled kernels, and with torch ops only, as on a machine without a C compiler) and int8
(`--quantize int8`), llama.cpp on our GGUF exports (f32 and q8_0, through llama-cpp-python) and
transformers on our HF export, for gpt2-124m and for the modern block on the same shape (random
weights, seeded: speed does not depend on what the weights say). Every contestant gets the same
prompt, the same number of greedy new tokens and the same threads; best of --repeats rounds, each
round running every contestant once in turn (so the machine's slow spells fall on all alike).

Decoding one token reads every weight matrix once (the LM head's 50K rows included), so its speed
is bounded by memory bandwidth: the table gives each contestant's weight bytes per token, and
bytes per token x tokens/s as a fraction of this machine's bandwidth, measured here by summing a
buffer far larger than the caches (read only, as decoding reads weights; the best of a measurement
before and one after the contestants, so a busy moment does not lower it). A sum is not the
fastest possible read: in a fast spell a contestant can pass 100% of it.

    python benchmarks/llama_cpp.py                   # both blocks, 64 tokens (~3 minutes on 2 cores)
    python benchmarks/llama_cpp.py --tokens 16 --blocks gpt2 --repeats 1   # a quick look

llama-cpp-python (`pip install llama-cpp-python`, built from source: minutes) and transformers are
optional: without them their rows say so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import sys
import tempfile
import time
import unittest.mock
from collections.abc import Callable
from pathlib import Path

import torch

from gptforge.config import GPTConfig
from gptforge.generate import generate
from gptforge.model import GPT, cpu_decoding, prepare_for_decoding
from gptforge.tokenizer import gpt2

# This file's name is the package's: drop its folder from the path, or `import llama_cpp` imports it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def bandwidth_gb_s(mb: int = 1024, repeats: int = 5) -> float:
    """Memory read bandwidth: the best of `repeats` sums of an `mb` MB buffer, far past the caches
    (a sum does one add per 4 bytes read: memory-bound, like a matrix-vector product), held in huge
    pages as our weights are (through 4 KB pages the same sum read ~10% less)."""
    src = cpu_decoding.huge_page_memory(mb * 2**20).view(torch.float32).fill_(1.0)
    best = min(_timed(lambda: src.sum()) for _ in range(repeats))
    return src.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matrix_weights(model: GPT) -> int:
    """Weights a decoding step multiplies by: every linear layer and the LM head's real rows."""
    blocks = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear))
    return blocks + model.config.vocab_size * model.config.emb_dim


def ours(model: GPT, prompt: torch.Tensor, quantize: str | None, kernels: bool = True) -> Callable[[int], None]:
    """Our greedy decoding of n tokens; kernels=False: float32 as on a machine without a C compiler
    (torch's split product on column-major weights, SDPA), the compiled kernels hidden while it runs."""
    def hidden():
        return unittest.mock.patch.object(cpu_decoding, "float_kernels", lambda: None) if not kernels else contextlib.nullcontext()

    with hidden():
        m = prepare_for_decoding(copy.deepcopy(model), quantize=quantize)

    def run(n: int) -> None:
        with hidden():
            generate(m, prompt, n, temperature=0.0)
    return run


def llama_cpp(model: GPT, prompt: torch.Tensor, threads: int, type: str, folder: Path) -> Callable[[int], None] | str:
    try:
        import llama_cpp as lc
    except ImportError:
        return "llama_cpp not installed"
    from gptforge.weights.gguf_export import write_gguf

    path = write_gguf(model, folder / f"{model.config.arch}-{type}.gguf", type)
    llm = lc.Llama(model_path=str(path), n_ctx=model.config.context_length, n_threads=threads,
                   n_threads_batch=threads, n_batch=64, verbose=False)
    ids = prompt[0].tolist()

    def run(n: int) -> None:
        for i, _ in enumerate(llm.generate(ids, top_k=1, temp=0.0, reset=True), start=1):
            if i == n:  # generate() never stops by itself: it ignores end-of-text
                break
    return run


def transformers_run(model: GPT, prompt: torch.Tensor, folder: Path) -> Callable[[int], None] | str:
    try:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        return "transformers not installed"
    hf_logging.disable_progress_bar()
    from gptforge.weights.hf import export_hf

    hf = AutoModelForCausalLM.from_pretrained(export_hf(model, folder / f"hf-{model.config.arch}")).eval()

    def run(n: int) -> None:
        with torch.no_grad():
            hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                        pad_token_id=0, attention_mask=torch.ones_like(prompt))
    return run


def race(runs: dict[str, Callable[[int], None] | str], tokens: int, repeats: int) -> dict[str, float | str]:
    """Each contestant's best tokens/s over `repeats` rounds, every round running every contestant
    once in turn: a slow spell of the machine (they come and go over seconds to minutes on shared
    machines) falls on all of them alike, not on whoever ran at that moment."""
    ready = {name: run for name, run in runs.items() if not isinstance(run, str)}
    for run in ready.values():
        run(2)  # warm-up
    best = dict.fromkeys(ready, 0.0)
    for _ in range(repeats):
        for name, run in ready.items():
            best[name] = max(best[name], tokens / _timed(lambda: run(tokens)))
    return {name: best.get(name, run) for name, run in runs.items()}


def rows_for(arch: str, args, folder: Path) -> list[tuple[str, float | str, float]]:
    torch.manual_seed(0)
    # The modern block on the preset's shape, without GPT-2's q/k/v biases (as Qwen3, its export)
    overrides = {"arch": arch} if arch == "gpt2" else {"arch": arch, "qkv_bias": False}
    model = GPT(GPTConfig.from_preset(args.preset, **overrides), gpt2()).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_tokens),
                           generator=torch.Generator().manual_seed(1))
    n = matrix_weights(model)
    rows = sum(m.weight.shape[0] for m in model.blocks.modules() if isinstance(m, torch.nn.Linear))
    int8_bytes = n + 4 * (rows + model.config.vocab_size)  # a float32 scale per output row
    fp32, q8 = 4 * n, n * 34 / 32  # q8_0: 34 bytes per block of 32 weights
    contestants = {
        "gptforge float32": (ours(model, prompt, None), fp32),
        "gptforge float32, torch ops only": (ours(model, prompt, None, kernels=False), fp32),
        "gptforge int8": (ours(model, prompt, "int8"), int8_bytes),
        "llama.cpp f32": (llama_cpp(model, prompt, args.threads, "f32", folder), fp32),
        "llama.cpp q8_0": (llama_cpp(model, prompt, args.threads, "q8_0", folder), q8),
        "transformers float32": (transformers_run(model, prompt, folder), fp32),
    }
    speeds = race({name: run for name, (run, _) in contestants.items()}, args.tokens, args.repeats)
    return [(name, speeds[name], nbytes) for name, (_, nbytes) in contestants.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--blocks", default="gpt2,modern", help="comma-separated: gpt2, modern (default: both)")
    p.add_argument("--tokens", type=int, default=64, help="greedy new tokens per run (default: 64)")
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="rounds, each running every contestant once; each one's best kept (default: 3)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="threads for every contestant (default: torch's, here %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    before = bandwidth_gb_s()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(arch, *row) for arch in args.blocks.split(",") for row in rows_for(arch, args, Path(tmp))]
    bw = max(before, bandwidth_gb_s())
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"{args.preset}, prompt {args.prompt_tokens} tokens, {args.tokens} greedy new tokens, best of "
          f"{args.repeats}; memory read bandwidth {bw:.1f} GB/s (best sum of 1 GiB in huge pages; {before:.1f} before)\n")
    print("| block | contestant | tokens/s | ms/token | weight MB/token | GB/s | of bandwidth |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for arch, name, speed, nbytes in rows:
        if isinstance(speed, str):
            print(f"| {arch} | {name} | {speed} | | {nbytes / 1e6:.0f} | | |")
            continue
        rate = nbytes * speed / 1e9
        print(f"| {arch} | {name} | {speed:.1f} | {1000 / speed:.1f} | {nbytes / 1e6:.0f} | {rate:.1f} | "
              f"{100 * rate / bw:.0f}% |")


if __name__ == "__main__":
    main()
