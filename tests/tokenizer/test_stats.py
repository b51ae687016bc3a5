"""Measuring tokenizers on a text."""

from __future__ import annotations

import numpy as np

from gptforge.tokenizer import gpt2
from gptforge.tokenizer.stats import measure, tokenizer_stats


def test_measure_counts_bytes_tokens_and_the_ids_used(tiny_bpe):
    texts = ["To be, or not to be: that is the question.", "Ay, there's the rub 😀\n\n"]
    ours, theirs = measure([tiny_bpe, gpt2()], texts)
    ids = tiny_bpe.encode(texts[0]) + tiny_bpe.encode(texts[1])
    n_bytes = sum(len(t.encode()) for t in texts)
    assert ours["tokens"] == len(ids) and ours["bytes"] == n_bytes and ours["bytes_per_token"] == n_bytes / len(ids)
    assert ours["ids_used"] == len(set(ids)) and ours["coverage"] == len(set(ids)) / (400 - 3)
    assert theirs["tokens"] == len(gpt2().encode(texts[0])) + len(gpt2().encode(texts[1]))
    assert theirs["coverage"] == theirs["ids_used"] / 50256


def test_stats_reads_inputs_up_to_max_chars(tiny_bpe, text):
    whole = text.read_text()
    (result,) = tokenizer_stats([tiny_bpe], [str(text)], max_chars=1000)
    assert result["characters"] == 1000 and result["tokens"] == len(tiny_bpe.encode(whole[:1000]))
    (result,) = tokenizer_stats([tiny_bpe], [str(text)])
    counts = np.bincount(tiny_bpe.encode_array(whole), minlength=400)
    assert result["ids_used"] == int((counts > 0).sum())
