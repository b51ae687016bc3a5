"""Which tokenizer: by name or folder, from a record, or a model's own."""

from __future__ import annotations

import pytest
import torch

from gptforge.errors import UserError
from gptforge.model import GPT
from gptforge.tokenizer import gpt2, ids_to_text, load_tokenizer, text_to_ids, tokenizer_from_record, tokenizer_of


def test_load_tokenizer_and_tokenizer_of(tiny_bpe, tiny_bpe_dir, tiny_config):
    assert load_tokenizer("gpt2") is gpt2() and load_tokenizer(tiny_bpe_dir).same_as(tiny_bpe)
    with pytest.raises(ValueError, match="this model has no tokenizer"):  # an error, never GPT-2's as a guess
        tokenizer_of(GPT(tiny_config))
    model = GPT(tiny_config, tiny_bpe)
    assert tokenizer_of(model) is tiny_bpe and tokenizer_of(tiny_bpe) is tiny_bpe
    ids = text_to_ids("To be, or not", model)
    assert ids.dtype == torch.long and ids[0].tolist() == tiny_bpe.encode("To be, or not")
    assert ids_to_text(ids, model) == "To be, or not" and ids_to_text(ids[0], tiny_bpe) == "To be, or not"
    assert text_to_ids("", tiny_bpe).tolist() == [[tiny_bpe.eot_id]]
    assert text_to_ids("To be").tolist() == [gpt2().encode("To be")]  # no tokenizer asked for: GPT-2's


def test_a_record_needs_its_files_and_must_match_them(tiny_bpe, tiny_bpe_dir, tmp_path):
    assert tokenizer_from_record(tiny_bpe.describe(), tiny_bpe_dir, "run x").same_as(tiny_bpe)
    with pytest.raises(UserError, match=f"run x was trained with tokenizer {tiny_bpe.name}, whose files are missing"):
        tokenizer_from_record(tiny_bpe.describe(), tmp_path / "gone", "run x")
    other = {**tiny_bpe.describe(), "sha256": "0" * 64, "name": "bpe-000000000000"}
    with pytest.raises(UserError, match="not the bpe-000000000000 run x records"):
        tokenizer_from_record(other, tiny_bpe_dir, "run x")
    with pytest.raises(UserError, match="unknown tokenizer"):
        tokenizer_from_record({"type": "sentencepiece"}, tiny_bpe_dir, "run x")
