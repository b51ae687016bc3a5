"""Typed configuration: the model's shape (GPTConfig, with named presets) and a training run's
settings (TrainConfig). Each field carries its rules: a one-line docstring (the --help text), a
`Literal` type for a fixed set of choices, and metadata (see `rule`) for bounds, for what a
resumed run may change and for which fields override the model preset. The CLI is generated
from these classes, so adding a field here is the whole job of adding a flag.
"""

from __future__ import annotations

import dataclasses
import math
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
        if value is None and kind is not hints[f.name]:  # an optional field left unset
            continue
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
    """Shape of a GPT-2-family model, and which block it uses (GPT-2's, or a modern one)."""

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
    arch: Literal["gpt2", "modern"] = "gpt2"
    """Block family giving the defaults of the switches below: 'gpt2' (exactly GPT-2) or 'modern' (Qwen3's block)."""
    positions: Literal["learned", "rope"] | None = None
    """Position information: 'learned' embeddings added to the input (GPT-2) or 'rope' (rotary, in attention)."""
    rope_theta: float = rule(10000.0, minimum=0.0, strict=True)
    """Base of the rotary embedding's frequencies (10000 as in RoFormer and Llama)."""
    norm: Literal["layernorm", "rmsnorm"] | None = None
    """Normalisation before each sub-block and at the end: 'layernorm' (GPT-2) or 'rmsnorm' (no mean, no bias)."""
    norm_eps: float = rule(1e-5, minimum=0.0, strict=True)
    """Epsilon added to the variance inside every norm."""
    mlp: Literal["gelu", "swiglu", "relu2"] | None = None
    """MLP kind: 'gelu' (GPT-2), 'swiglu' (gated SiLU, Llama/Qwen) or 'relu2' (squared ReLU, modded-nanogpt)."""
    mlp_hidden: int | None = rule(None, minimum=1)
    """MLP hidden width (default 4 * emb_dim; for swiglu 8/3 * emb_dim rounded up to a multiple of 64)."""
    qk_norm: bool | None = None
    """RMS-normalise each head's queries and keys before attention (Qwen3, modded-nanogpt)."""
    bias: bool | None = None
    """Biases in the attention output, the MLP and the LayerNorms (GPT-2 has them; qkv_bias is separate)."""
    tie_embeddings: bool | None = None
    """Share one matrix between the token embedding and the LM head (GPT-2 does; saves vocab*emb_dim)."""
    zero_init_proj: bool | None = None
    """Start the attention and MLP output projections at zero, so every block starts as the identity."""
    logit_softcap: float = rule(0.0, minimum=0.0)
    """Squash the logits smoothly into (-c, c) with c * tanh(logits / c) (Gemma 2, modded-nanogpt); 0: off."""
    embedding_std: float = rule(0.02, minimum=0.0, strict=True)
    """Init std of the token and position embeddings (0.02 as GPT-2; 1.0 as PyTorch's nn.Embedding)."""

    def __post_init__(self) -> None:
        _check_fields(self, flags=False)
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
LogTarget = Literal["tensorboard", "wandb", "csv"]  # where --log sends a run's curves


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
    """For text --data: gpt2, a folder from `gptforge tokenizer train`, or bpe:N to train an N-id BPE on
    the train split first (default: a prepared corpus's own tokenizer, else gpt2)."""
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
    arch: Literal["gpt2", "modern"] | None = rule(None, shape=True)
    """Block family: 'gpt2', or 'modern' (rotary, RMSNorm, SwiGLU, QK-norm, no biases, untied, zero-init)."""
    positions: Literal["learned", "rope"] | None = rule(None, shape=True)
    """Override the arch's positions: 'learned' embeddings or 'rope' (rotary)."""
    rope_theta: float | None = rule(None, minimum=0.0, strict=True, model=True)
    """Base of the rotary frequencies (default 10000)."""
    norm: Literal["layernorm", "rmsnorm"] | None = rule(None, shape=True)
    """Override the arch's normalisation: 'layernorm' or 'rmsnorm'."""
    norm_eps: float | None = rule(None, minimum=0.0, strict=True, model=True)
    """Epsilon of every norm (default 1e-5)."""
    mlp: Literal["gelu", "swiglu", "relu2"] | None = rule(None, shape=True)
    """Override the arch's MLP: 'gelu', 'swiglu' (gated) or 'relu2' (squared ReLU)."""
    mlp_hidden: int | None = rule(None, minimum=1, shape=True)
    """MLP hidden width (default 4 * emb_dim, or 8/3 * emb_dim for swiglu)."""
    qk_norm: bool | None = rule(None, shape=True)
    """RMS-normalise each head's queries and keys (default: the arch's; on for modern)."""
    bias: bool | None = rule(None, shape=True)
    """Biases in the attention output, MLP and LayerNorms (default: the arch's; on for gpt2)."""
    zero_init_proj: bool | None = rule(None, model=True)
    """Start the blocks' output projections at zero (default: the arch's; on for modern)."""
    logit_softcap: float | None = rule(None, minimum=0.0, model=True)
    """Cap the logits smoothly at +-c with c * tanh(logits / c) (default 0: off)."""
    init_from: str | None = None
    """Start from these weights (checkpoint, run folder, Hugging Face folder or hub id), new optimizer."""
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
    max_time: str | None = rule(None, resumable=True)
    """Wall-clock budget of the whole job (90s, 10m, 2h; evaluations and saves included): stop in time."""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """'adamw', or 'muon': Muon for the blocks' weight matrices, AdamW for embeddings, head, gains, biases."""
    lr: float = rule(4e-4, minimum=0.0, strict=True)
    """Peak AdamW learning rate."""
    muon_lr: float | None = rule(None, minimum=0.0, strict=True)
    """Peak Muon learning rate, its update scaled to AdamW's size (Moonshot's rule; default: --lr)."""
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
    log: tuple[LogTarget, ...] = rule((), resumable=True)
    """Also log the curves, samples and config to tensorboard, wandb or csv (repeatable; rank 0 only)."""
    wandb_project: str = rule("gptforge", resumable=True)
    """W&B project of --log wandb (WANDB_MODE=offline keeps the run on disk)."""

    def __post_init__(self) -> None:
        # A config file or JSON gives a list (or one name); keep a tuple, each target once.
        self.log = tuple(dict.fromkeys([self.log] if isinstance(self.log, str) else self.log))
        _check_fields(self, flags=True)
        if self.max_time is not None:
            parse_duration(self.max_time, "max-time")  # a bad value fails here, before any work
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
    # The model's shape and make-up come from --init-from (initial_model refuses a shape that differs).
    cli_hidden: typing.ClassVar[tuple[str, ...]] = (
        "preset", *TrainConfig.fields_where("shape"), "embedding_std", "rope_theta", "norm_eps", "zero_init_proj",
        "logit_softcap", "tokenizer", "stride", "sampling", "sample_prompt", "verify_data")
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


def parse_duration(text, name: str = "duration") -> float:
    """Seconds in a duration such as '90s', '10m', '2h', '1.5h' or a bare number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    raw = str(text).strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in units else (raw, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise UserError(f"{name} must be a positive duration such as 90s, 10m or 2h, got {text!r}")
    return seconds


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
