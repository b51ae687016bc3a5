"""Cutting a stream of text into pieces of bounded size where a tokenizer's pre-tokenisation would
split anyway, so each piece can be tokenized on its own (by a worker, or a trainer counting
pre-tokens) and the tokens stay those of the whole."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator


def cut_pieces(blocks: Iterable[str], size: int, safe_cut: re.Pattern) -> Iterator[str]:
    """Join text blocks and re-cut them into pieces of about `size` chars at safe points (a
    tokenizer's `safe_cut`: cutting there leaves the tokens unchanged).

    The tokens of the pieces concatenate to the tokens of the whole. Cuts depend only on the
    text, never on how it arrived in blocks. Text with no safe point (no spaces between words)
    stays in one piece: correct, just larger.
    """
    buf, scan = "", size
    for block in blocks:
        buf += block
        while len(buf) > size:
            match = safe_cut.search(buf, scan)
            if match is None:
                scan = max(size, len(buf) - 1)  # the next search starts where this one gave up
                break
            yield buf[:match.start()]
            buf, scan = buf[match.start():], size
    if buf:
        yield buf
