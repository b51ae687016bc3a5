"""Lexical search of an index: the query's words matched against the chunks with SQLite FTS5,
ranked by BM25 (k1 = 1.2, b = 0.75, FTS5's own bm25()).

A query is a bag of words: any chunk holding any of them is a candidate (FTS5's bare syntax would
AND them, and read words like NOT or NEAR as operators), so each word goes in quoted, ORed.
FTS5's bm25() is smaller-is-better (the score negated, so that ORDER BY ascending puts the best
first); we report its negation: a positive score, higher is better.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError
from .index import connect

WORD = re.compile(r"[^\W_]+")  # the runs of letters and digits that FTS5's unicode61 tokenizer keeps


@dataclass(frozen=True)
class Hit:
    rank: int  # 1 for the best
    score: float  # BM25, positive, higher is better
    path: str
    kind: str  # the reader: line_start and line_end are pages for "pdf", lines otherwise
    line_start: int
    line_end: int
    text: str
    chunk_id: int

    @property
    def where(self) -> str:
        span = str(self.line_start) if self.line_start == self.line_end else f"{self.line_start}-{self.line_end}"
        return f"{self.path}:{'p' if self.kind == 'pdf' else ''}{span}"


def fts_query(query: str) -> str:
    """The FTS5 expression that matches chunks holding any word of `query`."""
    words = dict.fromkeys(WORD.findall(query.lower()))
    if not words:
        raise UserError(f"the query {query!r} has no words to search for")
    return " OR ".join(f'"{w}"' for w in words)


def search(folder, query: str, k: int = 5) -> list[Hit]:
    """The `k` chunks that match `query` best."""
    if not isinstance(k, int) or k < 1:
        raise UserError(f"-k must be a positive integer, got {k}")
    db = connect(folder)
    try:
        rows = db.execute(
            "SELECT -bm25(chunks_fts), d.path, d.kind, c.line_start, c.line_end, c.text, c.id FROM chunks_fts "
            "JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = c.doc_id "
            "WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts), c.id LIMIT ?", (fts_query(query), k)).fetchall()
    finally:
        db.close()
    return [Hit(rank, *row) for rank, row in enumerate(rows, 1)]
