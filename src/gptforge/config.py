"""Typed configuration: the model's shape (GPTConfig, with named presets) and a training run's
settings (TrainConfig). Each field carries its rules: a one-line docstring (the --help text), a
`Literal` type for a fixed set of choices, and metadata (see `rule`) for bounds, for what a
resumed run may change and for which fields override the model preset. The CLI is generated
from these classes, so adding a field here is the whole job of adding a flag.
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
         resumable: bool = False, model: bool = False, shape: bool = False):
    """A dataclass field with its rules in the metadata:
    minimum / below / strict: value >= minimum (> with strict) and < below, checked on creation;
    resumable: a resumed run may change it;
    model: it overrides the model preset's field of the same name (TrainConfig.model_config);
    shape: it is fixed by a model's weights, so --init-from must not contradict it."""
    meta = {"minimum": minimum, "below": below, "strict": strict, "resumable": resumable,
            "model": model or shape, "shape": shape}
    return field(default=default, metadata=meta)


def _check_fields(config, flags: bool) -> None:
    """Apply every field's bounds and Literal choices (see `rule`); errors name the field as its
    command-line flag when `flags` (--batch-size), else as the field (n_layers)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), base_type(hints[f.name])
        name = f.name.replace("_", "-") if flags else f.name
        if typing.get_origin(kind) is Literal and value not in typing.get_args(kind):
            raise UserError(f"{name} must be one of {', '.join(typing.get_args(kind))}, got {value!r}")
        low = f.metadata.get("minimum")
        if low is None or value is None:
            continue
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
    """Shape of a GPT-2-family model."""

    vocab_size: int = rule(GPT2_VOCAB_SIZE, minimum=1)
    """Number of token ids the model reads and predicts (50257 for the GPT-2 tokenizer)."""
    context_length: int = rule(1024, minimum=1)
    """Longest sequence the model accepts; also the number of learned position embeddings."""
    emb_dim: int = rule(768, minimum=1)
    """Width of the residual stream (d_model)."""
    n_heads: int = rule(12, minimum=1)
    """Attention heads per layer; must divide emb_dim."""
    n_layers: int = rule(12, minimum=1)
    """Number of transformer blocks."""
    dropout: float = rule(0.0, minimum=0.0, below=1.0)
    """Dropout probability on embeddings, attention weights and residual branches (training only)."""
    qkv_bias: bool = False
    """Whether the query/key/value projection has a bias (True in OpenAI's GPT-2 weights)."""
    tie_embeddings: bool = True
    """Share one matrix between the token embedding and the LM head (GPT-2 does; saves vocab*emb_dim)."""
    embedding_std: float = rule(0.02, minimum=0.0, strict=True)
    """Init std of the token and position embeddings (0.02 as GPT-2; 1.0 as PyTorch's nn.Embedding)."""

    def __post_init__(self) -> None:
        _check_fields(self, flags=False)
        if self.emb_dim % self.n_heads != 0:
            raise UserError(f"n_heads ({self.n_heads}) must divide emb_dim ({self.emb_dim}) evenly")

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

DTYPES = ("float32", "bfloat16", "float16")  # compute precisions, for train, generate and bench
Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI flags, config files and run folders map onto it."""

    cli_hidden: typing.ClassVar[tuple[str, ...]] = ()  # fields that get no command-line flag
    command: typing.ClassVar[str] = "train"  # the command that runs (and resumes) it

    data: str = "builtin:shakespeare"
    """Prepared corpus folder, or text to split 90/10 by characters (file, folder, glob, builtin:NAME)."""
    val_data: str | None = None
    """Separate validation text or prepared corpus (default: the val split of --data)."""
    tokenizer: str | None = None
    """gpt2 or a folder from `gptforge tokenizer train`, for text --data (default: a corpus's own, else gpt2)."""
    out: str | None = None
    """Run folder for checkpoints, metrics.jsonl and loss.png (default: runs/<timestamp>)."""
    preset: str = "gpt2-mini"
    """Model preset the shape overrides below apply to."""
    context_length: int | None = rule(None, minimum=1, model=True)
    """Tokens per training window and the model's context (default: the preset's)."""
    emb_dim: int | None = rule(None, minimum=1, shape=True)
    """Override the preset's embedding width."""
    n_heads: int | None = rule(None, minimum=1, shape=True)
    """Override the preset's number of attention heads."""
    n_layers: int | None = rule(None, minimum=1, shape=True)
    """Override the preset's number of transformer blocks."""
    dropout: float | None = rule(None, minimum=0.0, below=1.0, model=True)
    """Dropout probability while training (default: the preset's, 0)."""
    qkv_bias: bool | None = rule(None, shape=True)
    """Give the query/key/value projection a bias (default: the preset's)."""
    tie_embeddings: bool | None = rule(None, shape=True)
    """Share the token embedding with the LM head (default: the preset's, tied as in GPT-2)."""
    embedding_std: float | None = rule(None, minimum=0.0, strict=True, model=True)
    """Init std of the embeddings (default 0.02; the reference recipes' untied model uses 1.0)."""
    init_from: str | None = None
    """Start from these weights (checkpoint, run folder, Hugging Face GPT-2 folder or hub id), new optimizer."""
    batch_size: int = rule(8, minimum=1)
    """Windows per micro-batch (per process); an optimizer step sees batch_size * grad_accum."""
    grad_accum: int = rule(1, minimum=1)
    """Micro-batches whose gradients are summed before each optimizer step (same result as one bigger batch)."""
    stride: int | None = rule(None, minimum=1)
    """Distance between the starts of consecutive training windows (default: context length)."""
    shuffle: bool = True
    """Shuffle the training windows each epoch (reproducibly, from the seed and the epoch)."""
    sampling: Literal["windows", "random"] = "windows"
    """'windows' (stride windows, each once per epoch) or 'random' (random offsets, for big corpora)."""
    epochs: int = rule(1, minimum=1, resumable=True)
    """Passes over the training windows."""
    max_steps: int | None = rule(None, minimum=1, resumable=True)
    """Stop after this many optimizer steps in total, even mid-epoch."""
    lr: float = rule(4e-4, minimum=0.0, strict=True)
    """Peak AdamW learning rate."""
    weight_decay: float = rule(0.1, minimum=0.0)
    """AdamW weight decay, applied to weight matrices and embeddings only (not biases or norms)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """'constant' or 'cosine' (decay from lr to min_lr over the run, after the warmup)."""
    warmup_steps: int = rule(0, minimum=0)
    """Steps of linear learning-rate warmup from 0."""
    min_lr: float = rule(0.0, minimum=0.0)
    """Final learning rate of the cosine schedule."""
    grad_clip: float = rule(1.0, minimum=0.0)
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    eval_every: int = rule(50, minimum=0, resumable=True)
    """Evaluate train and val loss every this many steps (0: only at the end)."""
    eval_batches: int = rule(5, minimum=1, resumable=True)
    """Batches (of batch_size * grad_accum windows) of each split per evaluation."""
    save_every: int = rule(500, minimum=0, resumable=True)
    """Write a checkpoint every this many steps (0: only at the end)."""
    keep_last: int = rule(0, minimum=0, resumable=True)
    """Keep only the newest K checkpoints (0: keep all); the newest complete one is never deleted."""
    skip_nonfinite: bool = rule(False, resumable=True)
    """Skip (and count) an update whose loss or gradient is NaN/inf instead of stopping the run."""
    sample_every: int = rule(0, minimum=0, resumable=True)
    """Print a sample every this many steps (0: only after each epoch)."""
    sample_prompt: str = rule("Every effort moves you", resumable=True)
    """Prompt for the printed samples."""
    sample_tokens: int = rule(50, minimum=1, resumable=True)
    """Tokens per printed sample."""
    sample_temperature: float = rule(0.0, minimum=0.0, resumable=True)
    """Temperature of the printed samples (0: greedy, as in the reference recipes)."""
    sample_top_k: int = rule(50, minimum=0, resumable=True)
    """Top-k of the printed samples when the temperature is above 0."""
    val_fraction: float = rule(0.1, minimum=0.0, below=1.0)
    """Share of the characters held out for validation when --data is text."""
    verify_data: bool = rule(False, resumable=True)
    """Check the sha256 of every corpus shard before training (sizes are always checked)."""
    seed: int = rule(123, minimum=0)
    """Seed for the model's initialisation, dropout, data order and samples."""
    device: str = rule("auto", resumable=True)
    """auto, cpu, cuda, cuda:N or mps."""
    dtype: Dtype = rule("float32", resumable=True)
    """Compute precision: float32, bfloat16 (autocast) or float16 (autocast with a gradient scaler)."""
    compile: bool = rule(False, resumable=True)
    """Compile the model with torch.compile (slow start, faster steps on GPUs)."""
    distributed: Literal["ddp", "fsdp"] = rule("ddp", resumable=True)
    """Under torchrun: 'ddp' (replicated weights) or 'fsdp' (FSDP2, sharded weights and optimizer)."""

    def __post_init__(self) -> None:
        _check_fields(self, flags=True)
        if self.distributed == "fsdp" and self.dtype == "float16":
            # Each rank's gradient scaler would see only its own shard of the gradients, so ranks
            # could skip different steps and their weights drift apart.
            raise UserError("dtype float16 does not work with distributed fsdp (each rank's loss "
                            "scaler sees only its shard); use bfloat16")

    def model_config(self) -> GPTConfig:
        """The preset with this config's model overrides applied."""
        overrides = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if f.metadata.get("model") and getattr(self, f.name) is not None}
        return GPTConfig.from_preset(self.preset, **overrides)

    @classmethod
    def fields_where(cls, key: str) -> list[str]:
        """Names of the fields whose metadata sets `key` (resumable, model, shape)."""
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get(key)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return _from_dict(cls, data, "training config key(s)")


LORA_TARGETS = ("qkv", "attn_out", "mlp_in", "mlp_out")  # the projections of a block LoRA can adapt


def lora_targets(spec: str | list | tuple) -> tuple[str, ...]:
    """'qkv,mlp_in' (or a list of names) -> ('qkv', 'mlp_in'), in LORA_TARGETS's order."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in LORA_TARGETS]
    if unknown or not names:
        raise UserError(f"unknown LoRA target(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose among {', '.join(LORA_TARGETS)}")
    return tuple(n for n in LORA_TARGETS if n in names)


@dataclass
class FinetuneConfig(TrainConfig):
    """A fine-tuning run: TrainConfig's loop settings with the defaults of the "LLMs from scratch"
    chapter-7 recipe (lr 5e-5, 2 epochs, no dropout), and the data, template and LoRA settings."""

    # Pretraining settings a fine-tuning run does not use: no flags, and refused in a config file.
    cli_hidden: typing.ClassVar[tuple[str, ...]] = (
        "preset", "emb_dim", "n_heads", "n_layers", "qkv_bias", "tie_embeddings", "embedding_std",
        "stride", "sampling", "sample_prompt", "verify_data")
    command: typing.ClassVar[str] = "finetune"

    data: str | None = None
    """Instruction or chat records: .json list or .jsonl file, folder of train.* and val.*, builtin:NAME, hf:NAME."""
    val_data: str | None = None
    """Separate validation records (default: DATA's val.* file, else --val-fraction of DATA)."""
    val_fraction: float = rule(0.1, minimum=0.0, below=1.0)
    """Share of the examples held out for validation (drawn by --seed) when DATA is one file."""
    max_examples: int | None = rule(None, minimum=1)
    """Read at most this many records of each file or dataset."""
    dropout: float | None = rule(0.0, minimum=0.0, below=1.0, model=True)
    """Dropout probability while training (None: the --init-from model's)."""
    lr: float = rule(5e-5, minimum=0.0, strict=True)
    """Peak AdamW learning rate."""
    epochs: int = rule(2, minimum=1, resumable=True)
    """Passes over the training examples."""
    batch_size: int = rule(8, minimum=1)
    """Examples per micro-batch (per process), padded to the longest of them."""
    eval_every: int = rule(20, minimum=0, resumable=True)
    """Evaluate the masked train and val loss every this many steps (0: only at the start and end)."""
    eval_batches: int = rule(10, minimum=1, resumable=True)
    """Batches (of batch_size * grad_accum examples) of each split per evaluation."""
    sample_tokens: int = rule(100, minimum=1, resumable=True)
    """Most tokens of each printed sample answer."""
    template: Literal["chatml", "alpaca"] = "chatml"
    """'chatml': turns between the special tokens <|im_start|>/<|im_end|> (added); 'alpaca': chapter 7's text."""
    train_on_prompt: bool = False
    """Train on every token, the prompt's too (default: only on the assistant's answers and their end token)."""
    lora_rank: int | None = rule(None, minimum=1)
    """Train LoRA adapters of this rank on a frozen model (default: full fine-tuning)."""
    lora_alpha: float = rule(16.0, minimum=0.0, strict=True)
    """LoRA scale: the update is multiplied by alpha / rank."""
    lora_dropout: float = rule(0.05, minimum=0.0, below=1.0)
    """Dropout on the input of the LoRA update."""
    lora_targets: str = "qkv,attn_out,mlp_in,mlp_out"
    """Projections that get adapters, comma-separated: qkv, attn_out (attention), mlp_in, mlp_out."""
    response_tokens: int = rule(200, minimum=0, resumable=True)
    """Most tokens of each answer in responses.jsonl, written after training (0: do not write it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        defaults = TrainConfig()
        for name in self.cli_hidden:
            if getattr(self, name) != getattr(defaults, name):
                raise UserError(f"{name} is a pretraining setting; a fine-tuning run takes its model "
                                "from --init-from and its data from --data")
        self.lora_targets = ",".join(lora_targets(self.lora_targets))

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneConfig":
        return _from_dict(cls, data, "fine-tuning config key(s)")


def field_docs(cls) -> dict[str, str]:
    """The one-line docstring under each dataclass field, for --help and the docs."""
    import ast
    import inspect
    import textwrap

    docs = {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's fields document themselves too
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
                docs[node.target.id] = following.value.value.strip()
    return docs


def load_config_file(path: str, cls=TrainConfig) -> dict:
    """Read a TOML config: flat keys named like `cls`'s fields.

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
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    return data
