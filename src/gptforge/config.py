"""Typed configuration: the model's shape (GPTConfig, with named presets), and the rules every
config field carries: a one-line docstring (the --help text), a `Literal` type for a fixed set of
choices, and metadata (see `rule`) for bounds, for what a resumed run may change and for what a
model's weights fix. A training run's settings (training.config) are built from the same rules,
and the CLI is generated from these classes, so adding a field is the whole job of adding a flag.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Literal

from .checks import require_int, require_number
from .errors import UserError
from .tokenizer.gpt2_bpe import GPT2_VOCAB_SIZE


def rule(default, *, minimum: float | None = None, below: float | None = None, strict: bool = False,
         resumable: bool = False, shape: bool = False):
    """A dataclass field with its rules in the metadata:
    minimum / below / strict: value >= minimum (> with strict) and < below, checked on creation;
    resumable: a resumed run may change it;
    shape: it is fixed by a model's weights, so --init-from must not contradict it."""
    meta = {"minimum": minimum, "below": below, "strict": strict, "resumable": resumable, "shape": shape}
    return field(default=default, metadata=meta)


def check_fields(config, flags: bool) -> None:
    """Apply every field's bounds and Literal choices (see `rule`); errors name the field as its
    command-line flag when `flags` (--batch-size), else as the field (n_layers)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        check_value(f, hints[f.name], getattr(config, f.name), flags)


def check_value(f: dataclasses.Field, hint, value, flags: bool) -> None:
    """One field's bounds and Literal choices (see check_fields)."""
    kind = base_type(hint)
    if value is None and kind is not hint:  # an optional field left unset
        return
    name = f.name.replace("_", "-") if flags else f.name
    if typing.get_origin(kind) is Literal and value not in typing.get_args(kind):
        raise UserError(f"{name} must be one of {', '.join(typing.get_args(kind))}, got {value!r}")
    if typing.get_origin(kind) is tuple:  # a repeatable choice: every item one of the Literal's
        choices = typing.get_args(typing.get_args(kind)[0])
        for item in value:
            if item not in choices:
                raise UserError(f"{name} takes {', '.join(choices)}, got {item!r}")
    low = f.metadata.get("minimum")
    if low is None:
        return
    if kind is int:
        require_int(name, value, minimum=low)
    else:
        require_number(name, value, minimum=low, below=f.metadata.get("below"),
                       strict=f.metadata.get("strict", False))


def base_type(hint):
    """The type a field's value has when set: int for `int | None`, a Literal stays a Literal."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _from_dict(cls, data: dict, what: str):
    """cls(**data), naming the keys cls has no field for instead of a TypeError."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"unknown {what}: {', '.join(unknown)}")
    return cls(**data)


@dataclass
class GPTConfig:
    """Shape of a GPT-2-family model, and which block it uses (GPT-2's, or a modern one)."""

    vocab_size: int = rule(GPT2_VOCAB_SIZE, minimum=1)
    """Number of token ids the model reads and predicts (50257 for the GPT-2 tokenizer)."""
    context_length: int = rule(1024, minimum=1)
    """Longest sequence the model accepts; also the number of learned position embeddings."""
    emb_dim: int = rule(768, minimum=1, shape=True)
    """Width of the residual stream (d_model)."""
    n_heads: int = rule(12, minimum=1, shape=True)
    """Attention heads per layer; must divide emb_dim."""
    n_layers: int = rule(12, minimum=1, shape=True)
    """Number of transformer blocks."""
    dropout: float = rule(0.0, minimum=0.0, below=1.0)
    """Dropout probability on embeddings, attention weights and residual branches (training only)."""
    qkv_bias: bool = rule(False, shape=True)
    """Whether the query/key/value projection has a bias (True in OpenAI's GPT-2 weights)."""
    arch: Literal["gpt2", "modern"] = rule("gpt2", shape=True)
    """Block family giving the defaults of the switches below: 'gpt2' (exactly GPT-2) or 'modern' (Qwen3's block)."""
    positions: Literal["learned", "rope"] | None = rule(None, shape=True)
    """Position information: 'learned' embeddings added to the input (GPT-2) or 'rope' (rotary, in attention)."""
    rope_theta: float = rule(10000.0, minimum=0.0, strict=True)
    """Base of the rotary embedding's frequencies (10000 as in RoFormer and Llama)."""
    norm: Literal["layernorm", "rmsnorm"] | None = rule(None, shape=True)
    """Normalisation before each sub-block and at the end: 'layernorm' (GPT-2) or 'rmsnorm' (no mean, no bias)."""
    norm_eps: float = rule(1e-5, minimum=0.0, strict=True)
    """Epsilon added to the variance inside every norm."""
    mlp: Literal["gelu", "swiglu", "relu2"] | None = rule(None, shape=True)
    """MLP kind: 'gelu' (GPT-2), 'swiglu' (gated SiLU, Llama/Qwen) or 'relu2' (squared ReLU, modded-nanogpt)."""
    mlp_hidden: int | None = rule(None, minimum=1, shape=True)
    """MLP hidden width (default 4 * emb_dim; for swiglu 8/3 * emb_dim rounded up to a multiple of 64)."""
    qk_norm: bool | None = rule(None, shape=True)
    """RMS-normalise each head's queries and keys before attention (Qwen3, modded-nanogpt)."""
    bias: bool | None = rule(None, shape=True)
    """Biases in the attention output, the MLP and the LayerNorms (GPT-2 has them; qkv_bias is separate)."""
    tie_embeddings: bool | None = rule(None, shape=True)
    """Share one matrix between the token embedding and the LM head (GPT-2 does; saves vocab*emb_dim)."""
    zero_init_proj: bool | None = None
    """Start the attention and MLP output projections at zero, so every block starts as the identity."""
    logit_softcap: float = rule(0.0, minimum=0.0)
    """Squash the logits smoothly into (-c, c) with c * tanh(logits / c) (Gemma 2, modded-nanogpt); 0: off."""
    embedding_std: float = rule(0.02, minimum=0.0, strict=True)
    """Init std of the token and position embeddings (0.02 as GPT-2; 1.0 as PyTorch's nn.Embedding)."""

    def __post_init__(self) -> None:
        check_fields(self, flags=False)
        if self.emb_dim % self.n_heads != 0:
            raise UserError(f"n_heads ({self.n_heads}) must divide emb_dim ({self.emb_dim}) evenly")
        for name, value in ARCHS[self.arch].items():  # the switches left unset take the arch's choice
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.positions == "rope" and self.head_dim % 2:
            raise UserError(f"rotary positions need an even head size, got {self.head_dim} "
                            f"(emb_dim {self.emb_dim} / n_heads {self.n_heads})")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width: mlp_hidden, or the default for the MLP kind (see mlp_hidden)."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":  # two input matrices instead of one: 2/3 of the width, same parameters
            return -(-8 * self.emb_dim // (3 * 64)) * 64
        return 4 * self.emb_dim

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and LM head matrices inside the model: vocab_size rounded up to a
        multiple of 64, so the LM head's matmul has GPU-friendly shapes (50257 -> 50304). The extra
        ids never get a logit or a gradient, and checkpoints store only vocab_size rows."""
        return -(-self.vocab_size // 64) * 64

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        return _from_dict(cls, data, "model config field(s)")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """The named preset with some fields replaced, e.g. from_preset("gpt2-124m", context_length=256)."""
        canonical = PRESET_ALIASES.get(name, name)
        if canonical not in PRESETS:
            raise UserError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[canonical], **overrides})


# What each block family sets for the switches a config leaves unset (None). 'modern' is Qwen3's
# block, so it exports to transformers exactly (weights.hf): rotary positions, RMSNorm, a SwiGLU
# MLP, QK-norm, no biases, an untied head; zero-initialised projections only change the start.
ARCHS: dict[str, dict] = {
    "gpt2": dict(positions="learned", norm="layernorm", mlp="gelu", qk_norm=False, bias=True,
                 tie_embeddings=True, zero_init_proj=False),
    "modern": dict(positions="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False,
                   tie_embeddings=False, zero_init_proj=True),
}

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
    # The modern block at GPT-2 small's shape (head size 64), for a GPU: 162M parameters, 85M of
    # them in the blocks as in GPT-2 small (SwiGLU's 8/3 width keeps the MLP's size), the rest the
    # untied embedding and LM head.
    "modern-124m": dict(arch="modern", context_length=1024, emb_dim=768, n_heads=12, n_layers=12),
}
# Other names users know the GPT-2 sizes by (the reference recipes call gpt2-medium "345M").
PRESET_ALIASES = {
    "gpt2-small": "gpt2-124m",
    "gpt2-345m": "gpt2-medium",
    "gpt2-355m": "gpt2-medium",
    "gpt2-774m": "gpt2-large",
    "gpt2-1558m": "gpt2-xl",
}

DTYPES = ("float32", "bfloat16", "float16")  # compute precisions, for train, generate and bench
Dtype = Literal["float32", "bfloat16", "float16"]
