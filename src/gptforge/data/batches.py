"""Training batches: sliding windows over a token stream, batched reproducibly and resumably,
and prefetched by a background thread."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checks import require_int
from ..errors import UserError
from .shards import ShardedTokens, TokenArray


def as_token_array(tokens: Any) -> TokenArray:
    """An ndarray (a memmap stays a memmap) or sharded stream as it is; anything else via np.asarray."""
    return tokens if isinstance(tokens, (np.ndarray, ShardedTokens)) else np.asarray(tokens)


def _as_token_array(tokens: Any) -> TokenArray:
    array = as_token_array(tokens)  # no copy of the corpus
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    return array


class TokenWindows(Dataset):
    """Sliding windows over a token stream, as in the reference GPTDatasetV1.

    Window k starts at i = k * stride for i in range(0, n - max_length, stride); its input is
    tokens[i:i+L] and its target tokens[i+1:i+L+1]. Starts are computed, never stored, so memory
    does not depend on the number of windows.
    """

    def __init__(self, tokens: Any, max_length: int, stride: int):
        require_int("max_length", max_length)
        require_int("stride", stride)
        self.tokens = _as_token_array(tokens)
        self.max_length = int(max_length)
        self.stride = int(stride)
        n = len(self.tokens)
        if n < self.max_length + 1:
            raise UserError(f"the token stream has {n} tokens but one window of max_length {max_length} "
                            f"needs {max_length + 1} (inputs plus the shifted target); use more text or a "
                            "smaller context length")
        self.num_windows = len(range(0, n - self.max_length, self.stride))

    def __len__(self) -> int:
        return self.num_windows

    def start(self, index: int) -> int:
        if not -self.num_windows <= index < self.num_windows:
            raise IndexError(f"window {index} out of range for {self.num_windows} windows")
        return (index % self.num_windows) * self.stride

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.start(index)
        chunk = torch.from_numpy(self.tokens[i:i + self.max_length + 1].astype(np.int64))
        return chunk[:-1].clone(), chunk[1:].clone()  # (L,), (L,)


class BatchLoader:
    """Batches of (input, target) int64 tensors of shape (B, L), reproducible and resumable.

    mode="windows": the stride windows of TokenWindows, in order or, with shuffle, in a
    permutation drawn from a generator seeded by (seed, epoch) alone, so batch `start` of an
    epoch can be produced directly when resuming. drop_last drops a final partial batch (use it
    for training, like the reference train DataLoader; not for validation).
    mode="random": every batch has batch_size start positions drawn uniformly from
    [0, n - L - 1] by a generator seeded by (seed, epoch, batch index); an epoch has
    num_windows // (batch_size * world_size) batches; shuffle and drop_last do not apply.

    Distributed: each global batch has batch_size * world_size rows; rank r gets rows
    r*B:(r+1)*B, so ranks see disjoint data. num_batches counts global batches. With
    drop_last=False a final partial global batch can give a rank a short slice, or none (skipped).
    """

    def __init__(
        self,
        tokens: Any,
        max_length: int,
        stride: int,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = True,
        mode: str = "windows",
        rank: int = 0,
        world_size: int = 1,
        vocab_size: int | None = None,
    ):
        require_int("batch_size", batch_size)
        require_int("world_size", world_size)
        if mode not in ("windows", "random"):
            raise UserError(f"unknown batch mode {mode!r}; use 'windows' or 'random'")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world size {world_size}")
        require_int("seed", seed, minimum=0)
        self.windows = TokenWindows(tokens, max_length, stride)
        self.tokens = self.windows.tokens
        self.max_length, self.stride = int(max_length), int(stride)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.seed = int(seed)
        self.mode, self.rank, self.world_size = mode, int(rank), int(world_size)
        self.vocab_size = vocab_size  # ids at or above it are refused (the model has no row for them)
        self.global_batch_size = self.batch_size * self.world_size
        w = self.windows.num_windows
        if mode == "random" or drop_last:
            self.num_batches = w // self.global_batch_size
        else:
            self.num_batches = math.ceil(w / self.global_batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch 0 (for reference-style loops such as `for x, y in loader`)."""
        return self.batches(0)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch index `start` on; earlier batches are not read."""
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start {start} outside 0..{self.num_batches}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        # The permutation is 8 bytes per window; the only per-window memory, and only if shuffling.
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.windows.num_windows)
                 if self.shuffle and self.mode == "windows" else None)
        for b in range(start, self.num_batches):
            starts = self._starts(epoch, b, order)
            if len(starts):
                yield self._gather(starts)

    def _starts(self, epoch: int, b: int, order: np.ndarray | None) -> np.ndarray:
        """Token start positions of this rank's rows of global batch b."""
        lo = b * self.global_batch_size + self.rank * self.batch_size
        if self.mode == "random":
            rng = np.random.default_rng([self.seed, epoch, b])
            # high is exclusive: starts lie in [0, n - L - 1], so the target's last token exists.
            starts = rng.integers(0, len(self.tokens) - self.max_length, size=self.global_batch_size)
            return starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        hi = min(lo + self.batch_size, (b + 1) * self.global_batch_size, self.windows.num_windows)
        index = np.arange(lo, max(lo, hi))
        if order is not None:
            index = order[index]
        return index * self.stride

    def _gather(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # One fancy-indexing read of (B, L+1) tokens: only the needed pages of a memmap are touched.
        rows = self.tokens[starts[:, None] + np.arange(self.max_length + 1)]
        if self.vocab_size is not None and rows.max() >= self.vocab_size:
            raise UserError(f"the data has token id {int(rows.max())}, but the model's vocabulary "
                            f"has {self.vocab_size} ids (0..{self.vocab_size - 1})")
        rows = torch.from_numpy(rows.astype(np.int64))  # (B, L+1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # (B, L), (B, L)


_END = object()


def prefetch(batches: Iterator[tuple], pin: bool = False, depth: int = 2) -> Iterator[tuple]:
    """Yield `batches`, produced up to `depth` ahead by a background thread, so the training step
    never waits for data. numpy's gather from a memmap and torch's copies release the GIL, so
    the thread runs alongside the step. With pin, batches land in page-locked memory, which lets a
    GPU copy them with non_blocking=True while it still computes. Same batches, same order; close()
    the generator (or let it finish) to stop the thread."""
    ready: queue.Queue = queue.Queue(depth)
    done = threading.Event()

    def put(item) -> bool:
        while not done.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not put(tuple(t.pin_memory() if pin and torch.is_tensor(t) else t for t in batch)):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=work, name="gptforge-prefetch", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()
        thread.join()
