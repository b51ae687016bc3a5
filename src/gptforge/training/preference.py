"""Preference tuning, `gptforge finetune --method dpo`: Direct Preference Optimization (Rafailov et
al. 2023, arXiv:2305.18290) through the shared training loop, all weights or LoRA adapters.

For each record the model scores both answers by the summed log-probability of their tokens
(the last answer only, data/preferences.py), and so does the reference, the frozen starting model.
With r = beta * (log p_model - log p_reference) for each answer, the loss is
-log sigmoid(r_chosen - r_rejected): the model learns to raise the chosen answer over the rejected
one, relative to where it started. The reference's log-probabilities are computed once for every
record before training and kept in the run folder (--reference cached, the default: one forward
per record, no second model in memory), or with each batch (--reference per-batch: a frozen copy
of the model, or with LoRA the same model with its adapter turned off).

Each evaluation logs the loss, the reward margin (r_chosen - r_rejected), the reward accuracy
(how often r_chosen > r_rejected) and the mean log-probabilities of the chosen and rejected
answers, of fixed train and val batches; responses.jsonl holds each val prompt's greedy answer
before and after training, beside the chosen and rejected answers.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .. import distributed
from ..data.example_batches import IGNORE, PairBatches, PairTargets
from ..data.preferences import Preference, encode_preferences
from ..data.templates import prompt_ids, stop_id
from ..errors import UserError
from ..evaluate.loss import eval_mode
from ..files import atomic_write
from ..generate import complete_ids
from ..sampling import Sampling
from ..model.lora import adapter_disabled
from ..tokenizer import tokenizer_of
from .config import FinetuneConfig


def greedy_answer(model: torch.nn.Module, example, template: str, max_new_tokens: int) -> str:
    """The model's greedy answer to an example's last turn, up to its end-of-answer token."""
    tokenizer = tokenizer_of(model)
    greedy = Sampling(max_new_tokens, temperature=0.0, stop_ids=frozenset({stop_id(tokenizer, template)}))
    return tokenizer.decode(complete_ids(model, prompt_ids(example, tokenizer, template), greedy))

REFERENCE = "reference_logps.safetensors"  # in the run folder: the cached reference log-probabilities
SAMPLES = 2  # val prompts answered in each printed sample


def answer_logps(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) summed log-probability of each row's targets that are not IGNORE; inputs, targets (N, L)."""
    logits = model(inputs).float()  # (N, L, V)
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return -nll.view(targets.shape).sum(dim=1)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean DPO loss, chosen rewards (B,), rejected rewards (B,)) of B pairs' summed answer log-probs."""
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


class PreferenceTask:
    """DPO's batches: pairs of answers, padded together; its loss: DPO's against the reference;
    its evaluation: the loss and rewards of fixed train and val batches; its sample: answers to
    the first val prompts."""

    def __init__(self, cfg: FinetuneConfig, model: torch.nn.Module, train: list[Preference],
                 val: list[Preference], d: distributed.Dist):
        if cfg.finetune.train_on_prompt:
            raise UserError("--train-on-prompt does not apply to --method dpo (it compares the answers only)")
        self.cfg, self.d, self.model, self.val_examples = cfg, d, model, val
        self.beta, self.template = cfg.preference.beta, cfg.finetune.template
        self.tokenizer = tokenizer_of(model)
        ctx = model.config.context_length
        train_set, self.truncated = encode_preferences(train, self.tokenizer, self.template, ctx)
        val_set, val_truncated = encode_preferences(val, self.tokenizer, self.template, ctx)
        self.truncated += val_truncated
        B, pad = cfg.optim.batch_size, self.tokenizer.eot_id
        self.train = PairBatches(train_set, B, seed=cfg.seed, shuffle=cfg.records.shuffle, rank=d.rank,
                                 world_size=d.world_size, pad_id=pad)
        self.train_eval = PairBatches(train_set, B, seed=cfg.seed + 1, pad_id=pad)  # fixed, comparable evaluations
        self.val = PairBatches(val_set, B, shuffle=False, drop_last=False, pad_id=pad) if val_set else None
        self.steps_per_epoch = self.train.steps_per_epoch(cfg.optim.grad_accum, d.world_size)
        self.batches_per_epoch = self.steps_per_epoch * cfg.optim.grad_accum
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.optim.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)
        self.reference_model: torch.nn.Module | None = None  # --reference per-batch without LoRA: set by the job
        self.eval_metrics: dict[str, float] = {}  # of the latest evaluation, beside its losses (training.loop.Jobs)
        self.before: list[str] | None = None  # each val prompt's answer before training

    def describe(self) -> str:
        cut = f"; {self.truncated} answer(s) longer than the context were cut to it" if self.truncated else ""
        return (f"data: {len(self.train.examples)} train / {len(self.val.examples) if self.val else 0} val "
                f"preference pairs; DPO beta {self.beta}, reference log-probs {self.cfg.preference.reference}; "
                f"{self.steps_per_epoch} steps per epoch, {self.total_steps} steps in total{cut}")

    # --- the reference ------------------------------------------------------------------------

    def reference_logps(self, inputs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(2B,) the starting model's answer log-probabilities, without gradients."""
        if self.reference_model is not None:
            with eval_mode(self.reference_model):
                return answer_logps(self.reference_model, inputs, ids)
        lora = getattr(self.model, "lora", None) is not None
        with eval_mode(self.model), adapter_disabled(self.model) if lora else contextlib.nullcontext():
            return answer_logps(self.model, inputs, ids)

    def cache_reference(self, run_dir: Path, resumed: bool, autocast) -> None:
        """--reference cached: every pair's reference log-probabilities, computed now (the model is
        still the starting one) and kept in the run folder, or read back from it on resume."""
        if self.cfg.preference.reference != "cached":
            return
        path = run_dir / REFERENCE
        if resumed:
            if not path.is_file():
                raise UserError(f"{path} is missing: the run's cached reference log-probabilities are needed to resume")
            cached = load_file(path)
            sizes = {"train": len(self.train.examples), "val": len(self.val.examples) if self.val else 0}
            if any(len(cached.get(name, ())) != n for name, n in sizes.items() if n):
                raise UserError(f"{path} holds the reference log-probs of other data than --data's now; "
                                "resume with the run's own data")
        else:
            device, start = next(self.model.parameters()).device, time.perf_counter()
            with autocast:
                cached = {name: self._all_logps(batches, device) for name, batches in
                          (("train", self.train), ("val", self.val)) if batches is not None}
            if self.d.is_main:
                save_file(cached, str(path))
                pairs = sum(len(t) for t in cached.values())
                tqdm.write(f"reference log-probs of {pairs} pairs cached in {path.name} "
                           f"({time.perf_counter() - start:.1f} s)")
        self.train.reference = self.train_eval.reference = cached["train"]
        if self.val is not None:
            self.val.reference = cached["val"]

    def _all_logps(self, batches: PairBatches, device: torch.device) -> torch.Tensor:
        """(N, 2) reference log-probabilities (chosen, rejected) of every pair of `batches`, in
        their order; computed in batches of similar lengths, to spend little on padding."""
        out = torch.empty(len(batches.examples), 2)
        order = np.argsort(batches.lengths, kind="stable")
        for start in range(0, len(order), batches.batch_size):
            indices = order[start:start + batches.batch_size]
            inputs, targets, _ = batches.collate(indices)
            logps = self.reference_logps(inputs.to(device), targets.ids.to(device)).float().cpu()
            out[torch.from_numpy(indices)] = torch.stack(logps.chunk(2), dim=1)
        return out

    # --- training and evaluation ----------------------------------------------------------------

    def pair_stats(self, model: torch.nn.Module, inputs: torch.Tensor, targets: PairTargets) -> tuple:
        """(loss, policy log-probs (2B,), chosen rewards (B,), rejected rewards (B,)) of a batch."""
        logps = answer_logps(model, inputs, targets.ids)
        reference = targets.reference if targets.reference is not None else self.reference_logps(inputs, targets.ids)
        B = len(logps) // 2
        loss, chosen_rewards, rejected_rewards = dpo_loss(logps[:B], logps[B:], reference[:B], reference[B:], self.beta)
        return loss, logps.detach(), chosen_rewards, rejected_rewards

    def loss(self, model: torch.nn.Module, inputs: torch.Tensor, targets: PairTargets) -> torch.Tensor:
        """The trainer's loss_fn: a micro-batch's mean DPO loss."""
        return self.pair_stats(model, inputs, targets)[0]

    def batches(self, epoch: int, start: int):
        return self.train.batches(epoch, start=start)

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        n = self.cfg.eval.eval_batches * self.cfg.optim.grad_accum * self.d.world_size
        train = self._measure(model, self.train_eval, n)
        val = self._measure(model, self.val, n) if self.val else {}
        self.eval_metrics = {f"{split}_{k}": v for split, m in (("train", train), ("val", val))
                             for k, v in m.items() if k != "loss"}
        return train["loss"], val.get("loss", math.nan)

    def _measure(self, model: torch.nn.Module, batches: PairBatches, n: int) -> dict[str, float]:
        """Mean loss (of the batch means) and per-pair reward and log-prob means of n batches."""
        device = next(model.parameters()).device
        losses, margins, wins, chosen, rejected = [], [], [], [], []
        with eval_mode(model):
            for inputs, targets, _ in islice(batches.batches(0), n):
                loss, logps, r_chosen, r_rejected = self.pair_stats(model, inputs.to(device), targets.to(device))
                B = len(r_chosen)
                losses.append(loss.item())
                margins += (r_chosen - r_rejected).tolist()
                wins += (r_chosen > r_rejected).tolist()
                chosen += logps[:B].tolist()
                rejected += logps[B:].tolist()
        mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
        return {"loss": mean(losses), "reward_margin": mean(margins), "reward_accuracy": mean(wins),
                "logp_chosen": mean(chosen), "logp_rejected": mean(rejected)}

    # --- answers --------------------------------------------------------------------------------

    def answer(self, model: torch.nn.Module, preference: Preference, max_new_tokens: int) -> str:
        """The model's greedy answer to a record's prompt, up to its end-of-answer token."""
        return greedy_answer(model, preference.example("chosen"), self.template, max_new_tokens)

    def sample(self, model: torch.nn.Module) -> str:
        return " | ".join(f"{p.prompt[-1]['content']!r} -> {self.answer(model, p, self.cfg.eval.sample_tokens)!r}"
                          for p in self.val_examples[:SAMPLES])

    def answers(self, model: torch.nn.Module) -> list[str]:
        return [self.answer(model, p, self.cfg.finetune.response_tokens) for p in self.val_examples]

    def write_before(self, model: torch.nn.Module, path: Path, resumed: bool) -> None:
        """responses.jsonl's "before": each val prompt's answer by the starting model, written now
        (read back on resume)."""
        if not self.cfg.finetune.response_tokens:
            return
        if resumed and path.is_file():
            self.before = [json.loads(line).get("before") for line in path.read_text().splitlines() if line.strip()]
            return
        self.before = self.answers(model)
        if self.d.is_main:
            atomic_write(path, "".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                                   "before": a}, ensure_ascii=False) + "\n"
                                       for p, a in zip(self.val_examples, self.before)))

    def write_responses(self, model: torch.nn.Module, path: Path) -> Path:
        """responses.jsonl: each val record's prompt, chosen and rejected answers, and the model's
        greedy answer before and after training. Every rank generates; rank 0 writes."""
        rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                 "before": self.before[i] if self.before else None, "after": a}
                for i, (p, a) in enumerate(zip(self.val_examples, self.answers(model)))]
        if self.d.is_main:
            atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return path
