"""Measuring retrieval and answers on your own questions (`gptforge eval --task retrieval | qa`).

- retrieval: a JSONL file of {"query", "relevant": [FILE, ...]}; a hit is relevant when its
  document's path ends with one of those (relative) paths. recall@k: the share of a query's
  relevant documents among the documents of its k best chunks; MRR: 1 / the rank of the first
  relevant chunk (0 when none is in the k); both averaged over the queries.
- qa: a JSONL file of {"question", "answer"} (or "answers": [...]); the model's greedy answer with
  the index's passages and without them, scored by exact match and token F1 against the best of
  the answers, after SQuAD's normalisation (lower case, no punctuation, no articles, single spaces)
  with citations such as [1] taken out first: they say where an answer came from, not what it is.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

from ..errors import UserError
from ..files import parse_json
from .passages import index_embedder, retriever
from .search import has_words, search


def read_records(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """The records of a JSONL file, each checked to hold `fields` (the first of any a|b pair)."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{path} line {number}")
        for field in fields:
            names = field.split("|")
            if not isinstance(record, dict) or not any(name in record for name in names):
                raise UserError(f"{path} line {number}: needs {' or '.join(repr(n) for n in names)}")
        records.append(record)
    if not records:
        raise UserError(f"{path} holds no records")
    return records


def _texts(value, where: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise UserError(f"{where}: must be text or a non-empty list of texts")
    return values


def _is_relevant(path: str, relevant: list[Path]) -> bool:
    parts = Path(path).parts
    return any(parts[-len(r.parts):] == r.parts for r in relevant)


def evaluate_retrieval(folder, data, k: int = 5) -> dict:
    """recall@k and MRR of the index at `folder` on the queries in `data` (see the module's doc)."""
    records = read_records(data, ("query", "relevant"))
    embedder = index_embedder(folder)
    recall = reciprocal = 0.0
    for number, record in enumerate(records, 1):
        relevant = list(dict.fromkeys(Path(p) for p in _texts(record["relevant"],
                                                              f"{data} record {number}: \"relevant\"")))
        query = str(record["query"])
        hits = search(folder, query, k, embedder) if embedder is not None or has_words(query) else []
        recall += sum(any(_is_relevant(h.path, [r]) for h in hits) for r in relevant) / len(relevant)
        first = next((h.rank for h in hits if _is_relevant(h.path, relevant)), None)
        reciprocal += 1 / first if first else 0.0
    return {"task": "retrieval", "queries": len(records), "k": k, f"recall@{k}": recall / len(records),
            "mrr": reciprocal / len(records)}


CITATION = re.compile(r"\[\d+\]")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (lower case, punctuation and the articles a/an/the removed, single
    spaces) of the text without its citations."""
    text = "".join(c for c in CITATION.sub(" ", text.lower()) if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """The F1 of the normalised answers' words (shared words counted with multiplicity)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def evaluate_qa(model, folder, data, k: int = 4, max_new_tokens: int = 32, limit: int | None = None) -> dict:
    """Exact match and token F1 of the model's greedy answers to the questions in `data`, with the
    index's passages (k per question) and without any."""
    from .ask import answer

    records = read_records(data, ("question", "answer|answers"))[:limit]
    retrieve = retriever(folder, k)
    scores = {"exact_with": 0.0, "f1_with": 0.0, "exact_without": 0.0, "f1_without": 0.0}
    for number, record in enumerate(records, 1):
        golds = _texts(record.get("answers", record.get("answer")), f"{data} record {number}: \"answer\"")
        question = str(record["question"])
        for label, source in (("with", retrieve), ("without", None)):
            text, _ = answer(model, question, source, max_new_tokens)
            scores[f"exact_{label}"] += max(float(normalize_answer(text) == normalize_answer(g)) for g in golds)
            scores[f"f1_{label}"] += max(token_f1(text, g) for g in golds)
    return {"task": "qa", "questions": len(records), "k": k,
            **{name: value / len(records) for name, value in scores.items()}}
