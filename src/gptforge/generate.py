"""Text generation: one sampling loop for greedy, temperature, top-k and top-p decoding."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from .errors import UserError
from .model import GPT


def prepare_for_decoding(model: GPT, dtype: torch.dtype | None = None) -> GPT:
    """Ready a model for fast generation, in place, and return it: eval mode, the weights cast to
    `dtype` if given, and on a CPU every linear weight re-stored column-major.

    The column-major layout keeps each weight's shape, values and name; only its strides change.
    Decoding one token multiplies a vector by every weight: MKL streams a column-major weight
    1.6x faster than a row-major one, and model.linear then splits that product across the CPU
    threads (MKL would run it on one), 1.7x more: about 2.2x the tokens/s of the model as trained,
    on the 2-core machine measured (benchmarks/README.md). The tied embedding is the LM head's
    matrix, so it becomes column-major too (a lookup then reads one strided row, still cheap).
    Keep such a model for inference: training it works but is not tuned for it.
    """
    model.eval()
    if dtype is not None:
        model.to(dtype)
    if next(model.parameters()).device.type == "cpu":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):  # the tied LM head is the embedding's Parameter
                    module.weight.data = module.weight.data.t().contiguous().t()
    return model


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None,
                        max_new_tokens: int = 0) -> None:
    if not temperature >= 0.0:  # also catches NaN
        raise UserError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top-k must be a positive integer, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"top-p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise UserError(f"max-new-tokens must be >= 0, got {max_new_tokens}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (ties broken by index), set the rest to -inf."""
    if k >= logits.size(-1):
        return logits
    _, keep = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of strictly more likely tokens
    drop_sorted = mass_before >= p  # the most likely token always has mass_before 0, so it stays
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row from (B, V) logits; temperature 0 is argmax. Returns (B,) int64."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def stream(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
           use_cache: bool = True, generator: torch.Generator | None = None,
           ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens, alive) once per step: tokens (B,) is this step's token of each row and alive
    (B,) says which rows were still generating when it was drawn. A row stops once it has produced
    eos_id (that token included); the loop ends when every row has stopped or after max_new_tokens.

    The model only ever sees the last context_length tokens. With the KV cache, the prompt is
    prefilled in one pass and each step feeds one token; once the window is full every step
    recomputes the cropped window, exactly as the recompute path does, so both give the same tokens.
    """
    check_sampling_args(temperature, top_k, top_p, max_new_tokens)
    ctx = model.config.context_length
    was_training = model.training
    model.eval()
    try:
        seq = idx
        cache = model.new_cache(idx.size(0)) if use_cache else None
        alive = torch.ones(idx.size(0), dtype=torch.bool, device=idx.device)
        next_input = seq[:, -ctx:]
        for _ in range(max_new_tokens):
            if cache is not None and cache.pos + next_input.size(1) > ctx:
                cache.reset()
                next_input = seq[:, -ctx:]
            logits = model(next_input, cache)[:, -1, :]  # (B, V)
            tokens = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                tokens = torch.where(alive, tokens, torch.full_like(tokens, eos_id))
            yield tokens, alive.clone()
            if eos_id is not None:
                alive &= tokens != eos_id
                if not alive.any():
                    break
            seq = torch.cat([seq, tokens[:, None]], dim=1)
            next_input = tokens[:, None] if cache is not None else seq[:, -ctx:]
    finally:
        model.train(was_training)


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue each row of idx (B, T); returns (B, T + steps). Rows that stopped at eos_id before
    the others are padded with eos_id."""
    new = [tokens for tokens, _ in stream(model, idx, max_new_tokens, temperature, top_k, top_p,
                                          eos_id, use_cache, generator)]
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx.clone()
