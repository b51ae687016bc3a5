"""The GPT-2 byte-level BPE tokenizer (tiktoken), built offline from files bundled in the package."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

import tiktoken
import torch
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
GPT2_VOCAB_SIZE = 50257  # 50,000 merges + 256 bytes + <|endoftext|>

# The sha256 values tiktoken itself checks its downloaded gpt2 files against.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def _asset_path(name: str) -> str:
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
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding, identical to tiktoken.get_encoding("gpt2"), with no network access."""
    vocab_bpe, encoder_json = _asset_path("vocab.bpe"), _asset_path("encoder.json")
    _check_sha256(vocab_bpe, VOCAB_BPE_SHA256)
    _check_sha256(encoder_json, ENCODER_JSON_SHA256)
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json)
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def encode_prompt(text: str) -> list[int]:
    """The ids of a prompt: the text as plain text (a special token's literal text, such as
    "<|endoftext|>", stays text, so a user can never inject one), and an empty prompt as
    <|endoftext|> alone, the token every document follows in training."""
    return get_tokenizer().encode_ordinary(text) or [EOT_ID]


def text_to_ids(text: str) -> torch.Tensor:
    """Encode text as plain text (see encode_prompt) to a (1, n) int64 tensor."""
    return torch.tensor(encode_prompt(text), dtype=torch.long).unsqueeze(0)  # (1, n)


def ids_to_text(ids: torch.Tensor | list[int]) -> str:
    """Decode a (1, n) or (n,) tensor or a list of ids; invalid UTF-8 becomes U+FFFD."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 2 and ids.size(0) == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"ids_to_text expects shape (n,) or (1, n), got {tuple(ids.shape)}")
        ids = ids.tolist()
    return get_tokenizer().decode(ids, errors="replace")
