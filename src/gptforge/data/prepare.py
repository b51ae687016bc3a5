"""Building a corpus folder: INPUTs -> token shards + meta.json, streaming, on every core.

Documents come from gptforge.text.sources, go to the train or val split (text.split), are
tokenized in order on worker processes (data.encode) by GPT-2's tokenizer or one of your own, and
their tokens are appended to the split's shards (data.shards: uint16, or uint32 for a vocabulary
over 65,536). A tokenizer other than GPT-2's is copied into the folder (`tokenizer/`), so the
corpus is self-contained. Memory stays a few pieces per worker whatever the corpus size, and
the output is the same token for token for any number of workers.

The folder is built in a sibling `.NAME.partial` and renamed into place when complete. A
checkpoint (after each completed shard, and every minute) records how far the input has been
written, so an interrupted prepare resumes from there when the same command runs again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from hashlib import sha256
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..checks import require_int, require_number
from ..errors import UserError
from ..files import check_output_folder, replace_folder, write_json
from ..text.sources import Source, SourceOptions, warn_replaced
from ..text.split import SPLITS, open_split, tag_blocks
from ..tokenizer import TOKENIZER_DIR, Tokenizer, gpt2
from .encode import CHUNK_CHARS, check_corpus, default_workers, encode_pieces
from .shards import ShardWriter, dtype_name

DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per shard file
CHECKPOINT_SECONDS = 60.0  # an interrupted prepare loses at most this much work (or one shard)
PROGRESS_FILE = "progress.json"


# ----------------------------------------------------------------------------------------------
# Preparing a corpus folder


def _package_version() -> str | None:
    try:
        return metadata.version("gptforge")
    except metadata.PackageNotFoundError:
        return None


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


def _resume_state(work: Path, fingerprint: str, shard_tokens: int, tokenizer: Tokenizer) -> dict[str, Any] | None:
    """The checkpoint of an interrupted prepare of the same job in `work`, if its files are intact."""
    try:
        state = json.loads((work / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != fingerprint:
        return None
    if not all(ShardWriter.resumable(work, s, shard_tokens, state["tokens"][s], tokenizer.dtype) for s in SPLITS):
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
    tokenizer: Tokenizer | None = None,
) -> dict[str, Any]:
    """Tokenize INPUTS into out_dir (meta.json + train-NNNNN.bin / val-NNNNN.bin shards); return meta.

    split="chars": the last val_fraction of the characters validate (a document may straddle);
    split="documents": whole documents validate, picked reproducibly from `seed`;
    split="auto": chars for a single document or too few to hold out whole, documents otherwise.
    workers: tokenizing processes (default: every core); the output is the same for any number.
    max_tokens: stop after this many tokens in all (a cap for huge streams).
    tokenizer: GPT-2's by default (see gptforge.tokenizer.load_tokenizer for your own).
    The work happens in a sibling folder `.NAME.partial` renamed into place when complete, so
    out_dir appears whole or not at all. An interrupted prepare (Ctrl-C, kill, crash) keeps its
    work from the last checkpoint (each completed shard, and every minute): running the same
    command again resumes it; a different command starts afresh.
    """
    require_number("val_fraction", val_fraction, minimum=0.0, below=1.0)
    require_int("shard_tokens", shard_tokens)
    require_int("max_tokens", max_tokens, optional=True)
    require_int("workers", workers, optional=True)
    out = Path(out_dir)
    check_output_folder(out, overwrite)
    tokenizer = tokenizer or gpt2()

    options = options or SourceOptions()
    sources, split, n_docs = open_split(inputs, val_fraction, split, options, max_tokens)
    fingerprint = sha256(json.dumps(
        [2, [s.identity() for s in sources], split, val_fraction, seed, shard_tokens, max_tokens,
         CHUNK_CHARS, options.text_field, options.hf_split, tokenizer.describe()], default=str).encode()).hexdigest()

    work = out.parent / f".{out.name}.partial"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder next to {out}: {e.strerror or e}") from None
    lock = _lock(work)
    try:
        state = _resume_state(work, fingerprint, shard_tokens, tokenizer)
        if state is None:
            for stale in work.iterdir():  # an older attempt at another job, or one with no checkpoint
                if stale.name != ".lock":
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        else:
            written = sum(state["tokens"].values())
            print(f"resuming an interrupted prepare of {out} ({written:,} tokens already written)",
                  file=sys.stderr)
        meta = _prepare_in(work, sources, state, fingerprint, tokenizer, split=split, val_fraction=val_fraction,
                           seed=seed, n_docs=n_docs, workers=workers or default_workers(),
                           shard_tokens=shard_tokens, max_tokens=max_tokens, progress=progress)
        tokenizer.save(work / TOKENIZER_DIR)
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


def _prepare_in(work: Path, sources: list[Source], state: dict[str, Any] | None, fingerprint: str,
                tokenizer: Tokenizer, *,
                split: str, val_fraction: float, seed: int, n_docs: int | None, workers: int,
                shard_tokens: int, max_tokens: int | None, progress: bool) -> dict[str, Any]:
    """The streaming pipeline: read -> split -> tokenize (in order, on workers) -> append to shards."""
    state = state or {"pieces": 0, "characters": 0, "documents": 0, "last_document": -1,
                      "tokens": {s: 0 for s in SPLITS}, "docs": {s: 0 for s in SPLITS}}
    writers = [ShardWriter(work, s, shard_tokens, state["tokens"][s], tokenizer.dtype) for s in SPLITS]
    docs = [state["docs"][s] for s in SPLITS]
    done, chars = state["pieces"], state["characters"]
    n_documents, last_doc = state["documents"], state["last_document"]
    truncated = False

    def checkpoint() -> None:
        for w in writers:
            w.sync()
        write_json(work / PROGRESS_FILE, {
            "fingerprint": fingerprint, "pieces": done, "characters": chars, "documents": n_documents,
            "last_document": last_doc, "tokens": {s: w.tokens for s, w in zip(SPLITS, writers)},
            "docs": dict(zip(SPLITS, docs))})

    sizes = [s.size for s in sources]
    bar = tqdm(total=None if None in sizes else sum(sizes), unit="char", unit_scale=True, desc="tokenizing",
               disable=not progress)
    pieces = encode_pieces(tag_blocks(sources, split, val_fraction, seed, n_docs), workers, docs, tokenizer,
                           skip=done, on_skip=bar.update)
    last_checkpoint = time.monotonic()
    try:
        for piece in pieces:
            tokens = piece.tokens
            if piece.document != last_doc:
                n_documents, last_doc = n_documents + 1, piece.document
            if max_tokens is not None:
                room = max_tokens - sum(w.tokens for w in writers)
                truncated = len(tokens) > room
                tokens = tokens[:room]
            completed = writers[piece.split].write(tokens)
            done, chars = piece.index + 1, chars + piece.chars
            bar.update(piece.chars)
            if truncated:
                break
            if completed or time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                checkpoint()
                last_checkpoint = time.monotonic()
    finally:
        pieces.close()  # stops the workers, also when stopping early
        bar.close()

    shards = {s: w.close() for s, w in zip(SPLITS, writers)}
    warn_replaced(sources)
    check_corpus(chars, writers[0].tokens, val_fraction)
    records = [s.record for s in sources]
    meta = {
        "format": "gptforge-corpus",
        "format_version": 4,
        "tokenizer": tokenizer.describe(),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype_name(tokenizer.dtype),
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
    write_json(work / "meta.json", meta)
    return meta
