"""LoRA (Hu et al. 2021, arXiv:2106.09685): fine-tune a frozen model through small low-rank updates.

A target projection y = x W^T + b becomes y = x W^T + b + (dropout(x) A^T B^T) * alpha / rank,
with A (rank, in) drawn as nn.Linear draws its weights and B (out, rank) zero, so training starts
from the base model exactly. Only A and B train; merging folds B A * alpha / rank into W, giving a
plain model that computes the same function.

Token ids added to the vocabulary (the chat template's turn tokens) have no trained rows in the
frozen base, so their rows of the embedding (and of an untied LM head) train too: a
parametrization replaces those rows of the frozen matrix with trainable ones, the way PEFT's
`trainable_token_indices` does, so the adapter's rows map one to one onto PEFT's.

Adapter tensors are named as in the model (`blocks.0.attn.qkv.lora_A`, ...) plus
`tok_emb.new_rows` (and `lm_head.new_rows` when untied): `adapter_state` gives them, and
`load_adapter` puts them back.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ..errors import UserError
from .cpu_decoding import Linear, linear
from .gpt import GPT

# --lora-targets names -> the projection in each block they adapt.
TARGETS = {"qkv": "attn.qkv", "attn_out": "attn.out_proj", "mlp_in": "mlp.fc", "mlp_out": "mlp.out_proj"}
ROWS_KEY = "new_rows"  # an adapter's trainable vocabulary rows: tok_emb.new_rows, lm_head.new_rows


def lora_targets(spec: str | list | tuple) -> tuple[str, ...]:
    """'qkv,mlp_in' (or a list of names) -> ('qkv', 'mlp_in'), in TARGETS's order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise UserError(f"unknown LoRA target(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose among {', '.join(TARGETS)}")
    return tuple(n for n in TARGETS if n in names)


class LoRALinear(Linear):
    """A frozen linear layer (same `weight` and `bias`, so the base's names are unchanged) plus a
    trainable low-rank update."""

    enabled = True  # False inside adapter_disabled: the base layer alone

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as PEFT does
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return linear(x, self.weight, self.bias) + update * self.scaling

    def merged(self) -> Linear:
        """A plain Linear computing the same function (without dropout)."""
        with torch.no_grad():
            plain = Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
            plain.weight.copy_(self.weight + (self.lora_B @ self.lora_A) * self.scaling)
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain


class NewRows(nn.Module):
    """Parametrization of a frozen (padded V, C) matrix whose rows start:end are trainable."""

    enabled = True  # False inside adapter_disabled: the frozen matrix's own rows

    def __init__(self, weight: torch.Tensor, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end
        setattr(self, ROWS_KEY, nn.Parameter(weight[start:end].detach().clone()))  # (end - start, C)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        return torch.cat([weight[:self.start], getattr(self, ROWS_KEY), weight[self.end:]])


def add_lora(model: GPT, rank: int, alpha: float, dropout: float, targets: tuple[str, ...],
             new_rows: tuple[int, int] | None = None, base: dict | None = None) -> GPT:
    """Freeze `model` and give it LoRA adapters on `targets` of every block, in place;
    `new_rows` (start, end): vocabulary rows that train as well (see NewRows). `model.lora`
    records these settings and `base`, the base model's identity a checkpoint of it records
    (weights.load.base_identity)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        for target in targets:
            parent_name, _, name = TARGETS[target].rpartition(".")
            parent = block.get_submodule(parent_name)
            setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout))
    if new_rows is not None and new_rows[1] > new_rows[0]:
        rows = NewRows(model.tok_emb.weight, *new_rows)
        parametrize.register_parametrization(model.tok_emb, "weight", rows, unsafe=True)
        # A tied head is the same matrix, so it gets the same rows (one parameter, seen twice).
        head_rows = rows if model.config.tie_embeddings else NewRows(model.lm_head.weight, *new_rows)
        parametrize.register_parametrization(model.lm_head, "weight", head_rows, unsafe=True)
    model.lora = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets),
                  "new_rows": list(new_rows) if new_rows and new_rows[1] > new_rows[0] else None,
                  **({"base": base} if base is not None else {})}
    return model


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """Inside, the model computes as its base: every LoRA update and trained vocabulary row off
    (DPO's reference model, with no second copy of the weights)."""
    parts = [m for m in model.modules() if isinstance(m, (LoRALinear, NewRows))]
    for m in parts:
        m.enabled = False
    try:
        yield
    finally:
        for m in parts:
            m.enabled = True


def is_adapter_key(name: str) -> bool:
    """Whether a state-dict key (of a model with adapters) belongs to the adapter: a classifier's
    head (score, model.classifier) always trains, so it is part of the adapter."""
    return ".lora_A" in name or ".lora_B" in name or name.endswith("." + ROWS_KEY) or name.startswith("score.")


def adapter_key(name: str) -> str:
    """A state-dict key as the adapter stores it: the parametrization's path left out."""
    return name.replace(".parametrizations.weight.0.", ".")


def adapter_state(weights: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """The adapter's tensors among a model's state dict (a tied head's rows stored once)."""
    out = {adapter_key(k): v for k, v in weights.items() if is_adapter_key(k)}
    if tied:
        out.pop(f"lm_head.{ROWS_KEY}", None)
    return out


def load_adapter(model: nn.Module, adapter: dict[str, torch.Tensor], source: str) -> None:
    """Copy adapter tensors into a model that has the same adapters; ValueError names a mismatch."""
    params = {adapter_key(k): p for k, p in model.named_parameters(remove_duplicate=False) if is_adapter_key(k)}
    if model.config.tie_embeddings:
        params.pop(f"lm_head.{ROWS_KEY}", None)
    missing, unexpected = sorted(set(params) - set(adapter)), sorted(set(adapter) - set(params))
    if missing or unexpected:
        raise ValueError(f"{source} does not match the LoRA adapters: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    with torch.no_grad():
        for name, tensor in adapter.items():
            if tensor.shape != params[name].shape:
                raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, the adapter "
                                 f"expects {tuple(params[name].shape)}")
            params[name].copy_(tensor)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into plain weights, in place: a model without LoRA that computes the
    same logits, every parameter trainable again."""
    for block in model.blocks:
        for path in TARGETS.values():
            parent_name, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_name)
            module = getattr(parent, name)
            if isinstance(module, LoRALinear):
                setattr(parent, name, module.merged())
    heads = (model.lm_head,) if hasattr(model, "lm_head") else ()  # a classifier has none
    for module in (model.tok_emb, *heads):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    if model.config.tie_embeddings and heads:
        model.lm_head.weight = model.tok_emb.weight
    for p in model.parameters():
        p.requires_grad_(True)
    model.lora = None
    return model


def trainable_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
