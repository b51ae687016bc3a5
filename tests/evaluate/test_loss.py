"""Tests for gptforge.evaluate, each against a plain re-computation of the same quantity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.data import load_corpus, prepare_corpus
from gptforge.errors import UserError
from gptforge.evaluate import (
    batch_loss,
    bits_per_byte,
    evaluate_path,
    evaluate_tokens,
    format_report,
    mean_loss,
    perplexity,
)
from gptforge.model import GPT
from gptforge.tokenizer import gpt2
from gptforge.weights.checkpoint import save_checkpoint

from helpers import EOT_ID

TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. "
        "Caf\u00e9 na\u00efvet\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001F600 costs \u20ac5.\n") * 6


def tokens_of(text: str) -> np.ndarray:
    return np.asarray(gpt2().encoding.encode_ordinary(text), dtype=np.uint16)


@pytest.fixture
def model() -> GPT:
    # Full GPT-2 vocabulary (real token ids and byte lengths), a short context for many windows.
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("gpt2-tiny", context_length=16), gpt2()).eval()


def reference_nll(model: GPT, ids: list[int]) -> torch.Tensor:
    """Per-position NLL of targets ids[1:] given ids[:-1], by log_softmax and gather, in float64."""
    x = torch.tensor([ids[:-1]])
    y = torch.tensor(ids[1:])
    with torch.no_grad():
        logp = torch.log_softmax(model(x)[0].double(), dim=-1)  # (T, V)
    return -logp.gather(1, y[:, None])[:, 0]  # (T,)


def test_batch_loss_matches_per_position_log_softmax(model):
    x = torch.randint(0, 50257, (3, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 50257, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logp = torch.log_softmax(model(x).double(), dim=-1)  # (B, T, V)
        expected = -logp.gather(2, y[..., None]).mean()
        got = batch_loss(model, x, y)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mean_loss_first_n_batches_nan_for_empty_and_restores_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2-tiny", context_length=16, dropout=0.5), gpt2())
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randint(0, 50257, (2, 8), generator=gen), torch.randint(0, 50257, (2, 8), generator=gen))
               for _ in range(4)]
    model.eval()
    with torch.no_grad():
        manual = [batch_loss(model, x, y).item() for x, y in batches]
    model.train()  # mean_loss must switch dropout off, or it would not match the eval-mode values
    assert mean_loss(model, iter(batches), num_batches=2) == pytest.approx(np.mean(manual[:2]), rel=1e-6)
    assert mean_loss(model, batches) == pytest.approx(np.mean(manual), rel=1e-6)
    assert mean_loss(model, batches, num_batches=10) == pytest.approx(np.mean(manual), rel=1e-6)
    assert model.training
    assert math.isnan(mean_loss(model, []))
    assert model.training
    model.eval()
    mean_loss(model, batches, num_batches=1)
    assert not model.training


def test_perplexity_and_bits_per_byte():
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(1e6) == math.inf
    assert bits_per_byte(10 * math.log(2), 5) == pytest.approx(2.0)
    assert math.isnan(bits_per_byte(1.0, 0))


@pytest.mark.parametrize("n_extra", [0, 5])  # n - 1 a multiple of the context, and not
def test_evaluate_tokens_scores_every_token_once(model, n_extra):
    ids = tokens_of(TEXT).astype(np.int64).tolist()
    L = model.config.context_length
    n = 5 * L + 1 + n_extra  # 5 full windows (+ a short one)
    assert len(ids) >= n
    ids = ids[:n]
    # The reference: non-overlapping windows at 0, L, 2L, ..., each scored on its own.
    total = sum(reference_nll(model, ids[s:s + L + 1]).sum().item() for s in range(0, n - 1, L))
    target_bytes = len(gpt2().encoding.decode_bytes(ids[1:]))

    result = evaluate_tokens(model, np.array(ids, dtype=np.uint16), batch_size=2)  # 2 does not divide 5
    assert result["tokens"] == n - 1
    assert result["bytes"] == target_bytes
    assert result["loss"] * (n - 1) == pytest.approx(total, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["bits_per_byte"] == pytest.approx(total / (math.log(2) * target_bytes), rel=1e-5)
    # The batch size changes only how windows are grouped, never the result.
    again = evaluate_tokens(model, np.array(ids, dtype=np.uint16), batch_size=7)
    assert again["loss"] == pytest.approx(result["loss"], rel=1e-6)


def test_evaluate_tokens_two_tokens_and_too_few(model):
    result = evaluate_tokens(model, np.array([464, 3290], dtype=np.uint16))
    assert result["tokens"] == 1
    assert result["loss"] == pytest.approx(reference_nll(model, [464, 3290]).item(), rel=1e-5)
    with pytest.raises(UserError, match="at least 2 tokens"):
        evaluate_tokens(model, np.array([464], dtype=np.uint16))


def test_endoftext_counts_zero_bytes(model):
    a, b = tokens_of("Hello there, friend."), tokens_of(" Goodbye now.")
    ids = np.concatenate([a, [EOT_ID], b]).astype(np.uint16)
    expected = len(gpt2().encoding.decode_bytes(a[1:].tolist() + b.tolist()))
    assert evaluate_tokens(model, ids)["bytes"] == expected


def test_out_of_vocabulary_ids_are_a_user_error():
    torch.manual_seed(0)
    small = GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=100, context_length=8), gpt2())
    with pytest.raises(UserError, match="vocabulary"):
        evaluate_tokens(small, np.array([1, 2, 500], dtype=np.uint16))


def test_evaluate_path_on_corpus_text_file_and_folder(model, tmp_path):
    text_file = tmp_path / "book.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    corpus = tmp_path / "corpus"
    prepare_corpus([str(text_file)], corpus, val_fraction=0.3, progress=False)
    ckpt = save_checkpoint(tmp_path / "ckpt", model)

    loaded = load_corpus(corpus)
    on_val = evaluate_path(ckpt, corpus, batch_size=4, progress=False)
    assert on_val["loss"] == pytest.approx(evaluate_tokens(model, loaded.val)["loss"], rel=1e-6)
    assert on_val["tokens"] == len(loaded.val) - 1
    assert on_val["split"] == "val" and on_val["data"] == str(corpus) and on_val["checkpoint"] == str(ckpt)
    on_train = evaluate_path(ckpt, corpus, split="train", progress=False)
    assert on_train["tokens"] == len(loaded.train) - 1

    on_file = evaluate_path(ckpt, text_file, progress=False)
    expected = evaluate_tokens(model, tokens_of(TEXT))
    assert on_file["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert on_file["bytes"] == expected["bytes"] == len(TEXT.encode()) - len(gpt2().encoding.decode_bytes(
        tokens_of(TEXT)[:1].tolist()))
    assert on_file["split"] is None

    # A folder: its files in sorted order, joined with <|endoftext|> as prepare joins them.
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("First document here.", encoding="utf-8")
    (folder / "b.txt").write_text("Second document there.", encoding="utf-8")
    joined = np.concatenate([tokens_of("First document here."), [EOT_ID],
                             tokens_of("Second document there.")]).astype(np.uint16)
    on_folder = evaluate_path(ckpt, folder, progress=False)
    assert on_folder["tokens"] == len(joined) - 1
    assert on_folder["loss"] == pytest.approx(evaluate_tokens(model, joined)["loss"], rel=1e-6)

    report = format_report(on_val)
    for fragment in ("perplexity", "bits per byte", f"{on_val['tokens']:,}", "val split"):
        assert fragment in report


def test_evaluate_path_user_errors(model, tmp_path):
    ckpt = save_checkpoint(tmp_path / "ckpt", model)
    text_file = tmp_path / "t.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    with pytest.raises(UserError, match="no such file"):
        evaluate_path(ckpt, tmp_path / "missing.txt", progress=False)
    with pytest.raises(UserError, match="no such checkpoint"):
        evaluate_path(tmp_path / "no-ckpt", text_file, progress=False)
    corpus = tmp_path / "corpus"
    prepare_corpus([str(text_file)], corpus, val_fraction=0.0, progress=False)
    with pytest.raises(UserError, match="val split"):
        evaluate_path(ckpt, corpus, progress=False)
    with pytest.raises(UserError, match="unknown split"):
        evaluate_path(ckpt, corpus, split="test", progress=False)
