"""A document's text as chunks for retrieval: split by structure first (a Markdown heading starts
a new chunk, a blank line ends a paragraph), paragraphs packed into chunks of up to `chunk_tokens`
tokens, and a paragraph longer than that cut into windows of `chunk_tokens` tokens that overlap by
`overlap` tokens.

Every character of the text is in some chunk and, outside the overlaps, in exactly one (the
whitespace after a paragraph belongs to it); each chunk knows its character span and the lines its
text is on. A text of whitespace alone has no chunks.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..tokenizer.base import Tokenizer


@dataclass(frozen=True)
class ChunkSettings:
    chunk_tokens: int = 256  # the most tokens a chunk holds (about: a chunk is re-counted as a whole)
    overlap: int = 32  # tokens that consecutive windows of one long paragraph share

    def check(self) -> None:
        if not isinstance(self.chunk_tokens, int) or self.chunk_tokens < 8:
            raise UserError(f"--chunk-tokens must be an integer of at least 8, got {self.chunk_tokens}")
        if not isinstance(self.overlap, int) or not 0 <= self.overlap <= self.chunk_tokens // 2:
            raise UserError(f"--overlap must be between 0 and half of --chunk-tokens "
                            f"({self.chunk_tokens // 2}), got {self.overlap}")


@dataclass(frozen=True)
class Chunk:
    start: int  # character span [start, end) in the document's text
    end: int
    line_start: int  # the lines (1-based, inclusive) of its first and last non-blank character
    line_end: int
    text: str
    tokens: int


BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n\s*")  # ends a paragraph, with the blank lines after it
HEADING = re.compile(r"^#{1,6}[ \t]", re.M)
FENCE = re.compile(r"^(```|~~~).*?(^\1|\Z)", re.M | re.S)  # a '# line' in a code block is no heading


def blocks(text: str, markdown: bool) -> list[tuple[int, int, bool]]:
    """The paragraphs as (start, end, starts a section), covering the text end to end; a block of
    whitespace alone is merged into the one before it (or after it, at the start)."""
    cuts = {0, len(text)} | {m.end() for m in BLANK_LINE.finditer(text)}
    headings = set()
    if markdown:
        fences = [m.span() for m in FENCE.finditer(text)]
        headings = {m.start() for m in HEADING.finditer(text) if not any(a < m.start() < b for a, b in fences)}
        cuts |= headings
    edges = sorted(cuts)
    out: list[list] = []
    for start, end in zip(edges, edges[1:]):
        if out and (not text[start:end].strip() or not text[out[-1][0]:out[-1][1]].strip()):
            out[-1][1] = end  # whitespace alone joins its neighbour
        else:
            out.append([start, end, start in headings])
    return [tuple(b) for b in out if text[b[0]:b[1]].strip()]


def token_cuts(tokenizer: Tokenizer, text: str, ids: list[int]) -> np.ndarray:
    """(len(ids) + 1,) the character offset in `text` where each token starts (a token that ends
    inside a character's UTF-8 bytes puts the cut after that character), and len(text) last."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    utf8_lengths = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
    char_starts = np.concatenate([[0], np.cumsum(utf8_lengths)[:-1]])  # byte offset of each character
    token_ends = np.cumsum([len(tokenizer.token_bytes(i)) for i in ids])
    byte_cuts = np.concatenate([[0], token_ends])
    return np.searchsorted(char_starts, byte_cuts, side="left")


def windows(tokenizer: Tokenizer, text: str, settings: ChunkSettings) -> list[tuple[int, int]]:
    """A long paragraph as spans of `chunk_tokens` tokens, each starting `overlap` tokens before
    the previous one ends; together they cover the text."""
    ids = tokenizer.encode(text)
    cuts = token_cuts(tokenizer, text, ids)
    step = settings.chunk_tokens - settings.overlap
    spans = []
    for first in range(0, max(len(ids), 1), step):
        last = min(first + settings.chunk_tokens, len(ids))
        # a window that ends where the previous one did (their tokens cut one character's bytes)
        # adds nothing
        if cuts[last] > (spans[-1][1] if spans else 0):
            spans.append((int(cuts[first]), int(cuts[last])))
        if last == len(ids):
            break
    return spans


def chunk_text(text: str, tokenizer: Tokenizer, settings: ChunkSettings, markdown: bool = False) -> list[Chunk]:
    """The chunks of a document's text, in order."""
    spans: list[tuple[int, int]] = []
    counted: dict[tuple[int, int], int] = {}  # a chunk of one paragraph: its count is known
    current: list[int] | None = None  # [start, end, tokens] of the chunk being packed
    for start, end, new_section in blocks(text, markdown):
        n = counted[start, end] = len(tokenizer.encode(text[start:end]))
        if current and (new_section or n > settings.chunk_tokens or current[2] + n > settings.chunk_tokens):
            spans.append((current[0], current[1]))
            current = None
        if n > settings.chunk_tokens:
            spans += [(start + a, start + b) for a, b in windows(tokenizer, text[start:end], settings)]
        elif current:
            current[1:] = [end, current[2] + n]
        else:
            current = [start, end, n]
    if current:
        spans.append((current[0], current[1]))
    newlines = [m.start() for m in re.finditer("\n", text)]
    return [_chunk(text, start, end, counted.get((start, end)) or len(tokenizer.encode(text[start:end])), newlines)
            for start, end in spans]


def _chunk(text: str, start: int, end: int, tokens: int, newlines: list[int]) -> Chunk:
    piece = text[start:end]
    first = start + (len(piece) - len(piece.lstrip()))
    last = start + len(piece.rstrip()) - 1
    if last < first:  # a window of whitespace inside a long paragraph
        first, last = start, end - 1
    # the line of offset i is 1 + the newlines before it
    return Chunk(start, end, bisect.bisect_left(newlines, first) + 1, bisect.bisect_left(newlines, last) + 1,
                 piece, tokens)
