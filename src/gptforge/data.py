"""Corpora and datasets: text files -> uint16 token files (+ meta.json) -> training windows.

A prepared corpus is a folder with `train.bin` and `val.bin` (raw little-endian uint16 GPT-2 token
ids, documents separated by <|endoftext|>) and `meta.json`. Training reads the .bin files through
memory maps, so a corpus never has to fit in RAM, and windows are computed from their index rather
than stored, so stride 1 costs no more memory than stride = context length.
"""

from __future__ import annotations

import glob
import hashlib
import json
import lzma
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import UserError
from .tokenizer import EOT_ID, get_tokenizer

TOKEN_DTYPE = np.dtype("<u2")  # GPT-2 ids (< 65536) stored little-endian on every platform
VOCAB_SIZE = 50257
BUILTIN_PREFIX = "builtin:"
BUILTIN_CORPORA = {"shakespeare": "shakespeare.json.xz"}
SPLIT_MODES = ("chars", "documents")
# Tokenize about this many characters at a time: the progress bar moves, and tiktoken never builds
# one huge Python list of ints for a large single-file corpus.
CHUNK_CHARS = 1 << 20


# ----------------------------------------------------------------------------------------------
# Reading text


@dataclass
class SourceFile:
    """One input file as read from disk (recorded in meta.json so a corpus can be traced back)."""

    path: str
    bytes: int
    sha256: str
    replaced: int  # invalid UTF-8 sequences replaced by U+FFFD


@dataclass
class Documents:
    """The documents of a corpus, iterable as (name, text) pairs, plus the files they came from."""

    docs: list[tuple[str, str]] = field(default_factory=list)
    sources: list[SourceFile] = field(default_factory=list)

    @property
    def replaced(self) -> int:
        return sum(s.replaced for s in self.sources)

    @property
    def chars(self) -> int:
        return sum(len(text) for _, text in self.docs)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.docs)

    def __len__(self) -> int:
        return len(self.docs)


def decode_text(data: bytes, name: str) -> tuple[str, int]:
    """Decode bytes as UTF-8, replacing invalid sequences; return (text, number replaced)."""
    if b"\x00" in data:
        # Text never contains NUL; this is an image, a model file, UTF-16 text, ...
        raise UserError(f"{name} looks like a binary file (it contains NUL bytes); give UTF-8 text files")
    text = data.decode("utf-8", errors="replace")
    # Every U+FFFD in the text is either a replacement or a genuine, valid U+FFFD (bytes EF BF BD)
    # from the file; a valid sequence is never swallowed by a preceding invalid one, because
    # UTF-8 is self-synchronizing, so the difference counts the replacements exactly.
    return text, text.count("\ufffd") - data.count("\ufffd".encode())


def _expand_input(spec: str) -> list[Path]:
    """The files one INPUT names: a file, a folder (its *.txt files, recursively) or a glob."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"folder {spec} contains no .txt files")
        return files
    if any(c in spec for c in "*?["):
        matches = glob.glob(os.path.expanduser(spec), recursive=True)
        files = sorted(Path(p) for p in matches if os.path.isfile(p))
        if not files:
            raise UserError(f"pattern {spec!r} matches no files")
        return files
    raise UserError(f"no such file or folder: {spec}")


def _read_builtin(spec: str) -> Documents:
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_CORPORA:
        known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_CORPORA)
        raise UserError(f"unknown builtin corpus {spec!r}; available: {known}")
    data = (resources.files("gptforge") / "corpora" / BUILTIN_CORPORA[name]).read_bytes()
    works = json.loads(lzma.decompress(data))["documents"]
    return Documents(
        docs=[(f"{spec}/{w['name']}", w["text"]) for w in works],
        sources=[SourceFile(spec, len(data), hashlib.sha256(data).hexdigest(), 0)],
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def read_documents(inputs: list[str] | str) -> Documents:
    """Read every INPUT (file, folder, glob or builtin:NAME); one document per file or work.

    Files are decoded as UTF-8 with invalid bytes replaced (counted, and reported on stderr);
    a file with NUL bytes is refused. A file reached twice (a folder and a glob) is read once.
    """
    inputs = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    if not inputs:
        raise UserError("no input given: name text files, folders, glob patterns or builtin:shakespeare")
    result, seen = Documents(), set()
    for spec in inputs:
        if spec.startswith(BUILTIN_PREFIX):
            if spec not in seen:
                seen.add(spec)
                builtin = _read_builtin(spec)
                result.docs += builtin.docs
                result.sources += builtin.sources
            continue
        for path in _expand_input(spec):
            key = str(path.resolve())
            if key in seen:
                continue
            seen.add(key)
            data = _read_bytes(path)
            text, replaced = decode_text(data, str(path))
            if replaced:
                print(f"warning: {path}: replaced {replaced} invalid UTF-8 sequence(s) with U+FFFD",
                      file=sys.stderr)
            digest = hashlib.sha256(data).hexdigest()
            result.sources.append(SourceFile(str(path), len(data), digest, replaced))
            if text:  # an empty file adds nothing, not even a separator
                result.docs.append((str(path), text))
    if result.chars == 0:
        raise UserError(f"the corpus is empty: {', '.join(inputs)} contain(s) no text")
    return result


# ----------------------------------------------------------------------------------------------
# Tokenizing


def _chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut text into pieces of about `size` chars whose tokens concatenate to the whole text's.

    GPT-2's pre-tokenizer never joins a lone "\\n" that sits between two non-space characters
    with its neighbours, so cutting just after such a newline leaves the token stream unchanged.
    Where no such newline exists the rest of the text stays in one piece (correct, just slower).
    """
    def safe_cut(i: int) -> bool:
        return 0 < i < len(text) - 1 and not text[i - 1].isspace() and not text[i + 1].isspace()

    start = 0
    while len(text) - start > size:
        cut = text.find("\n", start + size)
        while cut != -1 and not safe_cut(cut):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        yield text[start:cut + 1]
        start = cut + 1
    yield text[start:]


def encode_text(text: str, bar: tqdm | None = None) -> np.ndarray:
    """Tokens of `text` (special tokens never produced) as a uint16 array, chunk by chunk."""
    enc = get_tokenizer()
    parts = []
    for chunk in _chunks(text):
        parts.append(np.asarray(enc.encode_ordinary(chunk), dtype=TOKEN_DTYPE))
        if bar is not None:
            bar.update(len(chunk))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


def _split_documents(docs: Documents, val_fraction: float, split: str, seed: int
                     ) -> tuple[list[str], list[str]]:
    """The text pieces of the train and val splits, each list later joined with <|endoftext|>."""
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
        n_val = round(val_fraction * len(texts))
        if val_fraction > 0:
            n_val = max(n_val, 1)
        if n_val >= len(texts):
            raise UserError(f"split by documents needs more documents: {len(texts)} document(s) cannot give "
                            f"val_fraction {val_fraction} to validation and keep some for training")
        # A permutation seeded only by `seed`: the same inputs always give the same split.
        val_ids = set(np.random.default_rng(seed).permutation(len(texts))[:n_val].tolist())
        return ([t for i, t in enumerate(texts) if i not in val_ids],
                [t for i, t in enumerate(texts) if i in val_ids])
    raise UserError(f"unknown split mode {split!r}; use one of {', '.join(SPLIT_MODES)}")


def encode_pieces(pieces: list[str], bar: tqdm | None = None) -> np.ndarray:
    """Tokens of text pieces separated by <|endoftext|>, in memory, as prepare writes them."""
    eot = np.array([EOT_ID], dtype=TOKEN_DTYPE)
    parts = [part for i, piece in enumerate(pieces) for part in ([eot] if i else []) + [encode_text(piece, bar)]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


def _write_split(pieces: list[str], path: Path, bar: tqdm) -> int:
    """Tokenize pieces into `path`, separated by <|endoftext|>; return the number of tokens."""
    n = 0
    with open(path, "wb") as f:
        for i, piece in enumerate(pieces):
            tokens = encode_text(piece, bar)
            if i > 0:
                tokens = np.concatenate([np.array([EOT_ID], dtype=TOKEN_DTYPE), tokens])
            tokens.tofile(f)
            n += len(tokens)
    return n


def _package_version() -> str | None:
    try:
        return metadata.version("gptforge")
    except metadata.PackageNotFoundError:
        return None


def prepare_corpus(
    inputs: list[str] | str,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.1,
    split: str = "chars",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize INPUTS into out_dir/{train.bin,val.bin,meta.json}; return the meta dict.

    split="chars": the last val_fraction of the characters validate (a document may straddle);
    split="documents": whole documents, picked reproducibly from `seed`, validate.
    The folder appears complete or not at all: it is built under a temporary sibling name and
    renamed into place, so a failure or Ctrl-C never leaves half a corpus or harms an old one.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if split not in SPLIT_MODES:
        raise UserError(f"unknown split mode {split!r}; use one of {', '.join(SPLIT_MODES)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} already exists and is not empty; "
                        "choose another or pass --overwrite")

    docs = read_documents(inputs)
    train_pieces, val_pieces = _split_documents(docs, val_fraction, split, seed)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot create the output folder next to {out}: {e.strerror or e}") from None
    try:
        bar = tqdm(total=docs.chars, unit="char", unit_scale=True, desc="tokenizing", disable=not progress)
        with bar:
            n_train = _write_split(train_pieces, tmp / "train.bin", bar)
            n_val = _write_split(val_pieces, tmp / "val.bin", bar)
        meta = {
            "format": "gptforge-corpus",
            "format_version": 1,
            "tokenizer": "gpt2",
            "vocab_size": VOCAB_SIZE,
            "eot_id": EOT_ID,
            "dtype": "uint16",
            "byte_order": "little",
            "split": split,
            "val_fraction": val_fraction,
            "seed": seed if split == "documents" else None,
            "tokens": {"train": n_train, "val": n_val},
            "documents": {"train": len(train_pieces), "val": len(val_pieces), "total": len(docs)},
            "characters": docs.chars,
            "replaced_invalid_utf8": docs.replaced,
            "sources": [vars(s) for s in docs.sources],
            "gptforge_version": _package_version(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out is set aside first and only deleted once tmp is in place."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "corpus")
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / "corpus", out)  # put the previous corpus back as it was
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class Corpus:
    """A prepared corpus: memory-mapped uint16 token arrays and its meta.json."""

    path: Path
    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]


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
    for split in ("train", "val"):
        count = (meta.get("tokens") or {}).get(split)
        if not isinstance(count, int) or count < 0:
            raise UserError(f"{meta_path} has no valid token count for the {split} split")
        bin_path = folder / f"{split}.bin"
        if not bin_path.is_file():
            raise UserError(f"{bin_path} is missing; prepare the corpus again")
        size = bin_path.stat().st_size
        if size != count * TOKEN_DTYPE.itemsize:
            raise UserError(f"{bin_path} has {size} bytes but meta.json says {count} tokens "
                            f"({count * TOKEN_DTYPE.itemsize} bytes); the file is truncated or corrupt, "
                            "prepare the corpus again")
        # np.memmap cannot map an empty file; an empty split is a plain empty array.
        arrays[split] = (np.memmap(bin_path, dtype=TOKEN_DTYPE, mode="r", shape=(count,)) if count
                         else np.zeros(0, dtype=TOKEN_DTYPE))
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
    text, replaced = decode_text(_read_bytes(file), str(file))
    if replaced:
        print(f"warning: {file}: replaced {replaced} invalid UTF-8 sequence(s) with U+FFFD", file=sys.stderr)
    if not text:
        raise UserError(f"{path} is empty")
    split_idx = int((1.0 - val_fraction) * len(text))
    return encode_text(text[:split_idx]), encode_text(text[split_idx:])


def load_splits(spec: str, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Train and val tokens of anything training accepts as --data.

    A prepared corpus folder (with meta.json) is memory-mapped; a single text file is split by
    characters exactly like the reference recipe; other text (a folder, a glob, builtin:NAME) is
    read as documents, split by characters and tokenized in memory like `prepare` would.
    """
    path = Path(spec).expanduser()
    if (path / "meta.json").is_file():
        corpus = load_corpus(path)
        return corpus.train, corpus.val
    if path.is_file():
        return text_file_splits(path, val_fraction)
    train, val = _split_documents(read_documents([spec]), val_fraction, "chars", seed=0)
    return encode_pieces(train), encode_pieces(val)


# ----------------------------------------------------------------------------------------------
# Windows and batches


def _as_token_array(tokens: Any) -> np.ndarray:
    # np.asarray keeps a memmap (or any ndarray) as a view: no copy of the corpus.
    array = tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens)
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
    ):
        _check_positive(batch_size=batch_size, world_size=world_size)
        if mode not in ("windows", "random"):
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
        rows = torch.from_numpy(rows.astype(np.int64))  # (B, L+1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()  # (B, L), (B, L)
