"""GPT-2's byte-level BPE (tiktoken), built offline from files bundled in the package."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from importlib import resources

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from .base import EOT_TOKEN, Tokenizer

EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257  # 50,000 merges + 256 bytes + <|endoftext|>

# The sha256 values tiktoken itself checks its downloaded gpt2 files against.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def asset_path(name: str) -> str:
    """The path of one of the bundled GPT-2 files (vocab.bpe, encoder.json)."""
    path = resources.files("gptforge") / "assets" / name
    with resources.as_file(path) as real_path:
        return str(real_path)


def _check_sha256(path: str, expected: str) -> None:
    with open(path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    if actual != expected:
        raise RuntimeError(
            f"bundled tokenizer file {path} is corrupt (sha256 {actual}, expected {expected}); "
            "reinstall gptforge"
        )


@functools.lru_cache(maxsize=None)
def _ranks() -> dict[bytes, int]:
    vocab_bpe, encoder_json = asset_path("vocab.bpe"), asset_path("encoder.json")
    _check_sha256(vocab_bpe, VOCAB_BPE_SHA256)
    _check_sha256(encoder_json, ENCODER_JSON_SHA256)
    return data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json)


class GPT2Tokenizer(Tokenizer):
    """GPT-2's 50,257 ids (identical to tiktoken.get_encoding("gpt2")), plus any special tokens
    added by with_special_tokens (ids 50257, 50258, ...)."""

    kind = "gpt2"
    sha256 = VOCAB_BPE_SHA256
    # A lone space or newline between two non-space characters starts a new pre-token in GPT-2's
    # pattern (`'s|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`): no pre-token runs
    # from a non-space character into the whitespace after it, and the one starting at the
    # whitespace depends only on what follows. (Python's \s covers every character the
    # tokenizer's \s does, so \S is safe.)
    safe_cut = re.compile(r"(?<=\S)[ \n](?=\S)")

    def __init__(self, extra_special: tuple[str, ...] = ()):
        self.name = "gpt2"
        self.eot_id = EOT_ID
        self.special_tokens = {EOT_TOKEN: EOT_ID, **{t: GPT2_VOCAB_SIZE + i for i, t in enumerate(extra_special)}}
        self.vocab_size = GPT2_VOCAB_SIZE + len(extra_special)
        self.extra_special = extra_special

    @functools.cached_property
    def encoding(self) -> tiktoken.Encoding:
        """tiktoken's Encoding, built on first use (reading the files takes ~0.3 s and ~50 MB)."""
        return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=_ranks(),
                                 special_tokens=self.special_tokens, explicit_n_vocab=self.vocab_size)

    def __reduce__(self):
        return gpt2, (self.extra_special,)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        try:
            # Straight into an array, with no Python list of ints: ~15% faster than encode_ordinary.
            # With no special token allowed it is exactly encode_ordinary ("<|endoftext|>" is text).
            ids = self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        except (AttributeError, UnicodeEncodeError):  # tiktoken < 0.8, or a lone surrogate (from JSON)
            return np.asarray(self.encoding.encode_ordinary(text), dtype=self.dtype)
        return ids.astype(self.dtype)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids), errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self.special_tokens.values():
            return b""
        return self.encoding.decode_single_token_bytes(token_id)

    def with_special_tokens(self, names: Sequence[str]) -> GPT2Tokenizer:
        missing = tuple(dict.fromkeys(n for n in names if n not in self.special_tokens))
        return gpt2(self.extra_special + missing) if missing else self

    def save(self, folder) -> None:
        pass  # its description names its special tokens, and the rest is bundled


@functools.lru_cache(maxsize=None)
def gpt2(extra_special: tuple[str, ...] = ()) -> GPT2Tokenizer:
    """GPT-2's tokenizer (the same object on every call), with `extra_special` tokens after
    <|endoftext|> (use with_special_tokens rather than passing them here)."""
    return GPT2Tokenizer(tuple(extra_special))
