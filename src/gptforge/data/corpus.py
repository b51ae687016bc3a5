"""Opening what training and evaluation read: a prepared corpus folder, or text tokenized in memory.

A prepared corpus (written by gptforge.data.prepare) is a folder with `meta.json` and, per split,
token shards `train-00000.bin`, ..., `val-00000.bin`, ... (raw little-endian uint16 GPT-2 token
ids, documents separated by <|endoftext|>; meta.json lists them with their sizes and sha256).
Folders from before shards (`train.bin`, `val.bin`) still load. The shards are memory-mapped and
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
from ..tokenizer import GPT2_VOCAB_SIZE
from .encode import tokenize
from .shards import TOKEN_DTYPE, TokenArray, open_tokens
from .split import SPLITS


@dataclass
class Corpus:
    """A prepared corpus: its splits as memory-mapped uint16 token streams, and its meta.json."""

    path: Path
    train: TokenArray
    val: TokenArray
    meta: dict[str, Any]


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


def _check_shard(path: Path, record: dict[str, Any], verify: bool) -> None:
    """The shard exists with the size its token count implies; with verify, its recorded sha256."""
    if not path.is_file():
        raise UserError(f"{path} is missing; prepare the corpus again")
    size, expected = path.stat().st_size, record["tokens"] * TOKEN_DTYPE.itemsize
    if size != expected:
        raise UserError(f"{path} has {size} bytes but meta.json says {record['tokens']} tokens "
                        f"({expected} bytes); the file is truncated or corrupt, prepare the corpus again")
    if verify and "sha256" in record and sha256_file(path) != record["sha256"]:
        raise UserError(f"{path} does not match the sha256 in meta.json: the file was altered or is "
                        "corrupt; prepare the corpus again")


def load_corpus(path: str | os.PathLike, verify: bool = False) -> Corpus:
    """Open a folder written by prepare_corpus, checking it is complete and for the GPT-2 tokenizer.
    verify: also check every shard's sha256 (sizes are always checked)."""
    folder = Path(path)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{folder} is not a prepared corpus (no meta.json); run `gptforge prepare` first")
    meta = read_json(meta_path, "; prepare the corpus again")
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} is not a corpus description (expected a JSON object)")
    if meta.get("tokenizer") != "gpt2" or meta.get("vocab_size") != GPT2_VOCAB_SIZE:
        raise UserError(f"{folder} was prepared for tokenizer {meta.get('tokenizer')!r} with vocab size "
                        f"{meta.get('vocab_size')}; gptforge needs gpt2 with {GPT2_VOCAB_SIZE}")
    if meta.get("dtype", "uint16") != "uint16":
        raise UserError(f"{meta_path}: unsupported token dtype {meta.get('dtype')!r} (expected uint16)")

    arrays = {}
    for split in SPLITS:
        count = (meta.get("tokens") or {}).get(split)
        if not isinstance(count, int) or count < 0:
            raise UserError(f"{meta_path} has no valid token count for the {split} split")
        records = _shard_records(folder, meta, split, count)
        for record in records:
            _check_shard(folder / record["file"], record, verify)
        arrays[split] = open_tokens([folder / r["file"] for r in records], [r["tokens"] for r in records])
    if len(arrays["train"]) == 0:
        raise UserError(f"{folder} has an empty train split")
    return Corpus(folder, arrays["train"], arrays["val"], meta)


def is_corpus(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / "meta.json").is_file()


def load_splits(spec: str, val_fraction: float = 0.1, verify: bool = False) -> tuple[TokenArray, TokenArray]:
    """Train and val tokens of anything training accepts as --data.

    A prepared corpus folder is memory-mapped (verify: check its shards' sha256). Text (a file, a
    folder, a glob, builtin:NAME, ...) is tokenized in memory by the same pipeline as `prepare`,
    split by characters: for a single file exactly the reference recipe's
    `split_idx = int(0.9 * len(text))`, each part tokenized on its own.
    """
    if is_corpus(spec):
        corpus = load_corpus(Path(spec).expanduser(), verify=verify)
        return corpus.train, corpus.val
    return tokenize([spec], val_fraction, split="chars")
