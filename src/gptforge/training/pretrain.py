"""Pretraining: `gptforge train`. Windows over a token stream (gptforge.data.batches) through the
shared training loop (training.loop), from a preset, from other weights (--init-from), or
resumed from a run's checkpoint. The model carries its tokenizer (GPT.tokenizer, given as it is
built): the checkpoint's or --init-from model's, else --tokenizer, else the prepared corpus's, else
GPT-2's; a fresh model's vocabulary is that tokenizer's."""

from __future__ import annotations

import dataclasses
import math
import time
from itertools import islice
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from .. import distributed
from ..config import GPTConfig
from ..data import BatchLoader, corpus_tokenizer, is_corpus, load_splits
from ..device import pick_device
from ..errors import UserError
from ..evaluate import bytes_per_token, mean_loss
from ..generate import prompt_ids, stream_text
from ..model import GPT
from ..tokenizer import Tokenizer, gpt2, load_tokenizer, tokenizer_of
from ..tokenizer.train import train_on_train_split
from ..weights.checkpoint import WEIGHTS, checkpoint_tokenizer, load_weights, read_checkpoint_config
from ..weights.load import load_any, reshape
from .config import CorpusArgs, RunConfig, TrainConfig
from .loop import Trainer, TrainResult
from .resume import resolve_run

TRAIN_PREFIX = "bpe:"  # --tokenizer bpe:N: train an N-id tokenizer on the run's text first


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None,
          progress: bool | None = None, started: float | None = None, **fields) -> TrainResult:
    """Train a GPT; mirrors `gptforge train`.

    `train(data="notes.txt", max_steps=100)` starts a run; `train(resume="runs/x", max_steps=200)`
    continues one from its newest intact checkpoint with its own config (training-length and
    logging fields may change). `progress=None` shows the progress bar only on a terminal.
    A --max-time budget counts from `started` (a time.monotonic() reading; default: this call).
    """
    started = time.monotonic() if started is None else started
    cfg, run, checkpoint = resolve_run(config, resume, fields)
    d, device = distributed.setup(pick_device(cfg.compute.device))
    # No teardown on an exception: its barrier would wait for ranks that may be blocked in another
    # collective; torchrun ends them once this process has exited.
    initial = None
    if checkpoint is not None:  # the run's model, whatever preset or weights it started from
        model_cfg = GPTConfig.from_dict(read_checkpoint_config(checkpoint)["model"])
    elif cfg.init_from:
        initial = initial_model(cfg, device)
        model_cfg = initial.config
    tokenizer = _run_tokenizer(cfg.corpus, checkpoint, initial, tqdm.write if d.is_main else lambda *_: None)
    if checkpoint is None and initial is None:  # a new model: its vocabulary is its tokenizer's
        model_cfg = dataclasses.replace(cfg.model_config(), vocab_size=tokenizer.vocab_size)
    # Data first: a bad corpus (or one prepared with another tokenizer) fails before the run folder exists.
    task = WindowTask(cfg, model_cfg, d, tokenizer)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    # An --init-from model carries its tokenizer already (_run_tokenizer returns that one).
    model = initial if initial is not None else GPT(model_cfg, tokenizer).to(device)
    if checkpoint is not None:  # before sharding and the optimizer: loading replaces parameters
        load_weights(model, load_file(checkpoint / WEIGHTS, device=str(device)), source=str(checkpoint))
    trainer = Trainer(cfg, run, model, task, total_steps=task.total_steps, d=d, device=device, resume_from=checkpoint,
                      progress=progress, started=started)
    origin = cfg.init_from if cfg.init_from else cfg.preset
    trainer.say(f"model: {model.num_params():,} parameters ({origin}, context {model_cfg.context_length}) "
                f"on {device}{distributed.describe(d, cfg.compute.distributed)}")
    trainer.say(f"data: {task.train_tokens:,} train / {task.val_tokens:,} val tokens; {task.steps_per_epoch} "
                f"steps per epoch, {task.total_steps} steps in total")
    result = trainer.fit()
    distributed.teardown(d)
    return result


class WindowTask:
    """Pretraining's batches: stride windows (or random offsets) over the training tokens; its
    evaluation: the mean loss of fixed train and val batches; its sample: a continuation of
    cfg.eval.sample_prompt."""

    def __init__(self, cfg: TrainConfig, model_cfg: GPTConfig, d: distributed.Dist, tokenizer: Tokenizer):
        self.cfg, self.d = cfg, d
        # An evaluation batch holds as many windows as an optimizer step of the whole job, read as
        # micro-batches, so --grad-accum 4 --batch-size 2 reports the same losses as --batch-size
        # 8, and 2 processes the same as --grad-accum 2.
        self.eval_batches = cfg.eval.eval_batches * cfg.optim.grad_accum * d.world_size
        ctx, vocab = model_cfg.context_length, model_cfg.vocab_size
        # Text is tokenized with the run's tokenizer; a corpus prepared with another is refused.
        corpus = cfg.corpus
        train_tokens, val_tokens, _ = load_splits(corpus.data, corpus.val_fraction, corpus.verify_data, tokenizer)
        if corpus.val_data:
            val_tokens = load_splits(corpus.val_data, 0.0, corpus.verify_data, tokenizer)[0]
        self.train_tokens, self.val_tokens = len(train_tokens), len(val_tokens)
        # Each rank reads its own slice of every global batch; evaluation reads whole batches on
        # every rank (it is a small share of the work, and the result then needs no reduction).
        self.train = _loader(train_tokens, cfg, ctx, "training split", stride=cfg.corpus.stride or ctx,
                             shuffle=cfg.corpus.shuffle, seed=cfg.seed, drop_last=True, mode=cfg.corpus.sampling,
                             rank=d.rank, world_size=d.world_size, vocab_size=vocab)
        if self.train.num_batches < cfg.optim.grad_accum:
            raise UserError(f"training split: {self.train.windows.num_windows} window(s) of {ctx} tokens "
                            f"cannot fill one step of {cfg.optim.grad_accum} x {cfg.optim.batch_size}")
        # A fixed set of training batches, so evaluations are comparable.
        self.train_eval = _loader(train_tokens, cfg, ctx, "training split", stride=cfg.corpus.stride or ctx,
                                  shuffle=True, seed=cfg.seed + 1, drop_last=True, vocab_size=vocab)
        self.val, self.val_bytes_per_token = None, None
        if len(val_tokens) > 0:
            self.val = _loader(val_tokens, cfg, ctx, "validation split", stride=ctx, shuffle=False,
                               drop_last=False, vocab_size=vocab)
            # Of the batches evaluate() reads: their val loss in bits per byte (metrics "val_bpb").
            self.val_bytes_per_token = bytes_per_token(
                (targets.numpy() for _, targets in islice(self.val.batches(0), self.eval_batches)),
                tokenizer.token_byte_lengths())
        self.steps_per_epoch = self.train.num_batches // cfg.optim.grad_accum
        # A last partial step's batches are dropped.
        self.batches_per_epoch = self.steps_per_epoch * cfg.optim.grad_accum
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.optim.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.optim.max_steps)

    def batches(self, epoch: int, start: int):
        return self.train.batches(epoch, start=start)

    def evaluate(self, model: torch.nn.Module) -> tuple[float, float]:
        n = self.eval_batches
        device = next(model.parameters()).device
        val = mean_loss(model, self.val.batches(0), n, device) if self.val else math.nan
        return mean_loss(model, self.train_eval.batches(0), n, device), val

    def sample(self, model: torch.nn.Module) -> str:
        prompt = self.cfg.eval.sample_prompt
        return prompt + "".join(stream_text(model, prompt_ids(model, prompt)[0].tolist(),
                                            self.cfg.eval.sampling(self.cfg.seed)))


def _run_tokenizer(cfg: CorpusArgs, checkpoint: Path | None, initial: GPT | None, say) -> Tokenizer:
    """The run's tokenizer: a resumed checkpoint's, or the --init-from model's (--tokenizer, if
    given, must name the same), or --tokenizer (bpe:N: trained now on the train split of text
    --data), or a prepared --data corpus's, or GPT-2's."""
    if checkpoint is not None:
        return checkpoint_tokenizer(checkpoint)
    given = None
    if cfg.tokenizer and cfg.tokenizer.startswith(TRAIN_PREFIX):
        size = cfg.tokenizer.removeprefix(TRAIN_PREFIX)
        if not size.isdigit():
            raise UserError(f"--tokenizer {cfg.tokenizer}: write bpe:N with N the vocabulary size, e.g. bpe:4096")
        if is_corpus(cfg.data):
            raise UserError(f"--tokenizer {cfg.tokenizer} trains a tokenizer on text --data, but {cfg.data} is a "
                            "prepared corpus (it has its own tokenizer)")
        say(f"training a {int(size):,}-id byte-level BPE on the train split of {cfg.data}")
        given = train_on_train_split(cfg.data, cfg.val_fraction, int(size), progress=False)
    elif cfg.tokenizer:
        given = load_tokenizer(cfg.tokenizer)
    if initial is None:
        return given or corpus_tokenizer(cfg.data) or gpt2()
    own = tokenizer_of(initial)
    if given is not None and not given.same_as(own):
        raise UserError(f"--tokenizer {cfg.tokenizer} ({given.name}) is not the --init-from model's tokenizer "
                        f"({own.name}); drop --tokenizer to use the model's")
    return own


def _loader(tokens, cfg: TrainConfig, ctx: int, what: str, **kwargs) -> BatchLoader:
    try:
        return BatchLoader(tokens, max_length=ctx, batch_size=cfg.optim.batch_size, **kwargs)
    except UserError as e:
        raise UserError(f"{what}: {e}") from None


def initial_model(cfg: RunConfig, device: torch.device) -> GPT:
    """The --init-from weights with the run's dropout, and its context cropped if asked (see
    weights.load.reshape)."""
    source = load_any(cfg.init_from, device)  # checkpoint, run, HF folder or hub id
    src = source.config
    for name in cfg.fields_where("shape"):
        wanted = cfg.model.get(name)
        if wanted is not None and wanted != getattr(src, name):
            raise UserError(f"--{name.replace('_', '-')} {wanted} does not match the --init-from model's "
                            f"{getattr(src, name)}; drop it to use the model's shape")
    return reshape(source, cfg.model.get("context_length") or src.context_length,
                   cfg.model.get("dropout", src.dropout))
