"""Token shards on disk: files of raw ids written in order, read back as one memory-mapped stream.

A split of a prepared corpus is a list of raw little-endian uint16 files (`train-00000.bin`, ...;
uint32 for a vocabulary of more than 65,536 ids: see Tokenizer.dtype), each `shard_tokens` long
except the last. `ShardWriter` fills them one after the other without
holding more than one write in memory; `open_tokens` maps them and joins them into one 1-D array
without reading them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..files import sha256_file

TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}  # little-endian on every platform


def dtype_name(dtype: np.dtype) -> str:
    """The name meta.json records for a shard dtype ("uint16" or "uint32")."""
    return {v: k for k, v in TOKEN_DTYPES.items()}[np.dtype(dtype).newbyteorder("<")]


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


class ShardedTokens:
    """Several token arrays (memory maps, of one dtype) that index like one 1-D array.

    Supports what training and evaluation use: len(), an int, a slice with step 1 or an integer
    array of any shape (fancy indexing, across shard boundaries), np.asarray() and .astype().
    Only the indexed tokens are read; np.asarray() and .astype() read everything.
    """

    ndim = 1

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = [a for a in arrays if len(a)]
        self.dtype = self.arrays[0].dtype if self.arrays else np.dtype("<u2")
        # offsets[s] is the position of shard s's first token in the joined stream.
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    def __repr__(self) -> str:
        return f"ShardedTokens({len(self)} tokens in {len(self.arrays)} shards)"

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, max(start, stop))
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        index = np.asarray(key)
        if not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"only integers, slices and integer arrays index a token stream, not {index.dtype}")
        n = len(self)
        index = np.where(index < 0, index + n, index)
        if index.size and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"token index out of range for a stream of {n} tokens")
        shard = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty(index.shape, dtype=self.dtype)
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self.arrays[s][index[mask] - self.offsets[s]]
        return out

    def _range(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts = []
        for s in range(max(first, 0), len(self.arrays)):
            lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
            if lo >= stop:
                break
            parts.append(self.arrays[s][max(start, lo) - lo:min(stop, hi) - lo])
        if len(parts) == 1:
            return parts[0]  # a view into one shard, like a memmap slice
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        joined = self._range(0, len(self))
        return joined.astype(dtype) if dtype is not None else np.array(joined)

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self, dtype=dtype)


TokenArray = Union[np.ndarray, ShardedTokens]


def open_tokens(paths: list[Path], counts: list[int], dtype: np.dtype = TOKEN_DTYPES["uint16"]) -> TokenArray:
    """Map token files of known lengths as one stream: a plain memmap when there is one file."""
    arrays = [np.memmap(p, dtype=dtype, mode="r", shape=(c,)) for p, c in zip(paths, counts) if c]
    if not arrays:
        return np.zeros(0, dtype=dtype)  # np.memmap cannot map an empty file
    return arrays[0] if len(arrays) == 1 else ShardedTokens(arrays)


class ShardWriter:
    """Appends tokens (as `dtype`) to `folder/{split}-NNNNN.bin`, starting a new file every `shard_tokens`.

    `tokens` counts everything written so far; a writer can be reopened at any earlier count
    (after an interruption): complete shards are kept, the current one is cut back to that
    count and later ones are deleted. Files are plain appends, so memory stays one write.
    """

    def __init__(self, folder: Path, split: str, shard_tokens: int, tokens: int = 0,
                 dtype: np.dtype = TOKEN_DTYPES["uint16"]):
        self.folder, self.split, self.shard_tokens, self.dtype = folder, split, shard_tokens, np.dtype(dtype)
        self.tokens = tokens
        current = tokens // shard_tokens
        for stale in folder.glob(f"{split}-*.bin"):  # written after the checkpoint we resume from
            if int(stale.stem.rsplit("-", 1)[1]) > current:
                stale.unlink()
        self.file = open(self._path(current), "ab")
        self.file.truncate((tokens % shard_tokens) * self.dtype.itemsize)
        self.file.seek(0, os.SEEK_END)

    def _path(self, index: int) -> Path:
        return self.folder / shard_name(self.split, index)

    @staticmethod
    def resumable(folder: Path, split: str, shard_tokens: int, tokens: int, dtype: np.dtype) -> bool:
        """Whether the files a writer at `tokens` needs are on disk (complete shards full-sized)."""
        full, rest = divmod(tokens, shard_tokens)
        complete = [folder / shard_name(split, i) for i in range(full)]
        current = folder / shard_name(split, full)  # may hold more than `rest`: cut back on reopening
        size = np.dtype(dtype).itemsize
        return (all(p.is_file() and p.stat().st_size == shard_tokens * size for p in complete)
                and current.is_file() and current.stat().st_size >= rest * size)

    def write(self, tokens: np.ndarray) -> bool:
        """Append tokens; return True if a shard was completed."""
        completed = False
        while len(tokens):
            room = self.shard_tokens - self.tokens % self.shard_tokens
            self.file.write(np.ascontiguousarray(tokens[:room], dtype=self.dtype).data)
            self.tokens += min(room, len(tokens))
            tokens = tokens[room:]
            if self.tokens % self.shard_tokens == 0:  # full: the next token starts a new shard
                self.file.close()
                self.file = open(self._path(self.tokens // self.shard_tokens), "wb")
                completed = True
        return completed

    def sync(self) -> None:
        """Put everything written so far on disk (before a checkpoint records it)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> list[dict[str, Any]]:
        """Close the writer, drop a trailing empty file, and list the shards as meta.json records
        (file, tokens, bytes, sha256: what loading checks)."""
        self.file.close()
        full, rest = divmod(self.tokens, self.shard_tokens)
        if rest == 0:
            self._path(full).unlink(missing_ok=True)
        counts = [self.shard_tokens] * full + ([rest] if rest else [])
        return [{"file": shard_name(self.split, i), "tokens": n, "bytes": n * self.dtype.itemsize,
                 "sha256": sha256_file(self._path(i))} for i, n in enumerate(counts)]
