"""A classifier exports as transformers' *ForSequenceClassification whose logits equal ours,
reading the same token: the last one that is not config.pad_token_id."""

import json

import pytest
import torch

from gptforge.model.classifier import as_classifier
from gptforge.weights import export_hf, load_any
from gptforge.weights.checkpoint import save_checkpoint

from helpers import random_gpt

transformers = pytest.importorskip("transformers")

EOT = 50256
BLOCKS = {"gpt2": ({}, "GPT2ForSequenceClassification"),
          "llama": ({"arch": "modern", "qk_norm": False}, "LlamaForSequenceClassification"),
          "qwen3": ({"arch": "modern"}, "Qwen3ForSequenceClassification")}


@pytest.mark.parametrize("family", sorted(BLOCKS))
def test_the_export_computes_our_logits(family, tmp_path):
    overrides, hf_class = BLOCKS[family]
    torch.manual_seed(0)
    model = random_gpt(0, vocab_size=50257, context_length=32, **overrides)
    clf = as_classifier(model, ["neg", "neutral", "pos"], EOT).eval()
    save_checkpoint(tmp_path / "ck", clf)  # through a checkpoint, as `convert --to-hf` goes
    export_hf(load_any(tmp_path / "ck"), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [hf_class] and config["pad_token_id"] == EOT
    assert config["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == hf_class
    texts = [torch.randint(0, EOT, (n,)) for n in (5, 12, 9)]
    batch = torch.full((3, 12), EOT)  # right-padded: transformers finds each row's end by pad_token_id
    for i, t in enumerate(texts):
        batch[i, :len(t)] = t
    with torch.no_grad():
        theirs = hf(batch).logits
        ours = clf(batch)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([clf(t[None]) for t in texts]), theirs, rtol=1e-4, atol=1e-5)
    # transformers' tokenizer pads with the same token, so its own padded batches read the same token
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.pad_token_id == EOT
    words = ["A short one.", "A rather longer text, which the shorter is padded to."]
    encoded = tokenizer(words, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(clf(encoded["input_ids"]), hf(**encoded).logits, rtol=1e-4, atol=1e-5)
