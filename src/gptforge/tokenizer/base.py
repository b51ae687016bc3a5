"""The Tokenizer interface every part of gptforge uses, whichever vocabulary is behind it.

A tokenizer turns text into ids and back. Text is always encoded as plain text: a special token's
literal text ("<|endoftext|>" typed by a user) stays text, and special tokens enter a sequence only
by id (the document separator in a corpus, a chat turn boundary), so user text can never become
one. Decoding never fails: bytes that are not valid UTF-8 become U+FFFD.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

EOT_TOKEN = "<|endoftext|>"
# The chat template's turn boundaries (see tokenizer/chat.py), reserved in every tokenizer we train.
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# The tool-call markers of the chat template (Hermes / Qwen style): a call, and a tool's result.
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")


def replace_surrogates(text: str) -> str:
    """Lone UTF-16 surrogates (which JSON can carry) as U+FFFD, as tiktoken does: they have no
    UTF-8 form, so no byte-level tokenizer can encode them."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    """Text <-> token ids. Subclasses set the attributes and implement the abstract methods."""

    name: str  # "gpt2", or "bpe-<first 12 hex of tokenizer.json's sha256>"
    vocab_size: int  # every id, special tokens included
    eot_id: int  # <|endoftext|>, which separates documents
    special_tokens: dict[str, int]  # name -> id, <|endoftext|> included
    kind: str  # "gpt2" or "bpe": which implementation rebuilds it from its description
    sha256: str  # of the file that defines its vocabulary
    encoder: str  # the library that encodes text: "tiktoken" or "tokenizers" (same ids, speed differs)
    # Where text may be cut without changing its tokens (see gptforge.text.pieces.cut_pieces): a
    # property of the pre-tokenisation pattern.
    safe_cut: re.Pattern

    @property
    def dtype(self) -> np.dtype:
        """The dtype of corpus shards: uint16 when every id fits, else uint32 (little-endian)."""
        return np.dtype("<u2") if self.vocab_size <= 1 << 16 else np.dtype("<u4")

    def encode(self, text: str) -> list[int]:
        """The ids of plain text."""
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """encode(text) as a 1-D array of self.dtype."""
        return np.asarray(self.encode(text), dtype=self.dtype)

    def encode_prompt(self, text: str) -> list[int]:
        """The ids of a prompt: the text as plain text, and an empty prompt as <|endoftext|> alone,
        the token every document follows in training."""
        return self.encode(text) or [self.eot_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of ids; a special token gives its literal text."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids; invalid UTF-8 becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """One token's bytes (b"" for a special token: it stands for no text)."""
        raise NotImplementedError

    def with_special_tokens(self, names: Sequence[str]) -> Tokenizer:
        """This tokenizer with the named special tokens; the missing ones are added at the end
        (new ids, in the order given). Itself when it has them all."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What identifies this tokenizer, JSON-able: recorded in every checkpoint's config.json
        and corpus's meta.json. Two tokenizers encode alike when their descriptions are equal."""
        return {"name": self.name, "type": self.kind, "vocab_size": self.vocab_size, "eot_id": self.eot_id,
                "special_tokens": dict(self.special_tokens), "sha256": self.sha256}

    def save(self, folder) -> None:
        """Write the files that rebuild this tokenizer into `folder` (nothing when its
        description alone rebuilds it)."""
        raise NotImplementedError

    def same_as(self, other: Tokenizer) -> bool:
        """Whether the two are the same tokenizer."""
        return self.describe() == other.describe()

    def extends(self, other: Tokenizer) -> bool:
        """Whether this one reads what `other` wrote: the same vocabulary, every special token of
        `other` at the same id (and maybe more, as with_special_tokens adds)."""
        mine, theirs = self.describe(), other.describe()
        return ((mine["type"], mine["sha256"]) == (theirs["type"], theirs["sha256"])
                and theirs["special_tokens"].items() <= mine["special_tokens"].items())

    def token_byte_lengths(self) -> np.ndarray:
        """(vocab_size,) int64: the UTF-8 length of every token; 0 for special tokens, which
        stand for no text (bits per byte divides by these)."""
        return _byte_lengths(self)

    def __repr__(self) -> str:
        return f"<Tokenizer {self.name}: {self.vocab_size} ids>"

    def __deepcopy__(self, memo: dict) -> Tokenizer:
        return self  # immutable: a copied model shares its tokenizer


@functools.lru_cache(maxsize=8)
def _byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    lengths = np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64)
    lengths[list(tokenizer.special_tokens.values())] = 0
    return lengths
