"""A byte-level BPE of your own: a Hugging Face `tokenizers` tokenizer.json and its meta.json.

A tokenizer folder holds
    tokenizer.json   the tokenizer (Hugging Face `tokenizers` format: transformers reads it too)
    meta.json        vocab size, special ids, the sources it was trained on, and the sha256 of
                     tokenizer.json, checked on every load
Its name is "bpe-" and the first 12 hex digits of that sha256. The vocabulary is bytes and their
merges, so every text is encodable; the pre-tokenisation splits text GPT-4's way (see PATTERN).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from ..errors import UserError, first_line
from ..files import atomic_write, read_json, sha256_file, write_json
from .base import EOT_TOKEN, Tokenizer, replace_surrogates
from .fast_bpe import tiktoken_twin

TOKENIZER_JSON = "tokenizer.json"
META = "meta.json"
FORMAT = "gptforge-tokenizer"

# GPT-4's pre-tokenisation (cl100k): contractions in any case, a word with one leading
# non-letter, numbers of at most 3 digits, punctuation runs with their newlines, newline runs,
# other whitespace. Text is split at these pre-tokens before any merge.
PATTERN = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"
           r"|\s*[\r\n]|\s+(?!\S)|\s+")


def byte_alphabet() -> dict[str, int]:
    """The byte-level alphabet: the printable character that stands for each byte in the
    vocabulary (GPT-2's convention: printable Latin-1 bytes stand for themselves, the others
    for characters from U+0100 on, in byte order)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(0x100 + shifted)] = b
            shifted += 1
    return chars


def _token_bytes_table(hf: HFTokenizer, specials: dict[str, int], where: str) -> list[bytes]:
    """The bytes of every id; a special token's entry is its literal text (what decode shows)."""
    alphabet = byte_alphabet()
    table = []
    for i in range(hf.get_vocab_size(with_added_tokens=True)):
        token = hf.id_to_token(i)
        if token is None:
            raise UserError(f"{where}: the vocabulary has no id {i} (ids must be 0..vocab size - 1)")
        if token in specials:
            table.append(token.encode())
            continue
        try:
            table.append(bytes(alphabet[c] for c in token))
        except KeyError:
            raise UserError(f"{where} is not a byte-level BPE (token {token!r} is not in the byte "
                            "alphabet)") from None
    return table


def _check_regexes(doc: Any, where: str) -> None:
    """Refuse any regex but PATTERN in (parts of) a parsed tokenizer.json: a regex runs on every text encoded, and one that backtracks (`(a+)+$`) would hang
    each encode. The sha256 in meta.json proves only that the file was not altered after it was
    written, not who wrote it."""
    if isinstance(doc, dict):
        regex = doc.get("Regex")
        if regex is not None and regex != PATTERN:
            raise UserError(f"{where} has the regex {str(regex)[:60]!r}, which is not the pattern gptforge trains "
                            "with; gptforge reads only tokenizers made by `gptforge tokenizer train`")
        for value in doc.values():
            _check_regexes(value, where)
    elif isinstance(doc, list):
        for value in doc:
            _check_regexes(value, where)


class BPETokenizer(Tokenizer):
    """A byte-level BPE from a tokenizer.json (Hugging Face `tokenizers`), with <|endoftext|>."""

    kind = "bpe"
    # In PATTERN, no pre-token runs from a non-space character into a following space, and the
    # one starting at a space depends only on what follows: a lone space between two non-space
    # characters is a safe cut. (A newline is not: punctuation takes the newlines after it.)
    safe_cut = re.compile(r"(?<=\S) (?=\S)")

    def __init__(self, json_bytes: bytes, meta: dict[str, Any] | None = None, where: str = TOKENIZER_JSON):
        self.json_bytes = json_bytes
        self.sha256 = hashlib.sha256(json_bytes).hexdigest()
        self.name = f"bpe-{self.sha256[:12]}"
        try:
            hf = HFTokenizer.from_str(json_bytes.decode("utf-8"))
            doc = json.loads(json_bytes)
            model_type = doc["model"]["type"]
        except Exception as e:  # tokenizers raises its own exception types for a bad file
            raise UserError(f"{where} is not a Hugging Face tokenizer.json ({first_line(e)})") from None
        _check_regexes([doc.get(part) for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder")],
                       where)  # not the model: a token may be spelled "Regex"
        if model_type != "BPE":
            raise UserError(f"{where} is a {model_type} tokenizer, not a byte-level BPE")
        added = hf.get_added_tokens_decoder()
        if not all(t.special for t in added.values()):
            raise UserError(f"{where} has added tokens that are not special; gptforge needs a plain byte-level BPE")
        self.special_tokens = {t.content: i for i, t in sorted(added.items())}
        if EOT_TOKEN not in self.special_tokens:
            raise UserError(f"{where} has no {EOT_TOKEN} special token")
        hf.encode_special_tokens = True  # a special token's literal text in the input stays text
        self.hf = hf
        self.eot_id = self.special_tokens[EOT_TOKEN]
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        self.table = _token_bytes_table(hf, self.special_tokens, where)
        self.meta = dict(meta or {})
        # tiktoken encodes ~10x faster, and gives the same ids where fast_bpe can prove it.
        self.fast = tiktoken_twin(doc, self.table, self.special_tokens, PATTERN)
        self.encoder = "tokenizers" if self.fast is None else "tiktoken"

    def __reduce__(self):
        return BPETokenizer, (self.json_bytes, self.meta)

    def encode(self, text: str) -> list[int]:
        if self.fast is not None:
            return self.fast.encode_ordinary(text)  # special tokens' text stays text
        try:
            # encode_batch_fast skips the offsets encode() computes: ~3x faster on one text.
            return self.hf.encode_batch_fast([text], add_special_tokens=False)[0].ids
        except Exception:  # a lone surrogate cannot cross into Rust
            return self.hf.encode_batch_fast([replace_surrogates(text)], add_special_tokens=False)[0].ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        try:
            return b"".join([self.table[i] for i in ids])
        except (IndexError, TypeError):
            raise ValueError(f"token ids must be integers in 0..{self.vocab_size - 1}") from None

    def token_bytes(self, token_id: int) -> bytes:
        return b"" if token_id in self.special_tokens.values() else self.table[token_id]

    def with_special_tokens(self, names: Sequence[str]) -> BPETokenizer:
        missing = list(dict.fromkeys(n for n in names if n not in self.special_tokens))
        if not missing:
            return self
        hf = HFTokenizer.from_str(self.json_bytes.decode("utf-8"))
        hf.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in missing])
        return BPETokenizer(hf.to_str(pretty=True).encode(), self.meta)

    def save(self, folder) -> None:
        """tokenizer.json (byte for byte what was loaded) and meta.json in `folder` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / TOKENIZER_JSON, self.json_bytes)
        write_json(folder / META, {"format": FORMAT, "format_version": 1, **self.meta, **self.describe()})


def load_folder(folder: str | Path) -> BPETokenizer:
    """The tokenizer of a folder written by `gptforge tokenizer train` (or BPETokenizer.save),
    its tokenizer.json checked against the sha256 and the ids in meta.json."""
    folder = Path(folder)
    path, meta_path = folder / TOKENIZER_JSON, folder / META
    if not folder.is_dir():
        raise UserError(f"no such tokenizer folder: {folder} (use gpt2 or a folder made by "
                        "`gptforge tokenizer train`)")
    if not path.is_file() or not meta_path.is_file():
        raise UserError(f"{folder} is not a tokenizer folder (it needs {TOKENIZER_JSON} and {META}; "
                        "make one with `gptforge tokenizer train`)")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path} is not a gptforge tokenizer description")
    if sha256_file(path) != meta.get("sha256"):
        raise UserError(f"{path} does not match the sha256 in {META}: it was altered or is corrupt; "
                        "restore it or train the tokenizer again")
    tokenizer = BPETokenizer(path.read_bytes(), {k: v for k, v in meta.items() if k in ("sources", "training")},
                             where=str(path))
    recorded = {k: meta.get(k) for k in ("vocab_size", "eot_id", "special_tokens")}
    if recorded != {k: v for k, v in tokenizer.describe().items() if k in recorded}:
        raise UserError(f"{meta_path} does not describe {path} (vocab size or special ids differ)")
    return tokenizer
