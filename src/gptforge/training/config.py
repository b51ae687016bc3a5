"""A training run's settings, in named groups: what it reads (data), how it optimizes (optim),
what it evaluates and samples (eval), where it saves (checkpoints), where it logs (logging) and
what it runs on (compute). The model's shape is one GPTConfig: a preset, or --init-from's
weights, with the fields of `model` replaced. Pretraining (TrainConfig) and fine-tuning
(FinetuneConfig) compose the groups they need.

Outside Python the settings are flat: every field of every group has a name of its own, which is
its command-line flag (--batch-size), its key in a TOML file (batch_size = 8, or inside an
[optim] table) and in a checkpoint's config.json. `from_dict` and `to_dict` convert.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..config import Dtype, GPTConfig, check_fields, check_value, rule
from ..errors import UserError
from ..field_docs import field_docs
from ..model.lora import lora_targets
from ..sampling import Sampling
from .budget import parse_duration

LogTarget = Literal["tensorboard", "wandb", "csv"]  # where --log sends a run's curves


class Group:
    """A group of settings: its fields are checked (bounds, choices) on creation."""

    def __post_init__(self) -> None:
        check_fields(self, flags=True)


@dataclass
class CorpusArgs(Group):
    """Pretraining's data: a token stream cut into windows."""

    data: str = "builtin:shakespeare"
    """Prepared corpus folder, or text to split 90/10 by characters (file, folder, glob, builtin:NAME)."""
    val_data: str | None = None
    """Separate validation text or prepared corpus (default: the val split of --data)."""
    val_fraction: float = rule(0.1, minimum=0.0, below=1.0)
    """Share of the characters held out for validation when --data is text."""
    tokenizer: str | None = None
    """For text --data: gpt2, a folder from `gptforge tokenizer train`, or bpe:N to train an N-id BPE on
    the train split first (default: a prepared corpus's own tokenizer, else gpt2)."""
    stride: int | None = rule(None, minimum=1)
    """Distance between the starts of consecutive training windows (default: context length)."""
    shuffle: bool = True
    """Shuffle the training windows each epoch (reproducibly, from the seed and the epoch)."""
    sampling: Literal["windows", "random"] = "windows"
    """'windows' (stride windows, each once per epoch) or 'random' (random offsets, for big corpora)."""
    verify_data: bool = rule(False, resumable=True)
    """Check the sha256 of every corpus shard before training (sizes are always checked)."""


@dataclass
class RecordsArgs(Group):
    """Fine-tuning's data: instruction or chat records, batched whole."""

    data: str | None = None
    """Instruction or chat records: .json list or .jsonl file, folder of train.* and val.*, builtin:NAME, hf:NAME."""
    val_data: str | None = None
    """Separate validation records (default: DATA's val.* file, else --val-fraction of DATA)."""
    val_fraction: float = rule(0.1, minimum=0.0, below=1.0)
    """Share of the examples held out for validation (drawn by --seed) when DATA is one file."""
    max_examples: int | None = rule(None, minimum=1)
    """Read at most this many records of each file or dataset."""
    shuffle: bool = True
    """Shuffle the training examples each epoch (reproducibly, from the seed and the epoch)."""


@dataclass
class OptimArgs(Group):
    """Optimization and schedule: batches, optimizer, learning rate, run length."""

    batch_size: int = rule(8, minimum=1)
    """Windows (fine-tuning: examples, padded to the longest) per micro-batch, per process."""
    grad_accum: int = rule(1, minimum=1)
    """Micro-batches whose gradients are summed before each optimizer step (same result as one bigger batch)."""
    epochs: int = rule(1, minimum=1, resumable=True)
    """Passes over the training data."""
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
    skip_nonfinite: bool = rule(False, resumable=True)
    """Skip (and count) an update whose loss or gradient is NaN/inf instead of stopping the run."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_time is not None:
            parse_duration(self.max_time, "max-time")  # a bad value fails here, before any work


@dataclass
class EvalArgs(Group):
    """Evaluation and sampling: the periodic train/val losses and printed samples."""

    eval_every: int = rule(50, minimum=0, resumable=True)
    """Evaluate train and val loss every this many steps (0: only at the end)."""
    eval_batches: int = rule(5, minimum=1, resumable=True)
    """Batches (of batch_size * grad_accum windows or examples) of each split per evaluation."""
    sample_every: int = rule(0, minimum=0, resumable=True)
    """Print a sample every this many steps (0: only after each epoch)."""
    sample_tokens: int = rule(50, minimum=1, resumable=True)
    """Tokens per printed sample (fine-tuning: most tokens of each sample answer)."""
    sample_temperature: float = rule(0.0, minimum=0.0, resumable=True)
    """Temperature of the printed samples (0: greedy, as in the reference recipes)."""
    sample_top_k: int = rule(50, minimum=0, resumable=True)
    """Top-k of the printed samples when the temperature is above 0."""

    def sampling(self, seed: int | None) -> Sampling:
        """How the printed samples are drawn (`seed`: the run's, so they repeat on a rerun)."""
        return Sampling(self.sample_tokens, self.sample_temperature, self.sample_top_k or None, seed=seed)


@dataclass
class TextEvalArgs(EvalArgs):
    """Pretraining's evaluation and sampling: samples continue a prompt."""

    sample_prompt: str = rule("Every effort moves you", resumable=True)
    """Prompt for the printed samples."""


@dataclass
class CheckpointArgs(Group):
    """Checkpoints and resume: the run folder and how often it gets a checkpoint."""

    out: str | None = None
    """Run folder for checkpoints, metrics.jsonl and loss.png (default: runs/<timestamp>)."""
    save_every: int = rule(500, minimum=0, resumable=True)
    """Write a checkpoint every this many steps (0: only at the end)."""
    keep_last: int = rule(0, minimum=0, resumable=True)
    """Keep only the newest K checkpoints (0: keep all); the newest complete one is never deleted."""


@dataclass
class LogArgs(Group):
    """Logging beyond metrics.jsonl and the progress bar."""

    log: tuple[LogTarget, ...] = rule((), resumable=True)
    """Also log the curves, samples and config to tensorboard, wandb or csv (repeatable; rank 0 only)."""
    wandb_project: str = rule("gptforge", resumable=True)
    """W&B project of --log wandb (WANDB_MODE=offline keeps the run on disk)."""

    def __post_init__(self) -> None:
        # A config file or JSON gives a list (or one name); keep a tuple, each target once.
        self.log = tuple(dict.fromkeys([self.log] if isinstance(self.log, str) else self.log))
        super().__post_init__()


@dataclass
class ComputeArgs(Group):
    """Where and how the run computes: device, precision, compilation, distributed strategy."""

    device: str = rule("auto", resumable=True)
    """auto, cpu, cuda, cuda:N or mps."""
    dtype: Dtype = rule("float32", resumable=True)
    """Compute precision: float32, bfloat16 (autocast) or float16 (autocast with a gradient scaler)."""
    compile: bool = rule(False, resumable=True)
    """Compile the model with torch.compile (slow start, faster steps on GPUs)."""
    distributed: Literal["ddp", "fsdp"] = rule("ddp", resumable=True)
    """Under torchrun: 'ddp' (replicated weights) or 'fsdp' (FSDP2, sharded weights and optimizer)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distributed == "fsdp" and self.dtype == "float16":
            # Each rank's gradient scaler would see only its own shard of the gradients, so ranks
            # could skip different steps and their weights drift apart.
            raise UserError("dtype float16 does not work with distributed fsdp (each rank's loss "
                            "scaler sees only its shard); use bfloat16")


@dataclass
class FinetuneArgs(Group):
    """What only fine-tuning has: the chat template, the loss mask, the responses file."""

    template: Literal["chatml", "alpaca"] = "chatml"
    """'chatml': turns between the special tokens <|im_start|>/<|im_end|> (added); 'alpaca': chapter 7's text."""
    train_on_prompt: bool = False
    """Train on every token, the prompt's too (default: only on the assistant's answers and their end token)."""
    response_tokens: int = rule(200, minimum=0, resumable=True)
    """Most tokens of each answer in responses.jsonl, written after training (0: do not write it)."""


@dataclass
class LoraArgs(Group):
    """LoRA adapters on a frozen model (model/lora.py); none without --lora-rank."""

    lora_rank: int | None = rule(None, minimum=1)
    """Train LoRA adapters of this rank on a frozen model (default: full fine-tuning)."""
    lora_alpha: float = rule(16.0, minimum=0.0, strict=True)
    """LoRA scale: the update is multiplied by alpha / rank."""
    lora_dropout: float = rule(0.05, minimum=0.0, below=1.0)
    """Dropout on the input of the LoRA update."""
    lora_targets: str = "qkv,attn_out,mlp_in,mlp_out"
    """Projections that get adapters, comma-separated: qkv, attn_out (attention), mlp_in, mlp_out."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lora_targets = ",".join(lora_targets(self.lora_targets))


@dataclass
class PreferenceArgs(Group):
    """Preference tuning (DPO, training/preference.py); none unless --method dpo."""

    method: Literal["sft", "dpo"] = "sft"
    """'sft': learn the answers of instruction or chat records; 'dpo': learn to prefer each record's "chosen"
    answer to its "rejected" one (Rafailov et al. 2023), against the frozen starting model."""
    beta: float = rule(0.1, minimum=0.0, strict=True)
    """DPO's beta: how far the model may move from the starting model (larger: less far)."""
    reference: Literal["cached", "per-batch"] = "cached"
    """DPO's reference log-probabilities: 'cached' (computed once for every record before training) or
    'per-batch' (computed with each batch: a frozen copy of the model, or with LoRA the adapter turned off)."""


@dataclass
class ClassifyArgs(Group):
    """Classification fine-tuning (--task classify, training/classify.py): a head in place of the LM head."""

    task: Literal["chat", "classify"] = "chat"
    """'chat': instruction or chat records, the loss on the answers; 'classify': labeled texts (CSV, TSV, JSONL), a classifier."""
    text_column: str | None = None
    """--task classify: the column with the text (default: the first of text, sentence, content, review, passage, input)."""
    label_column: str | None = None
    """--task classify: the column with the label (default: the first of label, labels, class, category, target)."""
    trainable: Literal["all", "head", "last"] = "all"
    """--task classify: what trains besides the head: 'all' weights, only the 'head', or the 'last' --train-blocks blocks and the final norm."""
    train_blocks: int = rule(1, minimum=1)
    """--task classify with --trainable last: how many of the last blocks train."""
    balance: Literal["none", "sample", "weights"] = "none"
    """--task classify: for unequal classes, draw examples class-balanced ('sample') or weigh the loss by inverse class share ('weights')."""


@dataclass(frozen=True)
class Setting:
    """One flat setting: its flag, TOML key and config.json key is `name`."""

    name: str
    group: str | None  # the attribute of the group that holds it; None: the config's own; "model": a GPTConfig field
    field: dataclasses.Field
    hint: Any  # its type
    doc: str


class RunConfig:
    """What TrainConfig and FinetuneConfig share: flat settings <-> groups."""

    command: ClassVar[str]  # the command that runs (and resumes) it
    what: ClassVar[str]  # its name in messages
    model_fields: ClassVar[tuple[str, ...]]  # the GPTConfig fields `model` may set
    model: dict

    def __post_init__(self) -> None:
        for s in self.settings().values():
            if s.group is None:
                check_value(s.field, s.hint, getattr(self, s.name), flags=True)
        hints = typing.get_type_hints(GPTConfig)
        unknown = sorted(set(self.model) - set(self.model_fields))
        if unknown:
            raise UserError(f"unknown {self.what} key(s): {', '.join(unknown)}")
        for f in dataclasses.fields(GPTConfig):
            if self.model.get(f.name) is not None:
                check_value(f, hints[f.name], self.model[f.name], flags=True)
        self.model = {k: v for k, v in self.model.items() if v is not None}  # None: the model's own

    @classmethod
    @functools.cache
    def settings(cls) -> dict[str, Setting]:
        """Every flat setting of the config, by name, in the order of --help."""
        out = {}
        hints, own_docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if f.name == "model":
                model_hints, docs = typing.get_type_hints(GPTConfig), field_docs(GPTConfig)
                out.update({g.name: Setting(g.name, "model", g, model_hints[g.name], docs.get(g.name, ""))
                            for g in dataclasses.fields(GPTConfig) if g.name in cls.model_fields})
            elif dataclasses.is_dataclass(kind):
                group_hints, docs = typing.get_type_hints(kind), field_docs(kind)
                out.update({g.name: Setting(g.name, f.name, g, group_hints[g.name], docs.get(g.name, ""))
                            for g in dataclasses.fields(kind)})
            else:
                out[f.name] = Setting(f.name, None, f, kind, own_docs.get(f.name, ""))
        return out

    @classmethod
    def fields_where(cls, key: str) -> list[str]:
        """Names of the settings whose metadata sets `key` (resumable, shape)."""
        return [s.name for s in cls.settings().values() if s.field.metadata.get(key)]

    @classmethod
    def flatten(cls, data: dict, where: str = "") -> dict:
        """Flat settings from `data`: flat keys, or tables named like a group (`[optim]`, `[model]`)."""
        settings, flat, unknown = cls.settings(), {}, []
        groups = {s.group for s in settings.values()} - {None}
        for key, value in data.items():
            if key in groups and isinstance(value, dict):
                unknown += [f"{key}.{k}" for k in value if k not in settings or settings[k].group != key]
                flat.update(value)
            elif key in settings:
                flat[key] = value
            else:
                unknown.append(key)
        if unknown:
            cls.refuse(sorted(unknown), where)
        return flat

    @classmethod
    def refuse(cls, unknown: list[str], where: str) -> None:
        raise UserError(f"{where}unknown {cls.what} key(s): {', '.join(unknown)}")

    @classmethod
    def from_dict(cls, data: dict, where: str = ""):
        """The config of flat settings (or group tables, see flatten); the rest keep their defaults."""
        flat, settings = cls.flatten(data, where), cls.settings()
        defaults = cls()
        own = {k: v for k, v in flat.items() if settings[k].group is None}
        grouped: dict[str, dict] = {}
        for key, value in flat.items():
            if settings[key].group is not None:
                grouped.setdefault(settings[key].group, {})[key] = value
        model = {**defaults.model, **grouped.pop("model", {})}
        groups = {name: dataclasses.replace(getattr(defaults, name), **values) for name, values in grouped.items()}
        return cls(**own, **groups, model=model)

    @classmethod
    def of(cls, **settings):
        """The config of these flat settings: TrainConfig.of(data="notes.txt", lr=1e-3)."""
        return cls.from_dict(settings)

    def to_dict(self) -> dict:
        """Flat settings, every one of them (a model field left to the preset or model is None)."""
        out = {}
        for name, s in self.settings().items():
            if s.group == "model":
                out[name] = self.model.get(name)
            else:
                out[name] = getattr(getattr(self, s.group) if s.group else self, name)
        return out

    def get(self, name: str):
        """A flat setting's value (see to_dict)."""
        return self.to_dict()[name]

    def replace(self, **settings):
        """A copy with these flat settings changed."""
        return self.from_dict({**self.to_dict(), **settings})


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size")  # the tokenizer's


@dataclass
class TrainConfig(RunConfig):
    """A pretraining run: `gptforge train`."""

    command: ClassVar[str] = "train"
    what: ClassVar[str] = "training config"
    model_fields: ClassVar[tuple[str, ...]] = MODEL_FIELDS

    preset: str = "gpt2-mini"
    """Model preset the shape settings (--emb-dim, --n-layers, ...) apply to."""
    init_from: str | None = None
    """Start from these weights (checkpoint, run folder, Hugging Face folder or hub id), new optimizer."""
    seed: int = rule(123, minimum=0)
    """Seed for the model's initialisation, dropout, data order and samples."""
    model: dict[str, Any] = field(default_factory=dict)
    """GPTConfig fields that replace the preset's (or must match --init-from's shape)."""
    corpus: CorpusArgs = field(default_factory=CorpusArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    eval: TextEvalArgs = field(default_factory=TextEvalArgs)
    checkpoints: CheckpointArgs = field(default_factory=CheckpointArgs)
    logging: LogArgs = field(default_factory=LogArgs)
    compute: ComputeArgs = field(default_factory=ComputeArgs)

    def model_config(self) -> GPTConfig:
        """The preset with this config's model fields replaced."""
        return GPTConfig.from_preset(self.preset, **self.model)


@dataclass
class FinetuneConfig(RunConfig):
    """A fine-tuning run, `gptforge finetune`: the defaults of the "LLMs from scratch" chapter-7
    recipe (lr 5e-5, 2 epochs, no dropout). The model, its shape and tokenizer come from
    --init-from; only its context and dropout may be set."""

    command: ClassVar[str] = "finetune"
    what: ClassVar[str] = "fine-tuning config"
    model_fields: ClassVar[tuple[str, ...]] = ("context_length", "dropout")

    init_from: str | None = None
    """The model to fine-tune (checkpoint, run folder, Hugging Face folder or hub id)."""
    seed: int = rule(123, minimum=0)
    """Seed for the validation split, LoRA's initialisation, dropout and data order."""
    model: dict[str, Any] = field(default_factory=lambda: {"dropout": 0.0})
    """--context-length (crop the model's) and --dropout (None: the model's own)."""
    records: RecordsArgs = field(default_factory=RecordsArgs)
    optim: OptimArgs = field(default_factory=lambda: OptimArgs(lr=5e-5, epochs=2))
    eval: EvalArgs = field(default_factory=lambda: EvalArgs(eval_every=20, eval_batches=10, sample_tokens=100))
    checkpoints: CheckpointArgs = field(default_factory=CheckpointArgs)
    logging: LogArgs = field(default_factory=LogArgs)
    compute: ComputeArgs = field(default_factory=ComputeArgs)
    finetune: FinetuneArgs = field(default_factory=FinetuneArgs)
    lora: LoraArgs = field(default_factory=LoraArgs)
    preference: PreferenceArgs = field(default_factory=PreferenceArgs)
    classify: ClassifyArgs = field(default_factory=ClassifyArgs)

    @classmethod
    def flatten(cls, data: dict, where: str = "") -> dict:
        # A config.json written before the groups lists every pretraining setting, at its default:
        # those say nothing; one set to something else is refused (see refuse).
        defaults, own = TrainConfig().to_dict(), cls.settings()
        return super().flatten({k: v for k, v in data.items() if k in own or k not in defaults or v != defaults[k]},
                               where)

    @classmethod
    def refuse(cls, unknown: list[str], where: str) -> None:
        pretraining = [k for k in unknown if k in TrainConfig.settings()]
        if pretraining:
            raise UserError(f"{where}{pretraining[0]} is a pretraining setting; a fine-tuning run takes its "
                            "model from --init-from and its data from --data")
        super().refuse(unknown, where)
