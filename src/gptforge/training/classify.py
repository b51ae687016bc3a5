"""Classification fine-tuning: `gptforge finetune --task classify`. Labeled texts (data/labeled.py)
train a Classifier (model/classifier.py: the --init-from model's blocks under a classification
head) through the shared training loop, all its weights, the head only, the last blocks and the
head, or LoRA adapters and the head. Each evaluation adds accuracy, macro-F1 and the confusion
matrix of the val set to metrics.jsonl and draws the matrix as confusion.png."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..data.instructions import split_examples
from ..data.labeled import (
    LabeledBatches,
    class_counts,
    class_names,
    class_weights,
    encode_texts,
    label_ids,
    read_labeled,
)
from ..device import pick_device
from ..errors import UserError
from ..evaluate.classify import predict_ids, scores
from ..model.classifier import Classifier, as_classifier, set_trainable
from ..model.lora import add_lora, lora_targets, trainable_count
from ..tokenizer import tokenizer_of
from ..weights.checkpoint import read_checkpoint_config
from ..weights.load import base_identity, resumed_model
from .config import FinetuneConfig
from .loop import Trainer, TrainResult
from .pretrain import initial_model
from .run_folder import RunFolder, warn

CONFUSION = "confusion.png"  # in the run folder, redrawn at each evaluation
SAMPLES = 3  # val texts classified in each printed sample


def train_classifier(cfg: FinetuneConfig, run: RunFolder, checkpoint: Path | None, *, progress: bool | None,
                     started: float | None) -> TrainResult:
    """The classification job of `training.finetune.finetune` (its config and run resolved)."""
    c, records = cfg.classify, cfg.records
    if not records.data or not cfg.init_from:
        raise UserError("finetune --task classify needs --init-from MODEL and --data FILE (CSV, TSV or JSONL "
                        "with a text and a label column)")
    if cfg.lora.lora_rank and c.trainable != "all":
        raise UserError(f"--lora-rank trains adapters and the head; drop --trainable {c.trainable}")
    train = read_labeled(records.data, c.text_column, c.label_column, records.max_examples)
    if records.val_data:
        val = read_labeled(records.val_data, c.text_column, c.label_column, records.max_examples)
    else:
        train, val = split_examples(train, records.val_fraction, cfg.seed)
    classes = (read_checkpoint_config(checkpoint)["classifier"]["classes"] if checkpoint is not None
               else class_names(train, records.data))
    train_labels, val_labels = label_ids(train, classes), label_ids(val, classes)  # bad labels fail here
    d, device = distributed.setup(pick_device(cfg.compute.device))
    torch.manual_seed(cfg.seed)  # the same head and LoRA initialisation on every rank
    model = resumed_model(checkpoint, device) if checkpoint is not None else initial_classifier(cfg, device, classes)
    set_trainable(model, c.trainable, c.train_blocks)
    task = ClassifyTask(cfg, model, ([r.text for r in train], train_labels), ([r.text for r in val], val_labels),
                        d, run)
    trainer = Trainer(cfg, run, model, task, total_steps=task.total_steps, d=d, device=device, resume_from=checkpoint,
                      progress=progress, started=started, loss_fn=task.loss)
    trainable, total = trainable_count(model)
    how = (f"LoRA rank {cfg.lora.lora_rank} on {cfg.lora.lora_targets} and the head" if cfg.lora.lora_rank else
           {"all": "every weight", "head": "the head only",
            "last": f"the last {c.train_blocks} block(s), the final norm and the head"}[c.trainable])
    trainer.say(f"model: {cfg.init_from} as a {len(classes)}-class classifier, {trainable:,} of {total:,} "
                f"parameters trainable ({how}), on {device}{distributed.describe(d, cfg.compute.distributed)}")
    trainer.say(task.describe())
    if checkpoint is None:
        trainer.evaluate()  # step 0: chance, or what the head's initialisation gives
    result = trainer.fit()
    distributed.teardown(d)
    return result


def initial_classifier(cfg: FinetuneConfig, device: torch.device, classes: list[str]) -> Classifier:
    """The --init-from model (context and dropout as asked) under a new head, with LoRA adapters
    when asked; its pad id is its tokenizer's <|endoftext|>."""
    base = initial_model(cfg, device)
    model = as_classifier(base, classes, tokenizer_of(base).eot_id)
    if cfg.lora.lora_rank:
        lora = cfg.lora
        add_lora(model, lora.lora_rank, lora.lora_alpha, lora.lora_dropout, lora_targets(lora.lora_targets))
        model.lora["base"] = base_identity(cfg.init_from)
    return model


class ClassifyTask:
    """Classification's batches: encoded texts with their class ids; its loss: the cross-entropy
    of the head's logits (weighted by class with --balance weights); its evaluation: the loss of
    fixed train batches and of the whole val set, with the val set's scores (eval_metrics)."""

    def __init__(self, cfg: FinetuneConfig, model: Classifier, train: tuple[list[str], np.ndarray],
                 val: tuple[list[str], np.ndarray], d: distributed.Dist, run: RunFolder):
        self.cfg, self.d, self.run, self.classes = cfg, d, run, model.classes
        self.tokenizer = tokenizer_of(model)
        ctx, B, pad = model.config.context_length, cfg.optim.batch_size, model.pad_id
        train_ids, cut = encode_texts(train[0], self.tokenizer, ctx)
        val_ids, val_cut = encode_texts(val[0], self.tokenizer, ctx)
        self.cut, self.val_texts, self.train_labels = cut + val_cut, val[0], train[1]
        self.weights = class_weights(train[1], len(self.classes)) if cfg.classify.balance == "weights" else None
        self.train = LabeledBatches(train_ids, train[1], B, cfg.seed, cfg.records.shuffle,
                                    balance=cfg.classify.balance == "sample", rank=d.rank, world_size=d.world_size,
                                    pad_id=pad)
        if self.train.num_batches < cfg.optim.grad_accum:
            raise UserError(f"{len(train_ids)} training example(s) cannot fill one step of {cfg.optim.grad_accum} x "
                            f"{B} per process (x {d.world_size} processes); lower --batch-size")
        self.train_eval = LabeledBatches(train_ids, train[1], B, cfg.seed + 1, pad_id=pad)  # fixed evaluations
        self.val = LabeledBatches(val_ids, val[1], B, shuffle=False, drop_last=False, pad_id=pad)
        self.val_ids, self.val_labels = val_ids, val[1]
        self.train_tokens = sum(len(ids) for ids in train_ids)
        self.steps_per_epoch = self.train.num_batches // cfg.optim.grad_accum
        self.batches_per_epoch = self.steps_per_epoch * cfg.optim.grad_accum
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.optim.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)
        self.eval_metrics: dict = {}
        self._plot_note = False

    def describe(self) -> str:
        cut = f"; {self.cut} text(s) longer than the context were cut to it" if self.cut else ""
        return (f"data: {len(self.train.ids)} train ({class_counts(self.train_labels, self.classes)}) / "
                f"{len(self.val_ids)} val texts ({self.train_tokens:,} train tokens); {self.steps_per_epoch} steps "
                f"per epoch, {self.total_steps} steps in total{cut}")

    def batches(self, epoch: int, start: int):
        return self.train.batches(epoch, start=start)

    def loss(self, model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.weights is None else self.weights.to(inputs.device)
        return F.cross_entropy(model(inputs).float(), labels, weight=weight)

    @torch.no_grad()
    def _mean_loss(self, model: torch.nn.Module, batches, limit: int | None) -> float:
        device, losses = next(model.parameters()).device, []
        for i, (inputs, labels, _) in enumerate(batches):
            if limit is not None and i >= limit:
                break
            losses.append(F.cross_entropy(model(inputs.to(device)).float(), labels.to(device)).item())
        return float(np.mean(losses)) if losses else math.nan

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        was_training = model.training
        model.eval()
        n = self.cfg.eval.eval_batches * self.cfg.optim.grad_accum * self.d.world_size
        train_loss = self._mean_loss(model, self.train_eval.batches(0), n)
        val_loss = self._mean_loss(model, self.val.batches(0), None)
        model.train(was_training)
        predicted = predict_ids(model, self.val_ids, self.cfg.optim.batch_size).argmax(-1).numpy()
        result = scores(self.val_labels, predicted, len(self.classes))
        self.eval_metrics = {"val_accuracy": result["accuracy"], "val_macro_f1": result["macro_f1"],
                             "val_confusion": result["confusion"]}
        if self.d.is_main:
            self._draw(result["confusion"])
        return train_loss, val_loss

    def _draw(self, confusion: list[list[int]]) -> None:
        """confusion.png in the run folder; training goes on without it (no matplotlib, a full disk)."""
        try:
            from .plot import plot_confusion

            plot_confusion(confusion, self.classes, self.run.path / CONFUSION, title="val confusion matrix")
        except (UserError, OSError) as e:
            if not self._plot_note:
                warn(f"note: {CONFUSION} not drawn: {e}")
                self._plot_note = True

    def sample(self, model: torch.nn.Module) -> str:
        probs = predict_ids(model, self.val_ids[:SAMPLES])
        return " | ".join(f"{text[:40]!r} -> {self.classes[int(p.argmax())]} ({float(p.max()):.2f}), "
                          f"true {self.classes[int(label)]}"
                          for text, p, label in zip(self.val_texts, probs, self.val_labels))
