"""Building a corpus folder: INPUTs -> uint16 token shards + meta.json, streaming, on every core.

Text arrives from gptforge.sources as blocks; it is cut into pieces of about CHUNK_CHARS
characters at points where cutting leaves the tokens unchanged, each document is sent to the
train or val split, a pool of worker processes tokenizes the pieces, and the tokens are appended
in order to the split's shards (gptforge.shards). Memory stays a few pieces per worker whatever
the corpus size, and the output is the same token for token for any number of workers.

The folder is built in a sibling `.NAME.partial` and renamed into place when complete. A
checkpoint (after each completed shard, and every minute) records how far the input has been
written, so an interrupted prepare resumes from there when the same command runs again.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from hashlib import sha256
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .errors import UserError
from .files import replace_folder
from .shards import TOKEN_DTYPE, ShardWriter
from .sources import Source, SourceOptions, open_sources, warn_replaced
from .tokenizer import EOT_ID, get_tokenizer

VOCAB_SIZE = 50257
SPLIT_MODES = ("auto", "chars", "documents")
SPLITS = ("train", "val")
# Tokenize about this many characters per piece (and per task sent to a worker): large enough
# that sending it costs nothing next to tokenizing it, small enough that a few in flight per
# worker stay a few MB.
CHUNK_CHARS = 1 << 20
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per shard file
CHECKPOINT_SECONDS = 60.0  # an interrupted prepare loses at most this much work (or one shard)
PROGRESS_FILE = "progress.json"


# ----------------------------------------------------------------------------------------------
# Tokenizing

# A lone space or newline between two non-space characters starts a new pre-token in GPT-2's
# pattern (`'s|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`): no pre-token runs from
# a non-space character into the whitespace after it, and the one starting at the whitespace
# depends only on what follows. So cutting text just before such a character leaves its tokens
# unchanged. (Python's \s covers every character the tokenizer's \s does, so \S is safe.)
_SAFE_CUT = re.compile(r"(?<=\S)[ \n](?=\S)")


def cut_pieces(blocks: Iterable[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """Join text blocks and re-cut them into pieces of about `size` chars at safe points.

    The tokens of the pieces concatenate to the tokens of the whole. Cuts depend only on the
    text, never on how it arrived in blocks. Text with no safe point (no spaces or newlines
    between words) stays in one piece: correct, just larger.
    """
    buf, scan = "", size
    for block in blocks:
        buf += block
        while len(buf) > size:
            match = _SAFE_CUT.search(buf, scan)
            if match is None:
                scan = max(size, len(buf) - 1)  # the next search starts where this one gave up
                break
            yield buf[:match.start()]
            buf, scan = buf[match.start():], size
    if buf:
        yield buf


def encode_piece(text: str) -> np.ndarray:
    enc = get_tokenizer()
    try:
        # Straight into an array, with no Python list of ints: ~15% faster than encode_ordinary.
        # With no special token allowed it is exactly encode_ordinary ("<|endoftext|>" is text).
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=()).astype(TOKEN_DTYPE)
    except (AttributeError, UnicodeEncodeError):  # tiktoken < 0.8, or a lone surrogate (from JSON)
        return np.asarray(enc.encode_ordinary(text), dtype=TOKEN_DTYPE)


def _encode_texts(texts: list[str]) -> list[np.ndarray]:
    """A worker's task: the tokens of each text."""
    return [encode_piece(t) for t in texts]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, once


def _encode_in_order(batches: Iterable[tuple[Any, list[str]]], workers: int
                     ) -> Iterator[tuple[Any, list[np.ndarray]]]:
    """(tag, token arrays) for each (tag, texts) batch, in input order, on `workers` processes.

    Processes, not threads: tiktoken holds the GIL for part of its work; on 2 cores its own thread
    pool (encode_ordinary_batch) reached 1.3x one thread, processes 1.8x (benchmarks/README.md).
    At most 2 batches per worker are in flight, so the input is read only as fast as it is
    tokenized.
    """
    if workers <= 1:
        for tag, texts in batches:
            yield tag, _encode_texts(texts)
        return
    # fork shares the parent's loaded tokenizer; spawn would re-import torch in every worker.
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)
    try:
        pending: deque = deque()
        for tag, texts in batches:
            pending.append((tag, pool.submit(_encode_texts, texts)))
            if len(pending) > 2 * workers:
                tag, future = pending.popleft()
                yield tag, future.result()
        while pending:
            tag, future = pending.popleft()
            yield tag, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers() -> int:
    """Every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# Train/val split


def val_documents(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """(n,) bool: which of n documents validate, about val_fraction of them, chosen by `seed` alone."""
    n_val = round(val_fraction * n)
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise UserError(f"split by documents needs more documents: {n} document(s) cannot give "
                        f"val_fraction {val_fraction} to validation and keep some for training")
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return is_val



def _resolve_split(split: str, n_docs: int | None, val_fraction: float, max_tokens: int | None) -> str:
    """`auto` -> chars for a single document (the reference recipe) or too few documents to hold
    out val_fraction of them whole; documents otherwise, and for streams of unknown length."""
    if split == "auto":
        whole_docs = n_docs is None or 1 <= round(n_docs * val_fraction) < n_docs
        return "documents" if max_tokens or whole_docs else "chars"
    if split == "chars" and (n_docs is None or max_tokens):
        raise UserError("--split chars needs the whole corpus up front; with --max-tokens or an hf: stream "
                        "use --split documents")
    return split


def _tagged_blocks(sources: list[Source], split: str, val_fraction: float, seed: int,
                   n_docs: int | None) -> Iterator[tuple[int, int, str]]:
    """(document index, split: 0 train / 1 val, text block) for every block of every document.

    chars: the first int((1 - val_fraction) * total chars) characters train, the rest validate
    (the total comes from a first reading of the inputs). documents: whole documents validate,
    val_fraction of them picked by `seed` when their number is known, else each with probability
    val_fraction from a generator seeded by `seed`: reproducible either way.
    """
    docs = (doc for source in sources for doc in source.documents())
    if split == "chars":
        total = sum(len(block) for doc in (d for s in sources for d in s.documents()) for block in doc.blocks)
        split_idx, seen = int((1.0 - val_fraction) * total), 0
        for i, doc in enumerate(docs):
            for block in doc.blocks:
                cut = min(max(split_idx - seen, 0), len(block))
                if cut:
                    yield i, 0, block[:cut]
                if cut < len(block):
                    yield i, 1, block[cut:]
                seen += len(block)
        return
    if n_docs is not None:
        is_val = val_documents(n_docs, val_fraction, seed)
        pick = lambda i: bool(is_val[i])  # noqa: E731
    else:
        rng = np.random.default_rng(seed)
        pick = lambda i: rng.random() < val_fraction  # noqa: E731  (called once per document, in order)
    for i, doc in enumerate(docs):
        split_id = int(pick(i))
        for block in doc.blocks:
            yield i, split_id, block


def _pieces(tagged: Iterable[tuple[int, int, str]]) -> Iterator[tuple[int, int, bool, str]]:
    """(document index, split, starts a document in its split, text) pieces of CHUNK_CHARS."""
    for (doc, split), group in itertools.groupby(tagged, key=lambda t: t[:2]):
        for k, piece in enumerate(cut_pieces((block for _, _, block in group), CHUNK_CHARS)):
            yield doc, split, k == 0, piece


def _batches(items: Iterable[tuple[Any, str]]) -> Iterator[tuple[list[Any], list[str]]]:
    """Group (tag, text) items into tasks of about CHUNK_CHARS characters (many short documents
    per task, so a task's overhead stays small)."""
    tags, texts, chars = [], [], 0
    for tag, text in items:
        tags.append(tag)
        texts.append(text)
        chars += len(text)
        if chars >= CHUNK_CHARS:
            yield tags, texts
            tags, texts, chars = [], [], 0
    if texts:
        yield tags, texts


# ----------------------------------------------------------------------------------------------
# Preparing a corpus folder


def _package_version() -> str | None:
    try:
        return metadata.version("gptforge")
    except metadata.PackageNotFoundError:
        return None


def _check_count(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON under a temporary name, on disk, then rename: never half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _lock(work: Path) -> Any:
    """Hold an exclusive lock on the work folder for this process's lifetime of the prepare."""
    handle = open(work / ".lock", "w")
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # not POSIX: no lock, as before
        pass
    except OSError:
        handle.close()
        raise UserError(f"another `gptforge prepare` is writing {work}; wait for it or stop it") from None
    return handle


def _resume_state(work: Path, fingerprint: str, shard_tokens: int) -> dict[str, Any] | None:
    """The checkpoint of an interrupted prepare of the same job in `work`, if its files are intact."""
    try:
        state = json.loads((work / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != fingerprint:
        return None
    if not all(ShardWriter.resumable(work, s, shard_tokens, state["tokens"][s]) for s in SPLITS):
        return None
    return state


def prepare_corpus(
    inputs: list[str] | str,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.1,
    split: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    max_tokens: int | None = None,
    options: SourceOptions | None = None,
) -> dict[str, Any]:
    """Tokenize INPUTS into out_dir (meta.json + train-NNNNN.bin / val-NNNNN.bin shards); return meta.

    split="chars": the last val_fraction of the characters validate (a document may straddle);
    split="documents": whole documents validate, picked reproducibly from `seed`;
    split="auto": chars for a single document or too few to hold out whole, documents otherwise.
    workers: tokenizing processes (default: every core); the output is the same for any number.
    max_tokens: stop after this many tokens in all (a cap for huge streams).
    The work happens in a sibling folder `.NAME.partial` renamed into place when complete, so
    out_dir appears whole or not at all. An interrupted prepare (Ctrl-C, kill, crash) keeps its
    work from the last checkpoint (each completed shard, and every minute): running the same
    command again resumes it; a different command starts afresh.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if split not in SPLIT_MODES:
        raise UserError(f"unknown split mode {split!r}; use one of {', '.join(SPLIT_MODES)}")
    _check_count("shard_tokens", shard_tokens)
    _check_count("max_tokens", max_tokens, optional=True)
    _check_count("workers", workers, optional=True)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} already exists and is not empty; "
                        "choose another or pass --overwrite")

    options = options or SourceOptions()
    sources = open_sources(inputs, options)
    counts = [s.count for s in sources]
    n_docs = None if None in counts else sum(counts)
    split = _resolve_split(split, n_docs, val_fraction, max_tokens)
    fingerprint = sha256(json.dumps(
        [2, [s.identity() for s in sources], split, val_fraction, seed, shard_tokens, max_tokens,
         CHUNK_CHARS, options.text_field, options.hf_split], default=str).encode()).hexdigest()

    work = out.parent / f".{out.name}.partial"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder next to {out}: {e.strerror or e}") from None
    lock = _lock(work)
    try:
        state = _resume_state(work, fingerprint, shard_tokens)
        if state is None:
            for stale in work.iterdir():  # an older attempt at another job, or one with no checkpoint
                if stale.name != ".lock":
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        else:
            written = sum(state["tokens"].values())
            print(f"resuming an interrupted prepare of {out} ({written:,} tokens already written)",
                  file=sys.stderr)
        meta = _prepare_in(work, sources, state, fingerprint, split=split, val_fraction=val_fraction,
                           seed=seed, n_docs=n_docs, workers=workers or default_workers(),
                           shard_tokens=shard_tokens, max_tokens=max_tokens, progress=progress)
        (work / ".lock").unlink()
        replace_folder(work, out)
    except BaseException as error:
        if isinstance(error, UserError) or not (work / PROGRESS_FILE).is_file():
            shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming (or inputs to fix first)
        else:
            print(f"note: the prepare stopped; its work so far is kept in {work}: run the same command "
                  "again to resume", file=sys.stderr)
        raise
    finally:
        lock.close()
    return meta


def _prepare_in(work: Path, sources: list[Source], state: dict[str, Any] | None, fingerprint: str, *,
                split: str, val_fraction: float, seed: int, n_docs: int | None, workers: int,
                shard_tokens: int, max_tokens: int | None, progress: bool) -> dict[str, Any]:
    """The streaming pipeline: read -> cut -> tokenize (in order, on workers) -> append to shards."""
    state = state or {"pieces": 0, "characters": 0, "documents": 0, "last_document": -1,
                      "tokens": {s: 0 for s in SPLITS}, "docs": {s: 0 for s in SPLITS}}
    writers = [ShardWriter(work, s, shard_tokens, state["tokens"][s]) for s in SPLITS]
    docs = [state["docs"][s] for s in SPLITS]
    skip = state["pieces"]  # pieces already in the shards (when resuming)
    done, chars, n_documents, last_doc = skip, state["characters"], state["documents"], state["last_document"]
    eot = np.array([EOT_ID], dtype=TOKEN_DTYPE)
    truncated = False

    def checkpoint() -> None:
        for w in writers:
            w.sync()
        _write_json(work / PROGRESS_FILE, {
            "fingerprint": fingerprint, "pieces": done, "characters": chars, "documents": n_documents,
            "last_document": last_doc, "tokens": {s: w.tokens for s, w in zip(SPLITS, writers)},
            "docs": dict(zip(SPLITS, docs))})

    sizes = [s.size for s in sources]
    bar = tqdm(total=None if None in sizes else sum(sizes), unit="char", unit_scale=True, desc="tokenizing",
               disable=not progress)
    pieces = enumerate(_pieces(_tagged_blocks(sources, split, val_fraction, seed, n_docs)))

    def todo() -> Iterator[tuple[Any, str]]:
        for i, (doc, split_id, first, text) in pieces:
            if i < skip:  # written before the interruption we resume from: read past it
                bar.update(len(text))
                continue
            yield (i, doc, split_id, first, len(text)), text

    results = _encode_in_order(_batches(todo()), workers)
    last_checkpoint = time.monotonic()
    try:
        for tags, arrays in results:
            for (i, doc, split_id, first, n_chars), tokens in zip(tags, arrays):
                if first:
                    tokens = np.concatenate([eot, tokens]) if docs[split_id] else tokens
                    docs[split_id] += 1
                    if doc != last_doc:
                        n_documents, last_doc = n_documents + 1, doc
                if max_tokens is not None:
                    room = max_tokens - sum(w.tokens for w in writers)
                    truncated = len(tokens) > room
                    tokens = tokens[:room]
                completed = writers[split_id].write(tokens)
                done, chars = i + 1, chars + n_chars
                bar.update(n_chars)
                if truncated:
                    break
                if completed or time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                    checkpoint()
                    last_checkpoint = time.monotonic()
            if truncated:
                break
    finally:
        results.close()  # stops the workers, also when stopping early
        bar.close()

    shards = {s: w.close() for s, w in zip(SPLITS, writers)}
    warn_replaced(sources)
    if chars == 0:
        raise UserError("the corpus is empty: the inputs contain no text")
    if writers[0].tokens == 0:
        raise UserError(f"no text went to the train split; lower val_fraction ({val_fraction}) "
                        "or give more documents")
    records = [s.record for s in sources]
    meta = {
        "format": "gptforge-corpus",
        "format_version": 2,
        "tokenizer": "gpt2",
        "vocab_size": VOCAB_SIZE,
        "eot_id": EOT_ID,
        "dtype": "uint16",
        "byte_order": "little",
        "split": split,
        "val_fraction": val_fraction,
        "seed": seed if split == "documents" else None,
        "tokens": {s: w.tokens for s, w in zip(SPLITS, writers)},
        "shard_tokens": shard_tokens,
        "shards": shards,
        "documents": {"train": docs[0], "val": docs[1], "total": n_documents},
        "characters": chars,
        "max_tokens": max_tokens,
        "truncated": truncated,
        "replaced_invalid_utf8": sum(r.get("replaced", 0) for r in records),
        "sources": records,
        "gutenberg_ids": [r["gutenberg_id"] for r in records if "gutenberg_id" in r],
        "gptforge_version": _package_version(),
    }
    (work / PROGRESS_FILE).unlink(missing_ok=True)
    _write_json(work / "meta.json", meta)
    return meta
