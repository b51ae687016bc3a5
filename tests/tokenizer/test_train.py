"""Training a tokenizer: deterministic, every input form, bad input refused with nothing written."""

from __future__ import annotations

import json

import pytest
from transformers import PreTrainedTokenizerFast

from gptforge.errors import UserError
from gptforge.tokenizer import load_tokenizer
from gptforge.tokenizer.train import train_tokenizer

from helpers import assert_user_error, run_cli, write, write_docs


def test_the_same_inputs_give_a_byte_identical_tokenizer(tmp_path, text, tiny_bpe_dir):
    again = train_tokenizer([str(text)], tmp_path / "again", vocab_size=400, progress=False)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (tiny_bpe_dir / "tokenizer.json").read_bytes()
    assert again.name == load_tokenizer(tiny_bpe_dir).name
    other = train_tokenizer([str(text)], tmp_path / "other", vocab_size=401, progress=False)
    assert other.name != again.name and other.vocab_size == 401


def test_reads_what_prepare_reads_and_transformers_loads_it(tmp_path):
    texts = write_docs(tmp_path / "src", n=6)
    write(tmp_path / "rows.jsonl", "\n".join(json.dumps({"text": t}) for t in texts[:2]) + "\n")
    tokenizer = train_tokenizer([str(tmp_path / "src"), str(tmp_path / "rows.jsonl"), "builtin:shakespeare"],
                                tmp_path / "tok", vocab_size=1000, progress=False)
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    assert [s["path"] for s in meta["sources"]][-2:] == [str(tmp_path / "rows.jsonl"), "builtin:shakespeare"]
    assert all(len(s["sha256"]) == 64 for s in meta["sources"])
    assert tokenizer.vocab_size == 1000 and meta["training"]["characters"] > 5_000_000
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    for sample in texts:
        assert fast(sample)["input_ids"] == tokenizer.encode(sample)
    # A bigger vocabulary compresses the text it was trained on better than bytes do.
    assert len(tokenizer.encode(texts[0])) < len(texts[0].encode()) / 2


@pytest.mark.parametrize("vocab, fragment", [(258, "between 259"), (2**24 + 1, "16,777,216"), (0, "between 259")])
def test_a_vocab_size_out_of_range_is_refused(tmp_path, text, vocab, fragment):
    with pytest.raises(UserError, match=fragment):
        train_tokenizer([str(text)], tmp_path / "tok", vocab_size=vocab, progress=False)
    assert not (tmp_path / "tok").exists()


@pytest.mark.slow  # CLI processes
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, text):
    empty = write(tmp_path / "empty.txt", "")
    out = tmp_path / "tok"
    base = ["tokenizer", "train", "--out", str(out)]
    assert_user_error(run_cli(*base, str(empty), "--vocab-size", "300"), "the corpus is empty")
    assert_user_error(run_cli(*base, str(text), "--vocab-size", "100"), "vocab size must be between 259")
    assert_user_error(run_cli(*base, str(tmp_path / "missing.txt"), "--vocab-size", "300"), "no such file")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]
    write(out / "keep.txt", "precious")
    assert_user_error(run_cli(*base, str(text), "--vocab-size", "300"), "not empty")
    assert (out / "keep.txt").read_text() == "precious"


def test_the_largest_vocab_size_once_documented_is_one_line_not_an_abort(tmp_path, text):
    """2^32 ids made the Rust trainer reserve 283 GB up front and abort the process (exit 134)."""
    result = run_cli("tokenizer", "train", str(text), "--vocab-size", str(2**32), "--out", str(tmp_path / "tok"),
                     timeout=120)
    assert_user_error(result, "at most 2^24 = 16,777,216")
    assert not (tmp_path / "tok").exists()
