"""Tests for gptforge.data: corpus preparation, loading, windows and batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from gptforge import GPT, GPTConfig, TrainConfig, data, prepare, train
from gptforge.data import (BatchLoader, TokenWindows, load_corpus, prepare_corpus, read_documents,
                           text_file_splits)
from gptforge.errors import UserError
from gptforge.evaluate import evaluate_tokens
from gptforge.shards import ShardedTokens, open_tokens
from gptforge.sources import Document, Source
from gptforge.tokenizer import EOT_ID, get_tokenizer


class ReferenceWindows(Dataset):
    """The reference recipe's dataset, written the plain way (a list of every window)."""

    def __init__(self, token_ids, max_length, stride):
        self.inputs, self.targets = [], []
        for i in range(0, len(token_ids) - max_length, stride):
            self.inputs.append(torch.tensor(token_ids[i:i + max_length]))
            self.targets.append(torch.tensor(token_ids[i + 1:i + max_length + 1]))

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, idx):
        return self.inputs[idx], self.targets[idx]


def position_tokens(n: int) -> np.ndarray:
    """Tokens equal to their own position, so a row's first token tells where the window starts."""
    assert n < 65536
    return np.arange(n, dtype=np.uint16)


def encode(text: str) -> list[int]:
    return get_tokenizer().encode_ordinary(text)


def read_split(out: Path, split: str) -> list[int]:
    """A prepared split's tokens, all its shards joined, read straight from the files meta.json lists."""
    meta = json.loads((out / "meta.json").read_text())
    return [t for s in meta["shards"][split] for t in np.fromfile(out / s["file"], dtype="<u2").tolist()]


def split_on_eot(tokens: list[int]) -> list[list[int]]:
    docs, current = [], []
    for t in tokens:
        if t == EOT_ID:
            docs.append(current)
            current = []
        else:
            current.append(t)
    return docs + [current]


# ---------------------------------------------------------------------------------------------
# Windows and batches


@pytest.mark.parametrize("n,max_length,stride",
                         [(300, 16, 16), (300, 16, 1), (301, 16, 5), (17, 16, 4), (300, 7, 23)])
def test_windows_match_plain_recomputation(n, max_length, stride):
    tokens = np.random.default_rng(0).integers(0, 50257, size=n).astype(np.uint16)
    ours = TokenWindows(tokens, max_length, stride)
    ref = ReferenceWindows(tokens.tolist(), max_length, stride)
    assert len(ours) == len(ref) > 0
    for k in range(len(ref)):
        x, y = ours[k]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (max_length,)
        assert torch.equal(x, ref[k][0].long()) and torch.equal(y, ref[k][1].long())
    with pytest.raises(IndexError):
        ours[len(ref)]


@pytest.mark.parametrize("n", [17, 300, 301, 1000])
@pytest.mark.parametrize("stride", [16, 5])
@pytest.mark.parametrize("batch_size", [1, 3, 4])
@pytest.mark.parametrize("drop_last", [True, False])
def test_unshuffled_batches_equal_reference_dataloader(n, stride, batch_size, drop_last):
    tokens = np.random.default_rng(n).integers(0, 50257, size=n).astype(np.uint16)
    ref = DataLoader(ReferenceWindows(tokens.tolist(), 16, stride), batch_size=batch_size, shuffle=False,
                     drop_last=drop_last)
    ours = BatchLoader(tokens, 16, stride, batch_size, shuffle=False, drop_last=drop_last)
    assert ours.num_batches == len(ref) == len(ours)
    got = list(ours.batches(0))
    assert len(got) == len(ref)
    for (x, y), (rx, ry) in zip(got, ref):
        assert x.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x, rx.long()) and torch.equal(y, ry.long())


def test_the_verdict_recipe_batch_counts():
    # The reference: ~5,145 tokens split 90/10 by characters gives ~4,630 train and ~515 val
    # tokens; ctx 256, stride 256, batch 2 -> 9 train batches (drop_last) and 1 val batch.
    assert BatchLoader(np.zeros(4630, np.uint16), 256, 256, 2, drop_last=True).num_batches == 9
    assert BatchLoader(np.zeros(515, np.uint16), 256, 256, 2, drop_last=False).num_batches == 1
    # The formula at the edges: windows = ceil((n - L) / stride).
    assert len(TokenWindows(np.zeros(257, np.uint16), 256, 256)) == 1
    assert len(TokenWindows(np.zeros(513, np.uint16), 256, 256)) == 2
    assert len(TokenWindows(np.zeros(512, np.uint16), 256, 256)) == 1


def test_too_short_token_stream_is_a_user_error():
    with pytest.raises(UserError, match=r"has 256 tokens.*needs 257"):
        TokenWindows(np.zeros(256, np.uint16), 256, 256)
    with pytest.raises(UserError, match="has 10 tokens"):
        BatchLoader(np.zeros(10, np.uint16), 16, 16, 2)
    with pytest.raises(UserError, match="stride"):
        TokenWindows(np.zeros(100, np.uint16), 16, 0)


def test_shuffle_is_a_function_of_seed_and_epoch_only():
    tokens = position_tokens(2000)
    make = lambda seed: BatchLoader(tokens, 16, 8, 4, shuffle=True, seed=seed, drop_last=False)  # noqa: E731
    torch.manual_seed(1), np.random.seed(1)
    first = [x for x, _ in make(7).batches(3)]
    torch.manual_seed(99), np.random.seed(99)  # global RNG state must not matter
    _ = torch.rand(10), np.random.rand(10)
    again = [x for x, _ in make(7).batches(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)

    starts = torch.cat(first)[:, 0]
    assert sorted(starts.tolist()) == list(range(0, 2000 - 16, 8))  # every window exactly once
    assert starts.tolist() != sorted(starts.tolist())  # and actually shuffled
    other_epoch = torch.cat([x for x, _ in make(7).batches(4)])[:, 0]
    other_seed = torch.cat([x for x, _ in make(8).batches(3)])[:, 0]
    assert not torch.equal(starts, other_epoch) and not torch.equal(starts, other_seed)


def test_resume_at_start_yields_exactly_the_remaining_batches_without_reading_earlier_ones():
    tokens = position_tokens(3000)
    for mode in ("windows", "random"):
        loader = BatchLoader(tokens, 32, 32, 4, shuffle=True, seed=5, mode=mode)
        full = list(loader.batches(2))
        assert len(full) == loader.num_batches > 5
        gathered = []
        real_gather = loader._gather
        loader._gather = lambda starts: gathered.append(starts) or real_gather(starts)
        resumed = list(loader.batches(2, start=5))
        assert len(gathered) == len(full) - 5  # batches 0..4 were never read
        assert len(resumed) == len(full) - 5
        for (x, y), (fx, fy) in zip(resumed, full[5:]):
            assert torch.equal(x, fx) and torch.equal(y, fy)
        assert list(loader.batches(2, start=loader.num_batches)) == []


@pytest.mark.parametrize("mode,shuffle", [("windows", False), ("windows", True), ("random", False)])
def test_rank_slices_are_disjoint_and_make_up_the_global_batch(mode, shuffle):
    tokens, world = position_tokens(5000), 3
    single = BatchLoader(tokens, 16, 16, 2 * world, shuffle=shuffle, seed=11, mode=mode)
    ranks = [BatchLoader(tokens, 16, 16, 2, shuffle=shuffle, seed=11, mode=mode, rank=r, world_size=world)
             for r in range(world)]
    assert all(r.num_batches == single.num_batches > 0 for r in ranks)
    for b, (gx, gy) in enumerate(single.batches(1)):
        parts = [next(r.batches(1, start=b)) for r in ranks]
        assert all(x.shape == (2, 16) for x, _ in parts)
        assert torch.equal(torch.cat([x for x, _ in parts]), gx)
        assert torch.equal(torch.cat([y for _, y in parts]), gy)
        if mode == "windows":  # random starts may repeat by chance; windows never do
            starts = torch.cat([x for x, _ in parts])[:, 0].tolist()
            assert len(set(starts)) == len(starts)


def test_random_mode_in_range_deterministic_and_counted():
    tokens, L = position_tokens(4000), 32
    loader = BatchLoader(tokens, L, 16, 8, seed=3, mode="random")
    assert loader.num_batches == len(TokenWindows(tokens, L, 16)) // 8
    batches = list(loader.batches(0))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (loader.num_batches * 8, L)
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
    assert x[:, 0].min() >= 0 and x[:, 0].max() <= 4000 - L - 1
    same_seed = BatchLoader(tokens, L, 16, 8, seed=3, mode="random")
    assert torch.equal(x, torch.cat([b[0] for b in same_seed.batches(0)]))
    assert not torch.equal(x, torch.cat([b[0] for b in loader.batches(1)]))

    # The whole range [0, n - L - 1] is reachable, including its last start.
    small = BatchLoader(position_tokens(L + 3), L, 1, 1, seed=0, mode="random")
    seen = {int(b[0][0, 0]) for epoch in range(30) for b in small.batches(epoch)}
    assert seen == {0, 1, 2}


def test_token_windows_memory_does_not_grow_with_the_number_of_windows():
    tokens = np.random.default_rng(0).integers(0, 50257, size=1_500_000).astype(np.uint16)
    peaks = {}
    for stride in (1, 256):
        tracemalloc.start()
        windows = TokenWindows(tokens, 256, stride)
        loader = BatchLoader(tokens, 256, stride, 8, shuffle=False)
        _, peaks[stride] = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(windows) == len(range(0, len(tokens) - 256, stride)) and loader.num_batches > 0
    assert peaks[1] < 1_000_000, peaks  # ~1.5M windows, yet well under a megabyte
    assert peaks[1] < 2 * peaks[256] + 10_000, peaks
    last_x, last_y = TokenWindows(tokens, 256, 1)[-1]  # with stride 1 the last target ends the stream
    assert last_y[-1] == int(tokens[-1]) and last_x[0] == int(tokens[-257])


# ---------------------------------------------------------------------------------------------
# Reading and preparing


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_chunked_tokenization_equals_whole_text():
    enc = get_tokenizer()
    pieces = ["Hello world.\n", "  indented line \n", "\n\n\n", "word\n", "x\ty\n", "café naïve 😀\n",
              "it's 12,345 don't\n", "end.\r\n", " \n", "A\nB\n"]
    rng = np.random.default_rng(0)
    text = "".join(pieces[i] for i in rng.integers(0, len(pieces), size=3000))
    chunks = list(data._chunks(text, size=500))
    assert len(chunks) > 20 and "".join(chunks) == text
    assert data.encode_text(text).tolist() == enc.encode_ordinary(text)
    assert np.concatenate([data.encode_text(c) for c in chunks]).tolist() == enc.encode_ordinary(text)


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
    assert meta["shards"]["train"] == [{"file": "train-00000.bin", "tokens": meta["tokens"]["train"]}]
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and meta["eot_id"] == EOT_ID
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
    train, val = text_file_splits(path)
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
    docs = read_documents([str(path)])
    (_, text), = list(docs)
    assert text == "caf\ufffd ok \ufffd\ufffd end \ufffd.\n"
    assert docs.replaced == 3
    meta = prepare_corpus([str(path)], tmp_path / "c", progress=False)
    assert meta["replaced_invalid_utf8"] == 3 and meta["sources"][0]["replaced"] == 3


def test_replacements_are_counted_across_read_blocks(tmp_path):
    from gptforge.sources import READ_BYTES
    for cut in (1, 2):  # a valid U+FFFD (EF BF BD) split across two blocks is not a replacement
        raw = b"a" * (READ_BYTES - cut) + "\ufffd".encode() + b" caf\xe9 \xff" + "\ufffd".encode() * 3
        path = write(tmp_path / f"seam{cut}.txt", raw)
        docs = read_documents([str(path)])
        assert docs.replaced == 2 and docs.docs[0][1] == raw.decode("utf-8", errors="replace")


def test_nul_byte_file_is_refused(tmp_path):
    path = write(tmp_path / "model.txt", b"looks like text\x00\x01\x02")
    with pytest.raises(UserError, match="model.txt.*binary"):
        read_documents([str(path)])
    with pytest.raises(UserError, match="binary"):
        text_file_splits(path)


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
        read_documents([str(empty)])
    with pytest.raises(UserError, match="empty"):
        prepare_corpus([str(empty)], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="unknown builtin"):
        read_documents(["builtin:nope"])
    with pytest.raises(UserError, match="val_fraction"):
        prepare_corpus([str(empty)], tmp_path / "out", val_fraction=1.0, progress=False)


def test_existing_output_folder_is_never_damaged(tmp_path):
    src = write(tmp_path / "a.txt", "Some text for the corpus.\n" * 20)
    out = tmp_path / "out"
    write(out / "precious.txt", "do not touch")

    with pytest.raises(UserError, match="not empty"):
        prepare_corpus([str(src)], out, progress=False)
    # A failure half-way (here: during tokenization) with overwrite=True leaves it as it was, too.
    original_encode = prepare.encode_piece
    prepare.encode_piece = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full"))
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            prepare_corpus([str(src)], out, overwrite=True, progress=False, workers=1)
    finally:
        prepare.encode_piece = original_encode
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
    with pytest.raises(UserError, match="not valid JSON"):
        load_corpus(out)
    (out / "meta.json").write_text(meta_text.replace('"gpt2"', '"cl100k_base"'))
    with pytest.raises(UserError, match="tokenizer"):
        load_corpus(out)
    (out / "meta.json").unlink()
    with pytest.raises(UserError, match="no meta.json"):
        load_corpus(out)
    with pytest.raises(UserError, match="no meta.json"):
        load_corpus(tmp_path / "nowhere")


def test_builtin_shakespeare_is_readable_and_prepares(tmp_path):
    docs = read_documents(["builtin:shakespeare"])
    names = [name for name, _ in docs]
    assert len(docs) == 42 and "builtin:shakespeare/hamlet" in names and docs.chars > 4_000_000
    hamlet = dict(docs.docs)["builtin:shakespeare/hamlet"]
    assert hamlet.startswith("HAMLET") and "To be, or not to be" in hamlet
    assert "Gutenberg" not in "".join(text for _, text in docs)  # licence boilerplate stripped
    assert docs.replaced == 0 and len(docs.sources) == 1


# ---------------------------------------------------------------------------------------------
# Streaming, shards, workers, resume


def test_pieces_cut_anywhere_safe_tokenize_like_the_whole_text():
    # Tiny pieces put cuts next to every kind of character: digits, punctuation, contractions,
    # runs of spaces, tabs, CRLF, non-breaking and ideographic spaces, accents, emoji.
    enc = get_tokenizer()
    alphabet = list("ab Z9 ,.'\n\t") + [" ", "  ", "\r\n", "\u00a0", "\u3000", "'s", "'ll", "\u00e9", "\U0001F600",
                                         "12", "--", "\u0394\u03b5", "\n\n"]
    for seed in range(4):
        rng = np.random.default_rng(seed)
        text = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=4000))
        pieces = list(prepare.cut_pieces([text], size=7))
        assert len(pieces) > 100 and "".join(pieces) == text
        assert [t for p in pieces for t in enc.encode_ordinary(p)] == enc.encode_ordinary(text)
        # The cuts depend on the text only, not on how it arrives in blocks.
        blocks = [text[a:b] for a, b in zip([0, 1, 50, 51, 900, 2000], [1, 50, 51, 900, 2000, len(text)])]
        assert list(prepare.cut_pieces(blocks, size=7)) == pieces


def test_chunked_tokenization_without_newlines():
    text = "word " * 50_000  # one 250,000-character line still splits (at spaces)
    pieces = list(data._chunks(text, size=10_000))
    assert len(pieces) >= 20 and "".join(pieces) == text
    assert data.encode_text(text).tolist() == get_tokenizer().encode_ordinary(text)


def shard_files(tmp_path: Path, tokens: np.ndarray, sizes: list[int]) -> ShardedTokens:
    paths, start = [], 0
    for i, n in enumerate(sizes):
        paths.append(tmp_path / f"s{i}.bin")
        tokens[start:start + n].tofile(paths[-1])
        start += n
    assert start == len(tokens)
    return open_tokens(paths, sizes)


def test_sharded_tokens_index_like_one_array(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, size=1000).astype(np.uint16)
    st = shard_files(tmp_path, tokens, [1, 299, 1, 0, 400, 299])
    assert isinstance(st, ShardedTokens) and len(st) == 1000 and st.shape == (1000,) and st.ndim == 1
    assert st.dtype == np.uint16 and len(st.arrays) == 5  # the empty shard is dropped
    for a, b in [(0, 1000), (0, 1), (299, 302), (1, 999), (500, 500), (-5, None), (None, 10), (700, 2000)]:
        assert np.array_equal(st[a:b], tokens[a:b]), (a, b)
    assert np.array_equal(st[3:900:7], tokens[3:900:7])
    index = np.random.default_rng(1).integers(0, 1000, size=(8, 33))
    assert st[index].shape == (8, 33) and np.array_equal(st[index], tokens[index])
    assert st[5] == tokens[5] and st[-1] == tokens[-1] and st[300] == tokens[300]
    assert np.array_equal(np.asarray(st), tokens) and st.astype(np.int64).dtype == np.int64
    assert np.array_equal(st.astype(np.int64), tokens.astype(np.int64))
    with pytest.raises(IndexError):
        st[1000]
    with pytest.raises(IndexError):
        st[np.array([[0, 1000]])]
    one = open_tokens([tmp_path / "s4.bin"], [400])
    assert isinstance(one, np.memmap)  # a single shard is a plain memmap


def test_windows_batches_and_evaluation_read_shards_as_one_stream(tmp_path):
    tokens = position_tokens(5000)
    st = shard_files(tmp_path, tokens, [777] * 6 + [338])
    windows, plain = TokenWindows(st, 32, 7), TokenWindows(tokens, 32, 7)
    assert len(windows) == len(plain)
    for k in (0, 110, 111, len(plain) - 1):
        assert all(torch.equal(a, b) for a, b in zip(windows[k], plain[k]))
    for mode, shuffle in [("windows", False), ("windows", True), ("random", False)]:
        ours = BatchLoader(st, 32, 16, 4, shuffle=shuffle, seed=2, mode=mode, rank=1, world_size=2)
        ref = BatchLoader(tokens, 32, 16, 4, shuffle=shuffle, seed=2, mode=mode, rank=1, world_size=2)
        for (x, y), (rx, ry) in zip(ours.batches(1, start=3), ref.batches(1, start=3), strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=5000, context_length=64)).eval()
    assert evaluate_tokens(model, st, batch_size=4) == evaluate_tokens(model, tokens, batch_size=4)


def corpus_tokens(out: Path) -> tuple[np.ndarray, np.ndarray]:
    corpus = load_corpus(out)
    return np.asarray(corpus.train), np.asarray(corpus.val)


def write_docs(folder: Path, n: int = 14) -> list[str]:
    """n documents of varied real text (slices of the bundled plays), one file each."""
    plays = [text for _, text in read_documents("builtin:shakespeare")]
    texts = [plays[i][1000 * i:1000 * i + 3000 + 700 * i] for i in range(n)]
    for i, text in enumerate(texts):
        write(folder / f"doc{i:02d}.txt", text)
    return texts


def joined(texts: list[str]) -> list[int]:
    out: list[int] = []
    for i, text in enumerate(texts):
        out += ([EOT_ID] if i else []) + encode(text)
    return out


def test_output_is_identical_for_any_workers_and_shard_size(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 2000)  # many pieces and tasks from a small corpus
    texts = write_docs(tmp_path / "src")
    is_val = prepare.val_documents(len(texts), 0.2, 7)
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
    monkeypatch.setattr(prepare, "open_sources", lambda inputs, options=None: [Stream(texts)])
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
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 2000)
    write_docs(tmp_path / "src")
    args = dict(val_fraction=0.2, shard_tokens=700, progress=False)
    prepare_corpus([str(tmp_path / "src")], tmp_path / "ref", workers=1, **args)

    out, work = tmp_path / "out", tmp_path / ".out.partial"
    real_write_json, checkpoints = prepare._write_json, []

    def stop_at_third_checkpoint(path, payload):
        real_write_json(path, payload)
        checkpoints.append(payload)
        if len(checkpoints) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "_write_json", stop_at_third_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus([str(tmp_path / "src")], out, workers=2, **args)
    monkeypatch.setattr(prepare, "_write_json", real_write_json)
    assert not out.exists() and (work / "progress.json").is_file()  # no corpus, only resumable work
    with pytest.raises(UserError, match="no meta.json"):
        load_corpus(out)

    tokenized = []
    real_encode = prepare.encode_piece
    monkeypatch.setattr(prepare, "encode_piece", lambda text: tokenized.append(len(text)) or real_encode(text))
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
    deadline = time.monotonic() + 60
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


@pytest.mark.slow
def test_training_reads_a_sharded_corpus(tmp_path):
    write_docs(tmp_path / "src")
    meta = prepare_corpus([str(tmp_path / "src")], tmp_path / "c", shard_tokens=1000, progress=False)
    assert len(meta["shards"]["train"]) > 3 and len(meta["shards"]["val"]) > 1
    result = train(TrainConfig(data=str(tmp_path / "c"), preset="gpt2-tiny", context_length=32, batch_size=4,
                               max_steps=3, eval_every=2, eval_batches=2, sampling="random", device="cpu",
                               out=str(tmp_path / "run")), progress=False)
    assert result.step == 3 and np.isfinite(result.train_loss) and np.isfinite(result.val_loss)


def test_prefetch_yields_the_same_batches_and_stops_its_thread():
    import threading

    from gptforge.data import prefetch

    loader = BatchLoader(np.arange(5000, dtype=np.uint16), max_length=16, stride=16, batch_size=4,
                         shuffle=True, seed=3)
    direct = list(loader.batches(1, start=2))
    fetched = list(prefetch(loader.batches(1, start=2)))
    assert len(fetched) == len(direct) == loader.num_batches - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(direct, fetched))

    early = prefetch(loader.batches(0))
    next(early)
    early.close()  # the consumer stops after one batch: the producer thread must end too
    assert not any(t.name == "gptforge-prefetch" for t in threading.enumerate())


def test_prefetch_raises_the_producers_error_in_the_consumer():
    from gptforge.data import prefetch

    def broken():
        yield torch.zeros(1), torch.zeros(1)
        raise UserError("corpus shard vanished")

    batches = prefetch(broken())
    next(batches)
    with pytest.raises(UserError, match="corpus shard vanished"):
        next(batches)


def test_batches_with_ids_outside_the_model_vocabulary_are_refused():
    tokens = np.arange(1000, dtype=np.uint16) % 300
    assert len(list(BatchLoader(tokens, max_length=8, stride=8, batch_size=2, vocab_size=300))) > 0
    loader = BatchLoader(tokens, max_length=8, stride=8, batch_size=2, vocab_size=257)
    with pytest.raises(UserError, match="token id 2[5-9][0-9], but the model's vocabulary has 257 ids"):
        list(loader)
