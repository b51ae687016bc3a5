"""The train/val split: which text of a corpus trains and which validates.

One implementation, streaming, for `prepare` and for text tokenized in memory alike:
- chars: the first int((1 - val_fraction) * total characters) train and the rest validate, so for
  a single file this is exactly the reference recipe's `split_idx = int(0.9 * len(text))` (a
  document may straddle the cut: its head trains, its tail validates);
- documents: whole documents validate, val_fraction of them picked by the seed when their number
  is known, else each with probability val_fraction (a stream): reproducible either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import UserError
from .sources import Source, SourceOptions, open_sources

SPLITS = ("train", "val")
SPLIT_MODES = ("auto", "chars", "documents")


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


def resolve_split(split: str, n_docs: int | None, val_fraction: float, max_tokens: int | None) -> str:
    """`auto` -> chars for a single document (the reference recipe) or too few documents to hold
    out val_fraction of them whole; documents otherwise, and for streams of unknown length."""
    if split not in SPLIT_MODES:
        raise UserError(f"unknown split mode {split!r}; use one of {', '.join(SPLIT_MODES)}")
    if split == "auto":
        whole_docs = n_docs is None or 1 <= round(n_docs * val_fraction) < n_docs
        return "documents" if max_tokens or whole_docs else "chars"
    if split == "chars" and (n_docs is None or max_tokens):
        raise UserError("--split chars needs the whole corpus up front; with --max-tokens or an hf: stream "
                        "use --split documents")
    return split


def open_split(inputs: list[str] | str, val_fraction: float, split: str, options: SourceOptions | None = None,
               max_tokens: int | None = None) -> tuple[list[Source], str, int | None]:
    """The sources of INPUTs, the split mode `split` resolves to for them, and their number of
    documents (None for a stream)."""
    sources = open_sources(inputs, options)
    counts = [s.count for s in sources]
    n_docs = None if None in counts else sum(counts)
    return sources, resolve_split(split, n_docs, val_fraction, max_tokens), n_docs


def tag_blocks(sources: list[Source], split: str, val_fraction: float, seed: int,
               n_docs: int | None) -> Iterator[tuple[int, int, str]]:
    """(document index, split: 0 train / 1 val, text block) for every block of every document, in
    order. A chars split reads the inputs twice: once to count their characters."""
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
