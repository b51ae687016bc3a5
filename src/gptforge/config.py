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
    tie_embeddings: bool = True
    """Share one matrix between the token embedding and the LM head (GPT-2 does; saves vocab*emb_dim)."""
    embedding_std: float = 0.02
    """Init std of the token and position embeddings (0.02 as GPT-2; 1.0 as PyTorch's nn.Embedding)."""

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
        if not self.embedding_std > 0:
            raise UserError(f"embedding_std must be positive, got {self.embedding_std}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

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


# Model-shape fields a training config may override on top of its preset.
MODEL_OVERRIDES = ("context_length", "emb_dim", "n_heads", "n_layers", "dropout", "qkv_bias",
                   "tie_embeddings", "embedding_std")


# TrainConfig's string fields with a fixed set of values: checked in TrainConfig, offered as
# `choices` by the CLI.
TRAIN_CHOICES = {"lr_schedule": ("constant", "cosine"), "sampling": ("windows", "random"),
                 "dtype": ("float32", "bfloat16", "float16"), "distributed": ("ddp", "fsdp")}


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI flags, config files and run folders map onto it."""

    data: str = "builtin:shakespeare"
    """Prepared corpus folder, or text to split 90/10 by characters (file, folder, glob, builtin:NAME)."""
    val_data: str | None = None
    """Separate validation text or prepared corpus (default: the val split of --data)."""
    out: str | None = None
    """Run folder for checkpoints, metrics.jsonl and loss.png (default: runs/<timestamp>)."""
    preset: str = "gpt2-mini"
    """Model preset the shape overrides below apply to."""
    context_length: int | None = None
    """Tokens per training window and the model's context (default: the preset's)."""
    emb_dim: int | None = None
    """Override the preset's embedding width."""
    n_heads: int | None = None
    """Override the preset's number of attention heads."""
    n_layers: int | None = None
    """Override the preset's number of transformer blocks."""
    dropout: float | None = None
    """Dropout probability while training (default: the preset's, 0)."""
    qkv_bias: bool | None = None
    """Give the query/key/value projection a bias (default: the preset's)."""
    tie_embeddings: bool | None = None
    """Share the token embedding with the LM head (default: the preset's, tied as in GPT-2)."""
    embedding_std: float | None = None
    """Init std of the embeddings (default 0.02; the reference recipes' untied model uses 1.0)."""
    init_from: str | None = None
    """Start from these weights (checkpoint, run folder or Hugging Face GPT-2 folder), new optimizer."""
    batch_size: int = 8
    """Windows per micro-batch (per process); an optimizer step sees batch_size * grad_accum."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed before each optimizer step (same result as one bigger batch)."""
    stride: int | None = None
    """Distance between the starts of consecutive training windows (default: context length)."""
    shuffle: bool = True
    """Shuffle the training windows each epoch (reproducibly, from the seed and the epoch)."""
    sampling: str = "windows"
    """'windows' (stride windows, each once per epoch) or 'random' (random offsets, for big corpora)."""
    epochs: int = 1
    """Passes over the training windows."""
    max_steps: int | None = None
    """Stop after this many optimizer steps in total, even mid-epoch."""
    lr: float = 4e-4
    """Peak AdamW learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to weight matrices and embeddings only (not biases or norms)."""
    lr_schedule: str = "constant"
    """'constant' or 'cosine' (decay from lr to min_lr over the run, after the warmup)."""
    warmup_steps: int = 0
    """Steps of linear learning-rate warmup from 0."""
    min_lr: float = 0.0
    """Final learning rate of the cosine schedule."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    eval_every: int = 50
    """Evaluate train and val loss every this many steps (0: only at the end)."""
    eval_batches: int = 5
    """Batches (of batch_size * grad_accum windows) of each split per evaluation."""
    save_every: int = 500
    """Write a checkpoint every this many steps (0: only at the end)."""
    keep_last: int = 0
    """Keep only the newest K checkpoints (0: keep all); the newest complete one is never deleted."""
    skip_nonfinite: bool = False
    """Skip (and count) an update whose loss or gradient is NaN/inf instead of stopping the run."""
    sample_every: int = 0
    """Print a sample every this many steps (0: only after each epoch)."""
    sample_prompt: str = "Every effort moves you"
    """Prompt for the printed samples."""
    sample_tokens: int = 50
    """Tokens per printed sample."""
    sample_temperature: float = 0.0
    """Temperature of the printed samples (0: greedy, as in the reference recipes)."""
    sample_top_k: int = 50
    """Top-k of the printed samples when the temperature is above 0."""
    val_fraction: float = 0.1
    """Share of the characters held out for validation when --data is text."""
    seed: int = 123
    """Seed for the model's initialisation, dropout, data order and samples."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps."""
    dtype: str = "float32"
    """Compute precision: float32, bfloat16 (autocast) or float16 (autocast with a gradient scaler)."""
    compile: bool = False
    """Compile the model with torch.compile (slow start, faster steps on GPUs)."""
    distributed: str = "ddp"
    """Under torchrun: 'ddp' (replicated weights) or 'fsdp' (FSDP2, sharded weights and optimizer)."""

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "epochs", "eval_batches", "sample_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        non_negative = ("eval_every", "save_every", "keep_last", "sample_every", "warmup_steps", "seed",
                        "weight_decay", "grad_clip", "min_lr", "sample_top_k")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise UserError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("max_steps", "stride", "context_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        for name, choices in TRAIN_CHOICES.items():
            if getattr(self, name) not in choices:
                raise UserError(f"{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                                f"got {getattr(self, name)!r}")
        if self.distributed == "fsdp" and self.dtype == "float16":
            # Each rank's gradient scaler would see only its own shard of the gradients, so ranks
            # could skip different steps and their weights drift apart.
            raise UserError("dtype float16 does not work with distributed fsdp (each rank's loss "
                            "scaler sees only its shard); use bfloat16")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val-fraction must be in [0, 1), got {self.val_fraction}")
        if not self.sample_temperature >= 0:
            raise UserError(f"sample-temperature must be >= 0, got {self.sample_temperature}")

    def model_config(self) -> GPTConfig:
        overrides = {k: getattr(self, k) for k in MODEL_OVERRIDES if getattr(self, k) is not None}
        return GPTConfig.from_preset(self.preset, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _from_dict(cls, data, "training config key(s)")


def _from_dict(cls, data: dict, what: str):
    """cls(**data), naming the keys cls has no field for instead of a TypeError."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"unknown {what}: {', '.join(unknown)}")
    return cls(**data)


def field_docs(cls) -> dict[str, str]:
    """The one-line docstring under each dataclass field, for --help and the docs."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
            docs[node.target.id] = following.value.value.strip()
    return docs


def load_config_file(path: str) -> dict:
    """Read a TOML training config: flat keys named like TrainConfig's fields.

    A bare name (e.g. `the-verdict`) means one of the configs shipped in gptforge/configs/.
    """
    import sys
    from importlib import resources
    from pathlib import Path

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    file = Path(path)
    if not file.exists() and "/" not in path and not path.endswith(".toml"):
        bundled = resources.files("gptforge") / "configs" / f"{path}.toml"
        if bundled.is_file():
            return tomllib.loads(bundled.read_text())
        names = sorted(p.name.removesuffix(".toml") for p in (resources.files("gptforge") / "configs").iterdir()
                       if p.name.endswith(".toml"))
        raise UserError(f"config {path!r} not found; bundled configs: {', '.join(names)}")
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    return data
