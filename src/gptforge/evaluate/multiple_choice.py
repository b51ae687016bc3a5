"""Zero-shot multiple choice, scored the standard way (lm-evaluation-harness's `multiple_choice`):
each choice's log-likelihood as a continuation of the context, summed over its tokens; `acc` takes
the choice with the highest sum, `acc_norm` the highest sum per character of the choice (which
undoes the bias towards short choices); both with the standard error of a mean.

Tokens as the harness makes them: the context's trailing spaces move to the continuation, the
continuation's tokens are those of context + continuation after the context's own tokens, an
empty context is the end-of-text token, and a sequence longer than the model's context keeps its last
tokens.

Batched: an item's choices share its context, so the context is run once (its keys and values
cached, its logits never computed) and the choices then run as rows against that cache; items
whose contexts have the same number of tokens go in the same batch, and its choices, sorted by
length, go ROWS_PER_PASS to a forward pass, so padding costs little. The log-likelihoods equal those of running
each context + choice on its own, up to float rounding (the tests check 1e-4 against a plain
re-computation, transformers and lm_eval).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..device import pick_device
from ..errors import UserError
from ..model import GPT
from ..model.gpt import KVCache
from ..model.quantize import quantize_model
from ..tokenizer import Tokenizer, tokenizer_of
from ..weights import load_any, resolve_model_path
from .loss import eval_mode
from .tasks import DELIMITER, ChoiceItem, Task, read_items


def encode_request(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of one request, as the harness tokenizes them (see above);
    both plain text (a special token's literal text stays text)."""
    encode, eot = tokenizer.encode, tokenizer.eot_id
    if not context:
        ids = encode(continuation)
        return (ids[:1], ids[1:]) if ids and ids[0] == eot else ([eot], ids)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode(context)
    return context_ids, encode(context + continuation)[len(context_ids):]


@dataclasses.dataclass
class _Encoded:
    index: int  # the item's position in the input
    context: list[int]
    choices: list[list[int]]


def _encode(tokenizer: Tokenizer, index: int, item: ChoiceItem) -> _Encoded:
    pairs = [encode_request(tokenizer, item.context, DELIMITER + choice) for choice in item.choices]
    return _Encoded(index, pairs[0][0], [cont for _, cont in pairs])


def score_items(model: GPT, items: list[ChoiceItem], batch_size: int = 8, progress: bool = False
                ) -> list[list[float]]:
    """Every choice's summed log-likelihood, per item (in nats, float64 sums). `batch_size` items
    go through the model together (see the module's docstring); text is tokenized with the model's
    own tokenizer (tokenizer_of)."""
    if batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size}")
    L = model.config.context_length
    tokenizer = tokenizer_of(model)
    encoded = [_encode(tokenizer, i, item) for i, item in enumerate(items)]
    scores: list[list[float]] = [[] for _ in items]
    by_context_length = defaultdict(list)
    for e in encoded:
        if not all(e.choices):
            raise UserError(f"item {e.index + 1}: a choice has no tokens")
        fits = len(e.context) + max(map(len, e.choices)) <= L + 1
        by_context_length[len(e.context) if fits else -1].append(e)
    too_long = by_context_length.pop(-1, [])
    with eval_mode(model), tqdm(total=len(items), desc="scoring", unit="item", disable=not progress) as bar:
        for length in sorted(by_context_length):
            # Similar choice lengths together: a batch is padded to its longest choice.
            group = sorted(by_context_length[length], key=lambda e: max(map(len, e.choices)))
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                for e, lls in zip(chunk, _score_shared_context(model, chunk)):
                    scores[e.index] = lls
                bar.update(len(chunk))
        for e in too_long:  # rare: each choice on its own, cropped on the left as the harness does
            scores[e.index] = [_score_cropped(model, e.context, cont) for cont in e.choices]
            bar.update(1)
    return scores


ROWS_PER_PASS = 8  # choices per forward pass: rows of similar length, so little is spent on padding


def _score_shared_context(model: GPT, chunk: list[_Encoded]) -> list[list[float]]:
    """Items whose contexts have the same length C: the first C-1 context tokens run once per item
    (cached, no LM head), then the choices, sorted by length, go ROWS_PER_PASS at a time: each row
    reads [last context token] + choice[:-1] against its item's cache and predicts the choice."""
    device = next(model.parameters()).device
    C = len(chunk[0].context)
    rows = sorted(((k, j, cont) for k, e in enumerate(chunk) for j, cont in enumerate(e.choices)),
                  key=lambda row: len(row[2]))
    # Only as many positions as needed: (items, heads, C - 1 + longest choice, head_dim) per layer.
    capacity = C - 1 + len(rows[-1][2])
    cache = model.new_cache(len(chunk), capacity)
    if C > 1:
        model(torch.tensor([e.context[:-1] for e in chunk], device=device), cache=cache, head=False)  # (k, C-1)
    out = [[math.nan] * len(e.choices) for e in chunk]
    for first in range(0, len(rows), ROWS_PER_PASS):
        part = rows[first:first + ROWS_PER_PASS]
        owner = torch.tensor([k for k, _, _ in part], device=device)
        copy = model.new_cache(len(part), capacity)  # each row its item's context
        for mine, theirs in zip(copy.keys + copy.values, cache.keys + cache.values):
            torch.index_select(theirs, 0, owner, out=mine)
        copy.lengths = [cache.pos] * len(part)
        lls = _score_rows(model, copy, [(chunk[k].context[-1], cont) for k, _, cont in part])
        for (k, j, _), ll in zip(part, lls):
            out[k][j] = ll
    return out


def _score_rows(model: GPT, cache: KVCache, rows: list[tuple[int, list[int]]]) -> list[float]:
    """Summed log-likelihood of each row's continuation: rows of (last context token, continuation
    ids), one per row of `cache` (which holds the rest of that row's context)."""
    device = cache.keys[0].device
    T = max(len(cont) for _, cont in rows)
    inputs = torch.zeros(len(rows), T, dtype=torch.long)
    targets = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for r, (token, cont) in enumerate(rows):
        inputs[r, :len(cont)] = torch.tensor([token] + cont[:-1])
        targets[r, :len(cont)] = torch.tensor(cont)
        mask[r, :len(cont)] = True  # the padding after a short choice is never read back
    logprobs = _token_logprobs(model(inputs.to(device), cache=cache), targets.to(device))  # (rows, T)
    return (logprobs.double() * mask.to(device)).sum(dim=1).tolist()


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position: (B, T, V) logits and (B, T) ids -> (B, T), in float32."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)


def _score_cropped(model: GPT, context: list[int], continuation: list[int]) -> float:
    L = model.config.context_length
    whole = (context + continuation)[-(L + 1):]
    ids = torch.tensor([whole], device=next(model.parameters()).device)
    n = min(len(continuation), len(whole) - 1)
    return float(_token_logprobs(model(ids[:, :-1]), ids[:, 1:])[0, -n:].double().sum())


def choice_metrics(items: list[ChoiceItem], scores: list[list[float]]) -> dict[str, float]:
    """acc and acc_norm (and their standard errors: sample standard deviation / sqrt(n), as the
    harness reports them) of the scores of `items`."""
    acc, acc_norm = [], []
    for item, lls in zip(items, scores):
        lls = np.array(lls)
        lengths = np.array([float(len(choice)) for choice in item.choices])  # characters
        acc.append(float(np.argmax(lls) == item.label))
        with np.errstate(divide="ignore", invalid="ignore"):
            acc_norm.append(float(np.argmax(lls / lengths) == item.label))
    return {"items": len(items), "acc": float(np.mean(acc)), "acc_stderr": _stderr(acc),
            "acc_norm": float(np.mean(acc_norm)), "acc_norm_stderr": _stderr(acc_norm)}


def _stderr(values: list[float]) -> float:
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def evaluate_choice(checkpoint: str | os.PathLike, data: str | os.PathLike, task: Task = "hellaswag",
                    limit: int | None = None, batch_size: int = 8, device: torch.device | str = "cpu",
                    progress: bool = True, quantize: str | None = None) -> dict[str, Any]:
    """Score a model (anything load_any takes; quantized as `quantize` says, see model.quantize) on a
    multiple-choice file (see evaluate.tasks): choice_metrics's dict plus task, checkpoint, data and
    the chance level (mean 1/choices)."""
    checkpoint = resolve_model_path(checkpoint)
    device = pick_device(device) if isinstance(device, str) else device
    items = read_items(data, task, limit)  # a bad file fails before the model is loaded
    model = quantize_model(load_any(checkpoint, device), quantize)
    scores = score_items(model, items, batch_size=batch_size, progress=progress)
    chance = float(np.mean([1 / len(item.choices) for item in items]))
    return {"task": task, "checkpoint": str(checkpoint), "data": str(data), **choice_metrics(items, scores),
            "chance": chance}


def format_choice_report(result: dict[str, Any]) -> str:
    return "\n".join([
        f"checkpoint  {result['checkpoint']}",
        f"task        {result['task']} ({result['data']}, {result['items']:,} items)",
        f"acc         {result['acc']:.4f} ± {result['acc_stderr']:.4f}",
        f"acc_norm    {result['acc_norm']:.4f} ± {result['acc_norm_stderr']:.4f}",
        f"chance      {result['chance']:.4f}",
    ])
