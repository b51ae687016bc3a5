"""Continuous batching: many requests decoded together, each in its own row of one KV cache.

One thread runs the loop: a thread of its own (start()), or the caller's (run(): `gptforge serve`
gives it the main thread and serves HTTP from another). Each step it drops what was cancelled, admits waiting
requests into free rows (prefilling each prompt into its own row, alone, in fixed-size chunks),
then decodes one token for every live row in a single forward pass, each row at its own position
(see model.KVCache). A row is freed the moment its sequence stops, and the last row moves into the
hole, so the live rows are always rows 0..n-1 of the cache and a decoding step costs what n rows
cost. A short request therefore never waits for a long one: it joins at the next step and leaves
when it is done.

Why prefill each prompt alone rather than a padded batch of prompts: its chunks are then the same
whatever else is running, so a request's tokens do not depend on its neighbours (greedy decoding
gives the single-stream result; tests/serve/test_engine.py), and a decoding step never waits for
more than one chunk of someone else's prompt.
"""

from __future__ import annotations

import secrets
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable

import torch

from ..errors import UserError
from ..generate import Sampling, sample_next
from ..model import GPT, pack_for_batches

Emit = Callable[[int | None, str | None], None]  # (token, None) per token, then (None, finish_reason)


class QueueFull(Exception):
    """More requests are waiting than the engine was told to hold."""


class Sequence:
    """One prompt being continued: its progress and where its tokens go. `emit` is called from the
    engine's thread: (token, None) for each new token, then once (None, reason), reason being
    "stop", "length", "cancelled" or "error"."""

    def __init__(self, prompt: list[int], sampling: Sampling, emit: Emit, constraint=None):
        if not prompt:
            raise UserError("a prompt needs at least one token")
        if sampling.max_new_tokens < 1:
            raise UserError(f"max_tokens must be at least 1, got {sampling.max_new_tokens}")
        self.prompt, self.sampling, self.emit = list(prompt), sampling, emit
        self.length = 0  # positions filled in its cache row
        self.generated = 0
        self.last: int | None = None  # the token to feed next
        self.finish_reason: str | None = None
        self.cancelled = False  # set from any thread; the engine acts on it before its next step
        self.generator: torch.Generator | None = None
        # A grammar this row's tokens keep to (tools/structured.py's Constraint: tool calls, JSON),
        # or None. It masks only this row's logits, so the rows beside it decode as if alone.
        self.constraint = constraint

    def cancel(self) -> None:
        self.cancelled = True

    def finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self.emit(None, reason)


class Engine:
    """Decodes the sequences submitted to it, up to `max_batch` at a time, in the thread running
    run() (start() gives it one of its own).

    submit() is thread-safe and returns at once; tokens arrive through each sequence's emit.
    `max_queue` bounds the sequences waiting for a row (submit raises QueueFull beyond it);
    `prefill_chunk` is the most prompt tokens one forward pass takes, and at most that many prompt
    tokens are prefilled between two decoding steps of the live rows.
    """

    def __init__(self, model: GPT, max_batch: int = 8, max_queue: int = 64, prefill_chunk: int = 256):
        self.model = pack_for_batches(model.eval())  # batched rows through a copy of the weights laid out for them
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(max_batch)
        self.rows: list[Sequence] = []  # row i of the cache belongs to rows[i]
        self.staging: Sequence | None = None  # being prefilled, in row len(self.rows)
        self.waiting: deque[Sequence] = deque()
        self.lock = threading.Condition()
        self.stopping = False
        self.loop_thread: threading.Thread | None = None  # where run() runs, once it has begun
        self.stopped = threading.Event()  # run() has ended

    # ---- the public side: any thread ------------------------------------------------------------
    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences (all or none). Raises UserError if one cannot fit in the context, and
        QueueFull if the queue would exceed max_queue."""
        ctx = self.model.config.context_length
        for seq in sequences:
            if len(seq.prompt) + seq.sampling.max_new_tokens > ctx:
                raise UserError(f"the prompt ({len(seq.prompt)} tokens) plus max_tokens "
                                f"({seq.sampling.max_new_tokens}) exceeds the model's context of {ctx} tokens")
        with self.lock:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) + len(sequences) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting (at most {self.max_queue})")
            self.waiting.extend(sequences)
            self.lock.notify()

    def cancel(self, sequences: list[Sequence]) -> None:
        for seq in sequences:
            seq.cancel()
        with self.lock:
            self.lock.notify()

    def load(self) -> dict:
        """How busy the engine is: live rows (decoding or being prefilled) and waiting sequences."""
        with self.lock:
            return {"running": len(self.rows) + (self.staging is not None), "waiting": len(self.waiting),
                    "max_batch": self.max_batch}

    def start(self) -> Engine:
        """Run the decoding loop in a background thread of its own."""
        self.loop_thread = threading.Thread(target=self.run, name="gptforge-engine", daemon=True)
        self.loop_thread.start()
        return self

    def stop(self) -> None:
        """Finish every sequence as "cancelled" and end the decoding loop, waiting for it."""
        with self.lock:
            self.stopping = True
            self.lock.notify()
        if self.loop_thread not in (None, threading.current_thread()):
            self.stopped.wait()

    # ---- the engine's thread ----------------------------------------------------------------------
    def run(self) -> None:
        """The decoding loop, in the calling thread, until stop(). `gptforge serve` runs it on the
        main thread (the HTTP side in another): decoding steps ran 1.2-1.5x slower in a second
        thread than on the main one, on the 2-core machine measured (benchmarks/README.md)."""
        self.loop_thread = threading.current_thread()
        try:
            self._loop()
        finally:
            self.stopped.set()

    def _loop(self) -> None:
        with torch.inference_mode():
            while self._wait_for_work():
                try:
                    self.step()
                except Exception:  # an internal error fails the running sequences, not the server
                    traceback.print_exc(file=sys.stderr)
                    for seq in self._live():
                        seq.finish("error")
                    self.rows, self.staging = [], None
        for seq in self._live() + list(self.waiting):
            seq.finish("cancelled")
        self.rows, self.staging = [], None
        self.waiting.clear()

    def _wait_for_work(self) -> bool:
        with self.lock:
            while not (self.stopping or self.rows or self.staging or self.waiting):
                self.lock.wait()
            return not self.stopping

    def _live(self) -> list[Sequence]:
        return self.rows + ([self.staging] if self.staging else [])

    @torch.inference_mode()
    def step(self) -> None:
        """One round: drop cancelled sequences, prefill up to one chunk of waiting prompts, decode
        one token for every live row, free the rows that stopped."""
        self._drop_cancelled()
        self._prefill()
        self._free_finished()  # a sequence can stop at its first token
        if self.rows:
            self._decode()
        self._free_finished()

    def _drop_cancelled(self) -> None:
        with self.lock:
            for seq in [s for s in self.waiting if s.cancelled]:
                self.waiting.remove(seq)
                seq.finish("cancelled")
        for seq in self._live():
            if seq.cancelled:
                seq.finish("cancelled")
        if self.staging is not None and self.staging.finish_reason:
            self.staging = None
        self._free_finished()

    def _next_to_prefill(self) -> Sequence | None:
        if self.staging is None and len(self.rows) < self.max_batch:
            with self.lock:
                self.staging = self.waiting.popleft() if self.waiting else None
        return self.staging

    def _prefill(self) -> None:
        budget = self.prefill_chunk
        while budget > 0 and (seq := self._next_to_prefill()) is not None:
            # Chunk boundaries at multiples of prefill_chunk from the prompt's start, whatever the
            # budget left: the same forward passes as when the sequence runs alone.
            chunk = seq.prompt[seq.length:seq.length + self.prefill_chunk - seq.length % self.prefill_chunk]
            row = len(self.rows)
            idx = torch.tensor([chunk], dtype=torch.long, device=self.device)
            logits = self.model(idx, self.cache.rows(row, row + 1, [seq.length]), last=True)[:, -1]  # (1, V)
            seq.length += len(chunk)
            budget -= len(chunk)
            if seq.length == len(seq.prompt):
                self.staging = None
                self.rows.append(seq)
                self._take(seq, logits)

    def _decode(self) -> None:
        n = len(self.rows)
        idx = torch.tensor([[seq.last] for seq in self.rows], dtype=torch.long, device=self.device)  # (n, 1)
        logits = self.model(idx, self.cache.rows(0, n, [seq.length for seq in self.rows]))[:, -1]  # (n, V)
        for i, seq in enumerate(self.rows):
            seq.length += 1
            self._take(seq, logits[i:i + 1])

    def _take(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Draw and accept seq's next token from its (1, V) logits. Whatever goes wrong here (a
        seed its generator refuses, NaN in its probabilities) is this row's alone: it ends this
        sequence with "error", and its neighbours decode on."""
        s = seq.sampling
        try:
            if seq.generator is None:
                seed = s.seed if s.seed is not None else secrets.randbits(63)
                seq.generator = torch.Generator(device=self.device).manual_seed(seed)
            if seq.constraint is not None:
                logits = seq.constraint.mask(logits)
            token = int(sample_next(logits, s.temperature, s.top_k, s.top_p, seq.generator)[0])
            if seq.constraint is not None:
                seq.constraint.accept(token)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            seq.finish("error")
            return
        self._accept(seq, token)

    @staticmethod
    def _accept(seq: Sequence, token: int) -> None:
        seq.generated += 1
        if token in seq.sampling.stop_ids:
            seq.finish("stop")
            return
        seq.last = token
        seq.emit(token, None)
        if seq.generated >= seq.sampling.max_new_tokens:
            seq.finish("length")

    def _free_finished(self) -> None:
        """Free the rows of finished sequences, moving the last live row into each hole (and the
        sequence being prefilled after them) so the live rows stay rows 0..n-1."""
        staging_row = len(self.rows)
        for i in reversed(range(len(self.rows))):
            if self.rows[i].finish_reason is None:
                continue
            last = len(self.rows) - 1
            if i != last:
                self.cache.copy_row(last, i, self.rows[last].length)
                self.rows[i] = self.rows[last]
            self.rows.pop()
        if self.staging is not None and staging_row != len(self.rows):
            self.cache.copy_row(staging_row, len(self.rows), self.staging.length)
