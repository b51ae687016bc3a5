"""Which tokenizer: by name or folder (`load_tokenizer`), from what a checkpoint, run or corpus
records (`tokenizer_from_record`), or a model's own (`tokenizer_of`).

A model travels with its tokenizer: corpus folders, run folders and checkpoints record its
description (Tokenizer.describe) and, for one that is not GPT-2's, hold its files in a
`tokenizer/` subfolder (TOKENIZER_DIR).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import Tokenizer
from .bpe import load_folder
from .gpt2_bpe import gpt2

TOKENIZER_DIR = "tokenizer"  # the subfolder of a corpus, run or checkpoint that holds the tokenizer's files


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """"gpt2" (GPT-2's, bundled) or a tokenizer folder (tokenizer.json + meta.json, checked), or a
    corpus, run or checkpoint folder that holds one in its tokenizer/ subfolder."""
    if str(spec) == "gpt2":
        return gpt2()
    folder = Path(spec).expanduser()
    if not (folder / "tokenizer.json").is_file() and (folder / TOKENIZER_DIR / "tokenizer.json").is_file():
        folder = folder / TOKENIZER_DIR
    return load_folder(folder)


def tokenizer_from_record(description: dict[str, Any] | None, folder: Path, what: str) -> Tokenizer:
    """The tokenizer `what` (a checkpoint, run or corpus) records: GPT-2's (with the special tokens
    it lists) from the description alone, any other from `folder`, whose files must match it.
    No description (a checkpoint or corpus from before tokenizers were recorded) means GPT-2's."""
    if description is None:
        return gpt2()
    if not isinstance(description, dict) or description.get("type") not in ("gpt2", "bpe"):
        raise UserError(f"{what} records an unknown tokenizer: {description!r}")
    if description["type"] == "gpt2":
        specials = sorted(description.get("special_tokens", {}).items(), key=lambda item: item[1])
        tokenizer: Tokenizer = gpt2().with_special_tokens([name for name, _ in specials])
    else:
        if not (folder / "tokenizer.json").is_file():
            raise UserError(f"{what} was trained with tokenizer {description.get('name')}, whose files are "
                            f"missing (expected {folder}); restore that folder")
        tokenizer = load_folder(folder)
    if tokenizer.describe() != description:
        raise UserError(f"{folder} holds tokenizer {tokenizer.name}, not the {description.get('name')} "
                        f"{what} records")
    return tokenizer


def tokenizer_of(model: Any) -> Tokenizer:
    """A model's own tokenizer (GPT.tokenizer, given by load_any and by training); a Tokenizer
    passed in is returned as it is. A model without one is an error, never a guess."""
    if isinstance(model, Tokenizer):
        return model
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("this model has no tokenizer: build it with GPT(config, tokenizer) "
                         "(gptforge.tokenizer.gpt2() for GPT-2's vocabulary) or load it with load_any")
    return tokenizer


def text_to_ids(text: str, tokenizer: Any = None):
    """Text as plain text (see Tokenizer.encode_prompt) to a (1, n) int64 tensor; `tokenizer` is a
    Tokenizer or a model (its own tokenizer), GPT-2's when None."""
    import torch

    ids = tokenizer_of(gpt2() if tokenizer is None else tokenizer).encode_prompt(text)
    return torch.tensor(ids, dtype=torch.long).unsqueeze(0)  # (1, n)


def ids_to_text(ids, tokenizer: Any = None) -> str:
    """Decode a (1, n) or (n,) tensor or a list of ids (invalid UTF-8 becomes U+FFFD); `tokenizer`
    as in text_to_ids."""
    import torch

    if isinstance(ids, torch.Tensor):
        if ids.dim() == 2 and ids.size(0) == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"ids_to_text expects shape (n,) or (1, n), got {tuple(ids.shape)}")
        ids = ids.tolist()
    return tokenizer_of(gpt2() if tokenizer is None else tokenizer).decode(ids)
