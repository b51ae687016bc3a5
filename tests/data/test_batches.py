"""Windows over tokens, batches (reproducible, resumable, per rank) and prefetching."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from gptforge.config import GPTConfig
from gptforge.data import BatchLoader, TokenWindows
from gptforge.errors import UserError
from gptforge.evaluate import evaluate_tokens
from gptforge.model import GPT
from gptforge.tokenizer import gpt2

from helpers import position_tokens, shard_files


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
    model = GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=5000, context_length=64), gpt2()).eval()
    assert evaluate_tokens(model, st, batch_size=4) == evaluate_tokens(model, tokens, batch_size=4)



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
