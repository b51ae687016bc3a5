"""Corpora and datasets: reading text, loading prepared corpora, training windows and batches.

A prepared corpus (written by gptforge.prepare) is a folder with `meta.json` and, per split,
token shards `train-00000.bin`, `train-00001.bin`, ..., `val-00000.bin`, ... (raw little-endian
uint16 GPT-2 token ids, documents separated by <|endoftext|>; meta.json lists them). Folders
from before shards (`train.bin`, `val.bin`) still load. Training reads the shards through
memory maps as one stream, so a corpus never has to fit in RAM, and windows are computed from
their index rather than stored, so stride 1 costs no more memory than stride = context length.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .config import TRAIN_CHOICES
from .errors import UserError
from .prepare import CHUNK_CHARS, SPLITS, VOCAB_SIZE, cut_pieces, encode_piece, prepare_corpus, val_documents
from .shards import TOKEN_DTYPE, ShardedTokens, TokenArray, open_tokens
from .sources import SourceOptions, decode_text, open_sources, warn_replaced
from .tokenizer import EOT_ID

__all__ = ["BatchLoader", "Corpus", "Documents", "ShardedTokens", "SourceOptions", "TokenWindows",
           "as_token_array", "decode_text", "encode_pieces", "encode_text", "load_corpus", "load_splits",
           "prepare_corpus", "read_documents", "text_file_splits"]


# ----------------------------------------------------------------------------------------------
# Reading text in memory (training's --data on text, and evaluation)


@dataclass
class Documents:
    """The documents of a corpus, iterable as (name, text) pairs, plus records of their sources."""

    docs: list[tuple[str, str]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)

    @property
    def replaced(self) -> int:
        return sum(s.get("replaced", 0) for s in self.sources)

    @property
    def chars(self) -> int:
        return sum(len(text) for _, text in self.docs)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.docs)

    def __len__(self) -> int:
        return len(self.docs)


def read_documents(inputs: list[str] | str, options: SourceOptions | None = None) -> Documents:
    """Read every INPUT (see gptforge.sources) into memory; one document per file, work or row.

    Files are decoded as UTF-8 with invalid bytes replaced (counted, and reported on stderr);
    a file with NUL bytes is refused. Empty documents are left out.
    """
    names = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    sources = open_sources(names, options)
    result = Documents()
    for source in sources:
        for doc in source.documents():
            text = "".join(doc.blocks)
            if text:  # an empty file adds nothing, not even a separator
                result.docs.append((doc.name, text))
        result.sources.append(source.record)
    warn_replaced(sources)
    if result.chars == 0:
        raise UserError(f"the corpus is empty: {', '.join(names)} contain(s) no text")
    return result


# ----------------------------------------------------------------------------------------------
# Tokenizing in memory


def _chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Pieces of one text whose tokens concatenate to the whole text's."""
    return cut_pieces([text], size)


def encode_text(text: str, bar: tqdm | None = None) -> np.ndarray:
    """Tokens of `text` (special tokens never produced) as a uint16 array, piece by piece."""
    parts = []
    for piece in _chunks(text):
        parts.append(encode_piece(piece))
        if bar is not None:
            bar.update(len(piece))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


def encode_pieces(pieces: list[str], bar: tqdm | None = None) -> np.ndarray:
    """Tokens of text pieces separated by <|endoftext|>, in memory, as prepare writes them."""
    eot = np.array([EOT_ID], dtype=TOKEN_DTYPE)
    parts = [part for i, piece in enumerate(pieces) for part in ([eot] if i else []) + [encode_text(piece, bar)]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


def _split_documents(docs: Documents, val_fraction: float, split: str, seed: int
                     ) -> tuple[list[str], list[str]]:
    """The text pieces of the train and val splits (in memory), each later joined with <|endoftext|>."""
    texts = [text for _, text in docs]
    if split == "chars":
        # As in the reference recipe: the first int(train_ratio * n) characters train, the rest
        # validate. n counts document characters only (separators are not text), so for a single
        # file this is exactly `split_idx = int(0.9 * len(text))`.
        split_idx = int((1.0 - val_fraction) * sum(map(len, texts)))
        train, val, offset = [], [], 0
        for text in texts:
            cut = min(max(split_idx - offset, 0), len(text))
            train.append(text[:cut])
            val.append(text[cut:])
            offset += len(text)
        # The one document that straddles the cut appears in both lists, as head and tail.
        return [t for t in train if t], [t for t in val if t]
    if split == "documents":
        is_val = val_documents(len(texts), val_fraction, seed)
        return [t for t, v in zip(texts, is_val) if not v], [t for t, v in zip(texts, is_val) if v]
    raise UserError(f"unknown split mode {split!r}; use chars or documents")




# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class Corpus:
    """A prepared corpus: its splits as memory-mapped uint16 token streams, and its meta.json."""

    path: Path
    train: TokenArray
    val: TokenArray
    meta: dict[str, Any]


def _split_files(folder: Path, meta: dict[str, Any], split: str, count: int) -> list[tuple[Path, int]]:
    """(file, tokens) of a split: the shards meta.json lists, or a pre-shard `SPLIT.bin`."""
    if "shards" not in meta:
        return [(folder / f"{split}.bin", count)]
    entries = (meta["shards"] or {}).get(split)
    valid = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("file"), str) and Path(e["file"]).name == e["file"]
        and isinstance(e.get("tokens"), int) and e["tokens"] >= 0 for e in entries)
    if not valid or sum(e["tokens"] for e in entries) != count:
        raise UserError(f"{folder / 'meta.json'} does not list the {split} shards consistently with "
                        "its token count; prepare the corpus again")
    return [(folder / e["file"], e["tokens"]) for e in entries]


def load_corpus(path: str | os.PathLike) -> Corpus:
    """Open a folder written by prepare_corpus, checking it is complete and for the GPT-2 tokenizer."""
    folder = Path(path)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{folder} is not a prepared corpus (no meta.json); run `gptforge prepare` first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is not valid JSON ({e}); prepare the corpus again") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} is not a corpus description (expected a JSON object)")
    if meta.get("tokenizer") != "gpt2" or meta.get("vocab_size") != VOCAB_SIZE:
        raise UserError(f"{folder} was prepared for tokenizer {meta.get('tokenizer')!r} with vocab size "
                        f"{meta.get('vocab_size')}; gptforge needs gpt2 with {VOCAB_SIZE}")
    if meta.get("dtype", "uint16") != "uint16":
        raise UserError(f"{meta_path}: unsupported token dtype {meta.get('dtype')!r} (expected uint16)")

    arrays = {}
    for split in SPLITS:
        count = (meta.get("tokens") or {}).get(split)
        if not isinstance(count, int) or count < 0:
            raise UserError(f"{meta_path} has no valid token count for the {split} split")
        files = _split_files(folder, meta, split, count)
        for bin_path, n in files:
            if not bin_path.is_file():
                raise UserError(f"{bin_path} is missing; prepare the corpus again")
            size = bin_path.stat().st_size
            if size != n * TOKEN_DTYPE.itemsize:
                raise UserError(f"{bin_path} has {size} bytes but meta.json says {n} tokens "
                                f"({n * TOKEN_DTYPE.itemsize} bytes); the file is truncated or corrupt, "
                                "prepare the corpus again")
        arrays[split] = open_tokens([p for p, _ in files], [n for _, n in files])
    if len(arrays["train"]) == 0:
        raise UserError(f"{folder} has an empty train split")
    return Corpus(folder, arrays["train"], arrays["val"], meta)


def text_file_splits(path: str | os.PathLike, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Train and val tokens of one plain text file, split by characters like the reference recipe.

    The text is cut at `int((1 - val_fraction) * len(text))` first and each part tokenized on its
    own, exactly as `split_idx = int(0.9 * len(text))` followed by two tokenizer calls.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"no such file: {path}")
    try:
        data = file.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror or e}") from None
    text, replaced = decode_text(data, str(file))
    if replaced:
        print(f"warning: {file}: replaced {replaced} invalid UTF-8 sequence(s) with U+FFFD", file=sys.stderr)
    if not text:
        raise UserError(f"{path} is empty")
    split_idx = int((1.0 - val_fraction) * len(text))
    return encode_text(text[:split_idx]), encode_text(text[split_idx:])


def load_splits(spec: str, val_fraction: float = 0.1) -> tuple[TokenArray, TokenArray]:
    """Train and val tokens of anything training accepts as --data.

    A prepared corpus folder (with meta.json) is memory-mapped; a single text file is split by
    characters exactly like the reference recipe; other text (a folder, a glob, builtin:NAME) is
    read as documents, split by characters and tokenized in memory like `prepare` would.
    """
    path = Path(spec).expanduser()
    if (path / "meta.json").is_file():
        corpus = load_corpus(path)
        return corpus.train, corpus.val
    if path.is_file() and path.suffix not in (".jsonl", ".parquet"):
        return text_file_splits(path, val_fraction)
    train, val = _split_documents(read_documents([spec]), val_fraction, "chars", seed=0)
    return encode_pieces(train), encode_pieces(val)


# ----------------------------------------------------------------------------------------------
# Windows and batches


def as_token_array(tokens: Any) -> TokenArray:
    """An ndarray (a memmap stays a memmap) or sharded stream as it is; anything else via np.asarray."""
    return tokens if isinstance(tokens, (np.ndarray, ShardedTokens)) else np.asarray(tokens)


def _as_token_array(tokens: Any) -> TokenArray:
    array = as_token_array(tokens)  # no copy of the corpus
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    return array


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")


class TokenWindows(Dataset):
    """Sliding windows over a token stream, as in the reference GPTDatasetV1.

    Window k starts at i = k * stride for i in range(0, n - max_length, stride); its input is
    tokens[i:i+L] and its target tokens[i+1:i+L+1]. Starts are computed, never stored, so memory
    does not depend on the number of windows.
    """

    def __init__(self, tokens: Any, max_length: int, stride: int):
        _check_positive(max_length=max_length, stride=stride)
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
        _check_positive(batch_size=batch_size, world_size=world_size)
        if mode not in TRAIN_CHOICES["sampling"]:
            raise UserError(f"unknown batch mode {mode!r}; use 'windows' or 'random'")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world size {world_size}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {seed!r}")
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


def prefetch(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], pin: bool = False,
             depth: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
            for x, y in batches:
                if not put((x.pin_memory(), y.pin_memory()) if pin else (x, y)):
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
