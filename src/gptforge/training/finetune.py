"""Fine-tuning: `gptforge finetune`. Instruction or chat examples (data/instructions.py) through a
template (data/templates.py), batched whole and padded (data/example_batches.py), with the loss
on the answers only, through the shared training loop; all weights train, or LoRA adapters on a
frozen model (model/lora.py). After training, responses.jsonl holds the model's answer to every
validation example beside the reference answer."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch

from .. import distributed
from ..data.example_batches import ExampleBatches
from ..data.instructions import Example, load_examples, parse_record
from ..data.preferences import parse_preference
from ..data.templates import encode_examples, template_tokens
from ..device import pick_device
from ..errors import UserError
from ..evaluate import mean_loss
from ..files import atomic_write
from ..model import GPT
from ..model.lora import add_lora, lora_targets, trainable_count
from ..model.vocab import grow_vocabulary
from ..tokenizer import tokenizer_of
from ..weights.load import base_identity, resumed_model
from .classify import train_classifier
from .config import FinetuneConfig
from .loop import Trainer, TrainResult
from .preference import PreferenceTask, greedy_answer
from .pretrain import initial_model
from .resume import resolve_run

RESPONSES = "responses.jsonl"  # in the run folder
SAMPLES = 2  # val examples answered in each printed sample


def finetune(config: FinetuneConfig | None = None, *, resume: str | Path | None = None,
             progress: bool | None = None, started: float | None = None, **fields) -> TrainResult:
    """Fine-tune a model; mirrors `gptforge finetune`. `started`: when the job began, for
    --max-time (default: now; see training.budget).

    `finetune(init_from="runs/base", data="tasks.jsonl", lora_rank=8)` starts a run;
    `finetune(resume="runs/ft", epochs=3)` continues one from its newest intact checkpoint.
    """
    cfg, run, checkpoint = resolve_run(config, resume, fields, cls=FinetuneConfig)
    if cfg.classify.task == "classify":
        if cfg.preference.method == "dpo":
            raise UserError("--task classify trains a classifier on labeled texts; --method dpo tunes a chat "
                            "model on preference records: use one")
        return train_classifier(cfg, run, checkpoint, progress=progress, started=started)
    if not cfg.records.data or not cfg.init_from:
        raise UserError("finetune needs --init-from MODEL (a checkpoint, run, Hugging Face folder or hub id) "
                        "and --data FILE (instruction or chat records)")
    records, dpo = cfg.records, cfg.preference.method == "dpo"
    train_examples, val_examples = load_examples(records.data, records.val_data, records.val_fraction, cfg.seed,
                                                 records.max_examples, parse_preference if dpo else parse_record)
    d, device = distributed.setup(pick_device(cfg.compute.device))
    torch.manual_seed(cfg.seed)  # the same LoRA initialisation on every rank
    model = resumed_model(checkpoint, device) if checkpoint is not None else initial_finetune_model(cfg, device, train_examples + val_examples)
    task = (PreferenceTask if dpo else FinetuneTask)(cfg, model, train_examples, val_examples, d)
    if dpo and cfg.preference.reference == "per-batch" and not cfg.lora.lora_rank:
        task.reference_model = frozen_reference(cfg, model, device, train_examples + val_examples, checkpoint)
    trainer = Trainer(cfg, run, model, task, total_steps=task.total_steps, d=d, device=device, resume_from=checkpoint,
                      progress=progress, started=started, loss_fn=task.loss if dpo else None)
    trainable, total = trainable_count(model)
    how = f"LoRA rank {cfg.lora.lora_rank} on {cfg.lora.lora_targets}" if cfg.lora.lora_rank else "full fine-tuning"
    trainer.say(f"model: {cfg.init_from}, {trainable:,} of {total:,} parameters trainable ({how}), "
                f"template {cfg.finetune.template}, on {device}{distributed.describe(d, cfg.compute.distributed)}")
    trainer.say(task.describe())
    if dpo:
        task.cache_reference(run.path, checkpoint is not None, trainer.parts.autocast)
        task.write_before(model, run.path / RESPONSES, checkpoint is not None)
    if checkpoint is None:
        trainer.evaluate()  # step 0: where fine-tuning starts from
    result = trainer.fit()
    if cfg.finetune.response_tokens and not result.interrupted:
        path = task.write_responses(model, run.path / RESPONSES)
        trainer.say(f"wrote {path}: the answer to each of {len(task.val_examples)} val examples"
                    + (" before and after training" if dpo else ""))
    distributed.teardown(d)
    return result


def initial_finetune_model(cfg: FinetuneConfig, device: torch.device, examples: list[Example]) -> GPT:
    """The --init-from model (context and dropout as asked), its vocabulary grown by the special
    tokens its examples need (data.templates.template_tokens), with LoRA adapters when asked."""
    model = initial_model(cfg, device)
    tokenizer = tokenizer_of(model).with_special_tokens(template_tokens(examples, cfg.finetune.template))
    old_vocab = model.config.vocab_size
    model = grow_vocabulary(model, max(old_vocab, tokenizer.vocab_size), tokenizer)
    if cfg.lora.lora_rank:
        lora = cfg.lora
        add_lora(model, lora.lora_rank, lora.lora_alpha, lora.lora_dropout, lora_targets(lora.lora_targets),
                 new_rows=(old_vocab, model.config.vocab_size), base=base_identity(cfg.init_from))
    return model


def frozen_reference(cfg: FinetuneConfig, model: GPT, device: torch.device, examples: list,
                     checkpoint: Path | None) -> GPT:
    """DPO's reference for --reference per-batch with all weights training: a frozen copy of the
    starting model (on resume, --init-from's model made again: the run's model has moved on)."""
    reference = copy.deepcopy(model) if checkpoint is None else initial_finetune_model(cfg, device, examples)
    return reference.requires_grad_(False).eval()


class FinetuneTask:
    """Fine-tuning's batches: whole examples, padded and masked; its evaluation: the masked loss
    of fixed train and val batches; its sample: answers to the first val prompts."""

    def __init__(self, cfg: FinetuneConfig, model: GPT, train: list[Example], val: list[Example],
                 d: distributed.Dist):
        self.cfg, self.d, self.val_examples = cfg, d, val
        self.tokenizer = tokenizer_of(model)
        ctx = model.config.context_length
        encode = lambda examples: encode_examples(examples, self.tokenizer, cfg.finetune.template, ctx,  # noqa: E731
                                                  cfg.finetune.train_on_prompt)
        train_set, self.truncated, self.dropped = encode(train)
        val_set, val_truncated, val_dropped = encode(val)
        self.truncated, self.dropped = self.truncated + val_truncated, self.dropped + val_dropped
        B, pad = cfg.optim.batch_size, self.tokenizer.eot_id
        self.train = ExampleBatches(train_set, B, cfg.seed, cfg.records.shuffle, rank=d.rank, world_size=d.world_size,
                                    pad_id=pad)
        self.train_eval = ExampleBatches(train_set, B, cfg.seed + 1, pad_id=pad)  # fixed, comparable evaluations
        self.val = ExampleBatches(val_set, B, shuffle=False, drop_last=False, pad_id=pad) if val_set else None
        self.train_tokens = sum(len(ids) - 1 for ids, _ in train_set)
        self.steps_per_epoch = self.train.steps_per_epoch(cfg.optim.grad_accum, d.world_size)
        self.batches_per_epoch = self.steps_per_epoch * cfg.optim.grad_accum
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.optim.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)

    def describe(self) -> str:
        cut = (f"; {self.truncated} example(s) longer than the context were cut to it"
               + (f", {self.dropped} of them left out (nothing of the answer left)" if self.dropped else "")
               if self.truncated else "")
        return (f"data: {len(self.train.examples)} train / {len(self.val.examples) if self.val else 0} val "
                f"examples ({self.train_tokens:,} train tokens); {self.steps_per_epoch} steps per epoch, "
                f"{self.total_steps} steps in total{cut}")

    def batches(self, epoch: int, start: int):
        return self.train.batches(epoch, start=start)

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        # As many examples per evaluation batch as an optimizer step of the whole job reads.
        n = self.cfg.eval.eval_batches * self.cfg.optim.grad_accum * self.d.world_size
        device = next(model.parameters()).device

        def pairs(loader):
            return ((inputs, targets) for inputs, targets, _ in loader.batches(0))

        val = mean_loss(model, pairs(self.val), n, device) if self.val else math.nan
        return mean_loss(model, pairs(self.train_eval), n, device), val

    def answer(self, model: torch.nn.Module, example: Example, max_new_tokens: int) -> str:
        """The model's greedy answer to an example's last turn, up to its end-of-answer token."""
        return greedy_answer(model, example, self.cfg.finetune.template, max_new_tokens)

    def sample(self, model: torch.nn.Module) -> str:
        return " | ".join(f"{e.messages[-2]['content']!r} -> {self.answer(model, e, self.cfg.eval.sample_tokens)!r}"
                          for e in self.val_examples[:SAMPLES])

    def write_responses(self, model: torch.nn.Module, path: Path) -> Path:
        """responses.jsonl: each val example (its instruction record, or its conversation up to the
        last answer), the reference answer and the model's (greedy, up to the end-of-answer token).
        Every rank generates (a sharded model needs them all); rank 0 writes."""
        rows = []
        for example in self.val_examples:
            response = self.answer(model, example, self.cfg.finetune.response_tokens)
            if example.instruction is not None:
                rows.append({**example.instruction, "response": response})
            else:
                rows.append({"messages": example.messages[:-1], "reference": example.messages[-1]["content"],
                             "response": response})
        if self.d.is_main:
            atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return path
