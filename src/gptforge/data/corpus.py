"""Opening what training and evaluation read: a prepared corpus folder, or text tokenized in memory.

A prepared corpus (written by gptforge.data.prepare) is a folder with `meta.json` and, per split,
token shards `train-00000.bin`, ..., `val-00000.bin`, ... (raw little-endian uint16 or uint32 token
ids, documents separated by <|endoftext|>; meta.json lists them with their sizes and sha256, and
describes the tokenizer, whose files are in `tokenizer/` unless it is GPT-2's). Folders from
before shards (`train.bin`, `val.bin`) still load. The shards are memory-mapped and
read as one stream, so a corpus never has to fit in RAM. Every load checks each shard's size;
`verify=True` also checks its sha256 (a full read of every shard).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import read_json, sha256_file
from ..text.split import SPLITS
from ..tokenizer import TOKENIZER_DIR, Tokenizer, gpt2, tokenizer_from_record
from .encode import tokenize
from .shards import TOKEN_DTYPES, TokenArray, open_tokens


@dataclass
class Corpus:
    """A prepared corpus: its splits as memory-mapped token streams, its meta.json and tokenizer."""

    path: Path
    train: TokenArray
    val: TokenArray
    meta: dict[str, Any]
    tokenizer: Tokenizer


def _shard_records(folder: Path, meta: dict[str, Any], split: str, count: int) -> list[dict[str, Any]]:
    """The shard records of a split as meta.json lists them, or a pre-shard `SPLIT.bin`."""
    if "shards" not in meta:
        return [{"file": f"{split}.bin", "tokens": count}]
    entries = (meta["shards"] or {}).get(split)
    valid = isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("file"), str) and Path(e["file"]).name == e["file"]
        and isinstance(e.get("tokens"), int) and e["tokens"] >= 0 for e in entries)
    if not valid or sum(e["tokens"] for e in entries) != count:
        raise UserError(f"{folder / 'meta.json'} does not list the {split} shards consistently with "
                        "its token count; prepare the corpus again")
    return entries


def _check_shard(path: Path, record: dict[str, Any], itemsize: int, verify: bool) -> None:
    """The shard exists with the size its token count implies; with verify, its recorded sha256."""
    if not path.is_file():
        raise UserError(f"{path} is missing; prepare the corpus again")
    size, expected = path.stat().st_size, record["tokens"] * itemsize
    if size != expected:
        raise UserError(f"{path} has {size} bytes but meta.json says {record['tokens']} tokens "
                        f"({expected} bytes); the file is truncated or corrupt, prepare the corpus again")
    if verify and "sha256" in record and sha256_file(path) != record["sha256"]:
        raise UserError(f"{path} does not match the sha256 in meta.json: the file was altered or is "
                        "corrupt; prepare the corpus again")


def _corpus_tokenizer(folder: Path, meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer meta.json describes (a name alone, in corpora from before tokenizers were
    recorded, can only be GPT-2's), checked against the vocab size and dtype it records."""
    record = meta.get("tokenizer")
    if record == "gpt2":
        tokenizer = gpt2()
    elif isinstance(record, dict):
        tokenizer = tokenizer_from_record(record, folder / TOKENIZER_DIR, f"corpus {folder}")
    else:
        raise UserError(f"{folder} was prepared for an unknown tokenizer {record!r}; prepare it again")
    if meta.get("vocab_size") != tokenizer.vocab_size:
        raise UserError(f"{folder / 'meta.json'} says vocab size {meta.get('vocab_size')}, but its tokenizer "
                        f"{tokenizer.name} has {tokenizer.vocab_size}; prepare the corpus again")
    if TOKEN_DTYPES.get(meta.get("dtype", "uint16")) != tokenizer.dtype:
        raise UserError(f"{folder / 'meta.json'}: token dtype {meta.get('dtype')!r} does not fit tokenizer "
                        f"{tokenizer.name}; prepare the corpus again")
    return tokenizer


def load_corpus(path: str | os.PathLike, verify: bool = False) -> Corpus:
    """Open a folder written by prepare_corpus, checking it is complete and its tokenizer intact.
    verify: also check every shard's sha256 (sizes are always checked)."""
    folder = Path(path)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{folder} is not a prepared corpus (no meta.json); run `gptforge prepare` first")
    meta = read_json(meta_path, "; prepare the corpus again")
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} is not a corpus description (expected a JSON object)")
    tokenizer = _corpus_tokenizer(folder, meta)

    arrays = {}
    for split in SPLITS:
        count = (meta.get("tokens") or {}).get(split)
        if not isinstance(count, int) or count < 0:
            raise UserError(f"{meta_path} has no valid token count for the {split} split")
        records = _shard_records(folder, meta, split, count)
        for record in records:
            _check_shard(folder / record["file"], record, tokenizer.dtype.itemsize, verify)
        arrays[split] = open_tokens([folder / r["file"] for r in records], [r["tokens"] for r in records],
                                    tokenizer.dtype)
    if len(arrays["train"]) == 0:
        raise UserError(f"{folder} has an empty train split")
    return Corpus(folder, arrays["train"], arrays["val"], meta, tokenizer)


def is_corpus(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / "meta.json").is_file()


def corpus_tokenizer(spec: str) -> Tokenizer | None:
    """The tokenizer a prepared corpus was made with; None when `spec` is text, not a corpus."""
    if not is_corpus(spec):
        return None
    folder = Path(spec).expanduser()
    meta = read_json(folder / "meta.json", "; prepare the corpus again")
    if not isinstance(meta, dict):
        raise UserError(f"{folder / 'meta.json'} is not a corpus description (expected a JSON object)")
    return _corpus_tokenizer(folder, meta)


def load_splits(spec: str, val_fraction: float = 0.1, verify: bool = False, tokenizer: Tokenizer | None = None
                ) -> tuple[TokenArray, TokenArray, Tokenizer]:
    """Train and val tokens of anything training accepts as --data, and their tokenizer.

    A prepared corpus folder is memory-mapped (verify: check its shards' sha256); a `tokenizer`
    that cannot read it (see Tokenizer.extends) is refused. Text (a file, a folder, a glob,
    builtin:NAME, ...) is tokenized in memory with `tokenizer` (GPT-2's by default) by the same
    pipeline as `prepare`, split by characters: for a single file exactly the reference recipe's
    `split_idx = int(0.9 * len(text))`, each part tokenized on its own.
    """
    if is_corpus(spec):
        corpus = load_corpus(Path(spec).expanduser(), verify=verify)
        if tokenizer is None:
            return corpus.train, corpus.val, corpus.tokenizer
        if not tokenizer.extends(corpus.tokenizer):
            raise UserError(f"{spec} was prepared with tokenizer {corpus.tokenizer.name}, but this run uses "
                            f"{tokenizer.name}; prepare the data with the run's tokenizer")
        return corpus.train, corpus.val, tokenizer
    tokenizer = tokenizer or gpt2()
    return (*tokenize([spec], val_fraction, split="chars", tokenizer=tokenizer), tokenizer)
