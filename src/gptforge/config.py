"""Typed model configuration and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import UserError

GPT2_VOCAB_SIZE = 50257


@dataclass
class GPTConfig:
    """Shape of a GPT-2-family model."""

    vocab_size: int = GPT2_VOCAB_SIZE
    """Number of token ids the model reads and predicts (50257 for the GPT-2 tokenizer)."""
    context_length: int = 1024
    """Longest sequence the model accepts; also the number of learned position embeddings."""
    emb_dim: int = 768
    """Width of the residual stream (d_model)."""
    n_heads: int = 12
    """Attention heads per layer; must divide emb_dim."""
    n_layers: int = 12
    """Number of transformer blocks."""
    dropout: float = 0.0
    """Dropout probability on embeddings, attention weights and residual branches (training only)."""
    qkv_bias: bool = False
    """Whether the query/key/value projection has a bias (True in OpenAI's GPT-2 weights)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads != 0:
            raise UserError(
                f"n_heads ({self.n_heads}) must divide emb_dim ({self.emb_dim}) evenly"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """The named preset with some fields replaced, e.g. from_preset("gpt2-124m", context_length=256)."""
        canonical = PRESET_ALIASES.get(name, name)
        if canonical not in PRESETS:
            raise UserError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[canonical], **overrides})


# The four OpenAI GPT-2 sizes (qkv_bias on, as in the released weights; the reference recipes turn
# it off when training from scratch) and two small presets for tests and CPU work.
PRESETS: dict[str, dict] = {
    "gpt2-124m": dict(context_length=1024, emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True),
    "gpt2-medium": dict(context_length=1024, emb_dim=1024, n_heads=16, n_layers=24, qkv_bias=True),
    "gpt2-large": dict(context_length=1024, emb_dim=1280, n_heads=20, n_layers=36, qkv_bias=True),
    "gpt2-xl": dict(context_length=1024, emb_dim=1600, n_heads=25, n_layers=48, qkv_bias=True),
    # About 16M parameters (13M of them the tied embedding): trains on 2 CPU cores in minutes.
    "gpt2-mini": dict(context_length=256, emb_dim=256, n_heads=4, n_layers=4),
    # About 3.3M parameters: for unit tests.
    "gpt2-tiny": dict(context_length=64, emb_dim=64, n_heads=4, n_layers=2),
}
# Other names users know the GPT-2 sizes by (the reference recipes call gpt2-medium "345M").
PRESET_ALIASES = {
    "gpt2-small": "gpt2-124m",
    "gpt2-345m": "gpt2-medium",
    "gpt2-355m": "gpt2-medium",
    "gpt2-774m": "gpt2-large",
    "gpt2-1558m": "gpt2-xl",
}
