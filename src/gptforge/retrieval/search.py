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

import numpy as np

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


def has_words(query: str) -> bool:
    """Whether BM25 has anything to look for in `query`."""
    return WORD.search(query) is not None


def fts_query(query: str) -> str:
    """The FTS5 expression that matches chunks holding any word of `query`."""
    words = dict.fromkeys(WORD.findall(query.lower()))
    if not words:
        raise UserError(f"the query {query!r} has no words to search for")
    return " OR ".join(f'"{w}"' for w in words)


RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): a list's rank r adds 1 / (60 + r)
SCAN_ROWS = 4096  # vectors compared per step of the scan: memory stays bounded whatever the index's size


def _bm25_rows(db, query: str, n: int) -> list[tuple]:
    return db.execute(
        "SELECT -bm25(chunks_fts), c.id FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid "
        "WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts), c.id LIMIT ?", (fts_query(query), n)).fetchall()


def nearest(db, vector: np.ndarray, n: int, block: int = SCAN_ROWS) -> list[tuple[float, int]]:
    """(cosine, chunk id) of the `n` chunks whose vectors are nearest `vector` (unit length), best
    first: a scan of the vectors in blocks, keeping the best n so far."""
    best_scores, best_ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
    cursor = db.execute("SELECT chunk_id, vector FROM vectors ORDER BY chunk_id")
    while rows := cursor.fetchmany(block):
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), -1)  # (rows, dim)
        best_scores = np.concatenate([best_scores, matrix @ vector])
        best_ids = np.concatenate([best_ids, ids])
        if len(best_scores) > n:
            keep = np.argpartition(-best_scores, n)[:n]
            best_scores, best_ids = best_scores[keep], best_ids[keep]
    order = np.lexsort((best_ids, -best_scores))
    return [(float(best_scores[i]), int(best_ids[i])) for i in order]


def fuse(rankings: list[list[int]], k: int) -> list[tuple[float, int]]:
    """Reciprocal rank fusion: (score, chunk id) of the `k` best by the sum of 1 / (RRF_K + rank)
    over the rankings (each best first); ties by chunk id."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk in enumerate(ranking, 1):
            scores[chunk] = scores.get(chunk, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(((s, c) for c, s in scores.items()), key=lambda sc: (-sc[0], sc[1]))[:k]


def search(folder, query: str, k: int = 5, embedder=None, mode: str = "hybrid") -> list[Hit]:
    """The `k` chunks that match `query` best: by BM25, or with an embedder (the index's own) by
    its vectors (mode "vector") or both fused by reciprocal rank (mode "hybrid"; a query without a
    word to match goes by its vector alone). The score: BM25's, the cosine, or the fused one."""
    if not isinstance(k, int) or k < 1:
        raise UserError(f"-k must be a positive integer, got {k}")
    if embedder is None and mode != "bm25" and mode != "hybrid":
        raise UserError(f"a {mode} search needs an index with an embedder (gptforge index add --embedder ...)")
    db = connect(folder)
    try:
        if embedder is None or mode == "bm25":
            found = [(score, chunk) for score, chunk in _bm25_rows(db, query, k)]
        else:
            vector = embedder.embed([query])[0]
            pool = max(4 * k, 20)  # each list's candidates for the fusion
            dense = nearest(db, vector, k if mode == "vector" else pool)
            if mode == "vector":
                found = dense
            else:
                try:
                    lexical = [chunk for _, chunk in _bm25_rows(db, query, pool)]
                except UserError:  # no words: the vector alone
                    lexical = []
                found = fuse([lexical, [chunk for _, chunk in dense]], k)
        rows = {row[-1]: row for row in db.execute(
            "SELECT d.path, d.kind, c.line_start, c.line_end, c.text, c.id FROM chunks c "
            f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({','.join('?' * len(found))})",
            [chunk for _, chunk in found])}
    finally:
        db.close()
    return [Hit(rank, score, *rows[chunk]) for rank, (score, chunk) in enumerate(found, 1)]
