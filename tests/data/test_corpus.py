"""Opening corpus folders: damage is detected, older layouts still load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gptforge.data import load_corpus, prepare_corpus
from gptforge.errors import UserError

from helpers import assert_user_error, run_cli_here, write, write_docs


def test_load_corpus_detects_damage(tmp_path):
    src = write(tmp_path / "a.txt", "Some text for the corpus.\n" * 50)
    out = tmp_path / "out"
    prepare_corpus([str(src)], out, progress=False)
    load_corpus(out)

    data_bytes = (out / "train-00000.bin").read_bytes()
    (out / "train-00000.bin").write_bytes(data_bytes[:-2])
    with pytest.raises(UserError, match=r"train-00000\.bin.*truncated"):
        load_corpus(out)
    (out / "train-00000.bin").write_bytes(data_bytes)

    meta_text = (out / "meta.json").read_text()
    (out / "meta.json").write_text(meta_text[:-20])
    with pytest.raises(UserError, match=r"cannot read .*meta\.json: .*; prepare the corpus again"):
        load_corpus(out)
    (out / "meta.json").write_text(meta_text.replace('"gpt2"', '"cl100k_base"'))
    with pytest.raises(UserError, match="tokenizer"):
        load_corpus(out)
    (out / "meta.json").unlink()
    with pytest.raises(UserError, match="no meta.json"):
        load_corpus(out)
    with pytest.raises(UserError, match="no meta.json"):
        load_corpus(tmp_path / "nowhere")



def test_corpora_from_before_shards_still_load(tmp_path):
    train = np.arange(100, 400, dtype=np.uint16)
    train.tofile(tmp_path / "train.bin")
    np.arange(7, dtype=np.uint16).tofile(tmp_path / "val.bin")
    (tmp_path / "meta.json").write_text(json.dumps(
        {"format": "gptforge-corpus", "format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257,
         "dtype": "uint16", "tokens": {"train": 300, "val": 7}}))
    corpus = load_corpus(tmp_path)
    assert isinstance(corpus.train, np.memmap) and corpus.train.tolist() == train.tolist()
    assert corpus.val.tolist() == list(range(7))


def test_shard_listing_must_match_the_token_count(tmp_path):
    write_docs(tmp_path / "src", 2)
    prepare_corpus([str(tmp_path / "src")], tmp_path / "c", shard_tokens=500, progress=False)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    meta["shards"]["train"].pop()
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not list the train shards"):
        load_corpus(tmp_path / "c")
    meta["shards"]["train"][0]["file"] = "../../etc/passwd"
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not list"):
        load_corpus(tmp_path / "c")


def test_an_altered_shard_is_caught_by_its_sha256_and_a_truncated_one_by_its_size(tmp_path, tiny_checkpoint):
    out = tmp_path / "corpus"
    prepare_corpus([str(write(tmp_path / "a.txt", "Some text for the corpus.\n" * 400))], out, progress=False)
    shard = out / "val-00000.bin"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size, other tokens
    shard.write_bytes(bytes(data))
    load_corpus(out)  # sizes are checked on every load: this one passes them
    with pytest.raises(UserError, match=r"val-00000\.bin does not match the sha256 in meta\.json"):
        load_corpus(out, verify=True)
    assert_user_error(run_cli_here("train", "--data", str(out), "--verify-data", "--preset", "gpt2-tiny",
                              "--max-steps", "1", "--out", str(tmp_path / "run")), "does not match the sha256")
    assert not (tmp_path / "run").exists()
    assert_user_error(run_cli_here("eval", "--checkpoint", str(tiny_checkpoint), "--data", str(out)),
                      "does not match the sha256")
    shard.write_bytes(bytes(data[:-2]))
    for check in (dict(), dict(verify=True)):
        with pytest.raises(UserError, match=r"val-00000\.bin has \d+ bytes but meta\.json says"):
            load_corpus(out, **check)
