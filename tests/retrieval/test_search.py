"""BM25 through FTS5, checked against rank-bm25, an independent implementation, on the same tokens."""

from __future__ import annotations

import random
import re

import pytest
from rank_bm25 import BM25Okapi

from gptforge.retrieval import add_paths, search
from gptforge.retrieval.search import fts_query

from helpers import write

VOCAB = [f"{a}{b}" for a in ("oak", "ash", "elm", "fir", "yew", "bay", "box", "may") for b in
         ("", "en", "ing", "s", "wood", "leaf", "root", "bark", "seed", "cone", "nut", "sap", "twig", "bud")]


def fixture(tmp_path, n: int = 40) -> dict[str, str]:
    """n seeded documents of one paragraph each: Zipf-like words, capitals, punctuation, digits."""
    rng = random.Random(7)
    weights = [1 / (i + 1) for i in range(len(VOCAB))]
    docs = {}
    for i in range(n):
        words = rng.choices(VOCAB, weights, k=rng.randint(10, 150))
        words = [w.capitalize() if rng.random() < 0.1 else w for w in words]
        text = " ".join(w + rng.choice(["", "", "", ",", ".", ";", " -", f" {rng.randint(0, 99)}"]) for w in words)
        path = tmp_path / "docs" / f"{i:02d}.txt"
        write(path, text + "\n")
        docs[str(path)] = text
    return docs


def unicode61(text: str) -> list[str]:
    """FTS5's default tokenizer on ASCII text: lower case, split on anything not a letter or digit."""
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.mark.parametrize("query", ["ashleaf", "elmroot ashbud", "Yewbark, bayseed & boxcone!", "firsap 86 maytwig"])
def test_bm25_order_and_scores_match_rank_bm25(tmp_path, query):
    docs = fixture(tmp_path)
    add_paths(tmp_path / "index", [tmp_path / "docs"], chunk_tokens=2048, overlap=0, progress=False)
    paths = list(docs)
    tokens = [unicode61(docs[p]) for p in paths]
    terms = list(dict.fromkeys(unicode61(query)))
    # FTS5's bm25() (SQLite's fts5_aux.c, documented in "The bm25() function" of fts5.html) is
    #   sum over the query's terms of IDF * f * (k1 + 1) / (f + k1 * (1 - b + b * |D| / avgdl)),
    #   IDF = ln((N - n + 0.5) / (n + 0.5)), k1 = 1.2, b = 0.75,
    # with f the term's count in the chunk, |D| the chunk's tokens, avgdl their mean over the N
    # chunks, n the chunks holding the term. rank-bm25's BM25Okapi computes the same sum with the
    # same IDF; the two part where the IDF is <= 0 (a term in half the chunks or more: FTS5 uses
    # 1e-6, rank-bm25 a fraction of the mean IDF), so the query terms here are rarer than that.
    held = {t: sum(t in doc for doc in tokens) for t in terms}
    assert all(0 < n < len(paths) / 2 for n in held.values()), held
    reference = BM25Okapi(tokens, k1=1.2, b=0.75).get_scores(terms)
    expected = sorted(((s, p) for s, p in zip(reference, paths) if any(t in tokens[paths.index(p)] for t in terms)),
                      key=lambda sp: -sp[0])
    hits = search(tmp_path / "index", query, k=len(paths))
    assert [h.path for h in hits] == [p for _, p in expected]  # the same order (no ties in this fixture)
    assert [h.score for h in hits] == pytest.approx([s for s, _ in expected], rel=1e-9)
    assert all(h.score > 0 for h in hits) and [h.rank for h in hits] == list(range(1, len(hits) + 1))
    top = search(tmp_path / "index", query, k=3)
    assert [h.path for h in top] == [p for _, p in expected[:3]]


def test_query_words_are_ored_and_quoted():
    # FTS5 would read NEAR/NOT/AND as operators and AND the bare words together
    assert fts_query('oak NOT "ash" near*') == '"oak" OR "not" OR "ash" OR "near"'
