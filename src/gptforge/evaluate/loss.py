"""Loss of batches, and loss / perplexity / bits per byte of a whole token stream.

Bits per byte divides the total loss by the UTF-8 size of the predicted text instead of by the
number of tokens, so it compares models with different tokenizers (and is what text-compression
results are quoted in). Tokens are scored once each, in non-overlapping windows of the model's
context: the cheapest full pass, at the price of short contexts at the start of every window.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import as_token_array, is_corpus, load_corpus, tokenize
from ..device import pick_device
from ..errors import UserError
from ..model.quantize import quantize_model
from ..text.split import SPLITS
from ..tokenizer import tokenizer_of
from ..weights import load_any, resolve_model_path


def batch_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every (B, T) position: a scalar with grad, as the trainer needs."""
    return model(inputs, targets=targets)  # the model computes it: see GPT.forward


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off and no autograd inside; the caller's train/eval mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def mean_loss(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              num_batches: int | None = None, device: torch.device | str | None = None) -> float:
    """Mean of batch_loss over the first num_batches (x, y) batches (all if None).

    NaN when there is no batch, like the reference `calc_loss_loader`. It is a mean of per-batch
    means, as there, so a short last batch weighs as much as a full one.
    """
    if num_batches is not None and num_batches < 0:
        raise ValueError(f"num_batches must be >= 0 or None, got {num_batches}")
    device = torch.device(device) if device is not None else _model_device(model)
    total, count = 0.0, 0
    with eval_mode(model):
        for inputs, targets in islice(batches, num_batches):
            total += batch_loss(model, inputs.to(device), targets.to(device)).item()
            count += 1
    return total / count if count else float("nan")


def perplexity(loss: float) -> float:
    """exp(loss), inf where that overflows (an untrained or diverged model)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Total loss in nats over the bytes it predicted, in bits per byte (NaN for zero bytes)."""
    return total_nats / (math.log(2) * n_bytes) if n_bytes > 0 else float("nan")


def bytes_per_token(batches: Iterable, byte_lengths: np.ndarray) -> float | None:
    """UTF-8 bytes per token of some (B, T) batches of ids, given each id's byte length (a
    tokenizer's token_byte_lengths()); None when there are no tokens or an id has no known text.
    Turns a loss in nats/token into bits per byte: loss / ln 2 / this."""
    n_tokens = n_bytes = 0
    for ids in batches:
        ids = np.asarray(ids)
        if ids.size and ids.max() >= len(byte_lengths):
            return None
        n_tokens, n_bytes = n_tokens + ids.size, n_bytes + int(byte_lengths[ids].sum())
    return n_bytes / n_tokens if n_tokens else None


def evaluate_tokens(model: torch.nn.Module, tokens: np.ndarray, batch_size: int = 8,
                    device: torch.device | str | None = None, progress: bool = False) -> dict[str, Any]:
    """Loss, perplexity and bits per byte of a token stream, every token after the first scored once.

    Windows of the model's context length L start at 0, L, 2L, ...; window s reads tokens[s:s+L]
    and predicts tokens[s+1:s+L+1]; a final shorter window predicts whatever is left. The bytes
    come from the model's tokenizer (tokenizer_of): each token's UTF-8 length, 0 for a special
    token such as the document separator, which stands for no text.
    """
    tokens = as_token_array(tokens)  # a memmap or sharded corpus stays on disk: read batch by batch
    n = len(tokens) if tokens.ndim == 1 else 0
    if n < 2:
        raise UserError(f"evaluation needs a 1-D stream of at least 2 tokens, got shape {tokens.shape}")
    if batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size}")
    L = model.config.context_length
    byte_lengths = tokenizer_of(model).token_byte_lengths()
    max_id = min(model.config.vocab_size, len(byte_lengths))  # ids the model and the table both know
    device = torch.device(device) if device is not None else _model_device(model)

    n_full, rest = divmod(n - 1, L)  # full windows, and the predictions left for the last one
    starts = np.arange(n_full) * L
    groups: list[tuple[np.ndarray, int]] = [(starts[i:i + batch_size], L) for i in range(0, n_full, batch_size)]
    if rest:
        groups.append((np.array([n_full * L]), rest))

    total_nats, n_bytes = 0.0, 0  # Python floats/ints: float64 and exact accumulation
    with eval_mode(model):
        for group_starts, length in tqdm(groups, desc="evaluating", unit="batch", disable=not progress):
            rows = tokens[group_starts[:, None] + np.arange(length + 1)].astype(np.int64)  # (B, length+1)
            if rows.max() >= max_id:
                raise UserError(f"the data holds token id {int(rows.max())}, outside the vocabulary of the model "
                                f"({model.config.vocab_size}) or its tokenizer {tokenizer_of(model).name} "
                                f"({len(byte_lengths)}); was it prepared with that tokenizer?")
            rows_t = torch.from_numpy(rows).to(device)
            logits = model(rows_t[:, :-1])  # (B, length, V)
            # Upcast so a reduced-precision model still sums its losses in fp32 before fp64.
            total_nats += F.cross_entropy(logits.flatten(0, 1).float(), rows_t[:, 1:].flatten(),
                                          reduction="sum").item()
            n_bytes += int(byte_lengths[rows[:, 1:]].sum())

    loss = total_nats / (n - 1)
    return {"loss": loss, "perplexity": perplexity(loss), "bits_per_byte": bits_per_byte(total_nats, n_bytes),
            "tokens": n - 1, "bytes": n_bytes}


def evaluate_path(checkpoint: str | os.PathLike, data: str | os.PathLike, batch_size: int = 8,
                  device: torch.device | str = "cpu", split: str = "val", progress: bool = True,
                  quantize: str | None = None) -> dict[str, Any]:
    """Evaluate a model (anything load_any takes) on a prepared corpus's `split`, or on all of a text
    file / folder / glob (every document, joined as `prepare` would, with the model's own
    tokenizer). A corpus's shards are checked against their sha256 first, and a corpus prepared
    with another tokenizer than the model's is refused. The result is evaluate_tokens's dict plus
    checkpoint, data and split. quantize="int8" evaluates the int8 model (model.quantize)."""
    checkpoint = resolve_model_path(checkpoint)
    device = pick_device(device) if isinstance(device, str) else device
    model = quantize_model(load_any(checkpoint, device), quantize)  # fails fast, before any tokenizing
    tokenizer = tokenizer_of(model)
    folder = Path(data)
    if is_corpus(folder):
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        corpus = load_corpus(folder, verify=True)
        if not tokenizer.extends(corpus.tokenizer):
            raise UserError(f"{folder} was prepared with tokenizer {corpus.tokenizer.name}, but the model uses "
                            f"{tokenizer.name}; evaluate text, or a corpus prepared with the model's tokenizer")
        tokens = getattr(corpus, split)
        if len(tokens) < 2:
            raise UserError(f"the {split} split of {folder} has {len(tokens)} token(s), too few to evaluate; "
                            f"choose the other split or evaluate a text file")
        used_split: str | None = split
    else:
        tokens, used_split = tokenize([str(data)], progress=progress, tokenizer=tokenizer)[0], None
    result = evaluate_tokens(model, tokens, batch_size=batch_size, device=device, progress=progress)
    return {**result, "checkpoint": str(checkpoint), "data": str(data), "split": used_split, "quantize": quantize}


def format_report(result: dict[str, Any]) -> str:
    """A few aligned lines for people; --json gives the dict itself to programs."""
    lines = []
    if "checkpoint" in result:
        lines.append(f"checkpoint     {result['checkpoint']}")
    if "data" in result:
        where = f" ({result['split']} split)" if result.get("split") else ""
        lines.append(f"data           {result['data']}{where}")
    lines += [
        f"loss           {result['loss']:.4f} nats/token",
        f"perplexity     {result['perplexity']:.2f}",
        f"bits per byte  {result['bits_per_byte']:.4f}",
        f"tokens         {result['tokens']:,} predicted",
        f"bytes          {result['bytes']:,}",
    ]
    return "\n".join(lines)
