"""Retrieved chunks as the passages a chat prompt carries (`ask`, `chat --index`, `serve --index`):
{"source", "text"} dicts, most relevant first, as the chat template's context block renders them,
with where each came from for the answer's list of sources."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import UserError
from .index import connect
from .search import Hit, has_words, search


def shown_path(path: str) -> str:
    """A path as the user would type it: relative to the current folder when it is inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def passage(hit: Hit) -> dict:
    """One hit as a passage: its source is file:lines (pages for a PDF), as `index search` shows it."""
    lines = hit.where.rsplit(":", 1)[1]
    return {"source": f"{shown_path(hit.path)}:{lines}", "text": hit.text.strip(), "path": hit.path,
            "lines": lines, "score": hit.score, "chunk_id": hit.chunk_id}


def index_embedder(folder):
    """The embedder an index was built with (loaded: a model, a URL, a folder), or None."""
    from .embed import embedder_of
    from .index import read_meta

    db = connect(folder)
    try:
        record = read_meta(db).get("embedder")
    finally:
        db.close()
    return embedder_of(record) if record else None


def retriever(folder, k: int = 4, mode: str = "hybrid") -> Callable[[str], list[dict]]:
    """A function from a question to the passages of its `k` best chunks in the index at `folder`
    (hybrid when the index has vectors, see search()); the index and its embedder are checked and
    loaded now, so a missing index is a UserError before any question. A question without a word
    to search for (and no vectors) gets none."""
    if not isinstance(k, int) or k < 1:
        raise UserError(f"-k must be a positive integer, got {k}")
    embedder = index_embedder(folder)

    def retrieve(question: str) -> list[dict]:
        if embedder is None and not has_words(question):  # nothing to look up: the model answers alone
            return []
        return [passage(hit) for hit in search(folder, question, k, embedder, mode)]

    return retrieve


def sources(passages: list[dict]) -> list[dict]:
    """The passages as the server returns them beside its choices: their number in the prompt,
    file, lines and score (no text: the client has the index's files)."""
    return [{"index": n, "source": p["source"], "path": p["path"], "lines": p["lines"], "score": p["score"]}
            for n, p in enumerate(passages, 1)]
