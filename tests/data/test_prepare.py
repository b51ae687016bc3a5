"""Preparing corpus folders: contract files, splits, workers, resuming, bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gptforge.data import encode as encoding
from gptforge.data import load_corpus, prepare, prepare_corpus, tokenize
from gptforge.errors import UserError
from gptforge.text import read_documents
from gptforge.text.sources import Document, Source, open_sources
from gptforge.text.split import val_documents
from gptforge.tokenizer import gpt2
from gptforge.tokenizer.gpt2_bpe import GPT2Tokenizer
from gptforge.training import train
from gptforge.training.config import TrainConfig

from helpers import (
    EOT_ID,
    corpus_tokens,
    encode,
    joined,
    read_split,
    run_cli_here,
    split_on_eot,
    write,
    write_docs,
)


def test_prepare_by_chars_writes_contract_files_and_the_right_tokens(tmp_path):
    texts = ["First document.\nIt has two lines.\n",
             "Second <|endoftext|> document, with a literal special token in it.\n",
             "Third one, the last.\n"]
    src = tmp_path / "src"
    for i, t in enumerate(texts):
        write(src / f"{i}.txt", t)
    write(src / "notes.md", "not a .txt file, ignored")
    out = tmp_path / "corpus"
    meta = prepare_corpus([str(src)], out, val_fraction=0.3, split="chars", progress=False)

    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train-00000.bin", "val-00000.bin"]
    assert json.loads((out / "meta.json").read_text()) == meta
    n_train = meta["tokens"]["train"]
    assert meta["shards"]["train"] == [{"file": "train-00000.bin", "tokens": n_train, "bytes": 2 * n_train,
                                        "sha256": hashlib.sha256((out / "train-00000.bin").read_bytes()).hexdigest()}]
    assert meta["tokenizer"] == gpt2().describe() and meta["vocab_size"] == 50257 and meta["eot_id"] == EOT_ID
    assert meta["dtype"] == "uint16" and meta["split"] == "chars" and meta["val_fraction"] == 0.3
    assert [Path(s["path"]).name for s in meta["sources"]] == ["0.txt", "1.txt", "2.txt"]
    assert meta["sources"][1]["bytes"] == len(texts[1].encode()) and len(meta["sources"][1]["sha256"]) == 64

    # Expected: the last 30% of the characters validate; doc 1 straddles the cut.
    split_idx = int(0.7 * sum(map(len, texts)))
    head_len = split_idx - len(texts[0])
    assert 0 < head_len < len(texts[1])
    expected_train = encode(texts[0]) + [EOT_ID] + encode(texts[1][:head_len])
    expected_val = encode(texts[1][head_len:]) + [EOT_ID] + encode(texts[2])
    assert read_split(out, "train") == expected_train
    assert read_split(out, "val") == expected_val
    assert meta["tokens"] == {"train": len(expected_train), "val": len(expected_val)}
    # The literal "<|endoftext|>" in user text is ordinary text: only the separators are 50256.
    assert (read_split(out, "train") + read_split(out, "val")).count(EOT_ID) == 2

    corpus = load_corpus(out)
    assert corpus.train.dtype == np.uint16 and corpus.train.tolist() == expected_train
    assert corpus.val.tolist() == expected_val and corpus.meta == meta


def test_single_file_split_matches_the_reference_recipe(tmp_path):
    text = "".join(f"Line {i}: every effort moves you, said Gisburn.\n" for i in range(200))
    path = write(tmp_path / "story.txt", text)
    split_idx = int(0.9 * len(text))  # the reference recipe
    train, val = tokenize([str(path)], 0.1)
    assert train.dtype == val.dtype == np.uint16
    assert train.tolist() == encode(text[:split_idx]) and val.tolist() == encode(text[split_idx:])
    out = tmp_path / "corpus"
    prepare_corpus([str(path)], out, progress=False)
    corpus = load_corpus(out)
    assert np.array_equal(corpus.train, train) and np.array_equal(corpus.val, val)


def test_prepare_by_documents_never_straddles_and_is_reproducible(tmp_path):
    texts = [f"Document number {i}. " * (i + 1) + "\n" for i in range(10)]
    for i, t in enumerate(texts):
        write(tmp_path / "src" / f"doc{i:02d}.txt", t)
    pattern = str(tmp_path / "src" / "doc*.txt")

    def val_docs(seed, out):
        prepare_corpus([pattern], out, val_fraction=0.3, split="documents", seed=seed, progress=False)
        train = split_on_eot(read_split(out, "train"))
        val = split_on_eot(read_split(out, "val"))
        encoded = [encode(t) for t in texts]
        assert len(train) == 7 and len(val) == 3
        assert all(d in encoded for d in train + val)  # every piece is a whole document
        assert sorted(map(tuple, train + val)) == sorted(map(tuple, encoded))  # each exactly once
        return sorted(encoded.index(d) for d in val)

    first = val_docs(1, tmp_path / "a")
    assert val_docs(1, tmp_path / "b") == first
    assert any(val_docs(seed, tmp_path / f"s{seed}") != first for seed in (2, 3, 4))

    with pytest.raises(UserError, match="needs more documents"):
        prepare_corpus([str(tmp_path / "src" / "doc00.txt")], tmp_path / "one", split="documents",
                       progress=False)


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    # \xe9 (a Latin-1 é), then \xff and \xfe: three invalid sequences; the valid U+FFFD (EF BF BD)
    # already in the file is not a replacement.
    path = write(tmp_path / "latin1.txt", b"caf\xe9 ok \xff\xfe end \xef\xbf\xbd.\n")
    (text,), replaced = read_counting([str(path)])
    assert text == "caf\ufffd ok \ufffd\ufffd end \ufffd.\n"
    assert replaced == 3
    meta = prepare_corpus([str(path)], tmp_path / "c", progress=False)
    assert meta["replaced_invalid_utf8"] == 3 and meta["sources"][0]["replaced"] == 3


def test_replacements_are_counted_across_read_blocks(tmp_path):
    from gptforge.text.sources import READ_BYTES
    for cut in (1, 2):  # a valid U+FFFD (EF BF BD) split across two blocks is not a replacement
        raw = b"a" * (READ_BYTES - cut) + "\ufffd".encode() + b" caf\xe9 \xff" + "\ufffd".encode() * 3
        path = write(tmp_path / f"seam{cut}.txt", raw)
        (text,), replaced = read_counting([str(path)])
        assert replaced == 2 and text == raw.decode("utf-8", errors="replace")


def test_nul_byte_file_is_refused(tmp_path):
    path = write(tmp_path / "model.txt", b"looks like text\x00\x01\x02")
    with pytest.raises(UserError, match="model.txt.*binary"):
        read_documents([str(path)])
    with pytest.raises(UserError, match="binary"):
        tokenize([str(path)], 0.1)


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        read_documents([str(tmp_path / "missing.txt")])
    with pytest.raises(UserError, match="matches no files"):
        read_documents([str(tmp_path / "*.txt")])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no .txt files"):
        read_documents([str(tmp_path / "empty_dir")])
    empty = write(tmp_path / "empty.txt", b"")
    with pytest.raises(UserError, match="empty"):
        tokenize([str(empty)])
    with pytest.raises(UserError, match="empty"):
        prepare_corpus([str(empty)], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="unknown builtin"):
        read_documents(["builtin:nope"])
    with pytest.raises(UserError, match="val_fraction"):
        prepare_corpus([str(empty)], tmp_path / "out", val_fraction=1.0, progress=False)


def test_existing_output_folder_is_never_damaged(tmp_path, monkeypatch):
    src = write(tmp_path / "a.txt", "Some text for the corpus.\n" * 20)
    out = tmp_path / "out"
    write(out / "precious.txt", "do not touch")

    with pytest.raises(UserError, match="not empty"):
        prepare_corpus([str(src)], out, progress=False)
    # A failure half-way (here: during tokenization) with overwrite=True leaves it as it was, too.
    with monkeypatch.context() as patch:
        patch.setattr(GPT2Tokenizer, "encode_array", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
        with pytest.raises(RuntimeError, match="disk full"):
            prepare_corpus([str(src)], out, overwrite=True, progress=False, workers=1)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "do not touch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out"]  # no temporary leftovers

    prepare_corpus([str(src)], out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train-00000.bin", "val-00000.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out"]
    # An existing but empty folder is fine without overwrite.
    (tmp_path / "fresh").mkdir()
    prepare_corpus([str(src)], tmp_path / "fresh", progress=False)
    assert load_corpus(tmp_path / "fresh").meta["tokens"]["train"] > 0



def read_counting(inputs: list[str]) -> tuple[list[str], int]:
    """The documents' texts and how many invalid UTF-8 sequences were replaced in them."""
    sources = open_sources(inputs)
    texts = ["".join(doc.blocks) for source in sources for doc in source.documents()]
    return texts, sum(source.record["replaced"] for source in sources)


def test_builtin_shakespeare_is_readable_and_prepares(tmp_path):
    docs = read_documents(["builtin:shakespeare"])
    names = [name for name, _ in docs]
    assert len(docs) == 42 and "builtin:shakespeare/hamlet" in names
    assert sum(len(text) for _, text in docs) > 4_000_000
    hamlet = dict(docs)["builtin:shakespeare/hamlet"]
    assert hamlet.startswith("HAMLET") and "To be, or not to be" in hamlet
    assert "Gutenberg" not in "".join(text for _, text in docs)  # licence boilerplate stripped
    assert read_counting(["builtin:shakespeare"])[1] == 0


# ---------------------------------------------------------------------------------------------
# Streaming, shards, workers, resume



def test_output_is_identical_for_any_workers_and_shard_size(tmp_path, monkeypatch):
    monkeypatch.setattr(encoding, "CHUNK_CHARS", 2000)  # many pieces and tasks from a small corpus
    texts = write_docs(tmp_path / "src")
    is_val = val_documents(len(texts), 0.2, 7)
    expected_train = joined([t for t, v in zip(texts, is_val) if not v])
    expected_val = joined([t for t, v in zip(texts, is_val) if v])
    for workers, shard_tokens in [(1, 10**9), (2, 1000), (3, 4096)]:
        out = tmp_path / f"w{workers}"
        meta = prepare_corpus([str(tmp_path / "src")], out, val_fraction=0.2, seed=7, workers=workers,
                              shard_tokens=shard_tokens, progress=False)
        assert meta["split"] == "documents" and meta["documents"] == {"train": 11, "val": 3, "total": 14}
        train, val = corpus_tokens(out)
        assert train.tolist() == expected_train and val.tolist() == expected_val
        listed = meta["shards"]["train"] + meta["shards"]["val"]
        assert sorted(p.name for p in out.iterdir()) == sorted(["meta.json"] + [s["file"] for s in listed])
        for split in ("train", "val"):
            counts = [s["tokens"] for s in meta["shards"][split]]
            assert sum(counts) == meta["tokens"][split] and all(c == shard_tokens for c in counts[:-1])
    assert len(json.loads((tmp_path / "w2" / "meta.json").read_text())["shards"]["train"]) > 5


def test_auto_split_mode(tmp_path):
    texts = write_docs(tmp_path / "src", 12)
    meta = prepare_corpus([str(tmp_path / "src" / "doc00.txt")], tmp_path / "one", progress=False)
    assert meta["split"] == "chars"  # one document: the reference recipe
    few = [str(tmp_path / "src" / f"doc0{i}.txt") for i in range(4)]
    assert prepare_corpus(few, tmp_path / "few", progress=False)["split"] == "chars"  # 10% of 4 is no document
    meta = prepare_corpus([str(tmp_path / "src")], tmp_path / "many", progress=False)
    assert meta["split"] == "documents" and meta["documents"]["val"] == 1 and meta["seed"] == 0
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(texts)


class Stream(Source):
    """A source of unknown length, like an hf: stream."""

    count = None

    def __init__(self, texts):
        super().__init__()
        self.texts = texts
        self.record = {"stream": len(texts)}

    def identity(self):
        return self.texts

    def documents(self):
        for i, text in enumerate(self.texts):
            yield Document(f"doc{i}", [text])


def test_stream_of_unknown_length_splits_whole_documents_by_seed(tmp_path, monkeypatch):
    texts = [f"Document {i}: " + "some words here. " * (i % 5 + 1) for i in range(60)]
    monkeypatch.setattr("gptforge.text.split.open_sources", lambda inputs, options=None: [Stream(texts)])
    encoded = [tuple(encode(t)) for t in texts]

    def val_docs(seed, name):
        meta = prepare_corpus(["stream"], tmp_path / name, val_fraction=0.25, seed=seed, progress=False)
        assert meta["split"] == "documents"
        train, val = (split_on_eot(t.tolist()) for t in corpus_tokens(tmp_path / name))
        assert sorted(map(tuple, train + val)) == sorted(encoded)  # whole documents, each once
        return [encoded.index(tuple(d)) for d in val]

    first = val_docs(5, "a")
    assert 5 <= len(first) <= 25 and first == sorted(first)
    assert val_docs(5, "b") == first and val_docs(6, "c") != first
    with pytest.raises(UserError, match="--split chars needs"):
        prepare_corpus(["stream"], tmp_path / "d", split="chars", progress=False)


def test_max_tokens_caps_the_corpus(tmp_path):
    write_docs(tmp_path / "src")
    full_train, full_val = None, None
    full = prepare_corpus([str(tmp_path / "src")], tmp_path / "full", val_fraction=0.2, progress=False)
    capped = prepare_corpus([str(tmp_path / "src")], tmp_path / "cap", val_fraction=0.2, max_tokens=5000,
                            progress=False)
    assert sum(capped["tokens"].values()) == 5000 and capped["truncated"] and not full["truncated"]
    full_train, full_val = corpus_tokens(tmp_path / "full")
    train, val = corpus_tokens(tmp_path / "cap")
    assert np.array_equal(train, full_train[:len(train)]) and np.array_equal(val, full_val[:len(val)])
    with pytest.raises(UserError, match="max_tokens"):
        prepare_corpus([str(tmp_path / "src")], tmp_path / "bad", max_tokens=0, progress=False)


def test_interrupted_prepare_resumes_to_the_same_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(encoding, "CHUNK_CHARS", 2000)
    write_docs(tmp_path / "src")
    args = dict(val_fraction=0.2, shard_tokens=700, progress=False)
    prepare_corpus([str(tmp_path / "src")], tmp_path / "ref", workers=1, **args)

    out, work = tmp_path / "out", tmp_path / ".out.partial"
    real_write_json, checkpoints = prepare.write_json, []

    def stop_at_third_checkpoint(path, payload):
        real_write_json(path, payload)
        checkpoints.append(payload)
        if len(checkpoints) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "write_json", stop_at_third_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus([str(tmp_path / "src")], out, workers=2, **args)
    monkeypatch.setattr(prepare, "write_json", real_write_json)
    assert not out.exists() and (work / "progress.json").is_file()  # no corpus, only resumable work
    with pytest.raises(UserError, match="no meta.json"):
        load_corpus(out)

    tokenized = []
    real_encode = GPT2Tokenizer.encode_array
    monkeypatch.setattr(GPT2Tokenizer, "encode_array",
                        lambda self, text: tokenized.append(len(text)) or real_encode(self, text))
    meta = prepare_corpus([str(tmp_path / "src")], out, workers=1, **args)
    assert 0 < sum(tokenized) < meta["characters"] - 3 * 2000  # what was done before is not redone
    assert not work.exists()
    ref = json.loads((tmp_path / "ref" / "meta.json").read_text())
    assert {k: v for k, v in meta.items() if k != "sources"} == {k: v for k, v in ref.items() if k != "sources"}
    assert meta["sources"] == ref["sources"]  # hashes complete although part of the input was skipped
    for shard in meta["shards"]["train"] + meta["shards"]["val"]:
        assert (out / shard["file"]).read_bytes() == (tmp_path / "ref" / shard["file"]).read_bytes()


def test_a_different_job_discards_interrupted_work(tmp_path, monkeypatch):
    write_docs(tmp_path / "src")
    work = tmp_path / ".out.partial"
    work.mkdir()
    (work / "progress.json").write_text(json.dumps({"fingerprint": "another job"}))
    (work / "train-00000.bin").write_bytes(b"\x01\x02" * 100)
    prepare_corpus([str(tmp_path / "src")], tmp_path / "ref", progress=False)
    prepare_corpus([str(tmp_path / "src")], tmp_path / "out", progress=False)
    assert not work.exists()
    assert all(np.array_equal(a, b) for a, b in zip(corpus_tokens(tmp_path / "out"), corpus_tokens(tmp_path / "ref")))


def test_a_second_prepare_into_the_same_folder_is_refused(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    write_docs(tmp_path / "src", 2)
    work = tmp_path / ".out.partial"
    work.mkdir()
    with open(work / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another `gptforge prepare`"):
            prepare_corpus([str(tmp_path / "src")], tmp_path / "out", progress=False)
    assert work.is_dir()  # the other prepare's work is left alone


@pytest.mark.slow
def test_killed_prepare_never_leaves_a_corpus_and_resumes(tmp_path):
    args = ["builtin:shakespeare", "--shard-tokens", "20000", "--workers", "1"]
    out, work = tmp_path / "out", tmp_path / ".out.partial"
    cmd = [sys.executable, "-m", "gptforge", "prepare", *args, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # a bound for a stuck process, not a speed assumption
    while not (work / "progress.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # nothing that training would read
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and not work.exists()
    prepare_corpus(["builtin:shakespeare"], tmp_path / "ref", shard_tokens=20000, progress=False)
    for a, b in zip(corpus_tokens(out), corpus_tokens(tmp_path / "ref")):
        assert np.array_equal(a, b)



@pytest.mark.slow
def test_training_reads_a_sharded_corpus(tmp_path):
    write_docs(tmp_path / "src")
    meta = prepare_corpus([str(tmp_path / "src")], tmp_path / "c", shard_tokens=1000, progress=False)
    assert len(meta["shards"]["train"]) > 3 and len(meta["shards"]["val"]) > 1
    result = train(TrainConfig.of(data=str(tmp_path / "c"), preset="gpt2-tiny", context_length=32, batch_size=4,
                               max_steps=3, eval_every=2, eval_batches=2, sampling="random", device="cpu",
                               out=str(tmp_path / "run")), progress=False)
    assert result.step == 3 and np.isfinite(result.train_loss) and np.isfinite(result.val_loss)


def test_prepare_with_your_own_tokenizer(tmp_path, tiny_bpe, tiny_bpe_dir):
    texts = write_docs(tmp_path / "src", n=8)
    out = tmp_path / "out"
    result = run_cli_here("prepare", str(tmp_path / "src"), "--out", str(out), "--tokenizer", str(tiny_bpe_dir),
                     "--val-fraction", "0.25", "--shard-tokens", "3000")
    assert result.returncode == 0, result.stderr
    assert f"tokenizer {tiny_bpe.name}, uint16" in result.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == tiny_bpe.describe() and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == 400 and meta["eot_id"] == tiny_bpe.eot_id == 0
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == (tiny_bpe_dir / "tokenizer.json").read_bytes()
    is_val = val_documents(len(texts), 0.25, 0)
    for split, want in (("train", False), ("val", True)):
        expected = []
        for text in (t for t, v in zip(texts, is_val) if v == want):
            expected += ([0] if expected else []) + tiny_bpe.encode(text)
        assert read_split(out, split) == expected
    corpus = load_corpus(out, verify=True)
    assert corpus.tokenizer.same_as(tiny_bpe) and corpus.train.dtype == np.uint16
    # The same corpus on one worker, and tokenized in memory, token for token.
    prepare_corpus([str(tmp_path / "src")], tmp_path / "one", val_fraction=0.25, shard_tokens=3000,
                   tokenizer=tiny_bpe, workers=1, progress=False)
    assert all((tmp_path / "one" / s["file"]).read_bytes() == (out / s["file"]).read_bytes()
               for s in meta["shards"]["train"] + meta["shards"]["val"])
    train, val = tokenize([str(tmp_path / "src")], 0.25, split="documents", tokenizer=tiny_bpe)
    assert train.tolist() == read_split(out, "train") and val.tolist() == read_split(out, "val")

    (out / "tokenizer" / "tokenizer.json").write_bytes(b"{}")
    with pytest.raises(UserError, match="does not match the sha256"):
        load_corpus(out)


def test_a_vocabulary_over_65536_ids_gets_uint32_shards(tmp_path, wide_bpe_dir):
    from gptforge.tokenizer import load_tokenizer

    wide = load_tokenizer(wide_bpe_dir)
    assert wide.vocab_size == 70_260 and wide.dtype == np.dtype("<u4")
    texts = write_docs(tmp_path / "src", n=3)
    meta = prepare_corpus([str(tmp_path / "src")], tmp_path / "out", val_fraction=0.0, tokenizer=wide,
                          shard_tokens=5000, progress=False)
    assert meta["dtype"] == "uint32" and all(s["bytes"] == 4 * s["tokens"] for s in meta["shards"]["train"])
    expected = wide.encode(texts[0]) + [wide.eot_id] + wide.encode(texts[1]) + [wide.eot_id] + wide.encode(texts[2])
    text_ids = [i for i in expected if i != wide.eot_id]
    assert min(text_ids) >= 70_000 and max(text_ids) >= 70_256  # bytes and merges, far above 65,535
    corpus = load_corpus(tmp_path / "out", verify=True)
    assert corpus.train.dtype == np.dtype("<u4") and np.asarray(corpus.train).tolist() == expected
    assert wide.decode(np.asarray(corpus.train)[:50].tolist()) == wide.decode(expected[:50])
