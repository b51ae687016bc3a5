"""Classification data: texts with a label each, read from CSV, TSV or JSONL, checked and batched.

A file holds one record per row (CSV/TSV with a header line) or per line (JSONL objects), with a
text column and a label column: named by --text-column / --label-column, or found among the
usual names (TEXT_NAMES, LABEL_NAMES). Labels are strings (a number is read as its text); the
classes are the sorted set of the training labels, and a label's id is its index there. A bad
record (a missing column, an empty text or label) stops everything with one line naming the
file and the record; so does training data with a single class.

A batch of encoded texts is (inputs, labels, real): inputs (B, L) right-padded with the pad id
to the batch's longest text, labels (B,) class ids, real the number of tokens that are not
padding. Texts of similar length are batched together, as fine-tuning's examples are
(data/example_batches.py), and the order of an epoch depends on the seed and the epoch alone
(resumable by index); with balance="sample" each epoch draws its examples with probability
inverse to their class's size (with replacement, as many as the set has), so every class is seen
about equally often.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..text.sources import BUILTIN_PREFIX
from .example_batches import ExampleBatches

TEXT_NAMES = ("text", "sentence", "content", "review", "passage", "input")
LABEL_NAMES = ("label", "labels", "class", "category", "target")
BUILTIN = {"sources": "sources.jsonl", "genres": "genres.jsonl"}  # in gptforge/corpora/ (scripts/make_classify_sets.py)
SUFFIXES = (".csv", ".tsv", ".jsonl")


@dataclass
class Labeled:
    """One record: its text, its label, and where it came from ("FILE record N")."""

    text: str
    label: str
    where: str


def data_path(spec: str) -> Path:
    """The file DATA names (builtin:NAME for a bundled set)."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN:
            raise UserError(f"unknown builtin classification set {spec!r}; available: "
                            f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN)}")
        return Path(str(resources.files("gptforge") / "corpora" / BUILTIN[name]))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"no such classification data file: {spec} (CSV, TSV or JSONL with a text and a label column)")
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: classification data is .csv, .tsv or .jsonl (got {path.suffix or 'no suffix'})")
    return path


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(record number from 1, the record as a dict) of a CSV/TSV/JSONL file."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if path.suffix.lower() == ".jsonl":
                for n, line in enumerate((ln for ln in f if ln.strip()), 1):
                    try:
                        record = json.loads(line)
                    except ValueError as e:
                        raise UserError(f"{path} record {n} is not valid JSON ({e})") from None
                    if not isinstance(record, dict):
                        raise UserError(f"{path} record {n} is not a JSON object")
                    yield n, record
            else:
                reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
                for n, row in enumerate(reader, 1):
                    if None in row:  # more fields than the header names
                        raise UserError(f"{path} record {n} has more fields than the header line")
                    yield n, row
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _column(given: str | None, names: tuple[str, ...], columns: list, path: Path, what: str) -> str:
    """The column to read: the one given, else the first usual name present."""
    if given is not None:
        if given not in columns:
            raise UserError(f"{path} record 1 has no {what} column {given!r} (its columns: "
                            f"{', '.join(map(str, columns))})")
        return given
    found = next((c for c in columns if str(c).lower() in names), None)
    if found is None:
        raise UserError(f"{path} record 1 has no {what} column (looked for {', '.join(names)}; its columns: "
                        f"{', '.join(map(str, columns))}); name it with --{what}-column")
    return found


def read_labeled(spec: str, text_column: str | None = None, label_column: str | None = None,
                 max_records: int | None = None) -> list[Labeled]:
    """The records of a classification file, checked (see the module's docstring)."""
    path = data_path(spec)
    records, columns = [], None
    for n, row in _rows(path):
        if max_records is not None and len(records) >= max_records:
            break
        where = f"{path} record {n}"
        if columns is None:
            text_column = _column(text_column, TEXT_NAMES, list(row), path, "text")
            label_column = _column(label_column, LABEL_NAMES, list(row), path, "label")
            columns = (text_column, label_column)
        for column, what in ((text_column, "text"), (label_column, "label")):
            if row.get(column) is None:
                raise UserError(f"{where} has no {what} column {column!r}")
        text, label = row[text_column], row[label_column]
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: the text ({text_column!r}) is empty or not a string")
        if isinstance(label, bool) or not isinstance(label, (str, int, float)) or not str(label).strip():
            raise UserError(f"{where}: the label ({label_column!r}) is empty or not a string or number")
        records.append(Labeled(text, str(label).strip(), where))
    if not records:
        raise UserError(f"{path} holds no records")
    return records


def read_texts(spec: str, text_column: str | None = None) -> list[dict]:
    """{"text"} of every record of a file to classify (with "true_label" where it has a label
    column); one line naming the first record without a text."""
    path, out, label_column = data_path(spec), [], None
    for n, row in _rows(path):
        if n == 1:
            text_column = _column(text_column, TEXT_NAMES, list(row), path, "text")
            label_column = next((c for c in row if str(c).lower() in LABEL_NAMES), None)
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path} record {n}: the text ({text_column!r}) is missing, empty or not a string")
        label = row.get(label_column) if label_column is not None else None
        out.append({"text": text, **({"true_label": str(label)} if label is not None else {})})
    if not out:
        raise UserError(f"{path} holds no records")
    return out


def class_names(train: list[Labeled], where: str) -> list[str]:
    """The sorted classes of the training records; one line when there is only one."""
    classes = sorted({r.label for r in train})
    if len(classes) < 2:
        raise UserError(f"{where}: every training record has the label {classes[0]!r}; classification "
                        "needs at least two classes")
    return classes


def label_ids(records: list[Labeled], classes: list[str]) -> np.ndarray:
    """Each record's class id; one line naming the first record whose label is not a class."""
    index = {c: i for i, c in enumerate(classes)}
    for r in records:
        if r.label not in index:
            raise UserError(f"{r.where}: label {r.label!r} is not one of the model's classes "
                            f"({', '.join(classes)})")
    return np.array([index[r.label] for r in records], dtype=np.int64)


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Loss weights inverse to each class's share of `labels`, averaging 1 over the examples."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def encode_texts(texts: list[str], tokenizer, context_length: int) -> tuple[list[np.ndarray], int]:
    """Each text's ids (plain text: never a special token), its first context_length kept; and
    how many were cut."""
    out, cut = [], 0
    for text in texts:
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        cut += len(ids) > context_length
        out.append(ids[:context_length])
    return out, cut


def pad_batch(rows: list[np.ndarray], pad_id: int, left: bool = False) -> torch.Tensor:
    """(B, L) ids padded with pad_id to the longest row, on the right (or the left)."""
    L = max(len(r) for r in rows)
    out = torch.full((len(rows), L), pad_id, dtype=torch.long)
    for j, r in enumerate(rows):
        t = torch.from_numpy(np.asarray(r, dtype=np.int64))
        if left:
            out[j, L - len(t):] = t
        else:
            out[j, :len(t)] = t
    return out


class LabeledBatches(ExampleBatches):
    """Batches of (ids, label) examples, grouped by length as ExampleBatches groups them (little
    padding), reproducible and resumable by index; with `balance`, drawn class-balanced."""

    def __init__(self, ids: list[np.ndarray], labels: np.ndarray, batch_size: int, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, balance: bool = False, rank: int = 0,
                 world_size: int = 1, pad_id: int = 0):
        super().__init__(list(zip(ids, labels)), batch_size, seed, shuffle, drop_last, rank, world_size, pad_id)
        self.ids, self.labels, self.balance = ids, labels, balance

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        if not self.balance:
            return super().draw(rng)
        p = 1.0 / np.bincount(self.labels)[self.labels]
        return rng.choice(len(self.ids), size=len(self.ids), replace=True, p=p / p.sum())

    def collate(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(inputs (B, L) right-padded, labels (B,), real tokens) of the examples `indices`."""
        rows = [self.ids[i] for i in indices]
        return pad_batch(rows, self.pad_id), torch.from_numpy(self.labels[indices]), sum(len(r) for r in rows)


def class_counts(labels: np.ndarray, classes: list[str]) -> str:
    """'a 120, b 80': how many examples of each class."""
    counts = Counter(labels.tolist())
    return ", ".join(f"{c} {counts.get(i, 0)}" for i, c in enumerate(classes))
