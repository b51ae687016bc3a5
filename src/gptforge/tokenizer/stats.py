"""Measuring tokenizers on a text: bytes per token (how much text a context window holds) and how
much of the vocabulary the text uses (ids a model would train but never see are wasted rows)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .base import Tokenizer

PIECE_CHARS = 1 << 20  # each document is tokenized in pieces of about this many characters


def _documents(inputs: list[str] | str, options, max_chars: int | None) -> Iterator[str]:
    """The text of each document of INPUTs, the last one cut short at max_chars in all."""
    from ..text.sources import open_sources

    left = max_chars
    for source in open_sources(inputs, options):
        for document in source.documents():
            text = "".join(document.blocks)
            if left is not None:
                text, left = text[:left], left - min(left, len(text))
            if text:
                yield text
            if left == 0:
                return


def measure(tokenizers: list[Tokenizer], texts: Iterable[str]) -> list[dict[str, Any]]:
    """Per tokenizer: tokens, bytes per token, characters per token, and vocabulary coverage (the
    share of its non-special ids the text uses) over all the texts."""
    from ..text.pieces import cut_pieces

    counts = [np.zeros(t.vocab_size, dtype=np.int64) for t in tokenizers]
    n_bytes = n_chars = 0
    for text in texts:
        n_bytes, n_chars = n_bytes + len(text.encode("utf-8", "replace")), n_chars + len(text)
        for tokenizer, count in zip(tokenizers, counts):
            for piece in cut_pieces([text], PIECE_CHARS, tokenizer.safe_cut):
                count += np.bincount(tokenizer.encode_array(piece), minlength=tokenizer.vocab_size)
    results = []
    for tokenizer, count in zip(tokenizers, counts):
        tokens, used = int(count.sum()), int((count > 0).sum())
        ordinary = tokenizer.vocab_size - len(tokenizer.special_tokens)
        results.append({"tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "tokens": tokens,
                        "bytes": n_bytes, "characters": n_chars,
                        "bytes_per_token": n_bytes / tokens if tokens else float("nan"),
                        "characters_per_token": n_chars / tokens if tokens else float("nan"),
                        "ids_used": used, "coverage": used / ordinary, "encoder": tokenizer.encoder})
    return results


def tokenizer_stats(tokenizers: list[Tokenizer], inputs: list[str] | str, options=None,
                    max_chars: int | None = None) -> list[dict[str, Any]]:
    """measure() on the documents of INPUTs (see gptforge.text.sources), at most max_chars of them."""
    return measure(tokenizers, _documents(inputs, options, max_chars))
