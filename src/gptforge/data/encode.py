"""Text to tokens, streaming and on every core: the one tokenizing pipeline behind `prepare` and
behind text given straight to `train` or `eval`.

Split-tagged text blocks (gptforge.text.split) are joined and re-cut into pieces of about
CHUNK_CHARS characters at points where cutting leaves the tokens unchanged; a pool of worker
processes tokenizes the pieces; the tokens come back in input order, each document's first piece
in a split preceded by <|endoftext|> (except the split's first). Memory stays a few pieces per
worker whatever the corpus size, and the tokens are the same for any number of workers.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from ..text.pieces import cut_pieces
from ..text.sources import warn_replaced
from ..text.split import open_split, tag_blocks
from ..tokenizer import Tokenizer, gpt2

# Tokenize about this many characters per piece (and per task sent to a worker): large enough
# that sending it costs nothing next to tokenizing it, small enough that a few in flight per
# worker stay a few MB.
CHUNK_CHARS = 1 << 20

_worker_tokenizer: Tokenizer | None = None  # a worker process's tokenizer, set once when it starts


def _start_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, once
    _worker_tokenizer = tokenizer


def _encode_texts(texts: list[str]) -> list[np.ndarray]:
    """A worker's task: the tokens of each text."""
    return [_worker_tokenizer.encode_array(t) for t in texts]


def _encode_in_order(batches: Iterable[tuple[Any, list[str]]], workers: int, tokenizer: Tokenizer
                     ) -> Iterator[tuple[Any, list[np.ndarray]]]:
    """(tag, token arrays) for each (tag, texts) batch, in input order, on `workers` processes.

    Processes, not threads: tiktoken holds the GIL for part of its work; on 2 cores its own thread
    pool (encode_ordinary_batch) reached 1.3x one thread, processes 1.8x (benchmarks/README.md).
    At most 2 batches per worker are in flight, so the input is read only as fast as it is
    tokenized. Each worker gets the tokenizer once, when it starts (under fork, the parent's
    loaded object itself), never per task.
    """
    if workers <= 1:
        for tag, texts in batches:
            yield tag, [tokenizer.encode_array(t) for t in texts]
        return
    # fork shares the parent's loaded tokenizer (loaded here, once); spawn would re-import torch
    # in every worker.
    tokenizer.encode("warm up")
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(tokenizer,))
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


def _tasks(items: Iterable[tuple[Any, str]]) -> Iterator[tuple[list[Any], list[str]]]:
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


@dataclass
class Piece:
    """A tokenized piece of one document, in one split."""

    index: int  # position among all pieces of the input, in order (an interrupted prepare resumes by it)
    document: int  # index of its document among all documents
    split: int  # 0 train, 1 val
    chars: int  # characters of text it came from
    tokens: np.ndarray  # preceded by <|endoftext|> when it starts a document, except the split's first


def encode_pieces(tagged: Iterable[tuple[int, int, str]], workers: int, docs_per_split: list[int],
                  tokenizer: Tokenizer, skip: int = 0, on_skip=None) -> Iterator[Piece]:
    """Tokenize (document, split, block) triples as Pieces, in order, on `workers` processes.

    docs_per_split counts the documents started in each split so far and is updated as pieces
    are yielded (a resumed prepare passes the counts it had). The first `skip` pieces were
    written before an interruption: they are read past (on_skip(chars) is called for each), not
    tokenized.
    """
    def pieces() -> Iterator[tuple[tuple[int, int, int, bool, int], str]]:
        index = itertools.count()
        for (doc, split), group in itertools.groupby(tagged, key=lambda t: t[:2]):
            blocks = (block for _, _, block in group)
            for k, text in enumerate(cut_pieces(blocks, CHUNK_CHARS, tokenizer.safe_cut)):
                i = next(index)
                if i >= skip:
                    yield (i, doc, split, k == 0, len(text)), text
                elif on_skip is not None:
                    on_skip(len(text))

    eot = np.array([tokenizer.eot_id], dtype=tokenizer.dtype)
    results = _encode_in_order(_tasks(pieces()), workers, tokenizer)
    try:
        for tags, arrays in results:
            for (i, doc, split, first, chars), tokens in zip(tags, arrays):
                if first:
                    if docs_per_split[split]:
                        tokens = np.concatenate([eot, tokens])
                    docs_per_split[split] += 1
                yield Piece(i, doc, split, chars, tokens)
    finally:
        results.close()  # stops the workers, also when the consumer stops early


def check_corpus(chars: int, train_tokens: int, val_fraction: float) -> None:
    """Refuse a corpus with no text at all, or none for training."""
    if chars == 0:
        raise UserError("the corpus is empty: the inputs contain no text")
    if train_tokens == 0:
        raise UserError(f"no text went to the train split; lower val_fraction ({val_fraction}) "
                        "or give more documents")


def tokenize(inputs: list[str] | str, val_fraction: float = 0.0, split: str = "chars", seed: int = 0,
             options=None, progress: bool = False, tokenizer: Tokenizer | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Train and val tokens of INPUTs (see gptforge.text.sources), in memory, split and joined
    exactly as `prepare` writes them to disk (with `tokenizer`, GPT-2's by default). With
    val_fraction 0 everything is in train."""
    from tqdm import tqdm

    tokenizer = tokenizer or gpt2()
    sources, split, n_docs = open_split(inputs, val_fraction, split, options)
    parts: tuple[list, list] = ([], [])
    chars = 0
    with tqdm(unit="char", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
        for piece in encode_pieces(tag_blocks(sources, split, val_fraction, seed, n_docs), 1, [0, 0], tokenizer):
            parts[piece.split].append(piece.tokens)
            chars += piece.chars
            bar.update(piece.chars)
    warn_replaced(sources)
    train, val = (np.concatenate(p) if p else np.zeros(0, dtype=tokenizer.dtype) for p in parts)
    check_corpus(chars, len(train), val_fraction)
    return train, val
